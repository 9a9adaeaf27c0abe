"""Which phase-1 students to keep: an acceptance test measured before phase 2, and its screens.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distils long-range retrieval into a student that phase 1
trained on short windows; at this scale whether that works depends on the phase-1 student. The acceptance test
for a phase-1 student (ACCEPTANCE: its 16-token curriculum stage passed before its cap, D = 16 after phase
1 at least 0.85, which the first recipe's --retries applied) was fixed before the screens that test it. This file
gathers such a screen from its run folder: per student what phase 1 showed and, where it went on, its held-out
band rows (research/robustness.py's `band`), judged by research.robustness.BAND_CRITERION, and with --positions
where in the window its KD student and CE twin retrieve (record position x distance).
It writes research/notes/acceptance.json-style files, whose tables research/notes/seeds.md shows;
research/notes/grid-lr.json's was also the README's earlier headline (grid_headline_markdown):

    python -m research.screen --dir out/p1-lr --phase1-seeds 0 1 2 3 4 5 --out research/notes/grid-lr.json
    python -m research.screen --dir out/p1-lr-more --phase1-seeds 6 7 --out research/notes/grid-lr.json --update
"""
import argparse
import hashlib
import json
import os
import re

import numpy as np

from config import fail, phase1_name
from model import atomic_write
from research.robustness import BAND_CRITERION, band_verdict, fmt, mean_cell, wilson_interval
from config import stage_steps


# The acceptance test of these screens, fixed before them: the 16-token curriculum stage passed before its cap, and
# D = 16 after phase 1 at least 0.85, read from the end-of-phase-1 table (the held-out probe seeds). The protocol of
# research/protocol.md (and train.py's own test, config.ACCEPTANCE) reads D = 16 on the selection probe instead.
ACCEPTANCE = {"stage16_passed": True, "d16_min": 0.85}
STEP0_CHECK = BAND_CRITERION["step0_max"]  # a candidate addition to the test: step 0's band max, selection probe


def accepted(stage16_step, d16) -> bool:
    """ACCEPTANCE on what phase 1 showed: its first curriculum stage passed (a step; None: it ran to its cap) and D = 16
    after phase 1 at least 0.85."""
    return stage16_step is not None and d16 is not None and d16 >= ACCEPTANCE["d16_min"]


def band_cells(row) -> list:
    """A band row's accuracies at BAND_CRITERION's distances, in order (a row missing one is not a band row)."""
    return [dict(zip(row["distances"], row["kv"]))[d] for d in BAND_CRITERION["band"]]


def acceptance_markdown(screen) -> str:
    """The acceptance screen's table (research/notes/acceptance.json): per phase-1 student, what phase 1 showed (the
    step its 16-token stage passed, D = 16 after phase 1), whether ACCEPTANCE takes it, and phase 2's outcome on the
    band. Where the screen measured the step-0 check (step 0's band max on the selection probe, before phase 2), two
    more columns: that maximum, and whether the test with the check added (at most STEP0_CHECK) takes the student."""
    checked = any("step0_selection" in st for st in screen["students"])  # the step-0 check: its two columns
    head = ["phase-1 seed", "16-token stage passed at step", "after phase 1, D = 16", "accepted"]
    head += ["step 0, band max, selection probe", "accepted with the step-0 check"] if checked else []
    head += ["step 0, band max", "KD, band min", "KD, band mean", "CE twin, band mean", "phase 2 on the band"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for st in screen["students"]:
        seed = st["phase1_seed"]
        if "stopped_at" in st:  # phase 1 stopped before its 16-token stage passed: no phase 2
            check = " - | no |" if checked else ""
            out.append(f"| {seed} | not by step {st['stopped_at']} (stopped) | - | no |{check} - | - | - | - | not run |")
            continue
        ok = accepted(st["stage16_step"], st["d16"])
        phase1 = f" {st['stage16_step'] or 'capped'} | {fmt(st['d16'])} | {'yes' if ok else 'no'} |"  # after the seed
        if checked:
            step0 = st.get("step0_selection")
            ok_step0 = ok and step0 is not None and step0 <= STEP0_CHECK
            phase1 += f" {fmt(step0)} | {'yes' if ok_step0 else 'no'} |"
        phase2_seeds = sorted({r["phase2_seed"] for r in screen["runs"] if r["phase1_seed"] == seed})
        if not phase2_seeds:  # phase 1 finished, phase 2 not run
            out.append(f"| {seed} |{phase1} - | - | - | - | not run |")
        for p2 in phase2_seeds:  # one row per phase-2 seed; phase 2's seed 0 is the one every student has
            arms = {r["arm"]: r for r in screen["runs"] if r["phase1_seed"] == seed and r["phase2_seed"] == p2}
            cells = {a: band_cells(r) for a, r in arms.items()}
            passed, why = band_verdict(arms)
            label = f"{seed}" if p2 == 0 else f"{seed}, phase-2 seed {p2}"
            out.append(f"| {label} |{phase1} {fmt(max(cells['step0']))} | {fmt(min(cells['kd']))} | "
                       f"{fmt(float(np.mean(cells['kd'])))} | {fmt(float(np.mean(cells['ce'])))} | "
                       f"{'pass' if passed else 'fail: ' + '; '.join(why)} |")
    return "\n".join(out)


GRID_LABELS = {"step0": "step 0 (phase 1 + base 5e5)", "kd": "KD student (0.1 CE + 0.9 KD)", "ce": "CE twin",
               "ce-teacher-labels": "CE on the teacher's argmax", "kd-masked": "KD without the far-back targets",
               "ce-masked": "CE without the far-back targets", "kd-teacher-docmask": "KD, teacher under the doc mask"}


def within_bound(arms, arm) -> bool:
    """Whether one combination's `arm` (step0, kd or ce) keeps its part of the band criterion: measured at every band
    distance (a None is outside the bound: band_verdict reports it for the CE twin only as "a band distance not
    measured") and band_verdict names no failure of it."""
    measured = None not in band_cells(arms[arm])
    return measured and not any(why.startswith(arm + " ") for why in band_verdict(arms)[1])


def grid_headline_markdown(screen) -> str:
    """The README's headline from a grid in research/notes/grid-lr.json's format: for the students the acceptance test
    takes (the recipe with its retrain rule), the mean of step 0, KD and the CE twin over every combination at D = 256
    and on the band, and how many keep the criterion's bound; the ablation arms' means over their students; then the
    pass count over students (phase-2 seed 0) with its Wilson 95% interval, and over combinations."""
    taken = {st["phase1_seed"] for st in screen["students"] if "stopped_at" not in st
             and accepted(st["stage16_step"], st["d16"])}
    combos = {}  # (phase-1 seed, phase-2 seed) -> {arm: row}
    for r in screen["runs"]:
        if r["phase1_seed"] in taken:
            combos.setdefault((r["phase1_seed"], r["phase2_seed"]), {})[r["arm"]] = r
    dists = [256] + BAND_CRITERION["band"]
    out = ["| model | students (runs) | " + " | ".join(f"D={d}" for d in dists) + " | in-doc | runs within the "
           "criterion's bound |", "|" + " --- |" * (len(dists) + 4)]

    def line(arm, runs, within):  # one model: students (runs), the mean at each distance and in-doc, the bound
        return (f"| {GRID_LABELS[arm]} | {len({r['phase1_seed'] for r in runs})} ({len(runs)}) | "
                + " | ".join(fmt(mean_cell(runs, d)) for d in dists)
                + f" | {fmt(float(np.mean([r['in_doc'] for r in runs])))} | {within} |")
    for arm in ("step0", "kd", "ce"):
        out.append(line(arm, [arms[arm] for arms in combos.values()],
                        f"{sum(within_bound(arms, arm) for arms in combos.values())} of {len(combos)}"))
    for arm in ("ce-teacher-labels", "kd-masked", "ce-masked", "kd-teacher-docmask"):
        if runs := [r for r in screen.get("ablations", []) if r["arm"] == arm]:
            out.append(line(arm, runs, "-"))
    passed = {key: band_verdict(arms)[0] for key, arms in combos.items()}
    students = sorted(seed for seed, p2 in passed if p2 == 0)
    k = sum(passed[(seed, 0)] for seed in students)
    lo, hi = wilson_interval(k, len(students))
    out += ["", f"**{k} of {len(students)}** accepted phase-1 students pass (phase-2 seed 0; Wilson 95% interval "
            f"[{lo:.2f}, {hi:.2f}]); {sum(passed.values())} of {len(passed)} seed combinations."]
    return "\n".join(out)


def screen_student(out_dir, phase1_seed, cap):
    """What phase 1 showed for one student of a screen (research/notes/acceptance.json's "students"), from its run
    files: the step its 16-token stage passed (None if it ran to its `cap`), D = 16 after phase 1, its minutes; a run
    stopped inside that stage (no end-of-run JSON) gets stopped_at instead. Where `python -m research.robustness band
    --arms step0 --probe-seeds 0` ran, step0_selection: the phase-1 student's band max after the base switch, on the
    selection probe (measured before phase 2, so a candidate for the acceptance test)."""
    base = os.path.join(out_dir, phase1_name(1e4, phase1_seed))
    stage16 = stage_steps(base + ".jsonl", "curriculum-16")
    st = {"phase1_seed": phase1_seed, "stage16_step": stage16 if 0 < stage16 < cap else None, "stage16_cap": cap}
    if not os.path.exists(base + ".json"):
        return {**st, "stage16_step": None, "d16": None, "stopped_at": stage16}
    with open(base + ".json") as f:
        run = json.load(f)
    st |= {"d16": run["results"][run["run"]]["kv"]["16"], "phase1_minutes": round(run["speed"]["train_seconds"] / 60, 1)}
    step0 = os.path.join(out_dir, f"band-p{phase1_seed}-s0-probe0.json")  # band --arms step0 --probe-seeds 0
    if os.path.exists(step0):
        with open(step0) as f:
            row = json.load(f)[0]
        st["step0_selection"] = max(band_cells(row))
    return st


def screen_json(out_dir, phase1_seeds, what, commands, cap=8000):
    """A screen of phase-1 students in one folder, in research/notes/acceptance.json's format: each student's phase 1
    (screen_student) and, where it went on, its held-out band rows (the band-pN-sK.json files of
    research.robustness band, one per phase-2 seed K) and its position probe (positions-pN-s0.json, student_positions)."""
    from evaluate import HELDOUT_SEEDS
    students, runs, positions, ablations = [screen_student(out_dir, s, cap) for s in phase1_seeds], [], [], []
    files = os.listdir(out_dir)
    for s in phase1_seeds:
        bands = sorted((f for f in files if re.fullmatch(rf"band-p{s}-s\d+\.json", f)),
                       key=lambda f: int(f[:-5].rsplit("-s", 1)[1]))  # one per phase-2 seed; -probe0 files are not
        arms = [f for f in files if re.fullmatch(rf"band-p{s}-s0-(?!probe)[a-z.-]+\.json", f)]
        for name, found in ([(b, runs) for b in bands] + [(f"positions-p{s}-s0.json", positions)]
                            + [(a, ablations) for a in sorted(arms)]):  # the ablation arms' band files
            if os.path.exists(os.path.join(out_dir, name)):
                with open(os.path.join(out_dir, name)) as f:
                    found += json.load(f)
    screen = {"what": what, "acceptance": ACCEPTANCE, "criterion": BAND_CRITERION,
              "probe_seeds": list(HELDOUT_SEEDS), "commands": commands, "students": students, "runs": runs}
    return {**screen, **{k: v for k, v in (("positions", positions), ("ablations", ablations)) if v}}


def ablations_markdown(screen) -> str:
    """The ablation table: per student with ablation runs (research.robustness band --arms kd-masked ...), step 0,
    its KD student and CE twin (phase-2 seed 0), then each ablation arm, on the band (held-out probes)."""
    from research.robustness import runs_markdown
    rows = []
    for s in sorted({r["phase1_seed"] for r in screen.get("ablations", [])}):
        rows += [r for r in screen["runs"] if r["phase1_seed"] == s and r["phase2_seed"] == 0]
        rows += [r for r in screen["ablations"] if r["phase1_seed"] == s]
    return runs_markdown(rows)


def merge_screens(old, new):
    """A screen grown by more students (`--update`): `new`'s students and their band, position and ablation rows
    replace `old`'s of the same phase-1 seeds, `old`'s other students stay as they were; ordered by phase-1 seed. The
    two must share the acceptance test, the criterion and the probe seeds; `new`'s sentence and commands win where
    given."""
    for key in ("acceptance", "criterion", "probe_seeds"):
        if old.get(key) != new[key]:
            raise ValueError(f"the screen to update has another {key} ({old.get(key)} vs {new[key]})")
    seeds = {st["phase1_seed"] for st in new["students"]}

    def merged(key, order):
        rows = [r for r in old.get(key, []) if r["phase1_seed"] not in seeds] + new.get(key, [])
        return sorted(rows, key=order)  # stable: a student's rows keep their order (step0, kd, ce)
    screen = {**{k: v for k, v in old.items() if k not in ("positions", "ablations")},
              "what": new["what"] or old["what"], "commands": new["commands"] or old["commands"],
              "students": merged("students", lambda r: r["phase1_seed"]),
              "runs": merged("runs", lambda r: (r["phase1_seed"], r["phase2_seed"]))}
    extra = {k: merged(k, lambda r: r["phase1_seed"]) for k in ("positions", "ablations")}  # a student's, in order
    return {**screen, **{k: v for k, v in extra.items() if v}}


# ----------------------------------------------------------------------------- distance or position?

POSITION_RULE = {"start_min": 0.9, "later_max": 0.5}  # "long range only from the window's start", fixed before


def student_positions(out_dir, phase1_seed):
    """The record-position x distance probe (evaluate.position_sweep: 16 records in [start, start + 64), each
    queried D later; research.robustness's starts, distances and windows per cell; held-out probe seeds) of a
    student's KD run and CE twin, kept in OUT/positions-pN-s0.json and measured again only when a checkpoint (its
    SHA-256) or the probe's settings change: [{"phase1_seed", "arm", "starts", "distances", "windows_per_cell",
    "checkpoint_sha256", "step", "kv": [[acc or None per D] per start]}]. An unfinished run is refused."""
    from contextlib import nullcontext

    import torch
    from data import TaskSpec
    from interp.probes import position_sweep
    from model import load_model
    from research import robustness
    path, ckpts = (os.path.join(out_dir, f"positions-p{phase1_seed}-s0.json"),
                   robustness.student_paths(out_dir, phase1_seed))
    setup = {"starts": list(robustness.SWEEP_STARTS), "distances": list(robustness.SWEEP_DISTANCES),
             "windows_per_cell": robustness.SWEEP_WINDOWS}
    with_setup = []  # per arm: the settings and which checkpoint (its SHA-256) a measurement belongs to
    for arm in ("kd", "ce"):
        with open(ckpts[arm], "rb") as f:
            with_setup.append({**setup, "checkpoint_sha256": hashlib.file_digest(f, "sha256").hexdigest()})
    if os.path.exists(path):  # measured before: kept while the checkpoints and the probe's settings are the same
        with open(path) as f:
            rows = json.load(f)
        if [{k: r.get(k) for k in with_setup[0]} for r in rows] == with_setup:
            return rows
    rows = []
    for arm, keys in zip(("kd", "ce"), with_setup):
        model, ckpt = load_model(ckpts[arm], "cpu")
        if not ckpt.get("done"):
            raise ValueError(f"{ckpts[arm]} is an unfinished run (step {ckpt.get('step')}): probe it once it is done")
        grid = position_sweep(model.eval(), TaskSpec(), 1024, setup["distances"], setup["starts"],
                              torch.device("cpu"), nullcontext(), setup["windows_per_cell"],
                              band=robustness.SWEEP_BAND)  # {start: {D: acc or None}}
        rows.append({"phase1_seed": phase1_seed, "arm": arm, **keys, "step": ckpt["step"],
                     "kv": [[grid[s][d] for d in setup["distances"]] for s in setup["starts"]]})
    atomic_write(path, lambda f: json.dump(rows, f, indent=1), mode="w")
    return rows


def position_summary(row) -> dict:
    """One model's position probe in four numbers: long range (D >= 512) from records at the window's start,
    D = 512-768 from records at 128-384 ("later"), D <= 256 from records at 512 or beyond ("late records"), and
    its weakest cell; `only_start` by POSITION_RULE. A mean over the cells measured; None where none is."""
    cells = [(s, d, v) for s, accs in zip(row["starts"], row["kv"]) for d, v in zip(row["distances"], accs)
             if v is not None]

    def mean(keep):
        vals = [v for s, d, v in cells if keep(s, d)]
        return float(np.mean(vals)) if vals else None
    start = mean(lambda s, d: s == 0 and d >= 512)
    later = mean(lambda s, d: 128 <= s <= 384 and 512 <= d <= 768)
    weakest = min(cells, key=lambda c: c[2])
    return {"start": start, "later": later, "late_records": mean(lambda s, d: s >= 512 and d <= 256),
            "weakest": weakest, "only_start": start is not None and later is not None and
            start >= POSITION_RULE["start_min"] and later < POSITION_RULE["later_max"]}


def positions_markdown(screen) -> str:
    """The position probe's table: per student and arm, position_summary's numbers."""
    out = ["| phase-1 seed | model | D >= 512, records at 0 | D = 512-768, records at 128-384 | D <= 256, records at "
           ">= 512 | weakest cell (record at, D) | long range only from the window's start |", "|" + " --- |" * 7]
    for row in screen.get("positions", []):
        p = position_summary(row)
        s, d, v = p["weakest"]
        out.append(f"| {row['phase1_seed']} | {'KD student' if row['arm'] == 'kd' else 'CE twin'} | {fmt(p['start'])} "
                   f"| {fmt(p['later'])} | {fmt(p['late_records'])} | {v:.2f} ({s}, {d}) | "
                   f"{'yes' if p['only_start'] else 'no'} |")
    return "\n".join(out)


def main(argv=None):
    """`python -m research.screen --dir OUT --phase1-seeds N ... --out F.json`: gather, write, print the table."""
    p = argparse.ArgumentParser(description="Gather a screen of phase-1 students (phase 1's run files and the band "
                                "rows of research.robustness band) into one JSON, and print its table.")
    p.add_argument("--dir", required=True, help="the folder the students' phase-1 and phase-2 runs were trained in")
    p.add_argument("--phase1-seeds", type=int, nargs="+", required=True, help="the students, in the order to report")
    p.add_argument("--out", required=True, help="the JSON to write (research/notes/acceptance.json's format)")
    p.add_argument("--what", default="", help="one sentence on what the students are")
    p.add_argument("--commands", nargs="+", default=[], help="the commands that trained and scored them")
    p.add_argument("--update", action="store_true", help="add these students to the screen already in --out (its "
                   "other students stay; these seeds' rows are replaced), for a screen that grows in another folder")
    p.add_argument("--positions", action="store_true", help="also the record-position x distance probe of every "
                   "student with a KD run and CE twin (measured once, kept in DIR/positions-pN-s0.json)")
    args = p.parse_args(argv)
    try:
        if args.positions:
            from model import load_checkpoint
            from research.robustness import student_paths
            for s in args.phase1_seeds:
                paths = [student_paths(args.dir, s)[a] for a in ("kd", "ce")]
                if not all(os.path.exists(p) for p in paths):
                    continue
                if all(load_checkpoint(p).get("done") for p in paths):
                    student_positions(args.dir, s)  # measured, or read back when measured before
                else:
                    print(f"phase-1 student {s}: its phase 2 is unfinished, no position probe yet", flush=True)
        screen = screen_json(args.dir, args.phase1_seeds, args.what, args.commands)
        if args.update:
            with open(args.out) as f:
                screen = merge_screens(json.load(f), screen)
    except (OSError, ValueError, KeyError) as e:  # a student without run files, or a file not of this format
        fail(f"cannot gather the screen from {args.dir}: {e}")
    atomic_write(args.out, lambda f: json.dump(screen, f, indent=1), mode="w")
    print(acceptance_markdown(screen))
    if screen.get("positions"):
        print(positions_markdown(screen))
    if screen.get("ablations"):
        print(ablations_markdown(screen))


if __name__ == "__main__":
    main()
