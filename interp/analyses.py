"""The analyses beyond the card's two (analyze.py: retrieval, perturb), on this project's checkpoints or Hugging Face
Llama folders:

- spectrum   (finding 1) rotations per RoPE frequency pair for each (base, window), critical dimension, spectrum
             utilization, Men et al. lower bound; phase 1 vs phase 2.
- qupdate    (finding 3) per layer, head and frequency pair, the relative update of W_q / W_k and of the query
             norms on a fixed probe, phase-1 -> phase-2 checkpoint (interp/qupdate.py).
- match      (why a distance fails) a layer-0 head's score of a key against the same key D tokens back, from the
             weights, by slow and fast RoPE pairs (interp/match.py).
- depth      retrieval by distance with the queries at a relative depth of the window: a heatmap per model.
- alias      (a check of the baselines) retrieval by distance for records at the window's start, one checkpoint under
             several RoPE bases, beside the distances where one RoPE pair has turned a whole number of times.
- retrieval, perturb: analyze.py's, here also on Hugging Face Llama folders (formats/hf.py).
- all        every analysis that the checkpoints in a training folder allow.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) adds three findings to its claim; this file draws the
first and the third (analyze.py the claim and the second). The figures are drawn by viz/plots.py.

  python -m interp all --dir out
  python -m interp spectrum --head-dim 32 --bases 10000 500000 --windows 256 1024
  python -m interp qupdate --before out/phase1-b10000.pt --after out/phase2-kd-b10000-b500000.pt
  python -m interp match --ckpt out/phase2-kd-b10000-b500000.pt --measure 512 576 640 704 768
  python -m interp alias --ckpt out/phase2-ce-b10000-b500000.pt --bases 300000 500000 800000 --pair 5
"""
import argparse
import functools
import glob
import math
import os
import re
from contextlib import nullcontext

import numpy as np

import analyze
from analyze import fail, load, load_all, save_json
from data import TaskSpec, kv_probe
from evaluate import HELDOUT_SEEDS, format_accuracy
from formats.hf import load_pretrained
from interp.match import match_results, record_attention
from interp.probes import depth_sweep, position_sweep
from interp.qupdate import qupdate_results
from model import switch_rope
from interp.spectrum import men_lower_bound, spectrum_summary, turn_distances
from rope import critical_pair, default_inv_freq, rotations
from viz.plots import plot_alias, plot_depth, plot_match, plot_qupdate, plot_spectrum


# ----------------------------------------------------------------------------- spectrum (finding 1)


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
    """Every (base, window) of --bases x --windows: the figure, the JSON, one line each."""
    res = spectrum_results(args.head_dim, args.bases, args.windows)
    paths = plot_spectrum(res, args.out, args.name) + [save_json(args.out, f"{args.name}.json", res)]
    for s in res["settings"]:
        print(f"base {s['base']:g}, window {s['window']}: critical dim {s['critical_dim']} (pair "
              f"{s['critical_pair']}), utilization {s['utilization']:.2f}, Men lower bound {s['men_lower_bound']:.3g}")
    return paths


# ----------------------------------------------------------------------------- query updates (finding 3)


def run_qupdate(args):
    before, _ = load(args.before, args.device, args.reader)
    after, _ = load(args.after, args.device, args.reader)
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
    paths = plot_qupdate(res, title, args.out, args.name) + [save_json(args.out, f"{args.name}.json", res)]
    m = res["wq_max"]
    print(f"{title}: largest W_q update {m['value']:.3g} at layer {m['layer']}, head {m['head']}, pair {m['pair']}; "
          f"critical pairs {res['critical_pairs']}")
    for layer, spans in res["spans_above_p75"]["wq"].items():
        print(f"  layer {layer}: W_q pair spans above the 75th percentile: "
              + (", ".join(f"{s['pairs'][0]}-{s['pairs'][1]} ({s['mean']:.3g})" for s in spans) or "none"))
    return paths


# ----------------------------------------------------------------------------- depth


def run_depth(args):
    """Each checkpoint's retrieval at every (query depth, distance), on the probe seed --seed."""
    models = load_all(args.ckpt, args.labels, args.device, args.reader)
    window = args.window or max(m.config.max_seq_len for m in models.values())
    distances = sorted(args.distances or [d for d in (2**k for k in range(4, 40)) if d < window - 2])
    if not distances or distances[0] < 2 or distances[-1] >= window - 2:
        fail(f"--distances must lie in [2, {window - 3}] for a {window}-token window, got {distances}")
    if not all(0 <= d <= 1 for d in args.depths):
        fail(f"--depths must lie in [0, 1], got {args.depths}")
    res = {"window": window, "max_doc_len": args.max_doc_len, "distances": distances, "depths": args.depths,
           "n_windows": args.n_windows, "probe_seed": args.seed, "ckpts": dict(zip(models, args.ckpt)), "models": {}}
    for label, model in models.items():
        sweep = depth_sweep(model, TaskSpec(), window, distances, args.depths, args.device, nullcontext(),
                            args.n_windows, args.seed)
        res["models"][label] = sweep
        for depth, row in sweep.items():
            print(f"{label}, depth {depth:g}: " + " ".join(format_accuracy(a) for a in row.values()))
    return [plot_depth(res, args.out, args.name), save_json(args.out, f"{args.name}.json", res)]


# ----------------------------------------------------------------------------- alias


def run_alias(args):
    """One checkpoint's weights under each --bases: accuracy by distance for 16 records at the window's start
    (evaluate.position_probe, held-out probe seeds), and the whole-turn distances of --pair under each base."""
    if len(args.ckpt) != 1:
        fail(f"alias reads one checkpoint, got {len(args.ckpt)}")
    model, _ = load(args.ckpt[0], args.device, args.reader)
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
    return [plot_alias(res, args.out, args.name), save_json(args.out, f"{args.name}.json", res)]


# ----------------------------------------------------------------------------- match


def run_match(args):
    """Each checkpoint's layer-0 self-match profile (interp/match.py), under --base if given; with --measure, the
    head's attention to the record on probe windows at those distances, beside the profile's fast part there."""
    res = {"probe_seed": args.seed, "n_windows": args.n_windows, "models": {}}
    for label, model in load_all(args.ckpt, args.labels, args.device, args.reader).items():
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
    return [plot_match(res, args.out, args.name), save_json(args.out, f"{args.name}.json", res)]


# ----------------------------------------------------------------------------- all


def run_all(args):
    """Every analysis the checkpoints in --dir allow, through the subcommands above."""
    if not os.path.isdir(args.dir):
        fail(f"--dir {args.dir} is not a folder")
    teacher = [p for p in [os.path.join(args.dir, "teacher.pt")] if os.path.isfile(p)]
    phase1 = sorted(glob.glob(os.path.join(args.dir, "phase1-b*.pt")))
    phase2 = sorted(glob.glob(os.path.join(args.dir, "phase2-*-b*-b*.pt")))
    ckpts = {p: load(p, "cpu", args.reader)[1] for p in teacher + phase1 + phase2}  # all sound before anything is drawn
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
    p = argparse.ArgumentParser(prog="python -m interp", description="The analyses beyond analyze.py's: the RoPE spectrum, finding 3's query "
                                "updates, a head's self-match, a phase alias; retrieval and perturb on model folders too.")
    sub = p.add_subparsers(dest="command", required=True)
    command = functools.partial(analyze.add_command, sub)
    analyze.add_commands(sub)
    a = command("spectrum", "RoPE rotations per frequency pair for bases and windows (finding 1)", None)
    a("--head-dim", type=int, default=32, help="attention head dimension d (even); default 32")
    a("--bases", type=float, nargs="+", default=[1e4, 5e5], help="RoPE bases; default 10000 500000")
    a("--windows", type=int, nargs="+", default=[256, 1024], help="context windows L (tokens); default 256 1024")
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
    a = command("depth", "retrieval by distance with the queries at a relative depth of the window", 4,
                "checkpoints to compare")
    a("--distances", type=int, nargs="+", help="record-query distances (tokens); default 16, 32, ... of the window")
    a("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="query depths in [0, 1]")
    a("--max-doc-len", type=int, default=128, help="the student's longest document (tokens), marked; default 128")
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


CHECKS = [
    ("probe_window", lambda v: v is None or v >= 8, "must be >= 8 tokens"),
    ("head_dim", lambda v: v >= 2 and v % 2 == 0, "must be even and >= 2 (RoPE rotates pairs)"),
    ("base", lambda v: v is None or (math.isfinite(v) and v > 1), "must be a finite number > 1"),
    ("bases", lambda v: all(math.isfinite(b) and b > 1 for b in v), "must be finite numbers > 1"),
    ("windows", lambda v: all(w >= 1 for w in v), "must be >= 1 token"),
]
COMMANDS = {**analyze.COMMANDS, "spectrum": run_spectrum, "qupdate": run_qupdate, "depth": run_depth,
            "alias": run_alias, "match": run_match, "all": run_all}


def main(argv=None):
    """Run one subcommand; returns the paths written. Bad input: one `error:` line, exit 2."""
    args = build_parser().parse_args(argv)
    args.reader = load_pretrained  # this project's checkpoints and Hugging Face Llama folders
    return analyze.run_command(args, COMMANDS, analyze.RULES + CHECKS)


if __name__ == "__main__":
    main()
