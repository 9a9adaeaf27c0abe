"""The tasks a run trains on and how a model is judged on them: probes, floors, tables, what a run prints and saves.

Paper idea: the claim of "Short Data, Long Context" (arXiv 2604.06070) is measured as retrieval accuracy against
distance: a KD student trained only on short documents should retrieve at distances far beyond its longest document,
a CE-only student should not. This file scores any model on fixed, seeded probes:

- key-value retrieval with the record exactly D tokens before the query (data.kv_probe; argmax of the value token,
  one token, so exact match = per-token accuracy);
- in-document accuracy on held-out packed windows of short documents;
- the floors of those probes: what two heuristics that need no retrieval score on the same windows (chance, 1/64,
  is not the floor: at D=16 copying the last value scores 0.67).

Selection vs report: probe seed SELECTION_SEED (0) is the one the quick probes during training use and the one any
setting was chosen on; every reported number (`evaluate_heldout`, the end-of-phase table) is the mean over
HELDOUT_SEEDS, windows drawn from other random streams that nothing was chosen on. A probe with no answer position
(a distance that does not fit the window) is not measurable: its accuracy is None (JSON null, "-" in tables), never 0.

A **task** is what a run trains on and how its models are judged, behind one small interface (`Task`: batches,
probes, floors). `KeyValueTask` is the synthetic language of data.py with its curriculum; `TextTask` is your own
text (train.py --data corpus.txt), judged by its held-out loss; a task file (train.py --data my_task.py) defines
its own (docs/fork.md). `make_task` picks one from the flags.

What a training run tells about itself (the end of this file; train.quick_eval calls a task's `quick` every
--eval-interval steps, on the selection probe): `report`, the probes of every model of the run (the student, its
teacher and, in phase 2, its starting point `step 0`) on the held-out probe seeds, printed and saved as
OUT/<run>.json; `print_side_by_side`, phase 2's table of teacher, step 0, the KD student and its CE-only twin.
"""
import functools
import importlib.util
import json
import os
import subprocess

import numpy as np
import torch
import torch.nn.functional as F

from data import (DataError, DataSource, TaskSpec, build_corpus, kv_probe, read_text_documents, synthetic_batch,
                  to_device)
from model import write_json

SELECTION_SEED = 0  # probe seed of the quick probes during training and of every choice of a setting
HELDOUT_SEEDS = (1, 2, 3)  # probe seeds of every reported number (their mean); never used to choose anything


# ----------------------------------------------------------------------------- the probes' windows


def packed_probe(spec, window, max_doc_len, min_doc_len=None, n_windows=16, seed=0, reset_positions=False):
    """In-document accuracy: held-out packed windows of short documents, like the student's data."""
    min_doc_len = min_doc_len or max(2, max_doc_len // 4)
    return synthetic_batch(spec, np.random.default_rng([seed, 11]), "packed", n_windows, window, max_doc_len,
                           min_doc_len, reset_positions=reset_positions)


def repeated_tokens_window(spec, window, period=64, n_windows=4, seed=0):
    """Finding 2's input: a random token sequence repeated back to back until the window is full."""
    rng = np.random.default_rng([seed, period, 3])
    seqs = rng.integers(1, spec.vocab_size, (n_windows, period))
    reps = -(-(window + 1) // period)
    tokens = np.tile(seqs, (1, reps))[:, : window + 1]
    positions = np.broadcast_to(np.arange(window + 1), tokens.shape).copy()
    return {"tokens": tokens, "positions": positions, "doc_ids": np.zeros_like(tokens)}


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


def probe_accuracy(model, batch, device, autocast, chunk=4, doc_mask=False) -> float | None:
    """Argmax accuracy at the probe's answer positions, over windows in chunks of `chunk`; None if it has none."""
    answers = batch["answers"][:, 1:]  # (N, L)
    total = int(answers.sum())
    if not total:
        return None
    hits = answer_hits(model, batch, device, autocast, chunk=chunk, doc_mask=doc_mask)
    return float((hits & answers).sum()) / total


def evaluate(model, spec, window, distances, max_doc_len, device, autocast, n_windows=16, seed=0,
             doc_mask=False, reset_positions=False) -> dict:
    """{"kv": {D: acc}, "in_doc": acc, "in_doc_fresh": acc, "in_doc_recurring": acc} on windows of `window` tokens.

    doc_mask / reset_positions: score under the attention and positions a run trained with (--doc-mask,
    --reset-positions). They change only the in-document probe: a key-value probe window is one document.
    """
    out = {"kv": {}}
    for d in distances:
        probe = kv_probe(spec, window, d, n_windows, seed=seed)
        out["kv"][d] = probe_accuracy(model, probe, device, autocast, doc_mask=doc_mask)
    in_doc = packed_probe(spec, window, max_doc_len, n_windows=n_windows, seed=seed, reset_positions=reset_positions)
    hits = answer_hits(model, in_doc, device, autocast, doc_mask=doc_mask)  # (N, L): one pass for the three scores
    ans = in_doc["answers"][:, 1:]
    rec = in_doc["far_back"][:, 1:]
    out["in_doc"] = ratio(hits[ans].sum(), ans.sum())
    out["in_doc_fresh"] = ratio(hits[ans & ~rec].sum(), (ans & ~rec).sum())  # keys new to the window
    out["in_doc_recurring"] = ratio(hits[ans & rec].sum(), (ans & rec).sum())  # keys an earlier document valued
    return out


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


# ----------------------------------------------------------------------------- floors


def floor_accuracies(spec, batch) -> tuple[float, float] | None:
    """(last_value, uniform_seen) accuracy of two answers that need no retrieval, or None without answers.

    At every answer position a, from tokens[:a]: last_value copies the most recent value token;
    uniform_seen guesses uniformly among the distinct value tokens seen so far, scored exactly
    (1/n if the answer is one of the n, else 0).
    """
    last = 0.0
    uniform = 0.0
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
    (or `probe`'s), for one probe seed or the mean over a list of them."""
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    floors = {"last_value": {}, "uniform_seen": {}, "best": {}}
    for d in distances:
        accs = [floor_accuracies(spec, probe(spec, window, d, n_windows, seed=k)) for k in seeds]
        if any(a is None for a in accs):
            floors["last_value"][d] = None
            floors["uniform_seen"][d] = None
            floors["best"][d] = None
            continue
        last, uniform = (float(np.mean(x)) for x in zip(*accs))
        floors["last_value"][d] = last
        floors["uniform_seen"][d] = uniform
        floors["best"][d] = max(last, uniform)
    return floors


# ----------------------------------------------------------------------------- tables


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
        cells = " | ".join(format_accuracy(kv.get(d)) for d in dists)
        lines.append(f"| {name} | {cells} | {format_accuracy(r['in_doc'])} |")
    note = f"(key-value retrieval accuracy at distance D; * = beyond the longest short document, {max_doc_len} tokens"
    if floor:
        note += "; floor: the better of copying the last value token and guessing among the values seen, no " \
                "retrieval needed"
    lines.append(note + ("; -: not measurable in this window" if unmeasured else "") + ")")
    return "\n".join(lines)


def generic_table(rows: dict, floors: dict | None = None) -> str:
    """Markdown table of a task's rows ({model: {column: value}}), the floors (if any) as a last row."""
    columns = list(next(iter(rows.values())))
    if floors:
        rows = dict(rows, floor=floors)
    lines = ["| model | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(format_accuracy(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tasks


class Task:
    """What a run trains on and how its models are judged. A new task is one file that defines an instance of a
    subclass as TASK, with a vocabulary size and three methods; `train.py --data my_task.py` takes it (docs/fork.md):

    - batch(kind, window, batch_size, rng): numpy windows of window + 1 tokens: "tokens" (B, L + 1) int64 ids below
      vocab_size, "positions", "doc_ids" (B, L + 1) and "answers" (B, L + 1) bool, the targets the probes score;
      kind "long" for the teacher (long documents), "packed" for the students (short documents packed);
    - probes(window, seed): {column: windows like batch's}, each scored as the argmax accuracy at its answers;
    - floors(window, seed): {column: accuracy} that needs no learning, or None.

    The rest (the stages a phase trains through, the held-out evaluation, the table) follows from those three.
    """
    name = ""  # in front of its runs' names
    vocab_size = 0

    def batch(self, kind, window, batch_size, rng):
        raise NotImplementedError

    def probes(self, window, seed):
        return {}

    def floors(self, window, seed):
        return None

    def prepare(self, args):
        """Read what the task needs from files, before anything is written (a bad file fails in one line)."""

    def stages(self, args, stream_seed, curriculum=()):
        """[(name, DataSource, steps, stop at running accuracy or None)]: the phase's own data. stream_seed(k): the
        seed of the phase's k-th random stream; curriculum: config.curriculum_stages, the synthetic language's
        warm-up (empty with --data)."""
        kind = "long" if args.phase == "teacher" else "packed"
        source = DataSource(functools.partial(self.batch, kind, args.window, args.batch_size), args.batch_size,
                            stream_seed(2), args.window)
        return [("main", source, args.steps, None)]

    def evaluate(self, model, args, device, autocast, seeds):
        """{column: the mean accuracy over the probe seeds}."""
        scores = {}
        for seed in seeds:
            for column, probe in self.probes(args.window, seed).items():
                scores.setdefault(column, []).append(probe_accuracy(model, probe, device, autocast))
        return {column: mean_over_seeds(values) for column, values in scores.items()}

    def mean_floors(self, args, seeds):
        floors = [self.floors(args.window, seed) for seed in seeds]
        if any(f is None for f in floors):
            return None
        return {column: mean_over_seeds([f[column] for f in floors]) for column in floors[0]}

    def table(self, rows, args, floors):
        return generic_table(rows, floors)

    def quick(self, model, args, device, autocast):
        """({column: value}, one line) of a quick look while it trains, or None (no quick probe)."""
        return None


class KeyValueTask(Task):
    """The synthetic language of data.py: key-value records and their queries, with the dense curriculum of short
    windows before a phase's own data, judged by retrieval against distance and in-document accuracy."""

    def __init__(self, spec=None):
        self.spec = spec or TaskSpec()
        self.vocab_size = self.spec.vocab_size

    def stages(self, args, stream_seed, curriculum=()):
        """The curriculum's stages (config.curriculum_stages: long documents in short windows, up to a running
        accuracy), then the phase's own data: a long document per window (teacher) or short ones packed."""
        stages = []
        for i, (name, window, batch, n_pairs, steps) in enumerate(curriculum):
            make = functools.partial(synthetic_batch, self.spec, kind="long", batch_size=batch, window=window,
                                     n_pairs=n_pairs)
            stages.append((name, DataSource(make, batch, stream_seed(1 if i == 0 else 2 + i), window), steps,
                           args.curriculum_target))
        if args.phase == "teacher":
            make = functools.partial(synthetic_batch, self.spec, kind="long", batch_size=args.batch_size,
                                     window=args.window, n_pairs=args.long_pairs)
        else:
            make = functools.partial(synthetic_batch, self.spec, kind="packed", batch_size=args.batch_size,
                                     window=args.window, max_doc_len=args.max_doc_len, min_doc_len=args.min_doc_len,
                                     reset_positions=args.reset_positions, recurrence=args.recurrence)
        stages.append(("main", DataSource(make, args.batch_size, stream_seed(2), args.window), args.steps, None))
        return stages

    def evaluate(self, model, args, device, autocast, seeds):
        return evaluate_heldout(model, self.spec, args.window, args.eval_distances, args.max_doc_len, device,
                                autocast, args.eval_windows, seeds, args.doc_mask, args.reset_positions)

    def mean_floors(self, args, seeds):
        return heuristic_floors(self.spec, args.window, args.eval_distances, args.eval_windows, list(seeds))

    def table(self, rows, args, floors):
        return format_table(rows, args.max_doc_len, floors["best"])

    def quick(self, model, args, device, autocast):
        """A few probe distances on half the probe windows, on the selection probe seed."""
        ds = args.eval_distances
        distances = sorted({ds[1], ds[len(ds) // 2], ds[-2], ds[-1]}) if len(ds) >= 4 else ds
        row = evaluate(model, self.spec, args.window, distances, args.max_doc_len, device, autocast,
                       args.eval_windows // 2, seed=SELECTION_SEED, doc_mask=args.doc_mask,
                       reset_positions=args.reset_positions)
        line = ", ".join(f"D={d}: {format_accuracy(a)}" for d, a in row["kv"].items())
        return row, line + f", in-doc {format_accuracy(row['in_doc'])}"


HELD_STEPS = 8  # the text task's report reads this many training batches' worth of held-out windows


class TextTask(Task):
    """Your own text (train.py --data corpus.txt): UTF-8 bytes (token = byte + 1; 0 separates documents), its end
    held out (data.build_corpus), judged by the cross-entropy on held-out windows (research/realtext.py adds the
    loss at each distance into the window and a passkey). encode, sep, vocab_size: another tokenizer's (a lab's, e.g.
    a real teacher's BPE)."""

    def __init__(self, path, encode=None, sep=0, vocab_size=257, name=None):
        self.path = path
        self.encode = encode
        self.sep = sep
        self.vocab_size = vocab_size
        self.name = name or os.path.splitext(os.path.basename(os.path.normpath(path)))[0] + "-"
        self.corpus = None

    def documents(self):
        return read_text_documents(self.path, encode=self.encode)

    def prepare(self, args):
        shuffle = None if args.phase == "teacher" else args.seed
        self.corpus = build_corpus(self.documents(), self.sep, args.window, args.max_doc_len, shuffle,
                                   held_window=args.long_window)

    def batch(self, kind, window, batch_size, rng):
        windows = self.corpus.train
        idx = rng.integers(0, len(windows["tokens"]), batch_size)
        return {k: v[idx] for k, v in windows.items()}

    def evaluate(self, model, args, device, autocast, seeds):
        """{"corpus_ce": mean next-token cross-entropy on the first HELD_STEPS batches' worth of held-out windows
        (under the run's document mask). The held-out text is one: `seeds` draws nothing here."""
        n = HELD_STEPS * args.batch_size
        tokens = self.corpus.held_out["tokens"][:n]
        doc_ids = self.corpus.held_out["doc_ids"][:n] if args.doc_mask else None
        return {"corpus_ce": token_losses(model, tokens, device, autocast, doc_ids).mean().item()}

    def table(self, rows, args, floors):
        lines = [f"{name}: cross-entropy {r['corpus_ce']:.3f} nats/token on held-out windows"
                 for name, r in rows.items()]
        return "\n".join(lines)


@torch.no_grad()
def token_losses(model, tokens, device, autocast, doc_ids=None) -> torch.Tensor:
    """(n, L) next-token cross-entropy at each position of windows tokens (n, L + 1), in eval mode; doc_ids (n, L + 1):
    attend within documents only (as a --doc-mask run trained)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(len(tokens)):
        x = torch.as_tensor(tokens[i:i + 1, :-1]).to(device)
        y = torch.as_tensor(tokens[i, 1:]).to(device)
        doc = None if doc_ids is None else torch.as_tensor(doc_ids[i:i + 1, :-1]).to(device)
        with autocast:
            logits = model(x, None, doc)[0].float()  # (L, V)
        out.append(F.cross_entropy(logits, y, reduction="none").cpu())
    model.train(was_training)
    return torch.stack(out)


def load_task_file(path):
    """The TASK a task file defines (docs/fork.md), or DataError."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (OSError, SyntaxError, ImportError) as e:
        raise DataError(f"cannot load the task file {path}: {e}") from None
    task = getattr(module, "TASK", None)
    if not isinstance(task, Task):
        raise DataError(f"{path} defines no TASK (an evaluate.Task)")
    task.name = task.name or spec.name + "-"
    return task


def make_task(args) -> Task:
    """The task of --data: the synthetic language (none), a task file (.py) or text (a file or a folder)."""
    if not args.data:
        return KeyValueTask()
    if args.data.endswith(".py"):
        return load_task_file(args.data)
    return TextTask(args.data)


# ----------------------------------------------------------------------------- what a training run prints and saves

START = "step 0"  # results key of a phase-2 student before its first step (phase 1 + the base switch)
TINY_NOTE = "(the tiny preset is a smoke test: its models are too small and too briefly trained to mean anything)"


def report_speed(args, tokens, seconds, ranks=1):
    """tokens/s of the training steps (all ranks together, batches included); None when no step ran."""
    if not tokens:
        return None
    threads = torch.get_num_threads()
    where = f"{threads} thread{'s' if threads > 1 else ''}" if args.device == "cpu" else args.device
    print(f"speed: {tokens / seconds:,.0f} tokens/s over {seconds:.1f} s of steps (batches included, "
          f"{args.autocast_dtype}, {where}" + (f" per rank, {ranks} ranks" if ranks > 1 else "") + ")")
    return {"tokens_per_s": tokens / seconds, "train_seconds": seconds, "dtype": args.autocast_dtype, "ranks": ranks,
            "grad_accum": args.grad_accum}


def report(args, task, models, device, autocast, results_path, speed):
    """Evaluate the run's `models` ({name: model}: the run, its teacher, START) on the task's held-out probes, print
    the table, save the results as JSON (with `speed`, the commit the run ran on and when it started: what a
    protocol's runs are checked against)."""
    rows = {name: task.evaluate(m, args, device, autocast, HELDOUT_SEEDS) for name, m in models.items()}
    floors = task.mean_floors(args, HELDOUT_SEEDS)  # what needs no retrieval, on the same probes
    results = {"run": args.run_name, "phase": args.phase, "window": args.window, "rope_base": args.rope_base,
               "kd_weight": args.kd_weight, "seed": args.seed, "max_doc_len": args.max_doc_len,
               "probe_seeds": list(HELDOUT_SEEDS), "results": rows, "floors": floors, "speed": speed,
               "commit": getattr(args, "commit", None), "started": getattr(args, "started", None)}
    os.makedirs(args.out_dir, exist_ok=True)
    write_json(results_path, results)  # a kill leaves the old file or the new one
    print(task.table(rows, args, floors))
    print(f"(each value: the mean over the held-out probe seeds {list(HELDOUT_SEEDS)})")
    if args.preset == "tiny":
        print(TINY_NOTE)
    print(f"checkpoint: {os.path.join(args.out_dir, args.run_name + '.pt')}\nresults:    {results_path}")
    return results


def print_side_by_side(args, results, ce_name, task=None):
    """Phase 2's table: teacher, step 0, the KD student and its CE-only twin (from its results file)."""
    with open(os.path.join(args.out_dir, ce_name + ".json")) as f:
        ce = json.load(f)
    rows = {"teacher": results["results"]["teacher"], START: results["results"][START],
            "KD student": results["results"][args.run_name], "CE student": ce["results"][ce_name]}
    print(f"\nShort documents (<= {args.max_doc_len} tokens) packed into {args.window}-token windows; "
          f"phase-1 base {args.phase1_base:g} -> phase-2 base {args.rope_base:g}:")
    print((task or make_task(args)).table(rows, args, results["floors"]))
    if args.preset == "tiny":
        print(TINY_NOTE)


def source_commit(root=os.path.dirname(os.path.abspath(__file__))):
    """The git commit the code runs from, with "+dirty" when tracked files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")
