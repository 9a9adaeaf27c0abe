"""Finding 1 per phase-1 student: does switching the RoPE base for phase 2 beat keeping the small one?

Paper idea (arXiv 2604.06070, finding 1): phase-wise base scaling works best, a small base while the
window is short and a large one once it is long. The schedule grid of `research/experiment.py` compares four
schedules over phase-2 seeds from ONE phase-1 student, and phase-1 students differ a lot (research/notes/seeds.md);
this script repeats the central contrast per phase-1 student, paired: for every phase-1 seed (base 1e4,
32-token windows) that has both KD students,

- phase-wise   1e4 -> 5e5  (run phase2-kd-b10000-b500000[-pN], the headline's KD student), and
- small kept   1e4 -> 1e4  (run phase2-kd-b10000-b10000[-pN]),

both with phase-2 seed 0, so the same phase-1 weights see the same batches and only the phase-2 base
differs, it reports

- the end point: held-out accuracy at D = 256 ... 900 and in-doc after the last step, and step 0;
- the learning curve, which the end point hides when both reach the ceiling: the quick selection
  probes that train.py logs at step 0 and every 250 steps before the last (mean over their D >= 256;
  the last step is measured on the held-out probes and is not mixed in), its value at step 250 (an
  early checkpoint) and its area (trapezoid rule over the logged steps, divided by their span: the
  mean accuracy over training up to the last quick probe, in [0, 1]).

The third schedule of the paper's contrast, the large base in both phases, needs a phase-1 student per
seed at 5e5 and is in the one-student grid only.

  python train.py --phase 2 --rope-base 10000 --phase1-seed N --no-baseline    # the small-kept student
  python -m research.finding1 --out-dir out --phase1-seeds 0 1 3
writes research/notes/finding1.json and research/notes/finding1.md (the table of research/notes/results.md).
"""
import argparse
import json
import os

import numpy as np

from config import fail
from research.experiment import LARGE, SMALL, run_name
from model import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULES = {"phase-wise 1e4->5e5": LARGE, "small kept 1e4->1e4": SMALL}  # label -> phase-2 base
DISTANCES = (256, 512, 768, 900)  # the held-out columns
LONG = 256  # quick-probe distances at or beyond this count as long range


def curve(jsonl_path):
    """[(step, mean quick-probe accuracy at D >= LONG)] from a run's step log; a resumed run's later entry wins."""
    points = {}
    with open(jsonl_path) as f:
        for line in f:
            rec = json.loads(line)
            if "eval" in rec:
                kv = {int(d): a for d, a in rec["eval"]["kv"].items() if int(d) >= LONG}
                if kv:
                    points[rec["step"]] = float(np.mean(list(kv.values())))
    return sorted(points.items())


def area(points):
    """Trapezoid area under [(step, acc)] divided by the span of the steps: the mean accuracy over that span."""
    steps, acc = np.array([s for s, _ in points], dtype=float), np.array([a for _, a in points])
    if len(steps) < 2 or steps[-1] <= steps[0]:
        raise ValueError("a learning curve needs at least two logged steps")
    return float(np.sum((acc[1:] + acc[:-1]) / 2 * np.diff(steps)) / (steps[-1] - steps[0]))


def collect(out_dir, seeds):
    """[{phase1_seed, schedule, run, step0, kv, in_doc, curve, at_250, auc}] for every (seed, schedule) whose run
    has held-out results and a step log; seeds missing either schedule are left out (the comparison is paired)."""
    from evaluate import HELDOUT_SEEDS
    rows = []
    for p1 in seeds:
        pair = []
        for label, base in SCHEDULES.items():
            name = run_name("kd", SMALL, base, 0, p1)
            res_path, log_path = (os.path.join(out_dir, name + ext) for ext in (".json", ".jsonl"))
            if not (os.path.isfile(res_path) and os.path.isfile(log_path)):
                break
            with open(res_path) as f:
                res = json.load(f)
            if res.get("probe_seeds") != list(HELDOUT_SEEDS):
                break
            student, step0 = res["results"][name], res["results"]["step 0"]
            points = curve(log_path)
            at_250 = dict(points).get(250)
            pair.append({"phase1_seed": p1, "schedule": label, "run": name,
                         "step0": [step0["kv"][str(d)] for d in DISTANCES], "kv": [student["kv"][str(d)] for d in DISTANCES],
                         "in_doc": student["in_doc"], "curve": points, "at_250": at_250, "auc": area(points)})
        if len(pair) == len(SCHEDULES):
            rows += pair
    return rows


def markdown(rows):
    """The results page's table from finding1.json, then the paired differences per phase-1 seed."""
    lines = ["| phase-1 seed | schedule | step 0, D=" + " / ".join(map(str, DISTANCES)) + " | "
             + " | ".join(f"D={d}" for d in DISTANCES) + " | in-doc | quick probe at step 250 | area under the quick-probe curve |",
             "|" + " --- |" * (len(DISTANCES) + 6)]
    for r in rows:
        lines.append(f"| {r['phase1_seed']} | {r['schedule']} | " + " / ".join(f"{a:.2f}" for a in r["step0"]) + " | "
                     + " | ".join(f"{a:.2f}" for a in r["kv"]) + f" | {r['in_doc']:.2f} | "
                     + ("-" if r["at_250"] is None else f"{r['at_250']:.2f}") + f" | {r['auc']:.2f} |")
    wise, kept = list(SCHEDULES)
    diffs = [(r["phase1_seed"], r["auc"] - s["auc"]) for r in rows if r["schedule"] == wise
             for s in rows if s["schedule"] == kept and s["phase1_seed"] == r["phase1_seed"]]
    if diffs:
        lines += ["", f"Area under the curve, {wise} minus {kept}, per phase-1 seed: "
                  + ", ".join(f"seed {p}: {d:+.2f}" for p, d in diffs)
                  + f" (larger for the phase-wise student in {sum(d > 0 for _, d in diffs)} of {len(diffs)})."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description="Finding 1 per phase-1 student: the phase-wise KD student (1e4 -> 5e5) "
                                "against the small base kept (1e4 -> 1e4), end point and learning curve")
    p.add_argument("--out-dir", default="out", help="folder with the phase-2 runs' .json results and .jsonl logs")
    p.add_argument("--phase1-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="phase-1 seeds to use")
    p.add_argument("--docs-dir", default=os.path.join(ROOT, "research", "notes"), help="where finding1.{json,md} go")
    args = p.parse_args(argv)
    if not os.path.isdir(args.out_dir):
        fail(f"--out-dir {args.out_dir} is not a folder")
    try:
        rows = collect(args.out_dir, args.phase1_seeds)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        fail(f"a run in {args.out_dir} has unreadable results or log: {e}")
    if not rows:
        fail(f"no phase-1 seed among {args.phase1_seeds} has both KD students with held-out results in {args.out_dir}")
    os.makedirs(args.docs_dir, exist_ok=True)
    atomic_write(os.path.join(args.docs_dir, "finding1.json"), lambda f: json.dump({"rows": rows}, f, indent=1), mode="w")
    md = markdown(rows)
    atomic_write(os.path.join(args.docs_dir, "finding1.md"), lambda f: f.write(md), mode="w")
    print(md)


if __name__ == "__main__":
    main()
