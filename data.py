"""Synthetic long- and short-context data, the short-sample packer, and retrieval probes.

Paper idea: the student of "Short Data, Long Context" (arXiv 2604.06070) never sees a long document; it sees
*short documents packed end to end into a long window*, while its teacher has learned long-range retrieval on long
documents. No data set can be downloaded here, so this file generates both from a seed:

- A small synthetic language with disjoint token classes: the separator (SEP, which starts every document), 64 keys,
  64 values and 64 filler tokens. Filler follows a sparse Markov chain (each filler token has 4 possible
  successors), so there is something to model besides retrieval. A document holds key-value *records* "k v" and,
  D tokens later, a *query* "k v": predicting v after the second k is retrieval at distance D (multi-query
  associative recall, as in Arora et al. 2023, "Zoology").
- Long documents (teacher): one fills the window; distances are log-uniform up to it; keys are unique within the
  document.
- Short documents (student): at most `max_doc_len` tokens (default 1/8 of the window), every query refers to a
  record in the same document. They draw keys from the same pool, so in a packed window a key recurs across
  documents. That recurrence is the long-range signal a long-context teacher's logits carry (it predicts the value
  the key had in an earlier document); its rate is set by the pair density (about 45% by default), or asked for
  directly (`recurrence`, train.py --recurrence), and `python -m walkthrough data` prints it.
- `pack_documents`: documents -> windows of exactly L tokens with position ids (continuous, or reset per document)
  and document ids (for the optional mask).
- `DataSource`: a step's batch as a pure function of (seed, step), or one rank's rows of it (train.py under
  torchrun); `prefetch` builds the next one while a step trains.
- `kv_probe` (fixed seeds): key-value retrieval at exact distance D; evaluate.py builds the in-document probe and
  finding 2's repeated windows, interp/probes.py the probes at a fixed place in the window.
- `far_back_targets`: the value targets of a packed window (records and answers) whose key stood in an earlier
  document with another value (a packed batch carries them as `far_back`; the probes score the answers there
  apart, as "recurring keys").
- Your own text (`read_text_documents`, `build_corpus`): UTF-8 files as documents of byte tokens, the end held out,
  the rest cut into short documents and packed (nanoGPT `.bin` token files: formats/text.py).

`python -m walkthrough data` prints samples of each.
"""
import functools
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

SEP = 0  # document separator; the only special token
# The +1s of this file are three conventions, named here once:
# - a record and its query are each "k v": the value is the token right after its key (p + 1, q + 1), and
#   the answer (the retrieval target) is the query's value, at q + 1;
# - every document body is stored behind one SEP, so a body of n tokens takes n + 1 tokens of the stream and a
#   document length "separator included" is its body + 1 (short_doc_lengths, cut_documents);
# - a batch window holds L + 1 tokens: the model reads tokens[:-1] and predicts tokens[1:] (to_device).


@dataclass
class TaskSpec:
    """The synthetic language: token classes and how densely records are placed."""
    n_keys: int = 64
    n_values: int = 64
    n_filler: int = 64
    branching: int = 4  # successors of each filler token in the Markov chain
    pair_every: int = 10  # one record/query pair per this many tokens of document
    queries: int = 1  # how often a short document asks for each of its records (place_pairs)
    chain_seed: int = 1234  # the Markov chain is part of the language, fixed across runs

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_keys + self.n_values + self.n_filler

    def keys(self):
        return np.arange(1, 1 + self.n_keys)

    def values(self):
        return np.arange(1 + self.n_keys, 1 + self.n_keys + self.n_values)

    def filler_ids(self):
        return np.arange(1 + self.n_keys + self.n_values, self.vocab_size)

    def successors(self):
        """(n_filler, branching) table: the filler tokens that may follow each filler token."""
        return markov_successors(self.n_filler, self.branching, self.chain_seed)


@functools.lru_cache(maxsize=8)
def markov_successors(n_filler, branching, seed):
    rng = np.random.default_rng(seed)
    table = np.stack([rng.choice(n_filler, branching, replace=False) for _ in range(n_filler)])
    table.flags.writeable = False
    return table


# ----------------------------------------------------------------------------- documents


def make_filler(spec: TaskSpec, rng: np.random.Generator, n_rows: int, length: int) -> np.ndarray:
    """(n_rows, length) filler tokens: a Markov chain over the filler class (each token one of its `branching`
    successors), so that there is something to model besides retrieval."""
    if length == 0:
        return spec.filler_ids()[rng.integers(0, spec.n_filler, (n_rows, length))]
    succ = spec.successors()
    choice = rng.integers(0, spec.branching, (n_rows, length))
    state = np.empty((n_rows, length), dtype=np.int64)
    state[:, :1] = rng.integers(0, spec.n_filler, (n_rows, 1))
    for t in range(1, length):
        state[:, t] = succ[state[:, t - 1], choice[:, t]]
    return spec.filler_ids()[state]


def place_pairs(tokens, answers, rng, keys, distances, query_lo=0, query_hi=None, queries=1):
    """Write the keys of "k v ... k v" into one document in place, record and query D apart.

    tokens (T,) int64; answers (T,) bool marks the query values (the retrieval targets). The query key goes to a
    position q in [query_lo, query_hi], its record key to q - D; `queries` > 1 asks the same record again at free
    places after it. Returns [(key, record_pos, (query_pos, ...))]; a pair that finds no free slot after 20 tries
    is dropped (a further query likewise): about 1% of a teacher window's 48 pairs, but 12-20% in the
    curriculum's dense 16-128-token windows.
    """
    T = len(tokens)
    query_hi = T - 2 if query_hi is None else min(query_hi, T - 2)
    free = np.ones(T, dtype=bool)
    placed = []
    for key, dist in zip(keys, distances):
        lo = max(query_lo, int(dist))
        if lo > query_hi:
            continue
        for q in rng.integers(lo, query_hi + 1, 20):
            p = q - dist
            if free[p] and free[p + 1] and free[q] and free[q + 1]:
                free[[p, p + 1, q, q + 1]] = False
                qs = [int(q)] + [int(r) for r in more_queries(rng, free, p + 2, query_hi, queries - 1)]
                tokens[[p, *qs]] = key
                answers[[r + 1 for r in qs]] = True
                placed.append((key, int(p), tuple(qs)))
                break
    return placed


def more_queries(rng, free, lo, hi, n):
    """Up to n more query slots (2 free tokens each) in [lo, hi], taken from `free`; 20 tries each."""
    found = []
    for _ in range(n if lo <= hi else 0):
        for r in rng.integers(lo, hi + 1, 20):
            if free[r] and free[r + 1]:
                free[[r, r + 1]] = False
                found.append(r)
                break
    return found


def choose_keys(rng, pool, n, seen, recurrence):
    """n distinct keys for one short document, each from `seen` (keys of earlier documents in the window) with
    probability `recurrence`, else unseen. A recurring slot with no seen key left takes an unseen one; an unseen slot
    with none left is dropped (at rate 0 a window holds about 64 answers, not 91)."""
    recur = rng.random(min(n, len(pool))) < recurrence
    old = rng.permutation(np.array(sorted(seen), dtype=np.int64))
    new = rng.permutation(np.setdiff1d(pool, old))
    n_old = min(int(recur.sum()), len(old))
    n_new = min(len(recur) - n_old, len(new))
    return rng.permutation(np.concatenate([old[:n_old], new[:n_new]]))


def kv_document(spec, rng, length, n_pairs, distances, query_lo=0, query_hi=None, filler=None, seen=None,
                recurrence=None, queries=1):
    """One document body (no SEP) of `length` tokens with n_pairs records at the given distances.

    Keys are unique within the document, drawn uniformly, or, with `recurrence` (a rate in [0, 1]),
    by choose_keys against `seen`, the set of keys of earlier documents in the window (updated in place).
    `filler` (length,) may be given (made in bulk); `queries`: see place_pairs. Returns (tokens, answers) as
    (length,) arrays.
    """
    tokens = make_filler(spec, rng, 1, length)[0] if filler is None else filler.copy()
    answers = np.zeros(length, dtype=bool)
    pool = spec.keys()
    if recurrence is None:
        keys = rng.choice(pool, min(n_pairs, len(pool)), replace=False)
    else:
        keys = choose_keys(rng, pool, n_pairs, seen, recurrence)
    placed = place_pairs(tokens, answers, rng, keys, distances[: len(keys)], query_lo, query_hi, queries)
    if seen is not None:
        seen.update(int(k) for k, _, _ in placed)
    values = rng.choice(spec.values(), len(placed))
    for (key, p, qs), v in zip(placed, values):
        tokens[[p + 1, *(q + 1 for q in qs)]] = v
    return tokens, answers


def log_uniform(rng, lo, hi, n):
    """n integers log-uniform in [lo, hi]."""
    return np.exp(rng.uniform(np.log(lo), np.log(hi + 1), n)).astype(np.int64).clip(lo, hi)


def long_document(spec, rng, length, n_pairs=None, filler=None):
    """Teacher data: one document of `length` body tokens, distances log-uniform in 2..length-3."""
    n_pairs = n_pairs or max(2, length // spec.pair_every)
    return kv_document(spec, rng, length, n_pairs, log_uniform(rng, 2, max(2, length - 3), n_pairs), filler=filler)


def short_document(spec, rng, length, filler=None, seen=None, recurrence=None):
    """Student data: a short document; every query's record lies in it (distances 2..length-3), each asked for
    spec.queries times. `seen` and `recurrence`: see kv_document (the packer's cross-document key recurrence)."""
    if length < 6:  # too short for a pair: filler only
        filler = make_filler(spec, rng, 1, length)[0] if filler is None else filler
        return filler, np.zeros(length, dtype=bool)
    n_pairs = max(1, length // spec.pair_every)
    distances = rng.integers(2, length - 2, n_pairs)
    return kv_document(spec, rng, length, n_pairs, distances, filler=filler, seen=seen, recurrence=recurrence,
                       queries=spec.queries)


# ----------------------------------------------------------------------------- packing


def pack_documents(docs, window, sep=SEP, reset_positions=False, answers=None):
    """Concatenate documents, each behind a separator, and cut the stream into windows of L tokens.

    docs: list of 1-D int arrays (document bodies, without separator); answers: optional
    parallel list of bool arrays (retrieval targets), carried along. No token is lost or
    duplicated except the final partial window (< L tokens), which is dropped.
    Returns a dict of (N, L) arrays: tokens, positions (0..L-1, or reset at each
    separator), doc_ids (a counter that steps exactly at each separator), answers.
    """
    stream = np.concatenate([np.concatenate([[sep], d]) for d in docs]).astype(np.int64)
    n = len(stream) // window
    tokens = stream[: n * window].reshape(n, window)
    doc_ids = np.cumsum(tokens == sep, axis=1)  # (N, L)
    if reset_positions:  # distance from the document's separator, also across a window cut
        idx = np.arange(n * window)
        start = np.maximum.accumulate(np.where(stream[: n * window] == sep, idx, 0))
        positions = (idx - start).reshape(n, window)
    else:
        positions = np.broadcast_to(np.arange(window), tokens.shape).copy()
    out = {"tokens": tokens, "positions": positions, "doc_ids": doc_ids}
    if answers is not None:
        flat = np.concatenate([np.concatenate([[False], a]) for a in answers])
        out["answers"] = flat[: n * window].reshape(n, window)
    return out


def short_doc_lengths(rng, total, min_len, max_len):
    """Split `total` tokens into document lengths (separator included) in [min_len, max_len];
    the last one takes what is left, so a window holds whole documents only."""
    lengths = []
    while total > 0:
        n = int(min(rng.integers(min_len, max_len + 1), total))
        lengths.append(n)
        total -= n
    return lengths


def synthetic_batch(spec, rng, kind, batch_size, window, max_doc_len=128, min_doc_len=32, n_pairs=None,
                    reset_positions=False, recurrence=None):
    """A batch of windows of `window + 1` tokens (input and shifted target), as numpy arrays.

    kind "long": one long document per window (teacher data, keys unique in the window);
    kind "packed": short documents of min_doc_len..max_doc_len tokens packed end to end; `recurrence` (None: keys
    drawn uniformly, about 45% of records reuse a key of an earlier document) asks each record's key to come from
    an earlier document of the window with this probability (choose_keys).
    """
    if kind not in ("long", "packed"):
        raise ValueError(f"unknown data kind {kind!r} (long or packed)")
    filler = make_filler(spec, rng, batch_size, window + 1)  # in bulk: one chain per window
    docs = []
    answers = []
    for row in filler:
        if kind == "long":
            parts = [long_document(spec, rng, window, n_pairs, row[1:])]
        else:
            bounds = np.cumsum([0] + short_doc_lengths(rng, window + 1, min_doc_len, max_doc_len))
            seen = set()  # keys of the window's documents so far
            parts = [short_document(spec, rng, b - a - 1, row[a + 1:b], seen, recurrence)
                     for a, b in zip(bounds[:-1], bounds[1:])]
        docs += [p[0] for p in parts]
        answers += [p[1] for p in parts]
    packed = pack_documents(docs, window + 1, reset_positions=reset_positions, answers=answers)
    if kind == "packed":  # the targets a long-context teacher would answer from an earlier document
        packed["far_back"] = far_back_targets(spec, packed["tokens"], packed["doc_ids"])
    return packed


def far_back_targets(spec, tokens, doc_ids):
    """(N, L) bool: the value targets a long-context teacher can answer from an earlier document, differently.

    tokens, doc_ids (N, L). Each value v at p follows its key k at p - 1, in a record "k v" or a query "k v" (then v is
    an answer). v is far-back when k stood in an earlier document of the window before another value: the data's
    label (this document's v) and far-back retrieval (k's earlier value) disagree, at the record as at the answer.
    A key that recurs with the same value marks nothing (a masking of what the teacher can read from an earlier
    document leaves those out too: variants/arms.py).
    """
    is_key = (tokens >= 1) & (tokens <= spec.n_keys)
    is_value = (tokens > spec.n_keys) & (tokens <= spec.n_keys + spec.n_values)
    out = np.zeros(tokens.shape, dtype=bool)
    for r in range(len(tokens)):
        k = np.flatnonzero(is_key[r, :-1] & is_value[r, 1:])  # (n,) key positions, each followed by its value
        key, value, doc = tokens[r, k], tokens[r, k + 1], doc_ids[r, k]  # (n,) each
        earlier_other = ((key[:, None] == key[None, :]) & (doc[None, :] < doc[:, None])
                         & (value[None, :] != value[:, None]))  # (n, n): occurrence j, earlier, valued otherwise than i
        out[r, k[earlier_other.any(1)] + 1] = True
    return out


def to_device(batch, device):
    """numpy windows of L+1 tokens -> torch x, y, positions, doc_ids, answer mask, each (B, L)."""
    def move(a):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t
    tok = move(batch["tokens"])
    x = tok[:, :-1]
    y = tok[:, 1:]
    pos = move(batch["positions"][:, :-1])
    doc = move(batch["doc_ids"][:, :-1])
    ans = move(batch["answers"][:, 1:]) if "answers" in batch else torch.zeros_like(y, dtype=torch.bool)
    return x, y, pos, doc, ans


class DataSource:
    """One stage's batches as a pure function of (seed, step): resuming at step s replays the same stream.

    make(rng) builds a whole global batch of `batch_size` windows of window + 1 tokens from a numpy Generator (a
    task's batch, e.g. synthetic_batch with its settings bound).
    """

    def __init__(self, make, batch_size, seed, window):
        self.make = make
        self.batch_size = batch_size
        self.seed = seed
        self.window = window

    def batch(self, step: int, rows: slice = slice(None)):
        """The step's batch of windows, or its `rows` (a rank's share, config.BatchShape): numpy (rows, L+1) arrays.

        The rows are cut from the one global batch of the step, so 2 ranks x b rows see what 1 x 2b does.
        """
        full = self.make(np.random.default_rng([self.seed, step]))
        return {k: v[rows] for k, v in full.items()}


def prefetch(make, steps):
    """make(step) for each of `steps`, the next one built in a background thread while the caller uses this one.

    `make` must be a pure function of the step (DataSource.batch is): prefetching changes when a batch is built,
    never which batch a step sees. numpy and torch release the GIL in their kernels, so building overlaps the
    training step. An error in `make` surfaces at its step.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
    try:
        steps = iter(steps)
        ahead = [pool.submit(make, s) for s in itertools.islice(steps, 1)]  # [] or [future of the next batch]
        while ahead:
            current = ahead.pop()
            ahead = [pool.submit(make, s) for s in itertools.islice(steps, 1)]
            yield current.result()
    finally:  # the caller stopped early (a stage ends, Ctrl-C): drop the batch in flight
        pool.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------------------- the retrieval probe


def kv_probe(spec, window, distance, n_windows=16, n_pairs=16, seed=0):
    """Key-value retrieval with every record exactly `distance` tokens before its query, the queries spread over
    the window (interp/probes.py adds probes with the records or the queries at a fixed place).

    Returns a batch (windows of L+1) whose `answers` mark the value after each query key.
    """
    rng = np.random.default_rng([seed, distance, 1001])
    body = window  # SEP + body = L + 1 tokens
    n_fit = max(1, (body - distance - 1) // 2 - 1)
    docs = []
    answers = []
    for _ in range(n_windows):
        k = min(n_pairs, n_fit)
        tok, ans = kv_document(spec, rng, body, k, np.full(k, distance), distance, body - 2)
        docs.append(tok)
        answers.append(ans)
    return pack_documents(docs, window + 1, answers=answers)


# ----------------------------------------------------------------------------- your own text


class DataError(ValueError):
    """A data file that cannot be used (missing, empty, unreadable, malformed)."""


class Corpus(NamedTuple):
    train: dict  # training windows: tokens, positions, doc_ids, each (N, L + 1)
    held_out: dict  # windows built like the training ones from the held-out text (the end-of-run loss)
    long: np.ndarray  # (M, L + 1) the held-out text in order, whole documents behind their separators


def read_text_documents(path, encode=None):
    """UTF-8 text as bytes (token = byte + 1; 0 is SEP; vocabulary 257), or as the ids of `encode(text)`.

    A folder gives one document per file (sorted by name); a file gives one document per paragraph (split at
    blank lines).
    """
    if not os.path.exists(path):
        raise DataError(f"data path not found: {path}")
    files = sorted(os.path.join(path, f) for f in os.listdir(path)) if os.path.isdir(path) else [path]
    docs = []
    for f in (f for f in files if os.path.isfile(f)):
        try:
            with open(f, "rb") as fh:
                text = fh.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {f} as UTF-8 text: {e}") from None
        parts = [text] if os.path.isdir(path) else text.split("\n\n")
        for part in (p for p in parts if p.strip()):
            ids = encode(part) if encode else np.frombuffer(part.encode("utf-8"), dtype=np.uint8).astype(np.int64) + 1
            docs.append(np.asarray(ids, dtype=np.int64))
    if not docs:
        raise DataError(f"no text found in {path}")
    return docs


def split_held_out(docs, n_tokens):
    """(training documents, held-out documents): the last n_tokens tokens of the text are held out (a document
    on the cut is cut in two)."""
    lengths = np.array([len(d) for d in docs])
    after = np.cumsum(lengths[::-1])[::-1] - lengths  # tokens after each document
    train = []
    held = []
    for d, n_after in zip(docs, after):
        keep = max(0, len(d) - max(0, n_tokens - n_after))  # this document's tokens that stay in training
        if keep:
            train.append(d[:keep])
        if keep < len(d):
            held.append(d[keep:])
    return train, held


def cut_documents(docs, max_doc_len, rng=None):
    """Every document cut into chunks of at most max_doc_len - 1 tokens (the separator makes max_doc_len), in
    order, or shuffled with `rng` (a window's documents unrelated, as the paper's short documents)."""
    body = max_doc_len - 1
    chunks = [d[i:i + body] for d in docs for i in range(0, len(d), body)]
    return chunks if rng is None else [chunks[i] for i in rng.permutation(len(chunks))]


def build_corpus(docs, sep, window, max_doc_len, shuffle_seed=None, fraction=0.05, held_window=None) -> Corpus:
    """The documents of a file as a Corpus: the last `fraction` of the tokens held out (at least two windows of
    held_window, the longest window any phase on this text uses, so that every phase holds out the same text),
    the rest cut into documents of at most max_doc_len tokens (shuffled with shuffle_seed) and packed."""
    total = sum(len(d) + 1 for d in docs)
    n_held = max(int(fraction * total), 2 * (max(window, held_window or 0) + 1))
    if total - n_held < window + 1:
        raise DataError(f"the data holds {total:,} tokens: need at least {n_held + window + 1:,} (one training window "
                        f"of {window + 1} and {n_held:,} held out for the end-of-run report)")
    train_docs, held_docs = split_held_out(docs, n_held)
    rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
    train = pack_documents(cut_documents(train_docs, max_doc_len, rng), window + 1, sep=sep)
    held = pack_documents(cut_documents(held_docs, max_doc_len, rng), window + 1, sep=sep)
    if not len(train["tokens"]) or not len(held["tokens"]):
        raise DataError(f"the data holds fewer than {window + 1} tokens in its training or held-out part: not one "
                        f"window")
    long = pack_documents(held_docs, window + 1, sep=sep)["tokens"]  # (M, L + 1), whole documents in order
    return Corpus(train, held, long)
