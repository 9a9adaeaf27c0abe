"""Long-range retrieval evaluation: how far back can a model find what it needs?

Paper idea: the claim of "Short Data, Long Context" (arXiv 2604.06070) is measured as
retrieval accuracy against distance: a KD student trained only on short documents should
retrieve at distances far beyond its longest document, a CE-only student should not.
This file scores any model on fixed, seeded probes (data.kv_probe and the windows built here):

- key-value retrieval with the record exactly D tokens before the query (argmax of the
  value token; one token, so exact match = per-token accuracy), optionally at a depth;
- in-document accuracy on held-out packed windows of short documents;
- the floors of those key-value probes: what two heuristics that need no retrieval score on
  the same windows (chance, 1/64, is not the floor: at D=16 copying the last value scores 0.67);
- where a model fails: a record-position x distance sweep (`position_sweep`, distance apart from
  absolute position) and a single needle per window (`needle_sweep`).

Selection vs report: probe seed SELECTION_SEED (0) is the one the quick probes during training
use and the one any setting was chosen on; every reported number (`evaluate_heldout`, the
end-of-phase table) is the mean over HELDOUT_SEEDS, windows drawn from other random streams
that nothing was chosen on.

A probe with no answer position (a distance that does not fit the window) is not measurable:
its accuracy is None (JSON null, "-" in tables), never 0.

Used by train.py (quick probes, end-of-phase tables) and analyze.py (plots).

What a training run tells about itself (the second half of this file): a student is judged next
to its teacher and, in phase 2, its starting point (phase 1's weights with the new RoPE base,
`step 0`) and its CE-only twin. train.py calls these:

- `quick_eval`: a few probe distances every --eval-interval steps, under the progress bar and in the log, on the
  selection probe seed (SELECTION_SEED: what a setting may be chosen on);
- `report_speed`: tokens/s of the steps (all ranks) and the student's MFU per device;
- `report`: the probes (or the corpus loss with --data) of every model of the run, printed as a table
  and saved as OUT/<run>.json; each number the mean over the held-out probe seeds (HELDOUT_SEEDS);
- `print_side_by_side`: phase 2's table of teacher, step 0, KD student and CE student.
"""
import json
import os
import subprocess

import numpy as np
import torch
import torch.nn.functional as F

from config import PRESETS
from data import kv_document, kv_probe, pack_documents, synthetic_batch, to_device
from longctx.report import LONG_WINDOWS, format_long_context, long_context
from model import atomic_write
from scale import dist
from scale.device import matmul_peak_flops

SELECTION_SEED = 0  # probe seed of the quick probes during training and of every choice of a setting
HELDOUT_SEEDS = (1, 2, 3)  # probe seeds of every reported number (their mean); never used to choose anything


# ----------------------------------------------------------------------------- the probes' windows


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


def needle_probe(spec, window, distance, n_windows=16, seed=0):
    """A single needle: one record per window, its query exactly `distance` later, anywhere the pair fits.

    Beside kv_probe's 16 records per window: no other record competes for the query's attention (and, since
    filler holds no value token, copying the one value seen also answers it: report its floor).
    """
    rng = np.random.default_rng([seed, distance, 3003])
    docs, answers = zip(*(kv_document(spec, rng, window, 1, np.array([distance]), distance, window - 2)
                          for _ in range(n_windows)))
    return pack_documents(docs, window + 1, answers=answers)


def repeated_tokens_window(spec, window, period=64, n_windows=4, seed=0):
    """Finding 2's input: a random token sequence repeated back to back until the window is full."""
    rng = np.random.default_rng([seed, period, 3])
    seqs = rng.integers(1, spec.vocab_size, (n_windows, period))
    reps = -(-(window + 1) // period)
    tokens = np.tile(seqs, (1, reps))[:, : window + 1]
    return {"tokens": tokens, "positions": np.broadcast_to(np.arange(window + 1), tokens.shape).copy(),
            "doc_ids": np.zeros_like(tokens)}


def packed_probe(spec, window, max_doc_len, min_doc_len=None, n_windows=16, seed=0, reset_positions=False):
    """In-document accuracy: held-out packed windows of short documents, like the student's data."""
    min_doc_len = min_doc_len or max(2, max_doc_len // 4)
    return synthetic_batch(spec, np.random.default_rng([seed, 11]), "packed", n_windows, window, max_doc_len,
                           min_doc_len, reset_positions=reset_positions)


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def predictions(model, batch, device, autocast, chunk=4, doc_mask=False) -> np.ndarray:
    """(N, L) int64: the model's argmax next token after each input position of the windows.

    doc_mask: attend within documents only, as a --doc-mask run trained (the batch's positions are used as given).
    """
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(batch["tokens"]), chunk):
        part = {k: v[i:i + chunk] for k, v in batch.items()}
        x, _, pos, doc, _ = to_device(part, device)
        with autocast:
            out.append(model(x, pos, doc if doc_mask else None).argmax(-1).cpu().numpy())  # (b, L)
    model.train(was_training)
    return np.concatenate(out)


def answer_hits(model, batch, device, autocast, chunk=4, doc_mask=False) -> np.ndarray:
    """(N, L) bool: the model's argmax is the target, at the probe's answer positions (False elsewhere)."""
    pred = predictions(model, batch, device, autocast, chunk=chunk, doc_mask=doc_mask)
    return (pred == batch["tokens"][:, 1:]) & batch["answers"][:, 1:]


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


def probe_accuracy(model, batch, device, autocast, chunk=4, doc_mask=False, where=None) -> float | None:
    """Argmax accuracy at the probe's answer positions, over windows in chunks of `chunk`; None if it has none.

    where: (N, L + 1) bool aligned with batch["tokens"]: score only the answers it marks (e.g. batch["far_back"]).
    """
    answers = batch["answers"][:, 1:] if where is None else batch["answers"][:, 1:] & where[:, 1:]  # (N, L)
    total = int(answers.sum())
    if not total:
        return None
    hits = answer_hits(model, batch, device, autocast, chunk=chunk, doc_mask=doc_mask)
    return float((hits & answers).sum()) / total


def evaluate(model, spec, window, distances, max_doc_len, device, autocast, n_windows=16, seed=0,
             doc_mask=False, reset_positions=False) -> dict:
    """{"kv": {D: acc}, "in_doc": acc} on windows of `window` tokens.

    doc_mask / reset_positions: score under the attention and positions a run trained with (--doc-mask,
    --reset-positions). They change only the in-document probe: a key-value probe window is one document.

    (A repeated-span copy probe used to sit here; every model, the teacher included, scored at
    chance on it, since nothing in the training data rewards copying filler, so it was dropped.)
    """
    out = {"kv": {}}
    for d in distances:
        out["kv"][d] = probe_accuracy(model, kv_probe(spec, window, d, n_windows, seed=seed), device, autocast,
                                      doc_mask=doc_mask)
    in_doc = packed_probe(spec, window, max_doc_len, n_windows=n_windows, seed=seed, reset_positions=reset_positions)
    hits = answer_hits(model, in_doc, device, autocast, doc_mask=doc_mask)  # (N, L): one pass for the three scores
    ans, rec = in_doc["answers"][:, 1:], in_doc["far_back"][:, 1:]
    out["in_doc"] = ratio(hits[ans].sum(), ans.sum())
    out["in_doc_fresh"] = ratio(hits[ans & ~rec].sum(), (ans & ~rec).sum())  # keys new to the window
    out["in_doc_recurring"] = ratio(hits[ans & rec].sum(), (ans & rec).sum())  # keys an earlier document valued
    return out


def source_commit(root=os.path.dirname(os.path.abspath(__file__))):
    """The git commit the code runs from, with "+dirty" when tracked files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def ratio(hits, total) -> float | None:
    return float(hits) / int(total) if total else None


def mean_over_seeds(values) -> float | None:
    """Mean of per-probe-seed accuracies; None if any seed's probe was not measurable."""
    return None if any(v is None for v in values) else float(np.mean(values))


def evaluate_heldout(model, spec, window, distances, max_doc_len, device, autocast, n_windows=16,
                     seeds=HELDOUT_SEEDS, doc_mask=False, reset_positions=False) -> dict:
    """evaluate() on each held-out probe seed, every value the mean over them."""
    runs = [evaluate(model, spec, window, distances, max_doc_len, device, autocast, n_windows, seed, doc_mask,
                     reset_positions) for seed in seeds]
    out = {"kv": {d: mean_over_seeds([r["kv"][d] for r in runs]) for d in distances}}
    for key in ("in_doc", "in_doc_fresh", "in_doc_recurring"):
        out[key] = mean_over_seeds([r[key] for r in runs])
    return out


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


def floor_accuracies(spec, batch) -> tuple[float, float] | None:
    """(last_value, uniform_seen) accuracy of two answers that need no retrieval, or None without answers.

    At every answer position a, from tokens[:a]: last_value copies the most recent value token;
    uniform_seen guesses uniformly among the distinct value tokens seen so far, scored exactly
    (1/n if the answer is one of the n, else 0).
    """
    last = uniform = 0.0
    total = 0
    for tokens, answers in zip(batch["tokens"], batch["answers"]):
        is_value = np.isin(tokens, spec.values())
        for a in np.flatnonzero(answers):
            seen = tokens[:a][is_value[:a]]
            last += bool(len(seen) and seen[-1] == tokens[a])
            uniform += (tokens[a] in seen) / max(len(set(seen.tolist())), 1)
            total += 1
    return (last / total, uniform / total) if total else None


def heuristic_floors(spec, window, distances, n_windows=16, seed=0, probe=kv_probe) -> dict:
    """{"last_value": {D: acc}, "uniform_seen": {D: acc}, "best": {D: the larger}} on evaluate()'s kv probes
    (or `probe`'s, e.g. needle_probe), for one probe seed or the mean over a list of them."""
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    floors = {"last_value": {}, "uniform_seen": {}, "best": {}}
    for d in distances:
        accs = [floor_accuracies(spec, probe(spec, window, d, n_windows, seed=k)) for k in seeds]
        if any(a is None for a in accs):
            floors["last_value"][d] = floors["uniform_seen"][d] = floors["best"][d] = None
            continue
        floors["last_value"][d], floors["uniform_seen"][d] = (float(np.mean(x)) for x in zip(*accs))
        floors["best"][d] = max(floors["last_value"][d], floors["uniform_seen"][d])
    return floors


def depth_sweep(model, spec, window, distances, depths, device, autocast, n_windows=8, seed=0):
    """{depth: {D: acc}}: key-value retrieval with the queries at a relative depth of the window."""
    return {depth: {d: probe_accuracy(model, kv_probe(spec, window, d, n_windows, depth=depth, seed=seed),
                                      device, autocast) for d in distances} for depth in depths}


def format_accuracy(acc) -> str:
    """Two decimals, or "-" for a probe that is not measurable (None)."""
    return "-" if acc is None else f"{acc:.2f}"


def format_table(rows: dict, max_doc_len: int, floor: dict | None = None) -> str:
    """Markdown table: one row per model, key-value accuracy per distance, then in-document accuracy.

    floor: {D: acc}, heuristic_floors()["best"], printed as a last row; "-" marks what was not measured.
    """
    dists = sorted({int(d) for r in rows.values() for d in r["kv"]})
    head = "| model | " + " | ".join(f"D={d}" + ("*" if d > max_doc_len else "") for d in dists) + " | in-doc |"
    lines = [head, "|" + " --- |" * (len(dists) + 2)]
    unmeasured = any(v is None for r in rows.values() for v in [*r["kv"].values(), r["in_doc"]])
    if floor is not None:
        rows = dict(rows, floor={"kv": floor, "in_doc": None})
    for name, r in rows.items():
        kv = {int(k): v for k, v in r["kv"].items()}
        lines.append(f"| {name} | " + " | ".join(format_accuracy(kv.get(d)) for d in dists)
                     + f" | {format_accuracy(r['in_doc'])} |")
    lines.append(f"(key-value retrieval accuracy at distance D; * = beyond the longest short document, "
                 f"{max_doc_len} tokens" + ("; floor: the better of copying the last value token and guessing "
                                             "among the values seen, no retrieval needed" if floor else "")
                 + ("; -: not measurable in this window" if unmeasured else "") + ")")
    return "\n".join(lines)


# --- what a training run prints and saves ---

START = "step 0"  # results key of a phase-2 student before its first step (phase 1 + the base switch)


def quick_eval(model, args, spec, device, autocast, local, step, bar, log):
    """A few probe distances on half the probe windows, printed under the progress bar and logged."""
    quick = evaluate(model, spec, args.window, quick_distances(args), args.max_doc_len, device, autocast,
                     PRESETS[args.preset]["eval_windows"] // 2, seed=SELECTION_SEED, doc_mask=args.doc_mask,
                     reset_positions=args.reset_positions)
    bar.write(f"  step {local}: " + ", ".join(f"D={d}: {format_accuracy(a)}" for d, a in quick["kv"].items())
              + f", in-doc {format_accuracy(quick['in_doc'])}")
    log.write(json.dumps({"step": step, "eval": quick}) + "\n")


def records_placed(stages) -> str:
    """One line: per synthetic stage, records asked for per window and placed on average in its first batch
    (data.place_pairs drops a record that finds no free slot: 12-20% in the dense curriculum windows)."""
    parts = []
    for name, src, *_ in stages:
        if src.kind == "long" and src.n_pairs:
            placed = src.batch(0)["answers"].sum(1).mean()
            parts.append(f"{name} {src.n_pairs} -> {placed:.1f}")
    return "  records per window, asked -> placed: " + ", ".join(parts) if parts else None


def quick_distances(args):
    ds = [d for d in PRESETS[args.preset]["eval_distances"] if d < args.window]
    return sorted({ds[1], ds[len(ds) // 2], ds[-2], ds[-1]}) if len(ds) >= 4 else ds


def report_speed(model, args, device, tokens, seconds, spread=0.0, flops=None):
    """tokens/s of the training steps (all ranks together) and MFU per device (the causal FLOP count over the matmul
    peak of the dtype in use, measured on rank 0); under torchrun also the ranks and how far their weights differ (0.0).
    flops: the FLOPs of the steps, each stage counted at its own window (the curriculum's are shorter); without
    it every token is counted at --window."""
    if not tokens:
        return None
    tok_s = tokens / seconds
    dtype = args.autocast_dtype  # float32 or bfloat16: what pick_device resolved --dtype to
    peak = args.peak_flops or matmul_peak_flops(device, getattr(torch, dtype))
    ranks = dist.world_size()
    flops = flops if flops is not None else model.flops_per_token(args.window) * tokens  # causal count
    mfu = flops / seconds / ranks / peak
    # the teacher's forward is not counted: this is the student's MFU
    print(f"speed: {tok_s:,.0f} tokens/s over {seconds:.0f} s of steps (batches included, {dtype}); student MFU "
          f"{mfu:.1%} of {peak / 1e9:,.0f} GFLOP/s ({dtype} matmul peak, {torch.get_num_threads()} threads)"
          + (f" per rank, {ranks} ranks" if ranks > 1 else ""))
    if ranks > 1:
        print(f"ranks: {ranks}, their weights " + ("identical" if spread == 0 else f"differ by up to {spread:.3g}"))
    return {"tokens_per_s": tok_s, "train_seconds": seconds, "mfu": mfu, "peak_flops": peak, "dtype": dtype,
            "ranks": ranks,
            "grad_accum": args.grad_accum, "rank_weight_spread": spread}


def report(args, models, device, autocast, spec, results_path, speed, corpus=None):
    """Evaluate the run's `models` ({name: model}: the run, its teacher, START) on the probes, or on --data's
    corpus; print the table; save the results as JSON (with `speed`, from report_speed, and the commit the run
    ran on and when it started, from train.train: what a protocol's runs are checked against)."""
    dists = [d for d in PRESETS[args.preset]["eval_distances"] if d < args.window]
    n = PRESETS[args.preset]["eval_windows"]
    if args.data:  # the retrieval probes speak the synthetic language: the corpus loss, and the loss by distance
        rows = {name: {"corpus_ce": corpus_loss(m, args, corpus, device, autocast)} for name, m in models.items()}
        for name, r in long_context(models, corpus, args.window, device, autocast, args.doc_mask, args.seed).items():
            rows[name].update(r)  # and the passkey on held-out text (longctx/report.py)
    else:
        rows = {name: evaluate_heldout(m, spec, args.window, dists, args.max_doc_len, device, autocast, n,  # every
                                       doc_mask=args.doc_mask, reset_positions=args.reset_positions)  # row as the
                for name, m in models.items()}  # run trained, on the held-out probe seeds
    floors = None if args.data else heuristic_floors(spec, args.window, dists, n, list(HELDOUT_SEEDS))  # no retrieval
    results = {"run": args.run_name, "phase": args.phase, "window": args.window, "rope_base": args.rope_base,
               "kd_weight": args.kd_weight, "arm": getattr(args, "arm", None), "seed": args.seed,
               "max_doc_len": args.max_doc_len, "probe_seeds": None if args.data else list(HELDOUT_SEEDS),
               "results": rows, "floors": floors, "speed": speed, "commit": getattr(args, "commit", None),
               "started": getattr(args, "started", None)}
    os.makedirs(args.out_dir, exist_ok=True)
    atomic_write(results_path, lambda f: json.dump(results, f, indent=1), "w")  # a kill leaves old or new
    if args.data:
        print("\n".join(f"{name}: cross-entropy {r['corpus_ce']:.3f} nats/token on held-out corpus windows"
                        for name, r in rows.items()))
        print(format_long_context(rows, min(LONG_WINDOWS, len(corpus.long)), args.window))
    else:
        print(format_table(rows, args.max_doc_len, floors["best"]))
        print(f"(each value: the mean over the held-out probe seeds {list(HELDOUT_SEEDS)})")
    print(f"checkpoint: {os.path.join(args.out_dir, args.run_name + '.pt')}\nresults:    {results_path}")
    return results


@torch.no_grad()
def corpus_loss(model, args, corpus, device, autocast, n_batches=8):
    """Mean next-token cross-entropy on the held-out windows of the real corpus (up to n_batches batches)."""
    held = corpus[1]  # the held-out windows of a longctx.corpus.Corpus (runs.load_corpus)
    total = count = 0
    for i in range(0, min(len(held["tokens"]), n_batches * args.batch_size), args.batch_size):
        x, y, pos, doc, _ = to_device({k: v[i:i + args.batch_size] for k, v in held.items()}, device)
        with autocast:  # under the attention the run trained with
            total += F.cross_entropy(model(x, pos, doc if args.doc_mask else None).float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return total / count


def print_side_by_side(args, results, ce_name):
    """Phase 2's table: teacher, step 0, the KD student and its CE-only twin (from its results file)."""
    with open(os.path.join(args.out_dir, ce_name + ".json")) as f:
        ce = json.load(f)
    rows = {"teacher": results["results"]["teacher"], START: results["results"][START],
            "KD student": results["results"][args.run_name], "CE student": ce["results"][ce_name]}
    if args.data:  # real text: the corpus loss and the long-context report of the four
        print(f"\nHeld-out text of {args.data}; phase-1 base {args.phase1_base:g} -> phase-2 base {args.rope_base:g}:")
        print("\n".join(f"{name}: cross-entropy {r['corpus_ce']:.3f} nats/token" for name, r in rows.items()))
        print(format_long_context(rows, None, args.window))
        return
    print(f"\nShort documents (<= {args.max_doc_len} tokens) packed into {args.window}-token windows; "
          f"phase-1 base {args.phase1_base:g} -> phase-2 base {args.rope_base:g}:")
    print(format_table(rows, args.max_doc_len, results["floors"]["best"]))
