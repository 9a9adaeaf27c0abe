"""Does the claim hold, and where does its signal come from: the seed x arm grid of the headline schedule.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) claims that a student trained only on packed short
documents acquires long-range retrieval through logit KD, where a CE-only student does not. This file asks
that question across students: the (phase-1 seed, phase-2 seed, --arm) grid of the headline schedule (the KD
student, its CE twin, and the baselines and ablations of train.py --arm), every number on the held-out probe
seeds, a criterion fixed before the runs (CRITERION), the pass count with a Wilson 95% interval, the record-
position x distance and single-needle probes of each model.
It writes research/notes/robustness.json (one row per run), research/notes/robustness.md (its tables),
research/notes/probes.json and research/notes/probes.png. Run it through research/experiment.py, which launches the
runs:

    python -m research.experiment robustness --phase1-seeds 0 --seeds 0 1 2
"""
import argparse
import json
import math
import os

import numpy as np

from config import PHASE_KD, PHASE_LR, PRESETS, build_parser, fail, phase1_name, resolve
from variants import train as variants
from variants.arms import ARMS, CE_ARMS
from model import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LARGE = 500000.0  # the paper's phase-2 base: the headline schedule's (research/experiment.py's grid uses it too)

# These experiments ran before research/protocol.md made its recipe the cpu preset's phase 1: their phase-1 students
# are the earlier recipe's (a KD term, the preset's learning rate, its curriculum and steps), whose seed-0 student is
# shipped as checkpoints/phase1-b10000-kd0.5.pt (checkpoints/phase1-b10000.pt is the protocol's first accepted one).
EARLIER_SHIPPED = {"phase1-b10000": "phase1-b10000-kd0.5"}


def earlier_phase1(preset):
    """train.py's flags for the earlier phase-1 recipe on `preset`: the values its phase-1 recipe replaced."""
    pre = PRESETS[preset]
    earlier = {"kd_weight": PHASE_KD["1"], "lr": pre["lr"] * PHASE_LR["1"], "curriculum_steps": pre["curriculum_steps"],
               "steps": pre["steps"]["1"]}
    return [x for key in pre["phase1"] for x in ("--" + key.replace("_", "-"), f"{earlier[key]:g}")]


def shipped_path(name, ext=".pt"):
    """checkpoints/<name><ext> of a run of these experiments (their seed-0 phase-1 student under its shipped name)."""
    return os.path.join(ROOT, "checkpoints", EARLIER_SHIPPED.get(name, name) + ext)


def phase1_init(out_dir, b1, p1, preset="cpu"):
    """A phase-2 run's --init: the phase-1 student of seed p1 in OUT, else (the cpu preset's) the shipped earlier
    one."""
    path = os.path.join(out_dir, phase1_name(b1, p1) + ".pt")
    shipped = shipped_path(phase1_name(b1, p1))
    return shipped if preset == "cpu" and not os.path.isfile(path) and os.path.isfile(shipped) else path


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
                        "--init", phase1_init(args.out_dir, PRESETS[args.preset]["phase1_base"], p1, args.preset),
                        "--arm", arm, "--no-baseline", "--no-auto", "--preset", args.preset, "--out-dir", args.out_dir,
                        "--device", args.device, "--dtype", args.dtype]
                argv += ["--steps", str(args.steps)] if args.steps else []
                opts, rest = variants.parse(argv)
                grid.append((p1, seed, arm, resolve(build_parser().parse_args(rest), variants.Variants(opts)).run_name,
                             argv))
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
    """One row of research/notes/robustness.json from a results entry {"kv": {D: acc}, "in_doc": acc}."""
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


BAND_CRITERION = {"band": [512, 576, 640, 704, 768, 832, 896], "step0_max": 0.3, "kd_min": 0.9, "ce_gap": 0.3}


def band_verdict(arms, criterion=BAND_CRITERION):
    """(passed, [what failed]) of one combination {arm: run} on the distance band: step 0 at most step0_max and KD
    at least kd_min at every band distance, and the CE twin's mean over the band at least ce_gap below KD's (a
    phase alias at one distance cannot decide; a healthy CE twin may extend partly on its own)."""
    band, failed = criterion["band"], []
    cells = {a: [dict(zip(arms[a]["distances"], arms[a]["kv"])).get(d) for d in band] for a in ("step0", "kd", "ce")}
    for arm, ok in (("step0", lambda v: v <= criterion["step0_max"]), ("kd", lambda v: v >= criterion["kd_min"])):
        failed += [f"{arm} {fmt(v)} at D={d}" for d, v in zip(band, cells[arm]) if v is None or not ok(v)]
    if any(v is None for v in cells["ce"] + cells["kd"]):
        return False, failed + ["a band distance not measured"]
    kd_mean, ce_mean = np.mean(cells["kd"]), np.mean(cells["ce"])
    if ce_mean > kd_mean - criterion["ce_gap"]:
        failed.append(f"ce band mean {ce_mean:.2f} within {criterion['ce_gap']} of kd's {kd_mean:.2f}")
    return not failed, failed


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
    """research/notes/robustness.md: the per-arm means over every seed combination, per-seed rows, and (for the
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
    from model import load_model, switch_rope
    teacher = os.path.join(args.out_dir, "teacher.pt")
    teacher = teacher if os.path.isfile(teacher) else os.path.join(ROOT, "checkpoints", "teacher.pt")
    window = PRESETS[args.preset]["long_window"]
    b1 = PRESETS[args.preset]["phase1_base"]

    def phase1(p1):
        path = phase1_init(args.out_dir, b1, p1, args.preset)
        return switch_rope(load_model(path)[0], LARGE, None, window).eval()

    models = {"teacher": lambda: load_model(teacher)[0]}
    for p1, seed, arm, name, _ in grid:
        if os.path.isfile(os.path.join(args.out_dir, phase1_name(b1, p1) + ".pt")) or p1 == 0:
            models.setdefault(f"p{p1}-step0", lambda p1=p1: phase1(p1))  # the same for every phase-2 seed and arm
        if name in done_names:
            models[f"p{p1}-s{seed}-{arm}"] = lambda name=name: load_model(os.path.join(args.out_dir, name + ".pt"))[0]
    return models


def results_suffix(args):
    """'' for the preset's phase-2 steps (research/notes/robustness.json), '-steps<N>' for a shorter screen
    (--steps N): the criterion is the recipe's, so rows of another step budget go to their own files."""
    return "" if args.steps is None or args.steps == PRESETS[args.preset]["steps"]["2"] else f"-steps{args.steps}"


def run_probes(args, grid, done_names):
    """research/notes/probes.json: per model the record-position x distance grid and the single-needle accuracy
    (held-out probe seeds), resumable (models already in the file are kept), and the needle probe's copy-the-value floor."""
    import torch
    from contextlib import nullcontext
    from data import TaskSpec
    from evaluate import HELDOUT_SEEDS, heuristic_floors
    from interp.probes import needle_probe, needle_sweep, position_sweep, recurring_signal
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


def robustness(args, run_all):
    """Train (with research/experiment.py's run_all) what is missing of the (phase-1 seed, phase-2 seed, arm) grid,
    then write research/notes/robustness.json, .md, research/notes/probes.json and research/notes/probes.png from
    the runs that finished."""
    from evaluate import HELDOUT_SEEDS
    common = ["--preset", args.preset, "--out-dir", args.out_dir, "--device", args.device, "--dtype", args.dtype]
    grid = robustness_grid(args)
    if not args.summary_only:
        print("1/4 teacher and phase-1 students")
        run_all([("teacher", ["--phase", "teacher"] + common)], args)
        b1 = PRESETS[args.preset]["phase1_base"]
        run_all([(phase1_name(b1, p), ["--phase", "1", "--rope-base", f"{b1:g}", "--seed", str(p), "--no-auto"]
                  + earlier_phase1(args.preset) + common) for p in args.phase1_seeds], args)
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


def runs_markdown(rows) -> str:
    """A row per run of a robustness-format JSON (research/notes/leakfree.json): student, arm, accuracy by distance,
    in-doc."""
    dists = rows[0]["distances"]
    out = ["| phase-1 student | arm | " + " | ".join(f"D={d}" for d in dists) + " | in-doc | fresh keys | recurring "
           "keys |", "|" + " --- |" * (len(dists) + 5)]
    for r in rows:
        cells = [fmt(dict(zip(r["distances"], r["kv"])).get(d)) for d in dists]
        out.append(f"| {r.get('phase1', r['phase1_seed'])} | {r['arm']} | " + " | ".join(cells) + f" | {fmt(r['in_doc'])} | {fmt(r.get('in_doc_fresh'))}"
                   f" | {fmt(r.get('in_doc_recurring'))} |")
    return "\n".join(out)


def student_paths(out_dir, phase1_seed, phase2_seed=0, suffix=""):
    """{arm: checkpoint}: the phase-1 student (step 0) and its phase-2 run of every --arm, as train.py names them."""
    p1, p2 = f"-p{phase1_seed}" if phase1_seed else "", f"-s{phase2_seed}" if phase2_seed else ""
    return {"step0": os.path.join(out_dir, phase1_name(1e4, phase1_seed) + ".pt"), **{a: os.path.join(out_dir,
            f"phase2-{'ce' if a in CE_ARMS else 'kd'}-b10000-b500000{p1}{suffix}{arm.suffix}{p2}.pt")
            for a, arm in ARMS.items()}}


def band_rows(out_dir, phase1_seed, phase2_seed=0, n_windows=16, suffix="", seeds=None,
              arms=("step0", "kd", "ce")):
    """Band rows (BAND_CRITERION's band, D = 256 and 900) of step 0, the KD student and its CE twin, each value the
    mean over the probe `seeds` (None: the held-out ones; a screen asks for the selection probe, [0]). `suffix`: the
    phase-2 runs' name suffix for a variant (config.run_name, variants.train.Variants.suffix: -rec0.1, -ramp128.256.512x150, ...)."""
    from contextlib import nullcontext

    import torch
    from data import TaskSpec
    from evaluate import HELDOUT_SEEDS, evaluate_heldout
    from model import load_model, switch_rope
    seeds = HELDOUT_SEEDS if seeds is None else seeds
    paths = student_paths(out_dir, phase1_seed, phase2_seed, suffix)
    distances, rows = sorted(BAND_CRITERION["band"] + [256, 900]), []
    for arm in arms:
        model = load_model(paths[arm], "cpu")[0]
        model = switch_rope(model, LARGE, None, 1024) if arm == "step0" else model
        res = evaluate_heldout(model.eval(), TaskSpec(), 1024, distances, 128, torch.device("cpu"), nullcontext(),
                               n_windows, seeds=seeds)
        rows.append({"phase1_seed": phase1_seed, "phase2_seed": phase2_seed, "arm": arm, "distances": distances,
                     "kv": [res["kv"][d] for d in distances], "in_doc": res["in_doc"]})
    return rows


def main(argv=None):
    """`python -m research.robustness band --dir OUT --phase1-seed N`: the band rows, their verdict, a JSON."""
    from evaluate import HELDOUT_SEEDS
    p = argparse.ArgumentParser(description="One combination on the distance band (held-out probes), judged.")
    p.add_argument("command", choices=["band"], help="band: step 0, KD student and CE twin on the band")
    p.add_argument("--dir", required=True, help="the folder the phase-1 student and both phase-2 runs were trained in")
    p.add_argument("--phase1-seed", type=int, default=0, help="phase-1 seed of the combination; default 0")
    p.add_argument("--seed", type=int, default=0, help="its phase-2 seed; default 0")
    p.add_argument("--n-windows", type=int, default=16, help="probe windows per distance and probe seed; default 16")
    p.add_argument("--variant", default="", help="the phase-2 runs' name suffix of a variant, without its dash: "
                   "rec0.1 (--recurrence 0.1), ramp128.256.512x150, ...; default none (the recipe)")
    p.add_argument("--probe-seeds", type=int, nargs="+", default=list(HELDOUT_SEEDS),
                   help="probe seeds to average over; default the held-out ones (1 2 3); 0 is the selection probe")
    p.add_argument("--arms", nargs="+", default=["step0", "kd", "ce"], choices=["step0", *ARMS], help="models to score"
                   " (--no-baseline: no CE twin); ablation arms write band-pN-sK-ARMS.json; default step0 kd ce")
    args = p.parse_args(argv)
    if args.n_windows < 1 or args.phase1_seed < 0 or args.seed < 0 or min(args.probe_seeds) < 0:
        fail("--n-windows must be >= 1 and the seeds >= 0")
    suffix = "-" + args.variant.lstrip("-") if args.variant else ""
    try:
        rows = band_rows(args.dir, args.phase1_seed, args.seed, args.n_windows, suffix, args.probe_seeds, args.arms)
    except (OSError, ValueError) as e:  # a missing or unreadable checkpoint (model.CheckpointError is a ValueError)
        fail(str(e))
    ablations = [a for a in args.arms if a not in ("step0", "kd", "ce")]
    name = f"band-p{args.phase1_seed}{suffix}-s{args.seed}" + ("-" + ".".join(ablations) if ablations else "")
    name += "" if args.probe_seeds == list(HELDOUT_SEEDS) else "-probe" + ".".join(map(str, args.probe_seeds))
    atomic_write(os.path.join(args.dir, name + ".json"), lambda f: json.dump(rows, f, indent=1), mode="w")
    print(runs_markdown(rows))
    if set(args.arms) == {"step0", "kd", "ce"}:
        passed, why = band_verdict({r["arm"]: r for r in rows})
        print("pass" if passed else "fail: " + "; ".join(why))


if __name__ == "__main__":
    main()
