"""What a training run tells about itself: quick probes while it trains, the end-of-phase report.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) judges a student by retrieval
accuracy against distance, next to its teacher and, in phase 2, its starting point (phase 1's
weights with the new RoPE base, `step 0`) and its CE-only twin. train.py calls these:

- `quick_eval`: a few probe distances every --eval-interval steps, under the progress bar and in the log, on the
  selection probe seed (evaluate.SELECTION_SEED: what a setting may be chosen on);
- `report_speed`: tokens/s of the steps (all ranks) and the student's MFU per device;
- `report`: the probes (or the corpus loss with --data) of every model of the run, printed as a table
  and saved as OUT/<run>.json; each number the mean over the held-out probe seeds (evaluate.HELDOUT_SEEDS);
- `print_side_by_side`: phase 2's table of teacher, step 0, KD student and CE student.
"""
import json
import os

import torch
import torch.nn.functional as F

import dist
from config import PRESETS
from data import to_device
from evaluate import (HELDOUT_SEEDS, SELECTION_SEED, evaluate, evaluate_heldout, format_accuracy, format_table,
                      heuristic_floors, matmul_peak_flops)
from model import atomic_write

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
    corpus; print the table; save the results as JSON (with `speed`, from report_speed)."""
    dists = [d for d in PRESETS[args.preset]["eval_distances"] if d < args.window]
    n = PRESETS[args.preset]["eval_windows"]
    if args.data:  # the retrieval probes speak the synthetic language: report the corpus loss instead
        rows = {name: {"corpus_ce": corpus_loss(m, args, corpus, device, autocast)} for name, m in models.items()}
    else:
        rows = {name: evaluate_heldout(m, spec, args.window, dists, args.max_doc_len, device, autocast, n,  # every
                                       doc_mask=args.doc_mask, reset_positions=args.reset_positions)  # row as the
                for name, m in models.items()}  # run trained, on the held-out probe seeds
    floors = None if args.data else heuristic_floors(spec, args.window, dists, n, list(HELDOUT_SEEDS))  # no retrieval
    results = {"run": args.run_name, "phase": args.phase, "window": args.window, "rope_base": args.rope_base,
               "kd_weight": args.kd_weight, "arm": getattr(args, "arm", None), "seed": args.seed,
               "max_doc_len": args.max_doc_len, "probe_seeds": None if args.data else list(HELDOUT_SEEDS),
               "results": rows, "floors": floors, "speed": speed}
    os.makedirs(args.out_dir, exist_ok=True)
    atomic_write(results_path, lambda f: json.dump(results, f, indent=1), "w")  # a kill leaves old or new
    if args.data:
        print("\n".join(f"{name}: cross-entropy {r['corpus_ce']:.3f} nats/token on held-out corpus windows"
                        for name, r in rows.items()))
    else:
        print(format_table(rows, args.max_doc_len, floors["best"]))
        print(f"(each value: the mean over the held-out probe seeds {list(HELDOUT_SEEDS)})")
    print(f"checkpoint: {os.path.join(args.out_dir, args.run_name + '.pt')}\nresults:    {results_path}")
    return results


@torch.no_grad()
def corpus_loss(model, args, corpus, device, autocast, n_batches=8):
    """Mean next-token cross-entropy on the held-out windows of the real corpus (up to n_batches batches)."""
    held = corpus[1]  # (training windows, held-out windows), from runs.load_corpus
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
    print(f"\nShort documents (<= {args.max_doc_len} tokens) packed into {args.window}-token windows; "
          f"phase-1 base {args.phase1_base:g} -> phase-2 base {args.rope_base:g}:")
    print(format_table(rows, args.max_doc_len, results["floors"]["best"]))
