"""The paper's comparison in one command: KD vs CE students across RoPE schedules, with seeds.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) claims that (a) a student
trained only on packed short documents inherits long-range retrieval through logit KD,
where a CE-only student does not, and (b) phase-wise RoPE base scaling (small base in the
short phase 1, large base in the long phase 2) works best. This script runs that grid:

  teacher (once)  ->  phase 1 at base 1e4 and at base 5e5 (shared by every phase-2 run)
  phase 2: {KD, CE} x {(1e4, 1e4), (5e5, 5e5), (1e4 -> 5e5)}, the phase-wise pair with
           --seeds (data-stream seeds of phase 2)

Independent runs go side by side (--jobs processes, 1 thread each on CPU); runs that
already exist are reused. It writes OUT/paper_results.md and .json (every run, plus
mean and spread over seeds for the headline pair), then runs `analyze.py all`.

    python experiment.py                      # cpu preset, seeds 0 1 2, about an hour here
    python experiment.py --preset gpu --jobs 1
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.abspath(__file__))
SCHEDULES = [(1e4, 5e5), (1e4, 1e4), (5e5, 5e5)]  # (phase-1 base, phase-2 base); the first is phase-wise


def run_name(loss, b1, b2, seed):
    return f"phase2-{loss}-b{b1:g}-b{b2:g}" + (f"-s{seed}" if seed else "")


def launch(argv, log_path, threads):
    cmd = [sys.executable, os.path.join(ROOT, "train.py")] + argv + (["--threads", "1"] if threads else [])
    return subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=ROOT)


def results_path(args, name):
    """OUT/<name>.json, else the shipped checkpoints/<name>.json (cpu preset only, as in train.py), else None."""
    folders = [args.out_dir] + ([os.path.join(ROOT, "checkpoints")] if args.preset == "cpu" else [])
    for folder in folders:
        path = os.path.join(folder, name + ".json")
        if os.path.isfile(path):
            return path
    return None


def run_all(jobs, args):
    """Run [(name, argv)] with at most args.jobs at a time; skip the ones whose results exist."""
    todo = [(n, a) for n, a in jobs if results_path(args, n) is None]
    for n, a in jobs:
        if (n, a) not in todo:
            print(f"  {n}: exists ({results_path(args, n)}), reused")
    running = []
    while todo or running:
        while todo and len(running) < args.jobs:
            name, argv = todo.pop(0)
            if os.path.isfile(os.path.join(args.out_dir, name + ".pt")):  # killed earlier: continue it
                argv = argv + ["--resume"]
            log = os.path.join(args.out_dir, name + ".log")
            print(f"  {name}: training (log {log}){' from its checkpoint' if '--resume' in argv else ''}", flush=True)
            running.append((name, launch(argv, log, args.device == "cpu"), time.time()))
        for item in list(running):
            name, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                print(f"  {name}: {status} in {(time.time() - t0) / 60:.1f} min", flush=True)
                if proc.returncode:
                    raise SystemExit(f"error: {name} failed; see {os.path.join(args.out_dir, name + '.log')}")
        time.sleep(1)


def load(args, name):
    with open(results_path(args, name)) as f:
        return json.load(f)["results"][name]


def summarize(args):
    """Markdown + JSON: every run, and mean / spread over seeds for the phase-wise KD vs CE pair."""
    rows, table = [], {}
    for b1, b2 in SCHEDULES:
        for loss in ("kd", "ce"):
            seeds = args.seeds if (b1, b2) == SCHEDULES[0] else [args.other_seed]
            runs = [load(args, run_name(loss, b1, b2, s)) for s in seeds]
            dists = sorted(int(d) for d in runs[0]["kv"])
            acc = np.array([[r["kv"][str(d)] if str(d) in r["kv"] else r["kv"][d] for d in dists] for r in runs])
            in_doc = np.array([r["in_doc"] for r in runs])
            key = f"{loss.upper()} {b1:g} -> {b2:g}"
            table[key] = {"seeds": seeds, "distances": dists, "mean": acc.mean(0).tolist(),
                          "std": acc.std(0).tolist(), "in_doc_mean": float(in_doc.mean()),
                          "in_doc_std": float(in_doc.std()), "per_seed": acc.tolist()}
            cells = [f"{m:.2f}" + (f" ± {s:.2f}" if len(seeds) > 1 else "") for m, s in zip(acc.mean(0), acc.std(0))]
            doc = f"{in_doc.mean():.2f}" + (f" ± {in_doc.std():.2f}" if len(seeds) > 1 else "")
            rows.append(f"| {key} | {len(seeds)} | " + " | ".join(cells) + f" | {doc} |")
    teacher = load(args, "teacher")
    t_cells = [f"{teacher['kv'].get(str(d), float('nan')):.2f}" for d in dists]
    head = ("| run (loss, phase-1 base -> phase-2 base) | seeds | " + " | ".join(f"D={d}" for d in dists)
            + " | in-doc |\n|" + " --- |" * (len(dists) + 3))
    md = "\n".join([head, "| teacher (long documents) | 1 | " + " | ".join(t_cells) + f" | {teacher['in_doc']:.2f} |"]
                   + rows)
    md += "\n\nKey-value retrieval accuracy at distance D (mean ± std over seeds); students saw only documents " \
          "of <= 128 tokens."
    with open(os.path.join(args.out_dir, "paper_results.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.out_dir, "paper_results.json"), "w") as f:
        json.dump({"teacher": teacher, "runs": table}, f, indent=1)
    return md


def main():
    p = argparse.ArgumentParser(description="Run the paper's KD-vs-CE x RoPE-schedule comparison.")
    p.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "gpu"], help="train.py preset")
    p.add_argument("--out-dir", default="out", help="folder shared with train.py runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="phase-2 seeds of the headline pair")
    p.add_argument("--other-seed", type=int, default=0, help="phase-2 seed of the single-seed schedules")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (1 thread each on CPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=None, help="phase-2 steps (default: the preset's)")
    p.add_argument("--no-analysis", action="store_true", help="skip analyze.py all")
    args = p.parse_args()
    if args.jobs < 1 or not args.seeds:
        raise SystemExit("error: --jobs must be >= 1 and --seeds non-empty")
    t0 = time.time()
    os.makedirs(args.out_dir, exist_ok=True)
    common = ["--preset", args.preset, "--out-dir", args.out_dir, "--device", args.device]
    print("1/4 teacher")
    run_all([("teacher", ["--phase", "teacher"] + common)], args)
    print("2/4 phase 1 (short window) at each phase-1 base")
    bases = sorted({b1 for b1, _ in SCHEDULES})
    run_all([(f"phase1-b{b:g}", ["--phase", "1", "--rope-base", f"{b:g}", "--no-auto"] + common) for b in bases], args)
    print("3/4 phase 2 (long window, packed short documents)")
    jobs = []
    for b1, b2 in SCHEDULES:
        for seed in (args.seeds if (b1, b2) == SCHEDULES[0] else [args.other_seed]):
            for loss, w in (("kd", "0.5"), ("ce", "0")):
                argv = ["--phase", "2", "--phase1-base", f"{b1:g}", "--rope-base", f"{b2:g}", "--kd-weight", w,
                        "--seed", str(seed), "--no-baseline", "--no-auto"] + common
                jobs.append((run_name(loss, b1, b2, seed), argv + (["--steps", str(args.steps)] if args.steps else [])))
    run_all(jobs, args)
    print("4/4 results")
    print(summarize(args))
    if not args.no_analysis:
        subprocess.run([sys.executable, os.path.join(ROOT, "analyze.py"), "all", "--dir", args.out_dir], check=True)
    print(f"wall time: {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
