"""The paper's comparison in one command: KD vs CE students across RoPE schedules, with seeds.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) claims that (a) a student
trained only on packed short documents *acquires* long-range retrieval through logit KD,
where a CE-only student does not, (b) phase-wise RoPE base scaling (small base in the short
phase 1, large base in the long phase 2) works best, and (c) context extension updates the
query projection in frequency-specific spans. This script runs that grid:

  teacher (once)  ->  phase 1 at the small base b (--phase1-seeds, 0 1 2) and at 5e5 (seed 0)
  phase 2: {KD, CE} x 4 schedules x --seeds (phase-2 data-stream seeds):
           b -> 5e5 (phase-wise, the headline), b -> b, 5e5 -> 5e5, and b -> B_men, where
           B_men is rope.py's Men et al. lower bound for the long window (the smallest base
           whose RoPE attention still decays with distance over L tokens)

Every phase-2 run records its starting point (`step 0`: phase 1 with the new base, before
any step). Independent runs go side by side (--jobs processes, 1 thread each on CPU); runs
that already exist are reused and killed ones resumed. It writes OUT/paper_results.md and
.json (every run, per seed, and mean / std over seeds), the query-update comparison of
finding 3 over seeds (qupdate_seeds.png), then runs `python -m interp all`.

    python -m research.experiment                      # cpu preset, seeds 0 1 2 (about 3 h on 2 cores)
    python -m research.experiment --preset gpu --jobs 1 --device cuda

`python -m research.experiment robustness` asks whether the claim holds and where its signal comes from
(research/robustness.py): the (phase-1 seed, phase-2 seed, --arm) grid of the headline schedule, every number
on the held-out probe seeds, a criterion fixed before the runs, the record-position x distance and
single-needle probes of each model. It writes research/notes/robustness.json, robustness.md, probes.json and probes.png:

    python -m research.experiment robustness --phase1-seeds 0 --seeds 0 1 2
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from config import PRESETS, check_out_dir, fail, phase1_name
from variants.arms import ARMS
from model import atomic_write
from interp.spectrum import men_lower_bound
from rope import critical_pair
from research.robustness import LARGE, earlier_phase1, phase1_init, robustness, shipped_path
from research.robustness import verdicts, wilson_interval  # noqa: F401 (experiment's names too)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = PRESETS["cpu"]["phase1_base"]  # the cpu preset's phase-1 base (research/finding1.py, research/finding3.py)


def schedules(preset):
    """[(name, phase-1 base, phase-2 base)]; the first is the paper's phase-wise schedule."""
    pre = PRESETS[preset]
    small, head_dim = pre["phase1_base"], pre["d_model"] // pre["n_head"]
    men = float(round(men_lower_bound(head_dim, pre["long_window"])))
    return [("phase-wise", small, LARGE), ("small base kept", small, small), ("large base kept", LARGE, LARGE),
            ("phase-wise to the Men bound", small, men)]


def phase2_runs(args):
    """[(schedule, phase-1 base, phase-2 base, phase-1 seed, phase-2 seed)] in the order they are trained: the
    headline first, then one seed of every schedule, the other phase-1 students (first phase-2 seed only: do
    they change the outcome?), then the remaining seeds."""
    sched, first = schedules(args.preset), args.phase1_seeds[0]
    runs = [(*sched[0], first, s) for s in args.seeds] + [(*x, first, args.seeds[0]) for x in sched[1:]]
    runs += [(*sched[0], p, args.seeds[0]) for p in args.phase1_seeds[1:]]
    return runs + [(*x, first, s) for s in args.seeds[1:] for x in sched[1:]]


def run_name(loss, b1, b2, seed, p1_seed=0):
    return f"phase2-{loss}-b{b1:g}-b{b2:g}" + (f"-p{p1_seed}" if p1_seed else "") + (f"-s{seed}" if seed else "")


def launch(argv, log_path, threads):
    """A run of train.py's flags and variants' (python -m variants: --arm, --phase1-base, ...) as a process, its output
    in log_path; threads: --threads for it (0: train.py's default)."""
    cmd = [sys.executable, "-m", "variants"] + argv + (["--threads", str(int(threads))] if threads else [])
    return subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=ROOT)


def results_path(args, name):
    """OUT/<name>.json, else the shipped one (cpu preset only; research.robustness.shipped_path), else None."""
    paths = [os.path.join(args.out_dir, name + ".json")]
    paths += [shipped_path(name, ".json")] if args.preset == "cpu" else []
    return next((path for path in paths if os.path.isfile(path)), None)


def run_all(jobs, args, done=None):
    """Run [(name, argv)] with at most args.jobs at a time; skip the ones whose results exist (done(name): whether
    they count as done; default: a results file exists)."""
    done = done or (lambda n: results_path(args, n) is not None)
    todo = [(n, a) for n, a in jobs if not done(n)]
    for i, (n, a) in enumerate(jobs):
        if (n, a) not in todo:
            print(f"  [{i + 1}/{len(jobs)}] {n}: exists ({results_path(args, n)}), reused")
    running, total, started = [], len(jobs), len(jobs) - len(todo)
    while todo or running:
        while todo and len(running) < args.jobs:
            name, argv = todo.pop(0)
            if os.path.isfile(os.path.join(args.out_dir, name + ".pt")):  # killed earlier (or done): continue it
                argv = argv + ["--resume"]
            log = os.path.join(args.out_dir, name + ".log")
            started += 1
            print(f"  [{started}/{total}] {name}: training (log {log})"
                  f"{' from its checkpoint' if '--resume' in argv else ''}", flush=True)
            threads = getattr(args, "threads", 1) if args.device == "cpu" else 0
            running.append((name, launch(argv, log, threads), time.time()))
        for item in list(running):
            name, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                print(f"  {name}: {status} in {(time.time() - t0) / 60:.1f} min", flush=True)
                if proc.returncode:
                    raise SystemExit(f"error: {name} failed; see {os.path.join(args.out_dir, name + '.log')}")
        time.sleep(1)


def load(args, name, key=None):
    with open(results_path(args, name)) as f:
        return json.load(f)["results"][key or name]


def cell_stats(runs, dists):
    """(S, D) accuracies and (S,) in-doc accuracies of S runs."""
    acc = np.array([[r["kv"][str(d)] for d in dists] for r in runs], dtype=float)  # not measurable (None): nan
    return acc, np.array([r["in_doc"] for r in runs])


def row(label, n, acc, in_doc):
    """One table row: mean ± sample standard deviation (ddof = 1) over the n runs of each column."""
    std = acc.std(0, ddof=1) if n > 1 else np.zeros(acc.shape[1])
    cells = [f"{m:.2f}" + (f" ± {sd:.2f}" if n > 1 else "") for m, sd in zip(acc.mean(0), std)]
    doc = f"{in_doc.mean():.2f}" + (f" ± {in_doc.std(ddof=1):.2f}" if n > 1 else "")
    return f"| {label} | {n} | " + " | ".join(cells) + f" | {doc} |"


def grid_markdown(results) -> str:
    """The grid's table from its JSON (research/notes/paper_results.json: the teacher, and per schedule the per-seed
    accuracies of step 0, KD and CE): one place that turns the numbers into the table the docs show."""
    teacher, table = results["teacher"], results["schedules"]
    dists = sorted(int(d) for d in teacher["kv"])
    head = ("| run (phase-1 base -> phase-2 base) | runs | " + " | ".join(f"D={d}" for d in dists)
            + " | in-doc |\n|" + " --- |" * (len(dists) + 3))
    t_cells = " | ".join(f"{teacher['kv'][str(d)]:.2f}" for d in dists)
    rows = [head, f"| teacher (long documents) | 1 | {t_cells} | {teacher['in_doc']:.2f} |"]
    for label, entry in table.items():
        for key in ("step 0", "KD", "CE"):
            if key in entry:
                acc, in_doc = np.array(entry[key]["per_seed"], dtype=float), np.array(entry[key]["in_doc_per_seed"])
                rows.append(row(f"{key} {entry['phase1_base']:g} -> {entry['phase2_base']:g} ({label})", len(acc),
                                acc, in_doc))
    return "\n".join(rows)


def summarize(args):
    """Markdown + JSON: per schedule (and extra phase-1 student) a step-0 row, a KD row and a CE row, mean ± std over
    the phase-2 seeds whose runs have finished (a missing run is left out and the row says how many it has)."""
    teacher = load(args, "teacher")
    dists = sorted(int(d) for d in teacher["kv"])
    table = {}
    groups = {}
    for label, b1, b2, p1, seed in phase2_runs(args):
        groups.setdefault((label if p1 == args.phase1_seeds[0] else f"{label}, phase-1 seed {p1}", b1, b2, p1),
                          []).append(seed)
    for (label, b1, b2, p1), seeds in groups.items():
        names = {loss: [n for n in (run_name(loss, b1, b2, s, p1) for s in seeds) if results_path(args, n)]
                 for loss in ("kd", "ce")}
        if not names["kd"]:
            continue
        entry = {"phase1_base": b1, "phase2_base": b2, "phase1_seed": p1, "distances": dists}
        for key, runs in (("step 0", [load(args, names["kd"][0], "step 0")]),
                          ("KD", [load(args, n) for n in names["kd"]]), ("CE", [load(args, n) for n in names["ce"]])):
            if not runs:
                continue
            acc, in_doc = cell_stats(runs, dists)
            entry[key] = {"runs": names["kd"][:1] if key == "step 0" else names[key.lower()],
                          "per_seed": acc.tolist(), "in_doc_per_seed": in_doc.tolist(), "mean": acc.mean(0).tolist(),
                          "std": acc.std(0, ddof=1).tolist() if len(acc) > 1 else [0.0] * len(dists), "min": acc.min(0).tolist(), "max": acc.max(0).tolist(),
                          "in_doc_mean": float(in_doc.mean()),
                          "in_doc_std": float(in_doc.std(ddof=1)) if len(in_doc) > 1 else 0.0}
        table[label] = entry
    md = grid_markdown({"teacher": teacher, "schedules": table})
    md += (f"\n\nKey-value retrieval accuracy at distance D (mean ± sample std over the phase-2 seeds {args.seeds}; "
           f"`runs` counts them); `step 0` is the phase-1 student with the phase-2 base, before any phase-2 step "
           f"(the same for every phase-2 seed); students saw only documents of <= "
           f"{PRESETS[args.preset]['max_doc_len']} tokens.")
    md += "\n\n" + qupdate_seeds(args)
    atomic_write(os.path.join(args.out_dir, "paper_results.md"), lambda f: f.write(md + "\n"), mode="w")
    atomic_write(os.path.join(args.out_dir, "paper_results.json"), lambda f: json.dump(
        {"teacher": teacher, "schedules": table, "qupdate": args.qupdate}, f, indent=1), mode="w")
    return md


def qupdate_seeds(args):
    """Finding 3 over seeds: per layer and RoPE pair, the W_q / W_k relative update (mean over heads) of the
    phase-wise KD and CE students from their shared phase-1 checkpoint; markdown, and args.qupdate for JSON."""
    import torch  # the analysis needs the checkpoints themselves
    from interp.qupdate import pair_update
    from model import load_model
    from viz.plots import plot_qupdate_seeds
    _, b1, b2 = schedules(args.preset)[0]
    before, _ = load_model(phase1_init(args.out_dir, b1, 0, args.preset), "cpu")
    out, seeds = {}, [s for s in args.seeds if all(results_path(args, run_name(x, b1, b2, s)) for x in ("kd", "ce"))]
    for loss in ("kd", "ce"):
        per_seed = {"wq": [], "wk": []}
        for s in seeds:
            after, _ = load_model(os.path.join(args.out_dir, run_name(loss, b1, b2, s) + ".pt"), "cpu")
            for w, n in (("wq", before.config.n_head), ("wk", before.config.n_kv_head)):
                per_seed[w].append(torch.stack([pair_update(getattr(b.attn, w).weight, getattr(a.attn, w).weight, n)
                                                for b, a in zip(before.blocks, after.blocks)]).mean(1).tolist())
        out[loss] = {w: {"per_seed": v, "mean": np.mean(v, 0).tolist(), "std": np.std(v, 0).tolist()}
                     for w, v in per_seed.items()}  # (S, L, hd/2) -> (L, hd/2)
    cfg = before.config
    crit = {f"phase 1 (base {b1:g}, L={PRESETS[args.preset]['short_window']})":
            critical_pair(cfg.head_dim, b1, PRESETS[args.preset]["short_window"]),
            f"phase 2 (base {b2:g}, L={PRESETS[args.preset]['long_window']})":
            critical_pair(cfg.head_dim, b2, PRESETS[args.preset]["long_window"])}
    args.qupdate = {"seeds": seeds, "critical_pairs": crit, **out}
    plot_qupdate_seeds(args.qupdate, args.out_dir, "qupdate_seeds")
    lines = [f"Finding 3 over seeds {seeds}: relative W_q update per RoPE pair (mean over heads), phase 1 -> "
             f"phase 2, KD vs CE (mean ± std); critical pairs {crit}.", "",
             "| layer | loss | " + " | ".join(f"p{i}" for i in range(cfg.head_dim // 2)) + " |",
             "|" + " --- |" * (cfg.head_dim // 2 + 2)]
    for layer in range(cfg.n_layer):
        for loss in ("kd", "ce"):
            m, s = out[loss]["wq"]["mean"][layer], out[loss]["wq"]["std"][layer]
            lines.append(f"| {layer} | {loss.upper()} | " + " | ".join(f"{a:.2f}±{b:.2f}" for a, b in zip(m, s)) + " |")
    lines.append("")
    for w in ("wq", "wk"):
        for layer in range(cfg.n_layer):
            d = beyond_spread(out["kd"][w], out["ce"][w], layer)
            args.qupdate.setdefault("kd_vs_ce_beyond_spread", {})[f"{w} layer {layer}"] = d
            lines.append(f"- {'W_q' if w == 'wq' else 'W_k'} layer {layer}: KD - CE beyond the spread at pairs "
                         + (", ".join(f"{i} ({v:+.2f})" for i, v in d.items()) or "none"))
    return "\n".join(lines)


def beyond_spread(kd, ce, layer, k=3.0):
    """{pair: KD mean - CE mean} where the difference exceeds k x (std_KD + std_CE) over seeds (our threshold)."""
    m = np.array(kd["mean"][layer]) - np.array(ce["mean"][layer])
    s = np.array(kd["std"][layer]) + np.array(ce["std"][layer])
    return {int(i): float(m[i]) for i in np.flatnonzero(np.abs(m) > k * s)}


def check_flags(args):
    """Every flag, before a folder is made or a run launched."""
    if args.jobs < 1:
        fail(f"--jobs must be >= 1, got {args.jobs}")
    if not all(0 <= s < 2**32 for s in args.seeds + args.phase1_seeds):
        fail(f"--seeds and --phase1-seeds must lie in [0, 2**32), got {args.seeds} and {args.phase1_seeds}")
    for flag, seeds in (("--seeds", args.seeds), ("--phase1-seeds", args.phase1_seeds)):
        if len(set(seeds)) != len(seeds):
            fail(f"{flag} must be distinct (one run per seed), got {seeds}")
    if args.steps is not None and args.steps < 1:
        fail(f"--steps must be >= 1, got {args.steps}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        fail(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.mode == "robustness":
        check_out_dir(args.docs_dir, "--docs-dir")
    if args.threads < 1:
        fail(f"--threads must be >= 1, got {args.threads}")
    if len(set(args.arms)) != len(args.arms):
        fail(f"--arms must be distinct, got {args.arms}")
    check_out_dir(args.out_dir, "--out-dir")


def main(argv=None):
    p = argparse.ArgumentParser(description="Run the paper's KD-vs-CE x RoPE-schedule comparison, with seeds; or "
                                "(robustness) the seed x arm grid of the headline schedule on held-out probes.")
    p.add_argument("mode", nargs="?", default="grid", choices=["grid", "robustness"], help="grid: the schedule "
                   "comparison (default); robustness: phase-1 seeds x phase-2 seeds x --arms of the headline "
                   "schedule, writing research/notes/robustness.json, robustness.md, probes.json, probes.png")
    p.add_argument("--preset", default="cpu", choices=list(PRESETS), help="train.py preset")
    p.add_argument("--out-dir", default="out", help="folder shared with train.py runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="phase-2 seeds of every schedule")
    p.add_argument("--phase1-seeds", type=int, nargs="+", default=[0, 1, 2], help="phase-1 seeds of the phase-wise "
                   "schedule (the other schedules use the first)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (on CPU each with --threads threads)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each run (robustness: e.g. --jobs 1 "
                   "--threads 2 on 2 cores)")
    p.add_argument("--docs-dir", default=os.path.join(ROOT, "research", "notes"), help="robustness: folder of its JSON, tables "
                   "and figure")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="robustness: phase 2's --arm "
                   "values to train per seed combination (default: all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="train.py's autocast "
                   "dtype for every run (auto: bf16 on CUDA and on CPUs with native bf16; the grid of "
                   "research/notes/results.md: float32)")
    p.add_argument("--steps", type=int, default=None, help="phase-2 steps (default: the preset's)")
    p.add_argument("--no-analysis", action="store_true", help="grid: skip python -m interp all; robustness: skip the "
                   "position and needle probes (research/notes/probes.json)")
    p.add_argument("--summary-only", action="store_true", help="train nothing: tabulate the runs that exist")
    args = p.parse_args(argv)
    check_flags(args)
    t0 = time.time()
    os.makedirs(args.out_dir, exist_ok=True)
    common = ["--preset", args.preset, "--out-dir", args.out_dir, "--device", args.device, "--dtype", args.dtype]
    if args.mode == "robustness":
        robustness(args, run_all)
        print(f"wall time: {(time.time() - t0) / 60:.1f} min")
        return
    if args.summary_only:
        print(summarize(args))
        return
    print("1/4 teacher")
    run_all([("teacher", ["--phase", "teacher"] + common)], args)
    print("2/4 phase 1 (short window) at each phase-1 base")
    p1_jobs = {(b1, p1) for _, b1, _, p1, _ in phase2_runs(args)}
    run_all([(phase1_name(b, s), ["--phase", "1", "--rope-base", f"{b:g}", "--seed", str(s), "--no-auto"]
              + earlier_phase1(args.preset) + common) for b, s in sorted(p1_jobs)], args)
    print("3/4 phase 2 (long window, packed short documents)")
    jobs = []
    for label, b1, b2, p1, seed in phase2_runs(args):
        for loss, w in (("kd", []), ("ce", ["--kd-weight", "0"])):  # KD: train.py's default weight
            argv = ["--phase", "2", "--phase1-base", f"{b1:g}", "--phase1-seed", str(p1), "--rope-base", f"{b2:g}",
                    "--init", phase1_init(args.out_dir, b1, p1, args.preset), "--seed", str(seed), "--no-baseline",
                    "--no-auto"] + w + common
            jobs.append((run_name(loss, b1, b2, seed, p1), argv + (["--steps", str(args.steps)] if args.steps else [])))
    run_all(jobs, args)
    print("4/4 results")
    print(summarize(args))
    if not args.no_analysis:
        subprocess.run([sys.executable, "-m", "interp", "all", "--dir", args.out_dir, "--device", args.device],
                       check=True, cwd=ROOT)
    print(f"wall time: {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
