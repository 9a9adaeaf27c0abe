"""Probes beyond the core's key-value sweep: where in the window retrieval fails, a single needle, and what a model
answers where a key recurs across the documents of a packed window.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) claims long-range retrieval from short documents; these
probes ask where it holds: records at a fixed place (distance and absolute position apart), one record per window
(nothing competes for the query's attention), and at a recurring key whether a model answers with this document's
value (the label) or with the key's earlier value (what a long-context teacher's logits pass on). Each value is the
mean over the held-out probe seeds (evaluate.HELDOUT_SEEDS). research/robustness.py and research/screen.py use them.
"""
import numpy as np

from data import kv_document, pack_documents
from evaluate import HELDOUT_SEEDS, mean_over_seeds, packed_probe, predictions, probe_accuracy, ratio


def position_probe(spec, window, distance, record_start, band=64, n_windows=8, n_pairs=16, seed=0):
    """Key-value retrieval with the records at a fixed place: record keys in [record_start, record_start + band)
    of the document body (token record_start + 1 of the window, behind its SEP), each query exactly `distance` later.

    Distance and absolute position vary apart (kv_probe's records sit wherever the distance lets them, so its long
    distances are also records at the window's start). Returns a batch like kv_probe's; a cell where no query fits
    the window has no answer (probe_accuracy: None).
    """
    rng = np.random.default_rng([seed, distance, 2002, record_start, n_pairs])
    docs, answers = zip(*(kv_document(spec, rng, window, n_pairs, np.full(n_pairs, distance), record_start + distance,
                                      record_start + band - 1 + distance) for _ in range(n_windows)))  # bodies of L
    return pack_documents(docs, window + 1, answers=answers)


def depth_probe(spec, window, distance, depth, n_windows=8, n_pairs=16, seed=0):
    """Key-value retrieval at `distance` with the queries in a band of window/8 tokens at a relative depth in [0, 1]
    among the positions where a query at this distance can stand (data.kv_probe spreads them). A batch like
    kv_probe's."""
    rng = np.random.default_rng([seed, distance, int(depth * 1000)])
    band = max(4 * n_pairs, window // 8)
    lo = distance + int(depth * max(0, window - 2 - distance - band))  # the band's first query position
    hi = min(window - 2, lo + band)
    k = min(n_pairs, max(1, (window - distance - 1) // 2 - 1))  # as many as fit
    docs, answers = zip(*(kv_document(spec, rng, window, k, np.full(k, distance), lo, hi) for _ in range(n_windows)))
    return pack_documents(docs, window + 1, answers=answers)


def needle_probe(spec, window, distance, n_windows=16, seed=0):
    """A single needle: one record per window, its query exactly `distance` later, anywhere the pair fits.

    Beside kv_probe's 16 records per window: no other record competes for the query's attention (and, since
    filler holds no value token, copying the one value seen also answers it: report its floor).
    """
    rng = np.random.default_rng([seed, distance, 3003])
    docs, answers = zip(*(kv_document(spec, rng, window, 1, np.array([distance]), distance, window - 2)
                          for _ in range(n_windows)))
    return pack_documents(docs, window + 1, answers=answers)


def earlier_values(batch) -> np.ndarray:
    """(N, L + 1) int64: at each far-back target (batch["far_back"]: a record or an answer), the value its key had at
    its last occurrence in an earlier document (the far-back answer); -1 elsewhere."""
    tok, doc = batch["tokens"], batch["doc_ids"]
    out = np.full(tok.shape, -1, dtype=np.int64)
    for r, a in zip(*np.nonzero(batch["far_back"])):
        j = np.flatnonzero((tok[r, :a - 1] == tok[r, a - 1]) & (doc[r, :a - 1] < doc[r, a - 1]))
        out[r, a] = tok[r, j[-1] + 1]
    return out


def recurring_signal(model, spec, window, max_doc_len, device, autocast, n_windows=16, seeds=HELDOUT_SEEDS,
                     doc_mask=False) -> dict:
    """What a model answers at the recurring answers of held-out packed windows (mean over the probe seeds):
    {"local": the value of this document (the label), "far_back": the value of the key's earlier document,
    "fresh": accuracy at the other answers}. For the teacher this is the long-range signal KD passes on."""
    res = {"local": [], "far_back": [], "fresh": []}
    for seed in seeds:
        batch = packed_probe(spec, window, max_doc_len, n_windows=n_windows, seed=seed)
        pred = predictions(model, batch, device, autocast, doc_mask=doc_mask)  # (N, L), aligned with tokens[:, 1:]
        ans, y = batch["answers"][:, 1:], batch["tokens"][:, 1:]
        rec = ans & batch["far_back"][:, 1:]  # the recurring answers: queries whose key an earlier document valued
        far = earlier_values(batch)[:, 1:]
        res["local"].append(ratio((pred == y)[rec].sum(), rec.sum()))
        res["far_back"].append(ratio((pred == far)[rec].sum(), rec.sum()))
        res["fresh"].append(ratio((pred == y)[ans & ~rec].sum(), (ans & ~rec).sum()))
    return {k: mean_over_seeds(v) for k, v in res.items()}


def depth_sweep(model, spec, window, distances, depths, device, autocast, n_windows=8, seed=0) -> dict:
    """{depth: {D: acc}}: key-value retrieval with the queries at a relative depth of the window (data.kv_probe's
    depth), on one probe seed."""
    sweep = {}
    for depth in depths:
        probes = {d: depth_probe(spec, window, d, depth, n_windows, seed=seed) for d in distances}
        sweep[depth] = {d: probe_accuracy(model, p, device, autocast) for d, p in probes.items()}
    return sweep


def position_sweep(model, spec, window, distances, starts, device, autocast, n_windows=8, seeds=HELDOUT_SEEDS,
                   band=64) -> dict:
    """{record start: {D: acc}}: 16 records in [start, start + band), queries D later (position_probe); the
    mean over the probe seeds; None where no query fits the window."""
    return {s: {d: mean_over_seeds([probe_accuracy(model, position_probe(spec, window, d, s, band, n_windows, seed=k),
                                                   device, autocast) for k in seeds]) for d in distances}
            for s in starts}


def needle_sweep(model, spec, window, distances, device, autocast, n_windows=16, seeds=HELDOUT_SEEDS) -> dict:
    """{D: acc}: one record per window, its query D later (needle_probe); the mean over the probe seeds."""
    return {d: mean_over_seeds([probe_accuracy(model, needle_probe(spec, window, d, n_windows, seed=k), device,
                                               autocast) for k in seeds]) for d in distances}
