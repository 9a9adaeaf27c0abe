"""The protocol's runs (research/protocol.md): the head-dimension screen, then the grid at two overlaps.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) claims that a student trained only on packed short
documents acquires long-range retrieval from a long-context teacher's logits. research/protocol.md fixes, before
any run, how that is asked over never-used phase-1 students; this file carries it out and nothing else:

- `run`: trains what the protocol asks (train.py in subprocesses, two at a time, one thread each), in the
  protocol's order, and measures what it reads (the acceptance test on the selection probe, the band and the
  short distances on the held-out probes). Everything it decides comes from the files in OUT, so it can be
  started again: finished runs are kept, a run that started and did not finish counts as stopped.
- `measure`: one measurement, as a subprocess of `run` (the acceptance probe of a phase-1 student, or one
  model on the band).
- `status`: what OUT holds, by the protocol's rules.
- `report`: status with the cells the protocol reports (means and min-max over students per overlap, the small-base
  control), as JSON, and the README's headline table (headline_markdown).

    python -m research.grid run --stage screen --out out/screen
    python -m research.grid run --stage grid --out out/grid --screen out/screen
    python -m research.grid status --stage grid --out out/grid --screen out/screen
    python -m research.grid report --stage grid --out out/grid --screen out/screen   # research/notes/grid/grid.json
"""
import argparse
import fcntl
import json
import math
import os
import subprocess
import sys
import time

import config
from model import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, "train.py")

GRID_SEEDS = list(range(100, 130))  # in this order
SCREEN_SEEDS = [200, 201, 202, 203]
GRID_ACCEPTED = 12  # students accepted before the grid stops
SECOND_SEED = 4  # the first four accepted get phase-2 seed 1 (default overlap)
FINDING3 = 5  # the first five accepted carry finding 3 (with the small-base control)
CONTROL_BASE = 10000  # finding 3's control: the KD student with the base kept at phase 1's
STAGE_CAP = 8000  # the 16-token stage's cap (--curriculum-steps)
ACCEPT = {"probe_seed": 0, "distance": 16, "min": 0.85, "windows": 16}
BAND = list(range(512, 897, 16))  # 25 distances
SHORT = [16, 32, 64, 128, 256]
DISTANCES = SHORT + BAND + [900]
HELDOUT = [1, 2, 3]
CRITERION = {"band": BAND, "step0_max": 0.3, "kd_min": 0.9, "ce_gap": 0.3}
HEADS64 = ["--n-head", "2", "--n-kv-head", "2"]
PHASE1 = ["--phase", "1", "--kd-weight", "0", "--lr", "1e-3", "--curriculum-steps", str(STAGE_CAP), "--steps", "1000"]
OVERLAPS = {"default": [], "0": ["--recurrence", "0"]}
LAUNCHED = set()  # the runs this process has started and not yet seen end (run_state: running)


# ----------------------------------------------------------------------------- names and commands


def phase1_run(seed):
    return f"phase1-b10000-s{seed}"


def phase2_run(seed, arm, overlap="default", phase2_seed=0, base=500000):
    """train.py's name of a phase-2 run from phase-1 student `seed` (config.resolve's naming)."""
    rec = "-rec0" if overlap == "0" else ""
    tail = f"-s{phase2_seed}" if phase2_seed else ""
    return f"phase2-{arm}-b10000-b{base:g}-p{seed}{rec}{tail}"


def phase1_argv(seed, out, heads64):
    return PHASE1 + ["--seed", str(seed), "--threads", "1", "--out-dir", out] + (HEADS64 if heads64 else [])


def phase2_argv(seed, arm, out, overlap="default", phase2_seed=0, base=500000):
    argv = ["--phase", "2", "--rope-base", f"{base:g}", "--phase1-seed", str(seed), "--init",
            os.path.join(out, phase1_run(seed) + ".pt"), "--seed", str(phase2_seed), "--no-baseline",
            "--threads", "1", "--out-dir", out] + OVERLAPS[overlap]
    return argv + (["--kd-weight", "0"] if arm == "ce" else [])


# ----------------------------------------------------------------------------- what OUT holds


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def in_flight(out, name):
    """Whether a process holds the run's lock (train.py's RunLock on OUT/.<run>.lock) now."""
    path = os.path.join(out, f".{name}.lock")
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def run_state(out, name):
    """"done" (results JSON written), "running" (a process holds its lock), "stopped" (started, not finished, no
    process on it), "failed" (its process exited non-zero), or None (never started)."""
    if read_json(os.path.join(out, name + ".json")) is not None:
        return "done"
    if in_flight(out, name) or name in LAUNCHED:
        return "running"
    if os.path.exists(os.path.join(out, name + ".failed")):
        return "failed"
    if os.path.exists(os.path.join(out, name + ".jsonl")) or os.path.exists(os.path.join(out, name + ".pt")):
        return "stopped"
    return None


def stage_steps(out, name, stage="curriculum-16"):
    """Steps the run spent in `stage`, from its step log (config.stage_steps)."""
    return config.stage_steps(os.path.join(out, name + ".jsonl"), stage)


def verdict_of(out, seed):
    """The acceptance record of a phase-1 student (None while not decided): stage passed, D = 16 on the selection
    probe, accepted; or a stopped student."""
    name = phase1_run(seed)
    state = run_state(out, name)
    if state in ("failed", "stopped"):
        return {"phase1_seed": seed, "accepted": False, "why": "stopped in phase 1", "probe_seed": None}
    probe = read_json(os.path.join(out, f"accept-s{seed}.json"))
    if state != "done" or probe is None:
        return None
    steps = stage_steps(out, name)
    passed = 0 < steps < STAGE_CAP
    ok = passed and probe["kv"] is not None and probe["kv"] >= ACCEPT["min"]
    run = read_json(os.path.join(out, name + ".json"))
    why = [] if passed else [f"16-token stage not passed by its cap of {STAGE_CAP}"]
    if probe["kv"] is None or probe["kv"] < ACCEPT["min"]:
        why.append("D=16 not measurable" if probe["kv"] is None else f"D=16 {probe['kv']:.2f} < 0.85")
    return {"phase1_seed": seed, "stage16_step": steps if passed else None, "stage16_cap": STAGE_CAP,
            "d16_selection": probe["kv"], "probe_seed": ACCEPT["probe_seed"], "accepted": ok, "why": "; ".join(why),
            "phase1_minutes": round(run["speed"]["train_seconds"] / 60, 1), "commit": run.get("commit"),
            "started": run.get("started")}


def accepted_in_order(out, seeds, limit=None):
    """(accepted seeds in list order, as far as every earlier seed is decided; whether the list is decided that
    far). Stops at `limit` accepted."""
    taken = []
    for seed in seeds:
        v = verdict_of(out, seed)
        if v is None:
            return taken, False
        if v["accepted"]:
            taken.append(seed)
            if limit is not None and len(taken) == limit:
                return taken, True
    return taken, True


def band_path(out, model):
    return os.path.join(out, f"band-{model}.json")


# ----------------------------------------------------------------------------- the protocol's jobs


def jobs(stage, out, heads64):
    """[(key, kind, argv or measure args, ready)]: every job of the stage whose inputs exist, in priority order
    (measurements, then phase 2, then the control, then phase 1), none already done or given up."""
    seeds = SCREEN_SEEDS if stage == "screen" else GRID_SEEDS
    limit = None if stage == "screen" else GRID_ACCEPTED
    taken, decided = accepted_in_order(out, seeds, limit)
    measure, phase2, control, phase1 = [], [], [], []
    for seed in seeds:
        v = verdict_of(out, seed)
        if run_state(out, phase1_run(seed)) == "done" and read_json(os.path.join(out, f"accept-s{seed}.json")) is None:
            measure.append((f"accept-s{seed}", "measure", ["accept", str(seed)]))
        if v is None or not v["accepted"] or seed not in taken:
            continue
        rank = taken.index(seed)
        runs = [(arm, "default", 0) for arm in ("kd", "ce")]
        if stage == "grid":
            runs += [(arm, "0", 0) for arm in ("kd", "ce")]
            runs += [(arm, "default", 1) for arm in ("kd", "ce")] if rank < SECOND_SEED else []
        if not os.path.exists(band_path(out, f"s{seed}-step0")):
            measure.append((f"band-s{seed}-step0", "measure", ["band", str(seed), "step0"]))
        for arm, overlap, p2 in runs:
            name = phase2_run(seed, arm, overlap, p2)
            state = run_state(out, name)
            if state is None:
                phase2.append((name, "train", phase2_argv(seed, arm, out, overlap, p2)))
            elif state == "done" and not os.path.exists(band_path(out, name)):
                measure.append((f"band-{name}", "measure", ["band", str(seed), name]))
        small = phase2_run(seed, "kd", base=CONTROL_BASE)  # finding 3's control
        if stage == "grid" and rank < FINDING3 and run_state(out, small) is None:
            control.append((small, "train", phase2_argv(seed, "kd", out, base=CONTROL_BASE)))
        elif stage == "grid" and run_state(out, small) == "done" and not os.path.exists(band_path(out, small)):
            measure.append((f"band-{small}", "measure", ["band", str(seed), small]))
    started = [s for s in seeds if run_state(out, phase1_run(s)) is not None]
    undecided = [s for s in started if verdict_of(out, s) is None]
    for seed in seeds:
        if run_state(out, phase1_run(seed)) is not None:
            continue
        if stage == "grid" and (len(taken) + len(undecided) >= GRID_ACCEPTED or len(started) >= len(seeds)):
            break
        phase1.append((phase1_run(seed), "train", phase1_argv(seed, out, heads64)))
        started.append(seed)
        undecided.append(seed)
    return measure + phase2 + control + phase1


def launch(key, kind, argv, out):
    log = open(os.path.join(out, key + ".log"), "a")
    if kind == "train":
        cmd = [sys.executable, TRAIN_PY] + argv
    else:
        cmd = [sys.executable, "-m", "research.grid", "measure", "--out", out] + argv
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def run(stage, out, heads64, slots=2, poll=20):
    """Launch the stage's jobs, `slots` at a time, until none is left; a train job that exits non-zero leaves
    OUT/<run>.failed (the protocol's stopped run)."""
    os.makedirs(out, exist_ok=True)
    running = {}
    while True:
        for key, proc in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[key]
            LAUNCHED.discard(key)
            if code != 0:
                atomic_write(os.path.join(out, key + ".failed"), lambda f: f.write(f"exit code {code}\n"), "w")
                print(f"{time.strftime('%H:%M')} {key}: exit code {code}", flush=True)
            else:
                print(f"{time.strftime('%H:%M')} {key}: done", flush=True)
        todo = [j for j in jobs(stage, out, heads64) if j[0] not in running]
        for key, kind, argv in todo[:slots - len(running)]:
            print(f"{time.strftime('%H:%M')} start {key}", flush=True)
            running[key] = launch(key, kind, argv, out)
            LAUNCHED.add(key)
        if not running and not todo:
            break
        time.sleep(poll)
    print(json.dumps(status(stage, out), indent=1))


# ----------------------------------------------------------------------------- measurements


def measure(out, what, seed, model=None):
    """accept: D = 16 of the phase-1 student on the selection probe -> OUT/accept-sS.json. band: one model (step0,
    or a phase-2 run's name) on DISTANCES and in-doc, held-out probes -> OUT/band-<model>.json."""
    from contextlib import nullcontext

    import torch

    from data import TaskSpec
    from evaluate import evaluate, evaluate_heldout
    from model import load_model, switch_rope
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    phase1 = os.path.join(out, phase1_run(seed) + ".pt")
    if what == "accept":
        m = load_model(phase1)[0].eval()
        r = evaluate(m, TaskSpec(), 32, [ACCEPT["distance"]], 32, cpu, nullcontext(), ACCEPT["windows"],
                     seed=ACCEPT["probe_seed"])
        row = {"phase1_seed": seed, "probe_seed": ACCEPT["probe_seed"], "distance": ACCEPT["distance"],
               "kv": r["kv"][ACCEPT["distance"]]}
        path = os.path.join(out, f"accept-s{seed}.json")
    else:
        if model == "step0":
            m = switch_rope(load_model(phase1)[0], 500000.0, None, 1024)
        else:
            m = load_model(os.path.join(out, model + ".pt"))[0]
        r = evaluate_heldout(m.eval(), TaskSpec(), 1024, DISTANCES, 128, cpu, nullcontext(), 16, seeds=HELDOUT)
        row = {"phase1_seed": seed, "model": model, "distances": DISTANCES, "kv": [r["kv"][d] for d in DISTANCES],
               "in_doc": r["in_doc"], "probe_seeds": HELDOUT}
        path = band_path(out, f"s{seed}-step0" if model == "step0" else model)
    atomic_write(path, lambda f: json.dump(row, f, indent=1), mode="w")
    print(json.dumps(row))


# ----------------------------------------------------------------------------- verdicts


def misses(what, values, band, outside, bound, worst, word):
    """"<what> <bound> at n of N band distances (<word> v at D=d)" for the band values outside their bound, the worst
    one named; None when every value keeps it."""
    out = [(v, d) for d, v in zip(band, values) if outside(v)]
    if not out:
        return None
    v, d = worst(out)
    return f"{what} {bound} at {len(out)} of {len(values)} band distances ({word} {v:.2f} at D={d})"


def band_verdict(step0, kd, ce, criterion=CRITERION):
    """(passed, [what failed]) of one combination from its three band rows."""
    def cells(row):
        kv = dict(zip(row["distances"], row["kv"]))
        return [kv.get(d) for d in criterion["band"]]
    s, k, c = cells(step0), cells(kd), cells(ce)
    if any(v is None for v in s + k + c):
        return False, ["a band distance not measured"]
    failed = [m for m in (misses("step0 above", s, criterion["band"], lambda v: v > criterion["step0_max"],
                                 criterion["step0_max"], max, "highest"),
                          misses("kd below", k, criterion["band"], lambda v: v < criterion["kd_min"],
                                 criterion["kd_min"], min, "lowest")) if m]
    kd_mean, ce_mean = sum(k) / len(k), sum(c) / len(c)
    if ce_mean > kd_mean - criterion["ce_gap"]:
        failed.append(f"ce band mean {ce_mean:.2f} within {criterion['ce_gap']} of kd's {kd_mean:.2f}")
    return not failed, failed


def combination(out, seed, overlap, phase2_seed):
    """{"passed", "why"} of one (student, overlap, phase-2 seed), or None while a part is missing; a stopped run
    fails it."""
    names = {arm: phase2_run(seed, arm, overlap, phase2_seed) for arm in ("kd", "ce")}
    stopped = [n for n in names.values() if run_state(out, n) in ("failed", "stopped")]
    if stopped:
        return {"passed": False, "why": "stopped in phase 2: " + ", ".join(stopped)}
    rows = {"step0": read_json(band_path(out, f"s{seed}-step0"))}
    rows |= {arm: read_json(band_path(out, n)) for arm, n in names.items()}
    if any(r is None for r in rows.values()):
        return None
    passed, why = band_verdict(rows["step0"], rows["kd"], rows["ce"])
    return {"passed": passed, "why": "; ".join(why)}


def wilson(k, n, z=1.959964):
    """95% Wilson score interval for k successes in n trials (Wilson 1927)."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def status(stage, out):
    """What OUT holds by the protocol's rules: every tried seed's verdict, each accepted student's combinations,
    the pass counts per overlap (phase-2 seed 0) with Wilson intervals; for the screen, its verdict."""
    seeds = SCREEN_SEEDS if stage == "screen" else GRID_SEEDS
    taken, _ = accepted_in_order(out, seeds, None if stage == "screen" else GRID_ACCEPTED)
    full = stage == "grid" and len(taken) == GRID_ACCEPTED
    students = []
    for seed in seeds:
        state = run_state(out, phase1_run(seed))
        if state is None:
            continue
        v = verdict_of(out, seed) or {"phase1_seed": seed, "accepted": None, "why": "running"}
        if v["accepted"] and seed not in taken:  # after the 12th accepted, or after a seed not yet decided
            why = "not needed (after the 12th accepted)" if full else "accepted; waits for an earlier seed's verdict"
            v = {**v, "why": why}
        students.append(v)
    overlaps = ["default"] if stage == "screen" else ["default", "0"]
    combos = {f"{seed}/{o}/{p2}": combination(out, seed, o, p2) for seed in taken for o in overlaps
              for p2 in ([0, 1] if stage == "grid" and o == "default" and taken.index(seed) < SECOND_SEED else [0])}
    passes = {}
    for o in overlaps:
        decided = [combos[f"{s}/{o}/0"] for s in taken if combos[f"{s}/{o}/0"] is not None]
        k = sum(c["passed"] for c in decided)
        passes[o] = {"passed": k, "decided": len(decided), "accepted": len(taken), "wilson95": wilson(k, len(decided))}
    res = {"stage": stage, "accepted": taken, "students": students, "combinations": combos, "passes": passes}
    if stage == "screen":
        k, n = passes["default"]["passed"], len(taken)
        res["adopt_heads64"] = n >= 2 and k >= max(2, math.ceil(0.75 * n)) and passes["default"]["decided"] == n
    return res


def screen_verdict(screen_out):
    """Whether the screen adopted heads of 64 dimensions; an error while it is not decided."""
    st = status("screen", screen_out)
    undecided = [s for s in st["students"] if s["accepted"] is None]
    if undecided or any(c is None for c in st["combinations"].values()) or len(st["students"]) < len(SCREEN_SEEDS):
        raise SystemExit("error: the head-dimension screen is not finished: run it first")
    return st["adopt_heads64"]


# ----------------------------------------------------------------------------- the report


ARMS = {"step 0": None, "KD student": "kd", "CE twin": "ce"}
PACKER = {"default": "keys drawn uniformly", "0": "no key recurs"}  # the two overlaps, as the tables name them
SHOWN = [128, 256]  # the short distances the headline shows beside the band's mean (and D = 900)


def band_rows(out, seed, overlap="default", phase2_seed=0, base=500000):
    """{"step 0", "KD student", "CE twin": band row or None} of one combination."""
    rows = {}
    for label, arm in ARMS.items():
        model = f"s{seed}-step0" if arm is None else phase2_run(seed, arm, overlap, phase2_seed, base)
        rows[label] = read_json(band_path(out, model))
    return rows


def band_mean(row):
    kv = dict(zip(row["distances"], row["kv"]))
    return sum(kv[d] for d in BAND) / len(BAND)


def cell(rows):
    """Mean, min and max over students of one model's band rows: per distance (keyed by str(d), as the JSON holds
    them), the band's mean, in-doc."""
    kvs = [dict(zip(r["distances"], r["kv"])) for r in rows]
    per_d = {str(d): [kv[d] for kv in kvs] for d in DISTANCES}
    means = [band_mean(r) for r in rows]
    return {"students": len(rows), "kv": {d: sum(v) / len(v) for d, v in per_d.items()},
            "kv_min": {d: min(v) for d, v in per_d.items()}, "kv_max": {d: max(v) for d, v in per_d.items()},
            "band_mean": {"mean": sum(means) / len(means), "min": min(means), "max": max(means)},
            "in_doc": sum(r["in_doc"] for r in rows) / len(rows)}


def run_records(out):
    """{run name: {"commit", "started"}} of every finished training run in OUT (its results JSON records both)."""
    runs = {}
    for name in sorted(os.listdir(out)):
        if name.startswith(("phase1-", "phase2-")) and name.endswith(".json") and name.count(".") == 1:
            res = read_json(os.path.join(out, name)) or {}
            runs[name[:-5]] = {"commit": res.get("commit"), "started": res.get("started")}
    return runs


def report(out, screen_out):
    """The grid by the protocol's rules (status) with the cells it reports: per overlap, the mean (min-max) over the
    accepted students whose combination is complete (phase-2 seed 0) of step 0, the KD student and the CE twin;
    the second phase-2 seed's combinations; finding 3's control (KD with the base kept small) on the band."""
    res = status("grid", out)
    res["protocol"] = "research/protocol.md"
    res["head_dim"] = 64 if screen_verdict(screen_out) else 32
    res["screen"] = status("screen", screen_out)
    res["runs"] = run_records(out)
    res["screen"]["runs"] = run_records(screen_out)
    res["criterion"] = CRITERION
    res["cells"] = {}
    for overlap in ("default", "0"):
        complete = [band_rows(out, s, overlap) for s in res["accepted"]]
        complete = [rows for rows in complete if all(r is not None for r in rows.values())]
        res["cells"][overlap] = {label: cell([rows[label] for rows in complete]) for label in ARMS} if complete else {}
    controls = {seed: phase2_run(seed, "kd", base=CONTROL_BASE) for seed in res["accepted"][:FINDING3]}
    res["controls"] = {str(seed): run_state(out, name) for seed, name in controls.items()}  # None: not started
    control = [read_json(band_path(out, name)) for name in controls.values()]
    control = [r for r in control if r is not None]
    res["control_small_base"] = cell(control) if control else None
    return res


def cell_row(where, label, c, short):
    """One table row of a cell: the mean over students at the `short` distances, the band's mean (min-max over
    students), D = 900 (DISTANCES' last), in-doc."""
    band = c["band_mean"]
    shorts = " | ".join(f"{c['kv'][str(d)]:.2f}" for d in short)
    return (f"| {where} | {label} | {c['students']} | {shorts} | {band['mean']:.2f} ({band['min']:.2f}-"
            f"{band['max']:.2f}) | {c['kv'][str(DISTANCES[-1])]:.2f} | {c['in_doc']:.2f} |")


def headline_markdown(res):
    """The README's headline table from report(): per overlap, step 0, the KD student and the CE twin, mean over the
    accepted students, the band's mean with its min-max over students; then the pass counts."""
    head = ["| packer | model | students | " + " | ".join(f"D={d}" for d in SHOWN)
            + f" | band {BAND[0]}-{BAND[-1]}: mean (min-max) | D={DISTANCES[-1]} | in-doc |"]
    head.append("|" + " --- |" * (len(SHOWN) + 6))
    for overlap, cells in res["cells"].items():
        for label, c in cells.items():
            if overlap == "0" and label == "step 0":
                continue  # the same student before phase 2: the default overlap's row
            head.append(cell_row(PACKER[overlap], label, c, SHOWN))
    lines = ["\n".join(head), ""]
    for overlap, p in res["passes"].items():
        lo, hi = p["wilson95"]
        lines.append(f"- {PACKER[overlap]}: **{p['passed']} of {p['decided']}** accepted students pass the criterion "
                     f"(phase-2 seed 0; Wilson 95% interval [{lo:.2f}, {hi:.2f}])")
    return "\n".join(lines)


def students_markdown(res):
    """Every tried seed in list order: its 16-token stage, D = 16 on the selection probe, the verdict."""
    lines = ["| phase-1 seed | 16-token stage passed at step | D=16 (selection probe) | phase 1 (min) | verdict |",
             "| --- | --- | --- | --- | --- |"]
    for st in res["students"]:
        step = st.get("stage16_step")
        d16 = st.get("d16_selection")
        verdict = "accepted" if st["accepted"] else st["why"]
        if st["accepted"] and st["phase1_seed"] not in res["accepted"]:
            verdict = st["why"]  # accepted after the list was full, or before an earlier seed's verdict
        lines.append(f"| {st['phase1_seed']} | {'-' if step is None else step} | "
                     f"{'-' if d16 is None else f'{d16:.2f}'} | {st.get('phase1_minutes', '-')} | {verdict} |")
    return "\n".join(lines)


def combinations_markdown(res):
    """Each accepted student's combinations (overlap, phase-2 seed): passed, or what failed the criterion."""
    lines = ["| phase-1 seed | packer | phase-2 seed | verdict |", "| --- | --- | --- | --- |"]
    for key, c in res["combinations"].items():
        seed, overlap, phase2_seed = key.split("/")
        verdict = "not finished" if c is None else ("**passes**" if c["passed"] else c["why"])
        lines.append(f"| {seed} | {PACKER[overlap]} | {phase2_seed} | {verdict} |")
    return "\n".join(lines)


def cells_markdown(res):
    """Per overlap and model, the mean over students at every measured distance (min-max below the band's)."""
    head = "| packer | model | students | " + " | ".join(f"D={d}" for d in SHORT) + " | band mean (min-max) | " \
           f"D={DISTANCES[-1]} | in-doc |"
    lines = [head, "|" + " --- |" * (len(SHORT) + 6)]
    rows = [(PACKER[o], label, c) for o, cells in res["cells"].items() for label, c in cells.items()]
    if res.get("control_small_base"):
        rows.append((PACKER["default"], "KD student, base kept at 1e4", res["control_small_base"]))
    lines += [cell_row(where, label, c, SHORT) for where, label, c in rows]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="The protocol's runs (research/protocol.md): the head-dimension screen "
                                "and the grid.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("run", "status", "report"):
        a = sub.add_parser(name, help=f"{name} a stage").add_argument
        a("--stage", required=True, choices=["screen", "grid"], help="the screen (seeds 200-203) or the grid")
        a("--out", required=True, help="the stage's run folder")
        a("--screen", help="the grid: the screen's folder, whose verdict sets the head dimension")
        if name == "report":
            a("--json", default=os.path.join(ROOT, "research", "notes", "grid", "grid.json"), help="where the report "
              "goes (default research/notes/grid/grid.json); its headline table is printed")
    a = sub.add_parser("measure", help="one measurement (run's subprocess)").add_argument
    a("--out", required=True, help="the stage's run folder")
    a("what", choices=["accept", "band"], help="accept: the selection probe at D = 16; band: one model")
    a("seed", type=int, help="the phase-1 seed")
    a("model", nargs="?", default=None, help="band: step0 or a phase-2 run's name")
    args = p.parse_args(argv)
    if args.command == "measure":
        return measure(args.out, args.what, args.seed, args.model)
    heads64 = args.stage == "screen"
    if args.stage == "grid":
        if not args.screen:
            raise SystemExit("error: --stage grid needs --screen (the screen's folder)")
        heads64 = screen_verdict(args.screen)
    if args.command == "run":
        return run(args.stage, args.out, heads64)
    if args.command == "report":
        res = report(args.out, args.screen)
        atomic_write(args.json, lambda f: json.dump(res, f, indent=1), mode="w")
        print(headline_markdown(res))
        return res
    print(json.dumps(status(args.stage, args.out), indent=1))


if __name__ == "__main__":
    main()
