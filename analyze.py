"""Figures and numbers for the claim and the three findings of "Short Data, Long Context".

Paper idea (arXiv 2604.06070): a student trained only on short documents packed into a long
window inherits a long-context teacher's long-range retrieval through logit distillation.
Each subcommand shows one part of that on this project's own checkpoints:

- retrieval  (the claim) key-value retrieval accuracy against distance, one line per model,
             the student's longest document marked; depth x distance heatmaps.
- spectrum   (finding 1) rotations per RoPE frequency pair for each (base, window), critical
             dimension, spectrum utilization, Men et al. lower bound; phase 1 vs phase 2.
- perturb    (finding 2) on packed repeated-token windows, move the positions RoPE applies to
             the queries and/or keys of one layer; trace the relative change of every residual
             stream and the KL at the logits. A nonzero KL is positional signal in the logits.
- qupdate    (finding 3) per layer, head and frequency pair, the relative update of W_q / W_k
             and of the query norms on a fixed probe, phase-1 -> phase-2 checkpoint.
- match      (why a distance fails) a layer-0 head's score of a key against the same key D tokens back, from
             the weights, by slow and fast RoPE pairs; where the fast part dips, the head loses its record.
- alias      (a check of the baselines) retrieval by distance for records at the window's start, one
             checkpoint under several RoPE bases, beside the distances where one RoPE pair has turned
             a whole number of times: a bump that moves with those is a phase alias, not long range.
- all        every analysis that the checkpoints in a training folder allow.

Only the model's `Inspect` hooks and the probes of data.py and evaluate.py are used, never a copy of the
forward pass. Each subcommand writes PNGs and a JSON of its numbers into --out (default figures/). This file is
the command line: loading, flags, printing and writing; the measurements of findings 2 and 3 (what a position
perturbation does inside the model, what phase 2 changed per RoPE pair) live in interp/perturb.py and
interp/qupdate.py, the figures in viz/plots.py.

  python analyze.py all --dir out
  python analyze.py retrieval --ckpt out/teacher.pt out/phase2-kd-b10000-b500000.pt
  python analyze.py spectrum --head-dim 32 --bases 10000 500000 --windows 256 1024
  python analyze.py perturb --ckpt out/teacher.pt --target q --layers 0 1 --shift 1 4 16
  python analyze.py qupdate --before out/phase1-b10000.pt --after out/phase2-kd-b10000-b500000.pt
  python analyze.py match --ckpt out/phase2-kd-b10000-b500000.pt --measure 512 576 640 704 768
  python analyze.py alias --ckpt out/phase2-ce-b10000-b500000.pt --bases 300000 500000 800000 --pair 5
"""
import argparse
import glob
import json
import math
import os
import re
from contextlib import nullcontext

import numpy as np
import torch

from data import TaskSpec, kv_probe
from evaluate import (HELDOUT_SEEDS, depth_sweep, evaluate, format_table, heuristic_floors, packed_probe,
                      position_sweep, repeated_tokens_window)
from formats.hf import load_pretrained
from interp.perturb import REACHES_LOGITS_KL, perturbation_propagation
from interp.match import match_results, record_attention
from interp.qupdate import qupdate_results
from model import CheckpointError, atomic_write, switch_rope
from config import check_out_dir, fail
from viz.plots import plot_alias, plot_match, plot_perturb, plot_qupdate, plot_retrieval, plot_spectrum
from rope import critical_pair, default_inv_freq, men_lower_bound, rotations, spectrum_summary, turn_distances

# ----------------------------------------------------------------------------- shared helpers


def load(path, device):
    """(model in eval mode, checkpoint dict) from a checkpoint or an HF Llama folder, or one error line and exit 2."""
    try:
        model, ckpt = load_pretrained(path, device)
    except CheckpointError as e:
        fail(str(e))
    if model.config.vocab_size < TaskSpec().vocab_size:
        fail(f"{path}: vocabulary {model.config.vocab_size} is smaller than the probes' {TaskSpec().vocab_size}")
    run = ckpt.get("args") or {}  # the in-document probe runs under the mask and positions the model trained with
    if run.get("data"):
        fail(f"{path} was trained on --data {run['data']}: the probes speak the synthetic language, not that data's")
    model.probe_conditions = {"doc_mask": bool(run.get("doc_mask")), "reset_positions": bool(run.get("reset_positions"))}
    return model.eval(), ckpt


def load_all(paths, labels, device):
    """{label: model} in the given order; labels default to the file names."""
    if labels and len(labels) != len(paths):
        fail(f"--labels gives {len(labels)} names for {len(paths)} checkpoints")
    labels = labels or [os.path.splitext(os.path.basename(os.path.normpath(p)))[0] for p in paths]
    if len(set(labels)) < len(labels):  # same file name in two folders: one model would silently replace the other
        fail(f"two checkpoints are named {sorted({x for x in labels if labels.count(x) > 1})}: give --labels")
    return {label: load(p, device)[0] for label, p in zip(labels, paths)}


def write_json(out, name, obj):
    """OUT/name, written atomically (a kill leaves the old file or the new one)."""
    path = os.path.join(out, name)
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")
    return path


# ----------------------------------------------------------------------------- retrieval


def default_distances(window):
    """Powers of two from 16, then 3/4 and 9/10 of the window: the same probes for every model."""
    ds = [2**k for k in range(4, 40) if 2**k < window] + [int(0.75 * window), int(0.9 * window)]
    return sorted({d for d in ds if 2 <= d < window - 2})


def retrieval_results(models, window, distances, depths, max_doc_len, device, n_windows=8, seed=0):
    """{label: {"kv": {D: acc}, "in_doc": acc, "depth": {depth: {D: acc}}}} on the same probes."""
    spec, autocast, out = TaskSpec(), nullcontext(), {}
    for label, model in models.items():
        r = evaluate(model, spec, window, distances, max_doc_len, device, autocast, n_windows, seed=seed,
                     **getattr(model, "probe_conditions", {}))
        out[label] = {"kv": r["kv"], "in_doc": r["in_doc"], "max_seq_len": model.config.max_seq_len,
                      "rope_base": model.config.rope_base,
                      "depth": depth_sweep(model, spec, window, distances, depths, device, autocast,
                                           max(1, n_windows // 2), seed)}
    return out


def run_retrieval(args):
    models = load_all(args.ckpt, args.labels, args.device)
    window = args.window or max(m.config.max_seq_len for m in models.values())
    distances = sorted(args.distances or default_distances(window))
    if distances[0] < 2 or distances[-1] >= window - 2:
        fail(f"--distances must lie in [2, {window - 3}] for a {window}-token window, got {distances}")
    if not all(0 <= d <= 1 for d in args.depths):
        fail(f"--depths must lie in [0, 1], got {args.depths}")
    res = retrieval_results(models, window, distances, args.depths, args.max_doc_len, args.device, args.n_windows,
                            args.seed)
    floors = heuristic_floors(TaskSpec(), window, distances, args.n_windows, args.seed)  # the same probes
    paths = plot_retrieval(res, window, distances, args.depths, args.max_doc_len, args.out, args.name, floors["best"])
    paths.append(write_json(args.out, f"{args.name}.json", {
        "window": window, "max_doc_len": args.max_doc_len, "distances": distances, "depths": args.depths,
        "n_windows": args.n_windows, "ckpts": dict(zip(res, args.ckpt)), "models": res, "floors": floors}))
    print(format_table(res, args.max_doc_len, floors["best"]))
    for label, r in res.items():
        far = [r["kv"][d] for d in distances if d > args.max_doc_len]
        print(f"{label}: retrieval {np.mean(list(r['kv'].values())):.2f} over all distances, "
              f"{np.mean(far) if far else float('nan'):.2f} beyond {args.max_doc_len} tokens; in-doc {r['in_doc']:.2f}")
    return paths


# ----------------------------------------------------------------------------- spectrum


def spectrum_results(head_dim, bases, windows):
    """Every (base, window): critical dim and pair, utilization, Men bound, rotations per pair."""
    bounds = {w: men_lower_bound(head_dim, w) for w in windows}  # Men et al. 2024
    settings = []
    for w in windows:
        for b in bases:
            s = spectrum_summary(head_dim, b, w)
            s.update(critical_pair=critical_pair(head_dim, b, w), men_lower_bound=bounds[w],
                     above_men_bound=b >= bounds[w], rotations=rotations(default_inv_freq(head_dim, b), w).tolist())
            settings.append(s)
    schedule = {"phase 1": {"window": min(windows), "base": min(bases)},
                "phase 2": {"window": max(windows), "base": max(bases)}}
    return {"head_dim": head_dim, "men_lower_bound": {str(w): v for w, v in bounds.items()}, "settings": settings,
            "schedule": schedule}


def run_spectrum(args):
    res = spectrum_results(args.head_dim, args.bases, args.windows)
    paths = plot_spectrum(res, args.out, args.name) + [write_json(args.out, f"{args.name}.json", res)]
    for s in res["settings"]:
        print(f"base {s['base']:g}, window {s['window']}: critical dim {s['critical_dim']} (pair "
              f"{s['critical_pair']}), utilization {s['utilization']:.2f}, Men lower bound {s['men_lower_bound']:.3g}")
    return paths


# ----------------------------------------------------------------------------- perturbation (finding 2: interp/perturb.py)
def run_perturb(args):
    models = load_all(args.ckpt, args.labels, args.device)
    window = args.window or max(m.config.max_seq_len for m in models.values())
    if args.inputs == "packed":  # what the students train on: short documents of the synthetic language, packed
        batch = packed_probe(TaskSpec(), window, args.max_doc_len, n_windows=args.n_windows, seed=args.seed)
    else:  # a random sequence of --period tokens repeated back to back
        batch = repeated_tokens_window(TaskSpec(), window, args.period, args.n_windows, args.seed)
    perturbations = [("shift", float(s)) for s in args.shift] + [("noise", float(s)) for s in args.noise]
    if not perturbations:
        fail("give at least one --shift or --noise size")
    res = {}
    for (label, model), path in zip(models.items(), args.ckpt):
        cfg = model.config
        layers = list(range(cfg.n_layer)) if args.layers is None else args.layers
        bad = [l for l in layers if not 0 <= l < cfg.n_layer]
        if bad:
            fail(f"{path}: --layers {bad} out of range 0..{cfg.n_layer - 1}")
        runs = perturbation_propagation(model, batch, layers, perturbations, args.target, args.device, args.seed)
        res[label] = {"ckpt": path, "n_layer": cfg.n_layer, "runs": runs}
        for run in runs:
            print(f"{label}: layer {run['layer']} {args.target} {run['kind']} {run['size']:g}: relative change at "
                  f"the last residual {run['rel_change'][-1]:.3g}, mean logit KL {run['kl_mean']:.3g} nats -> "
                  f"{'reaches' if run['reaches_logits'] else 'does not reach'} the logits")
        print(f"{label}: the perturbation reaches the logits (mean KL > {REACHES_LOGITS_KL:g} nats) in "
              f"{sum(run['reaches_logits'] for run in runs)} of {len(runs)} runs")
    paths = plot_perturb(res, args.period if args.inputs == "repeated" else None, args.target, args.out, args.name)
    return paths + [write_json(args.out, f"{args.name}.json", {
        "window": window, "inputs": args.inputs, "period": args.period, "target": args.target, "n_windows": args.n_windows,
        "seed": args.seed, "reaches_logits_kl": REACHES_LOGITS_KL, "models": res})]


# ----------------------------------------------------------------------------- query updates (finding 3: interp/qupdate.py)
def run_qupdate(args):
    before, _ = load(args.before, args.device)
    after, _ = load(args.after, args.device)
    keys = ("vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "tie_embeddings")
    diff = [f"{k} {getattr(before.config, k)} vs {getattr(after.config, k)}" for k in keys
            if getattr(before.config, k) != getattr(after.config, k)]
    if diff:
        fail(f"architectures differ ({args.before} vs {args.after}): {', '.join(diff)}")
    window = args.probe_window or after.config.max_seq_len
    distance = args.probe_distance or window // 2
    if not 2 <= distance <= window - 3:
        fail(f"--probe-distance must lie in [2, {window - 3}] for a {window}-token probe window, got {distance}")
    batch = kv_probe(TaskSpec(), window, distance, args.n_windows, seed=args.seed)
    res = qupdate_results(before, after, batch, args.device)
    res.update(before=args.before, after=args.after, probe={"window": window, "distance": distance,
                                                            "n_windows": args.n_windows, "seed": args.seed})
    title = f"{os.path.basename(args.before)} -> {os.path.basename(args.after)}"
    paths = plot_qupdate(res, title, args.out, args.name) + [write_json(args.out, f"{args.name}.json", res)]
    m = res["wq_max"]
    print(f"{title}: largest W_q update {m['value']:.3g} at layer {m['layer']}, head {m['head']}, pair {m['pair']}; "
          f"critical pairs {res['critical_pairs']}")
    for layer, spans in res["spans_above_p75"]["wq"].items():
        print(f"  layer {layer}: W_q pair spans above the 75th percentile: "
              + (", ".join(f"{s['pairs'][0]}-{s['pairs'][1]} ({s['mean']:.3g})" for s in spans) or "none"))
    return paths


# ----------------------------------------------------------------------------- alias


def run_alias(args):
    """One checkpoint's weights under each --bases: accuracy by distance for 16 records at the window's start
    (evaluate.position_probe, held-out probe seeds), and the whole-turn distances of --pair under each base."""
    if len(args.ckpt) != 1:
        fail(f"alias reads one checkpoint, got {len(args.ckpt)}")
    model, _ = load(args.ckpt[0], args.device)
    window = args.window or model.config.max_seq_len
    distances = sorted(args.distances or range(args.max_doc_len, window - 16, 32))
    if not distances or distances[0] < 2 or distances[-1] > window - 17:
        fail(f"--distances must lie in [2, {window - 17}] for a {window}-token window, got {distances}")
    if not 0 <= args.pair < model.config.head_dim // 2:
        fail(f"--pair must lie in [0, {model.config.head_dim // 2 - 1}] (head_dim {model.config.head_dim}), got {args.pair}")
    res = {"ckpt": args.ckpt[0], "window": window, "record_start": 0, "probe_seeds": list(HELDOUT_SEEDS),
           "n_windows": args.n_windows, "distances": distances, "pair": args.pair, "peak_from": args.peak_from,
           "bases": {}}
    for base in args.bases:
        moved = switch_rope(model, base, None, window).eval()  # the same weights, another base
        acc = position_sweep(moved, TaskSpec(), window, distances, [0], args.device, nullcontext(), args.n_windows,
                             HELDOUT_SEEDS)[0]
        far = [d for d in distances if d >= args.peak_from and acc[d] is not None]
        res["bases"][f"{base:g}"] = {"acc": [acc[d] for d in distances],
                                     "peak": max(far, key=lambda d: acc[d]) if far else None,
                                     "turns": turn_distances(model.config.head_dim, base, args.pair, window)}
        b = res["bases"][f"{base:g}"]
        peak = f"D = {b['peak']} ({acc[b['peak']]:.2f})" if far else "none measured"
        print(f"base {base:g}: best from D = {args.peak_from} on at {peak}; pair {args.pair} turns whole at D = "
              + ", ".join(f"{t:.0f}" for t in b["turns"]))
    return [plot_alias(res, args.out, args.name), write_json(args.out, f"{args.name}.json", res)]


# ----------------------------------------------------------------------------- match


def run_match(args):
    """Each checkpoint's layer-0 self-match profile (interp/match.py), under --base if given; with --measure, the
    head's attention to the record on probe windows at those distances, beside the profile's fast part there."""
    res = {"probe_seed": args.seed, "n_windows": args.n_windows, "models": {}}
    for label, model in load_all(args.ckpt, args.labels, args.device).items():
        window = args.window or model.config.max_seq_len
        model = switch_rope(model, args.base, None, window).eval() if args.base else model
        if args.head is not None and not 0 <= args.head < model.config.n_head:
            fail(f"--head must lie in [0, {model.config.n_head - 1}], got {args.head}")
        if any(not 1 <= d <= window - 3 for d in args.measure):
            fail(f"--measure distances must lie in [1, {window - 3}] for a {window}-token window, got {args.measure}")
        r = match_results(model, TaskSpec().keys(), window, head=args.head)
        r["pairs"] = {d: r["pairs"][d] for d in args.measure}  # per pair at the measured distances only
        r.update({k: [round(v, 4) for v in r[k]] for k in ("match", "rival", "slow", "fast")})
        r["measured"] = {d: record_attention(model, kv_probe(TaskSpec(), window, d, args.n_windows, seed=args.seed),
                                             r["head"], d) for d in args.measure}
        res["models"][label] = r
        fast, slow = np.array(r["fast"]), np.array(r["slow"])
        print(f"{label}: layer-0 head {r['head']}: slow pairs {slow[0]:.2f} at D = 0; fast pairs {fast[0]:.2f} at D = 0, "
              f"lowest from D = 16 on {fast[16:].min():.2f} at D = {16 + int(fast[16:].argmin())}")
        print("  every layer-0 head at D = 0 (slow / fast pairs): "
              + "; ".join(f"{h}: {z['slow']:.2f} / {z['fast']:.2f}" for h, z in enumerate(r["at_zero"])))
        for d, w in r["measured"].items():
            print(f"  D = {d}: fast pairs {fast[d]:+.2f}, attention to the record {w:.2f}")
    return [plot_match(res, args.out, args.name), write_json(args.out, f"{args.name}.json", res)]


# ----------------------------------------------------------------------------- all


def run_all(args):
    """Every analysis the checkpoints in --dir allow, through the subcommands above."""
    if not os.path.isdir(args.dir):
        fail(f"--dir {args.dir} is not a folder")
    teacher = [p for p in [os.path.join(args.dir, "teacher.pt")] if os.path.isfile(p)]
    phase1 = sorted(glob.glob(os.path.join(args.dir, "phase1-b*.pt")))
    phase2 = sorted(glob.glob(os.path.join(args.dir, "phase2-*-b*-b*.pt")))
    ckpts = {p: load(p, "cpu")[1] for p in teacher + phase1 + phase2}  # all sound before anything is drawn
    for p, c in ckpts.items():
        if not c.get("done", True):
            print(f"note: {p} is an unfinished run (step {c['step']})")
    common = ["--out", args.out, "--device", str(args.device)]
    students = [ckpts[p] for p in phase1 + phase2]
    spectrum = ["spectrum"] + common
    if ckpts:  # the students' bases and windows (default ones if only a teacher is there)
        cfg = next(iter(ckpts.values()))["config"]
        spectrum += ["--head-dim", str(cfg["d_model"] // cfg["n_head"])]
    if students:
        spectrum += ["--bases", *sorted({f"{c['config']['rope_base']:g}" for c in students}, key=float),
                     "--windows", *sorted({str(c["config"]["max_seq_len"]) for c in students}, key=int)]
    paths = main(spectrum)
    if not ckpts:
        print(f"no checkpoints in {args.dir}: only the spectrum")
        return paths
    common += ["--seed", str(args.seed)]
    max_doc_len = next((c["args"]["max_doc_len"] for c in students if "max_doc_len" in c.get("args", {})), 128)
    paths += main(["retrieval", "--ckpt", *ckpts, "--max-doc-len", str(max_doc_len), "--n-windows",
                   str(args.n_windows)] + common)
    if teacher + phase2:
        paths += main(["perturb", "--ckpt", *(teacher + phase2)] + common)
    for p2 in phase2:
        m = re.match(r"phase2-\w+?-b(.+?)-b", os.path.basename(p2))
        p1 = os.path.join(args.dir, f"phase1-b{m.group(1)}.pt") if m else None
        if p1 in ckpts:
            name = "qupdate-" + os.path.splitext(os.path.basename(p2))[0]
            paths += main(["qupdate", "--before", p1, "--after", p2, "--name", name] + common)
    return paths


# ----------------------------------------------------------------------------- CLI


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, help, n_windows, ckpts=None):
        """A subcommand with the flags every one has (and the checkpoint / probe flags some share)."""
        a = sub.add_parser(name, help=help, description=help).add_argument
        a("--out", default="figures", help="folder for the PNGs and the JSON; default figures/")
        a("--device", default="cpu", help="torch device (cpu, cuda); default cpu")
        if name != "all":
            a("--name", default=name, help="file name prefix of the outputs; default: the subcommand's name")
        if ckpts:
            a("--ckpt", nargs="+", required=True, help=ckpts)
            a("--labels", nargs="+", help="one legend name per checkpoint; default: the file names")
            a("--window", type=int, help="probe window (tokens); default: the largest max_seq_len of the checkpoints")
        if n_windows:
            a("--n-windows", type=int, default=n_windows, help="probe windows (per distance); default %(default)s")
            a("--seed", type=int, default=0, help="seed of the probes and of the position noise; default 0")
        return a

    a = command("retrieval", "retrieval accuracy vs distance (and depth) of checkpoints on the same probes", 8,
                "checkpoints or Hugging Face Llama folders to compare")
    a("--distances", type=int, nargs="+", help="record-query distances (tokens); default 16, 32, ... of the window")
    a("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="query depths in [0, 1]")
    a("--max-doc-len", type=int, default=128, help="the student's longest document (tokens), marked; default 128")
    a = command("spectrum", "RoPE rotations per frequency pair for bases and windows (finding 1)", None)
    a("--head-dim", type=int, default=32, help="attention head dimension d (even); default 32")
    a("--bases", type=float, nargs="+", default=[1e4, 5e5], help="RoPE bases; default 10000 500000")
    a("--windows", type=int, nargs="+", default=[256, 1024], help="context windows L (tokens); default 256 1024")
    a = command("perturb", "propagation of a RoPE position perturbation to the logits (finding 2)", 2,
                "checkpoints (teacher, phase-2 students)")
    a("--target", choices=["q", "k", "qk"], default="q", help="move the positions of q, k or both; default q")
    a("--layers", type=int, nargs="+", help="layers to perturb, one at a time; default all")
    a("--shift", type=float, nargs="*", default=[1, 4, 16], help="constant position shifts (tokens); default 1 4 16")
    a("--noise", type=float, nargs="*", default=[], help="stds of Gaussian position noise (tokens); default none")
    a("--period", type=int, default=64, help="length of the repeated token sequence (tokens); default 64")
    a("--inputs", choices=["repeated", "packed"], default="repeated", help="what the models read: a random sequence "
      "repeated (--period), or packed short documents of the synthetic language, the students' training data; "
      "default repeated")
    a("--max-doc-len", type=int, default=128, help="--inputs packed: the longest document (tokens); default 128")
    a = command("qupdate", "per RoPE pair updates of W_q / W_k and query norms, phase 1 -> 2 (finding 3)", 4)
    a("--before", required=True, help="phase-1 checkpoint")
    a("--after", required=True, help="phase-2 checkpoint of the same architecture")
    a("--probe-window", type=int, help="window of the fixed kv probe (tokens); default: --after's max_seq_len")
    a("--probe-distance", type=int, help="record-query distance of the probe (tokens); default window/2")
    a = command("match", "a layer-0 head's match of a key with itself D tokens back, split by RoPE pair: where "
                "does a distance hole come from?", 4, "checkpoints")
    a("--base", type=float, help="score the weights under this RoPE base (e.g. a phase-1 student at phase 2's); "
      "default: each checkpoint's own")
    a("--head", type=int, help="the layer-0 head; default: the one whose self-match beats other tokens by the most")
    a("--measure", type=int, nargs="*", default=[], help="distances where the head's attention to the record is "
      "measured on probe windows (data.kv_probe); default none")
    a = command("alias", "retrieval by distance of one checkpoint under several RoPE bases, with one pair's "
                "whole turns marked: is a bump a phase alias?", 4, "the checkpoint (one)")
    a("--bases", type=float, nargs="+", default=[3e5, 5e5, 8e5], help="RoPE bases; default 300000 500000 800000")
    a("--pair", type=int, default=5, help="the RoPE pair whose whole turns are marked; default 5")
    a("--distances", type=int, nargs="+", help="record-query distances; default every 32 from --max-doc-len")
    a("--max-doc-len", type=int, default=128, help="the student's longest document (tokens); default 128")
    a("--peak-from", type=int, default=512, help="the best distance is looked for from here on; default 512 (the "
      "long range of the seeds criterion)")
    a = command("all", "every analysis that the checkpoints in a training folder allow", 8)  # 8: retrieval's
    a("--dir", default="out", help="train.py's output folder; default out")
    return p


def check_flags(args):
    """Each numeric flag's range and the output names, before any checkpoint is read or file written."""
    flags = vars(args)
    checks = [
        ("n_windows", lambda v: v >= 1, "must be >= 1"),
        ("seed", lambda v: 0 <= v < 2**32, "must lie in [0, 2**32)"),
        ("window", lambda v: v is None or v >= 8, "must be >= 8 tokens"),
        ("probe_window", lambda v: v is None or v >= 8, "must be >= 8 tokens"),
        ("max_doc_len", lambda v: v >= 2, "must be >= 2"),
        ("head_dim", lambda v: v >= 2 and v % 2 == 0, "must be even and >= 2 (RoPE rotates pairs)"),
        ("base", lambda v: v is None or (math.isfinite(v) and v > 1), "must be a finite number > 1"),
        ("bases", lambda v: all(math.isfinite(b) and b > 1 for b in v), "must be finite numbers > 1"),
        ("windows", lambda v: all(w >= 1 for w in v), "must be >= 1 token"),
        ("shift", lambda v: all(math.isfinite(x) for x in v), "must be finite"),
        ("noise", lambda v: all(math.isfinite(x) and x >= 0 for x in v), "must be finite and >= 0"),
        ("period", lambda v: v >= 1, "must be >= 1"),
        ("name", lambda v: v not in ("", ".", "..") and os.path.basename(v) == v, "must be a plain file name"),
    ]
    for key, ok, rule in checks:
        if key in flags and not ok(flags[key]):
            fail(f"--{key.replace('_', '-')} {rule}, got {flags[key]!r}")
    check_out_dir(args.out, "--out")


COMMANDS = {"retrieval": run_retrieval, "spectrum": run_spectrum, "perturb": run_perturb, "qupdate": run_qupdate,
            "alias": run_alias, "match": run_match, "all": run_all}


def main(argv=None):
    """Run one subcommand; returns the paths written. Bad input: one `error:` line, exit 2."""
    args = build_parser().parse_args(argv)
    try:
        args.device = torch.device(args.device)
        if args.device.type == "cuda" and not torch.cuda.is_available():
            fail(f"--device {args.device}: no CUDA device available")
        check_flags(args)
        return COMMANDS[args.command](args)
    except (ValueError, RuntimeError, OSError) as e:  # CheckpointError is a ValueError
        fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


if __name__ == "__main__":
    main()
