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
finding 3 over seeds (qupdate_seeds.png), then runs `analyze.py all`.

    python -m research.experiment                      # cpu preset, seeds 0 1 2 (about 3 h on 2 cores)
    python -m research.experiment --preset gpu --jobs 1 --device cuda

`python -m research.experiment robustness` asks whether the claim holds and where its signal comes from: the
(phase-1 seed, phase-2 seed, --arm) grid of the headline schedule (the KD student, its CE twin, and the
baselines and ablations of train.py --arm), every number on the held-out probe seeds, a criterion fixed
before the runs (CRITERION), the pass count with a Wilson 95% interval, and the record-position x
distance and single-needle probes of each model. It writes docs/robustness.json (one row per run),
docs/robustness.md (its tables), docs/probes.json and docs/probes.png:

    python -m research.experiment robustness --phase1-seeds 0 --seeds 0 1 2
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

from config import ARMS, PRESETS, build_parser, check_out_dir, fail, phase1_name, resolve
from model import atomic_write
from rope import critical_pair, men_lower_bound

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LARGE = 500000.0  # the paper's phase-2 base
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
    """train.py argv as a process, its output in log_path; threads: --threads for it (0: train.py's default)."""
    cmd = [sys.executable, os.path.join(ROOT, "train.py")] + argv + (["--threads", str(int(threads))] if threads else [])
    return subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=ROOT)


def results_path(args, name):
    """OUT/<name>.json, else the shipped checkpoints/<name>.json (cpu preset only, as in train.py), else None."""
    folders = [args.out_dir] + ([os.path.join(ROOT, "checkpoints")] if args.preset == "cpu" else [])
    for folder in folders:
        path = os.path.join(folder, name + ".json")
        if os.path.isfile(path):
            return path
    return None


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
    """The grid's table from its JSON (docs/paper_results.json: the teacher, and per schedule the per-seed
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
    from analyze import pair_update
    from model import load_model
    from viz.plots import plot_qupdate_seeds
    _, b1, b2 = schedules(args.preset)[0]
    p1 = os.path.join(args.out_dir, phase1_name(b1) + ".pt")
    p1 = p1 if os.path.isfile(p1) else os.path.join(ROOT, "checkpoints", phase1_name(b1) + ".pt")
    before, _ = load_model(p1, "cpu")
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


# ----------------------------------------------------------------------------- robustness: held-out, seeds, arms

CRITERION = {"min_distance": 512, "step0_max": 0.3, "kd_min": 0.9, "ce_max": 0.3}  # fixed before any run
CRITERION_ARMS = ("step0", "kd", "ce", "ce-masked")  # at every D >= min_distance: step0, ce, ce-masked <= max; kd >=
SWEEP_STARTS = (0, 128, 256, 384, 512, 640, 768, 896)  # record positions of the position x distance probe
SWEEP_DISTANCES = (16, 64, 256, 512, 768, 900, 1000)  # also D = 1000: beyond the reported probes
SWEEP_BAND = 64  # the 16 records of a cell lie in [start, start + band)
SWEEP_WINDOWS = 4  # windows per cell and probe seed (16 records each: 64 answers per cell and seed)
NEEDLE_DISTANCES = (16, 64, 256, 512, 768, 900, 1000)


def robustness_grid(args):
    """[(phase-1 seed, phase-2 seed, arm, run name, train.py argv)]: per combination, the criterion's arms first."""
    grid = []
    arms = sorted(args.arms, key=lambda a: (a not in CRITERION_ARMS, list(ARMS).index(a)))
    for p1 in args.phase1_seeds:
        for seed in args.seeds:
            for arm in arms:
                argv = ["--phase", "2", "--rope-base", f"{LARGE:g}", "--phase1-seed", str(p1), "--seed", str(seed),
                        "--arm", arm, "--no-baseline", "--no-auto", "--preset", args.preset, "--out-dir", args.out_dir,
                        "--device", args.device, "--dtype", args.dtype] + (["--steps", str(args.steps)] if args.steps
                                                                           else [])
                grid.append((p1, seed, arm, resolve(build_parser().parse_args(argv)).run_name, argv))
    return grid


def heldout_results(args, name):
    """The run's results (OUT/<name>.json) if they were measured on the held-out probe seeds, else None."""
    from evaluate import HELDOUT_SEEDS
    path = os.path.join(args.out_dir, name + ".json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        res = json.load(f)
    return res if res.get("probe_seeds") == list(HELDOUT_SEEDS) else None


def schema_row(p1, seed, arm, result):
    """One row of docs/robustness.json from a results entry {"kv": {D: acc}, "in_doc": acc}."""
    dists = sorted(int(d) for d in result["kv"])
    return {"phase1_seed": p1, "phase2_seed": seed, "arm": arm, "distances": dists,
            "kv": [result["kv"][str(d)] for d in dists], "in_doc": result["in_doc"]}


def robustness_rows(args, grid):
    """(rows of the finished runs, {(p1, seed): teacher results}): per combination a step0 row (the phase-1 student
    with the phase-2 base, from any of its runs) and one row per finished arm. Nothing is filled in for a missing
    run."""
    rows, teachers = [], {}
    for p1, seed, arm, name, _ in grid:
        res = heldout_results(args, name)
        if res is None:
            continue
        if (p1, seed) not in teachers:
            teachers[(p1, seed)] = res["results"]["teacher"]
            rows.append(schema_row(p1, seed, "step0", res["results"]["step 0"]) | {"_extra": res["results"]["step 0"]})
        rows.append(schema_row(p1, seed, arm, res["results"][name]) | {"_extra": res["results"][name]})
    return rows, teachers


def verdicts(rows, criterion=CRITERION):
    """{(phase-1 seed, phase-2 seed): (passed, [what failed])}; passed is None while an arm the criterion needs is
    missing."""
    by = {}
    for r in rows:
        by.setdefault((r["phase1_seed"], r["phase2_seed"]), {})[r["arm"]] = r
    out = {}
    for key, arms in sorted(by.items()):
        missing = [a for a in CRITERION_ARMS if a not in arms]
        if missing:
            out[key] = (None, [f"not run: {', '.join(missing)}"])
            continue
        failed = [why for arm in CRITERION_ARMS for why in outside_bound(arms[arm], criterion)]
        out[key] = (not failed, failed)
    return out


def outside_bound(run, criterion=CRITERION):
    """["<arm> <acc> at D=<d>", ...]: where one run of a criterion arm misses its bound at D >= min_distance (kd at
    least kd_min; step0 at most step0_max; ce, ce-masked at most ce_max); empty when it meets it everywhere."""
    arm, failed = run["arm"], []
    for d, acc in zip(run["distances"], run["kv"]):
        if d < criterion["min_distance"]:
            continue
        if arm == "kd":
            bad = acc is None or acc < criterion["kd_min"]
        else:
            bad = acc is None or acc > criterion["step0_max" if arm == "step0" else "ce_max"]
        if bad:
            failed.append(f"{arm} {'-' if acc is None else f'{acc:.2f}'} at D={d}")
    return failed


def wilson_interval(k, n, z=1.959964):
    """95% Wilson score interval for k successes in n trials (Wilson 1927; z = the normal 97.5% quantile)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def fmt(acc):
    return "-" if acc is None else f"{acc:.2f}"


TABLE_DISTANCES = (256, 512, 768, 900)


def robustness_markdown(rows, teachers, verdict, steps):
    """docs/robustness.md: the per-arm means over every seed combination, per-seed rows, and (for the
    recipe's step count, not for a shorter screen) pass/fail per combination with the pass count."""
    from evaluate import HELDOUT_SEEDS
    head = "| {} | steps | runs | " + " | ".join(f"D={d}" for d in TABLE_DISTANCES) + " | in-doc |"
    rule = "|" + " --- |" * (len(TABLE_DISTANCES) + 4)
    out = [f"Held-out probe seeds {list(HELDOUT_SEEDS)} (each value the mean over them).", "",
           "Mean over every seed combination per arm (the teacher: the same model and probes for all)", "",
           head.format("arm"), rule]
    t = teachers[min(teachers)]
    out.append("| teacher | - | 1 | " + " | ".join(fmt(t["kv"].get(str(d))) for d in TABLE_DISTANCES)
               + f" | {fmt(t['in_doc'])} |")
    for arm in ["step0"] + list(ARMS):
        runs = [r for r in rows if r["arm"] == arm]
        if runs:
            cells = [fmt(mean_cell(runs, d)) for d in TABLE_DISTANCES]
            out.append(f"| {arm} | {steps} | {len(runs)} | " + " | ".join(cells)
                       + f" | {fmt(float(np.mean([r['in_doc'] for r in runs])))} |")
    out.append("")
    out += ["Per seed", "", "| steps | phase-1 seed | phase-2 seed | arm | " + " | ".join(f"D={d}" for d in
            TABLE_DISTANCES) + " | in-doc |", "|" + " --- |" * (len(TABLE_DISTANCES) + 5)]
    for r in rows:
        kv = dict(zip(r["distances"], r["kv"]))
        out.append(f"| {steps} | {r['phase1_seed']} | {r['phase2_seed']} | {r['arm']} | "
                   + " | ".join(fmt(kv.get(d)) for d in TABLE_DISTANCES) + f" | {fmt(r['in_doc'])} |")
    if verdict is None:
        return "\n".join(out) + "\n"
    decided = {k: v for k, v in verdict.items() if v[0] is not None}
    k = sum(v[0] for v in decided.values())
    lo, hi = wilson_interval(k, len(decided))
    out += ["", "Criterion (fixed before the runs): " + json.dumps(CRITERION) + "; step0, ce and ce-masked at most "
            "their bound, kd at least its bound, at every D >= min_distance.", "",
            "| phase-1 seed | phase-2 seed | verdict | why |", "| --- | --- | --- | --- |"]
    for (p1, seed), (ok, why) in verdict.items():
        out.append(f"| {p1} | {seed} | {'incomplete' if ok is None else 'PASS' if ok else 'FAIL'} | "
                   f"{'; '.join(why) or '-'} |")
    out += ["", f"Pass count: {k} of {len(decided)} combinations; 95% Wilson score interval for the pass rate "
            f"[{lo:.2f}, {hi:.2f}]."]
    return "\n".join(out) + "\n"


def mean_cell(runs, d):
    vals = [dict(zip(r["distances"], r["kv"])).get(d) for r in runs]
    return None if any(v is None for v in vals) else float(np.mean(vals))


def probe_models(args, grid, done_names):
    """{key: (label, loader)} of the models the position and needle probes run on: the teacher, each combination's
    step0 and each finished run; loaders build the model when called."""
    import torch  # noqa: F401  (the probes need the checkpoints themselves)
    from model import load_model, switch_rope
    teacher = os.path.join(args.out_dir, "teacher.pt")
    teacher = teacher if os.path.isfile(teacher) else os.path.join(ROOT, "checkpoints", "teacher.pt")
    window = PRESETS[args.preset]["long_window"]
    b1 = PRESETS[args.preset]["phase1_base"]

    def phase1(p1):
        path = os.path.join(args.out_dir, phase1_name(b1, p1) + ".pt")
        path = path if os.path.isfile(path) else os.path.join(ROOT, "checkpoints", phase1_name(b1, p1) + ".pt")
        return switch_rope(load_model(path)[0], LARGE, None, window).eval()

    models = {"teacher": lambda: load_model(teacher)[0]}
    for p1, seed, arm, name, _ in grid:
        if os.path.isfile(os.path.join(args.out_dir, phase1_name(b1, p1) + ".pt")) or p1 == 0:
            models.setdefault(f"p{p1}-step0", lambda p1=p1: phase1(p1))  # the same for every phase-2 seed and arm
        if name in done_names:
            models[f"p{p1}-s{seed}-{arm}"] = lambda name=name: load_model(os.path.join(args.out_dir, name + ".pt"))[0]
    return models


def results_suffix(args):
    """'' for the preset's phase-2 steps (docs/robustness.json), '-steps<N>' for a shorter screen (--steps N): the
    criterion is the recipe's, so rows of another step budget go to their own files."""
    return "" if args.steps is None or args.steps == PRESETS[args.preset]["steps"]["2"] else f"-steps{args.steps}"


def run_probes(args, grid, done_names):
    """docs/probes.json: per model the record-position x distance grid and the single-needle accuracy (held-out
    probe seeds), resumable (models already in the file are kept), and the needle probe's copy-the-value floor."""
    import torch
    from contextlib import nullcontext
    from data import TaskSpec, needle_probe
    from evaluate import HELDOUT_SEEDS, heuristic_floors, needle_sweep, position_sweep, recurring_signal
    path = os.path.join(args.docs_dir, f"probes{results_suffix(args)}.json")
    setup = {"probe_seeds": list(HELDOUT_SEEDS), "starts": list(SWEEP_STARTS), "distances": list(SWEEP_DISTANCES),
             "band": SWEEP_BAND, "windows_per_cell": SWEEP_WINDOWS, "needle_distances": list(NEEDLE_DISTANCES)}
    old = json.load(open(path)) if os.path.isfile(path) else {}
    res = old if all(old.get(k) == v for k, v in setup.items()) else dict(setup, models={})
    spec, window, cpu = TaskSpec(), PRESETS[args.preset]["long_window"], torch.device("cpu")
    floor = heuristic_floors(spec, window, NEEDLE_DISTANCES, 16, list(HELDOUT_SEEDS), probe=needle_probe)["best"]
    res["needle_floor"] = {str(d): v for d, v in floor.items()}  # copying the one value seen answers a needle
    max_doc_len = PRESETS[args.preset]["max_doc_len"]

    def measures(key):  # {field: function of the model}: what each model is probed with
        out = {"position": lambda m: (lambda pos: [[pos[s][d] for d in SWEEP_DISTANCES] for s in SWEEP_STARTS])(
                   position_sweep(m, spec, window, SWEEP_DISTANCES, SWEEP_STARTS, cpu, nullcontext(), SWEEP_WINDOWS,
                                  band=SWEEP_BAND)),
               "needle": lambda m: list(needle_sweep(m, spec, window, NEEDLE_DISTANCES, cpu, nullcontext()).values()),
               "recurring": lambda m: recurring_signal(m, spec, window, max_doc_len, cpu, nullcontext())}
        if key == "teacher":  # what the teacher says at recurring keys when it cannot see other documents
            out["recurring_docmask"] = lambda m: recurring_signal(m, spec, window, max_doc_len, cpu, nullcontext(),
                                                                  doc_mask=True)
        return out

    models = probe_models(args, grid, done_names)
    todo = {k: v for k, v in models.items() if set(measures(k)) - set(res["models"].get(k, {}))}
    for i, (key, load) in enumerate(todo.items()):
        print(f"  [{i + 1}/{len(todo)}] probes of {key}", flush=True)
        model = load().eval()
        entry = res["models"].setdefault(key, {})
        for field, measure in measures(key).items():
            if field not in entry:
                entry[field] = measure(model)
        os.makedirs(args.docs_dir, exist_ok=True)
        # after every model: a killed run keeps what it measured (a kill mid-write: the file as it was before)
        atomic_write(path, lambda f: json.dump(res, f, indent=1), mode="w")
    return res


def plot_probes(probes, path):
    """One heatmap per model kind (mean over the combinations that have it): accuracy by record position x D."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = ["teacher", "step0"] + list(ARMS)
    grids = {}
    for kind in kinds:
        cells = [np.array(m["position"], dtype=float) for k, m in probes["models"].items()
                 if k == kind or k.endswith("-" + kind)]
        if cells:
            grids[kind] = (np.mean(cells, 0), len(cells))
    cols = 4
    rows = -(-len(grids) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(grids):]:
        ax.axis("off")
    for ax, (kind, (grid, n)) in zip(axes.flat, grids.items()):
        im = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
        ax.set_xticks(range(len(probes["distances"])), probes["distances"], fontsize=7)
        ax.set_yticks(range(len(probes["starts"])), probes["starts"], fontsize=7)
        ax.set(title=f"{kind}" + (f" (mean of {n})" if n > 1 else ""), xlabel="distance D",
               ylabel="record position (tokens from the window start)")
    fig.colorbar(im, ax=axes, shrink=0.6, label="retrieval accuracy (held-out probe seeds)")
    fig.suptitle("Where retrieval fails: 16 records at a given position, queried D tokens later (blank: no room)")
    atomic_write(path, lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)


def robustness(args):
    """Train what is missing of the (phase-1 seed, phase-2 seed, arm) grid, then write docs/robustness.json, .md,
    docs/probes.json and docs/probes.png from the runs that finished."""
    from evaluate import HELDOUT_SEEDS
    common = ["--preset", args.preset, "--out-dir", args.out_dir, "--device", args.device, "--dtype", args.dtype]
    grid = robustness_grid(args)
    if not args.summary_only:
        print("1/4 teacher and phase-1 students")
        run_all([("teacher", ["--phase", "teacher"] + common)], args)
        b1 = PRESETS[args.preset]["phase1_base"]
        run_all([(phase1_name(b1, p), ["--phase", "1", "--rope-base", f"{b1:g}", "--seed", str(p), "--no-auto"]
                  + common) for p in args.phase1_seeds], args)
        print(f"2/4 phase 2: {len(grid)} runs (phase-1 seeds {args.phase1_seeds} x phase-2 seeds {args.seeds} x "
              f"arms {args.arms})")
        run_all([(name, argv) for *_, name, argv in grid], args, done=lambda n: heldout_results(args, n) is not None)
    rows, teachers = robustness_rows(args, grid)
    done_names = {name for *_, name, _ in grid if heldout_results(args, name) is not None}
    print(f"3/4 probes by record position x distance and single needle ({len(done_names)} finished runs)")
    probes = run_probes(args, grid, done_names) if not args.no_analysis else None
    for r in rows:
        extra = r.pop("_extra", None)
        if probes is not None:
            key = f"p{r['phase1_seed']}-" + ("step0" if r["arm"] == "step0" else f"s{r['phase2_seed']}-{r['arm']}")
            if key in probes["models"] and extra is not None:
                probes["models"][key]["in_doc_fresh"] = extra.get("in_doc_fresh")
                probes["models"][key]["in_doc_recurring"] = extra.get("in_doc_recurring")
    if probes is not None:
        for (p1, seed), t in teachers.items():
            probes.setdefault("teachers", {})[f"p{p1}-s{seed}"] = schema_row(p1, seed, "teacher", t) | {
                "in_doc_fresh": t.get("in_doc_fresh"), "in_doc_recurring": t.get("in_doc_recurring")}
        atomic_write(os.path.join(args.docs_dir, f"probes{results_suffix(args)}.json"),
                     lambda f: json.dump(probes, f, indent=1), mode="w")
        plot_probes(probes, os.path.join(args.docs_dir, f"probes{results_suffix(args)}.png"))
    print("4/4 results")
    os.makedirs(args.docs_dir, exist_ok=True)
    atomic_write(os.path.join(args.docs_dir, f"robustness{results_suffix(args)}.json"), lambda f: json.dump(
        {"criterion": CRITERION, "probe_seeds": list(HELDOUT_SEEDS), "runs": rows}, f, indent=1), mode="w")
    steps = args.steps or PRESETS[args.preset]["steps"]["2"]
    md = (robustness_markdown(rows, teachers, None if results_suffix(args) else verdicts(rows), steps) if rows
          else "no finished run yet\n")
    atomic_write(os.path.join(args.docs_dir, f"robustness{results_suffix(args)}.md"), lambda f: f.write(md), mode="w")
    print(md)



HEADLINE_ARMS = ("step0", "kd", "ce", "ce-masked", "ce-teacher-labels", "kd-masked", "kd-teacher-docmask")
HEADLINE_LABELS = {"step0": "step 0 (phase 1 + base 5e5)", "kd": "KD student (0.1 CE + 0.9 KD)", "ce": "CE student",
                   "ce-masked": "CE, recurring answers masked", "ce-teacher-labels": "CE on the teacher's argmax",
                   "kd-masked": "KD, recurring answers masked", "kd-teacher-docmask": "KD, teacher under the doc mask"}


def headline_markdown(robustness) -> str:
    """The README's table from a robustness JSON: per arm, the mean over its runs at D = 256 ... 900 and in-doc,
    on the held-out probe seeds; one place that turns docs/robustness*.json into the headline."""
    rows = robustness["runs"]
    out = ["| model | runs | " + " | ".join(f"D={d}" for d in TABLE_DISTANCES) + " | in-doc | runs within the "
           "criterion's bound |", "|" + " --- |" * (len(TABLE_DISTANCES) + 4)]
    for arm in HEADLINE_ARMS:
        runs = [r for r in rows if r["arm"] == arm]
        if runs:
            cells = [fmt(mean_cell(runs, d)) for d in TABLE_DISTANCES]
            within = (f"{sum(not outside_bound(r) for r in runs)} of {len(runs)}" if arm in CRITERION_ARMS else "-")
            out.append(f"| {HEADLINE_LABELS[arm]} | {len(runs)} | " + " | ".join(cells)
                       + f" | {fmt(float(np.mean([r['in_doc'] for r in runs])))} | {within} |")
    return "\n".join(out)


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
                   "schedule, writing docs/robustness.json, robustness.md, probes.json, probes.png")
    p.add_argument("--preset", default="cpu", choices=list(PRESETS), help="train.py preset")
    p.add_argument("--out-dir", default="out", help="folder shared with train.py runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="phase-2 seeds of every schedule")
    p.add_argument("--phase1-seeds", type=int, nargs="+", default=[0, 1, 2], help="phase-1 seeds of the phase-wise "
                   "schedule (the other schedules use the first)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (on CPU each with --threads threads)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each run (robustness: e.g. --jobs 1 "
                   "--threads 2 on 2 cores)")
    p.add_argument("--docs-dir", default=os.path.join(ROOT, "docs"), help="robustness: folder of its JSON, tables "
                   "and figure")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="robustness: phase 2's --arm "
                   "values to train per seed combination (default: all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="train.py's autocast "
                   "dtype for every run (auto: bf16 on CUDA and on CPUs with native bf16; docs/results.md's grid: float32)")
    p.add_argument("--steps", type=int, default=None, help="phase-2 steps (default: the preset's)")
    p.add_argument("--no-analysis", action="store_true", help="grid: skip analyze.py all; robustness: skip the "
                   "position and needle probes (docs/probes.json)")
    p.add_argument("--summary-only", action="store_true", help="train nothing: tabulate the runs that exist")
    args = p.parse_args(argv)
    check_flags(args)
    t0 = time.time()
    os.makedirs(args.out_dir, exist_ok=True)
    common = ["--preset", args.preset, "--out-dir", args.out_dir, "--device", args.device, "--dtype", args.dtype]
    if args.mode == "robustness":
        robustness(args)
        print(f"wall time: {(time.time() - t0) / 60:.1f} min")
        return
    if args.summary_only:
        print(summarize(args))
        return
    print("1/4 teacher")
    run_all([("teacher", ["--phase", "teacher"] + common)], args)
    print("2/4 phase 1 (short window) at each phase-1 base")
    p1_jobs = {(b1, p1) for _, b1, _, p1, _ in phase2_runs(args)}
    run_all([(phase1_name(b, s), ["--phase", "1", "--rope-base", f"{b:g}", "--seed", str(s), "--no-auto"] + common)
             for b, s in sorted(p1_jobs)], args)
    print("3/4 phase 2 (long window, packed short documents)")
    jobs = []
    for label, b1, b2, p1, seed in phase2_runs(args):
        for loss, w in (("kd", []), ("ce", ["--kd-weight", "0"])):  # KD: train.py's default weight
            argv = ["--phase", "2", "--phase1-base", f"{b1:g}", "--phase1-seed", str(p1), "--rope-base", f"{b2:g}",
                    "--seed", str(seed), "--no-baseline", "--no-auto"] + w + common
            jobs.append((run_name(loss, b1, b2, seed, p1), argv + (["--steps", str(args.steps)] if args.steps else [])))
    run_all(jobs, args)
    print("4/4 results")
    print(summarize(args))
    if not args.no_analysis:
        subprocess.run([sys.executable, os.path.join(ROOT, "analyze.py"), "all", "--dir", args.out_dir, "--device",
                        args.device], check=True)
    print(f"wall time: {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
