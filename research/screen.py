"""Which phase-1 students to keep: an acceptance test measured before phase 2, and its screens.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distils long-range retrieval into a student that phase 1
trained on short windows; at this scale whether that works depends on the phase-1 student. The acceptance test
for a phase-1 student (config.ACCEPTANCE: its 16-token curriculum stage passed before its cap, D = 16 after phase
1 at least 0.85; runs.accepted, which train.py --phase 1 --retries applies) was fixed before the screens that test
it. This file gathers such a screen from its run folder: per student what phase 1 showed and, where it went on, its held-out band rows (research/robustness.py's
`band`), judged by research.robustness.BAND_CRITERION. It writes docs/acceptance.json-style files, whose tables
docs/seeds.md shows:

    python -m research.screen --dir out/p1-lr --phase1-seeds 0 1 2 3 4 5 --out docs/grid-lr.json
"""
import argparse
import json
import os

import numpy as np

from config import ACCEPTANCE, fail, phase1_name
from model import atomic_write
from research.robustness import BAND_CRITERION, band_verdict, fmt
from runs import accepted, stage_steps


def acceptance_markdown(screen) -> str:
    """The acceptance screen's table (docs/acceptance.json): per phase-1 student, what phase 1 showed (the step its
    16-token stage passed, D = 16 after phase 1), whether ACCEPTANCE takes it, and phase 2's outcome on the band."""
    out = ["| phase-1 seed | 16-token stage passed at step | after phase 1, D = 16 | accepted | step 0, band max | KD, band "
           "min | KD, band mean | CE twin, band mean | phase 2 on the band |", "|" + " --- |" * 9]
    band = BAND_CRITERION["band"]
    for st in screen["students"]:
        seed = st["phase1_seed"]
        if "stopped_at" in st:  # phase 1 stopped before its 16-token stage passed: no phase 2
            out.append(f"| {seed} | not by step {st['stopped_at']} (stopped) | - | no | - | - | - | - | not run |")
            continue
        ok = accepted(st["stage16_step"], st["d16"])
        phase1 = f"| {seed} | {st['stage16_step'] or 'capped'} | {fmt(st['d16'])} | {'yes' if ok else 'no'} |"
        arms = {r["arm"]: r for r in screen["runs"] if r["phase1_seed"] == seed}
        if not arms:  # phase 1 finished, phase 2 not run
            out.append(phase1 + " - | - | - | - | not run |")
            continue
        cells = {a: [dict(zip(r["distances"], r["kv"]))[d] for d in band] for a, r in arms.items()}
        passed, why = band_verdict(arms)
        out.append(f"{phase1} {fmt(max(cells['step0']))} | {fmt(min(cells['kd']))} | "
                   f"{fmt(float(np.mean(cells['kd'])))} | {fmt(float(np.mean(cells['ce'])))} | "
                   f"{'pass' if passed else 'fail: ' + '; '.join(why)} |")
    return "\n".join(out)


def screen_student(out_dir, phase1_seed, cap):
    """What phase 1 showed for one student of a screen (docs/acceptance.json's "students"), from its run files:
    the step its 16-token stage passed (None if it ran to its `cap`), D = 16 after phase 1, its minutes; a run
    stopped inside that stage (no end-of-run JSON) gets stopped_at instead."""
    base = os.path.join(out_dir, phase1_name(1e4, phase1_seed))
    stage16 = stage_steps(base + ".jsonl", "curriculum-16")
    st = {"phase1_seed": phase1_seed, "stage16_step": stage16 if stage16 < cap else None, "stage16_cap": cap}
    if not os.path.exists(base + ".json"):
        return {**st, "stage16_step": None, "d16": None, "stopped_at": stage16}
    with open(base + ".json") as f:
        run = json.load(f)
    return {**st, "d16": run["results"][run["run"]]["kv"]["16"],
            "phase1_minutes": round(run["speed"]["train_seconds"] / 60, 1)}


def screen_json(out_dir, phase1_seeds, what, commands, cap=8000):
    """A screen of phase-1 students in one folder, in docs/acceptance.json's format: each student's phase 1
    (screen_student) and, where it went on, its held-out band rows (the band-pN-s0.json files of
    research.robustness band)."""
    from evaluate import HELDOUT_SEEDS
    students, runs = [screen_student(out_dir, s, cap) for s in phase1_seeds], []
    for s in phase1_seeds:
        path = os.path.join(out_dir, f"band-p{s}-s0.json")
        if os.path.exists(path):
            with open(path) as f:
                runs += json.load(f)
    return {"what": what, "acceptance": ACCEPTANCE, "criterion": BAND_CRITERION, "probe_seeds": list(HELDOUT_SEEDS),
            "commands": commands, "students": students, "runs": runs}


def main(argv=None):
    """`python -m research.screen --dir OUT --phase1-seeds N ... --out F.json`: gather, write, print the table."""
    p = argparse.ArgumentParser(description="Gather a screen of phase-1 students (phase 1's run files and the band "
                                "rows of research.robustness band) into one JSON, and print its table.")
    p.add_argument("--dir", required=True, help="the folder the students' phase-1 and phase-2 runs were trained in")
    p.add_argument("--phase1-seeds", type=int, nargs="+", required=True, help="the students, in the order to report")
    p.add_argument("--out", required=True, help="the JSON to write (docs/acceptance.json's format)")
    p.add_argument("--what", default="", help="one sentence on what the students are")
    p.add_argument("--commands", nargs="+", default=[], help="the commands that trained and scored them")
    args = p.parse_args(argv)
    try:
        screen = screen_json(args.dir, args.phase1_seeds, args.what, args.commands)
    except (OSError, ValueError, KeyError) as e:  # a student without run files, or a file not of this format
        fail(f"cannot gather the screen from {args.dir}: {e}")
    atomic_write(args.out, lambda f: json.dump(screen, f, indent=1), mode="w")
    print(acceptance_markdown(screen))


if __name__ == "__main__":
    main()
