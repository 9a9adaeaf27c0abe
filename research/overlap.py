"""How much cross-document overlap does the distillation signal need? The packer's recurrence rate, swept.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) trains a student on short documents packed into a long
window and distils a long-context teacher into it. In this project's synthetic language the teacher's long-range
signal sits where a key recurs in a later document of the window with another value: the teacher answers with the
far-back value (data.far_back_targets); the sweep asks how much of what KD transfers depends on it. About 45%
of the records of a packed window reuse a key of an earlier document when keys are drawn uniformly; real packed
corpora overlap far less. This file tabulates phase 2 (the KD student and its CE twin) at other rates, set with
`train.py --phase 2 --recurrence R` (data.choose_keys), against the default:

    python train.py --phase 2 --rope-base 500000 --recurrence 0 --out-dir out/overlap       # KD + its CE twin
    python -m research.robustness band --dir out/overlap --variant rec0 --arms kd ce        # held-out probes
    python -m research.overlap out/overlap/band-p0-rec0-s0.json ... research/notes/leakfree.json \
        --out research/notes/overlap.json

Each input is a list of band rows (research.robustness band) or a robustness-format JSON ({"runs": [...]}); a file
named band-...-recR-... holds rate R, any other file the default (uniform keys), of which only the KD and CE rows
of the phase-1 students swept are kept; an earlier sweep's JSON (its "rows") adds its rows as they are, so a sweep
grows by new students without their predecessors' run files. The table (overlap_markdown) and the figure (plot) come from the JSON.
"""
import argparse
import json
import os
import re

import numpy as np

from model import atomic_write

LONG = (512, 768, 900)  # the long-range summary: the mean over these distances (present in every row format)


def key_recurrence(spec, batch):
    """Fraction of records whose key already appeared in an earlier document of the same window."""
    hits = total = 0
    for tok, doc in zip(batch["tokens"], batch["doc_ids"]):
        is_key = (tok >= 1) & (tok <= spec.n_keys)
        for d in np.unique(doc):
            keys_here = set(tok[(doc == d) & is_key].tolist())
            before = set(tok[(doc < d) & is_key].tolist())
            hits += len(keys_here & before)
            total += len(keys_here)
    return hits / max(total, 1)



def overlap_stats(rate, n_windows=64, seed=0):
    """What the packer makes at a rate (None: uniform keys): the measured share of records reusing a key of an
    earlier document, far-back value targets and answers per 1024-token window (phase 2's documents of 32-128)."""
    from data import TaskSpec, synthetic_batch
    spec = TaskSpec()
    batch = synthetic_batch(spec, np.random.default_rng(seed), "packed", n_windows, 1024, 128, 32, recurrence=rate)
    return {"recurrence_measured": round(key_recurrence(spec, batch), 3),
            "far_back_per_window": round(float(batch["far_back"].sum()) / n_windows, 1),
            "answers_per_window": round(float(batch["answers"].sum()) / n_windows, 1)}


def rate_of(path):
    """The rate a band file's name says (…-rec0.25-…), or None (the default, uniform keys)."""
    m = re.search(r"-rec([0-9.]+?)(?:-s\d+)?(?:-probe[0-9.]+)?\.json$", os.path.basename(path))
    return float(m.group(1)) if m else None


def collect(paths):
    """The sweep's rows: every KD / CE row of the rate files, and the default rows of the same phase-1 students."""
    rows, defaults = [], []
    for path in paths:
        if "-probe" in os.path.basename(path):
            raise ValueError(f"{path} is scored on other probe seeds than the held-out ones")
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict) and "rows" in data:  # an earlier sweep (its --out): its rows, rates as they were
            rows += [{k: r[k] for k in ("phase1_seed", "arm", "distances", "kv", "in_doc", "recurrence")}
                     for r in data["rows"]]
            continue
        runs, rate = (data["runs"] if isinstance(data, dict) else data), rate_of(path)
        for r in runs:
            if r["arm"] in ("kd", "ce") and r.get("phase2_seed", 0) == 0:
                row = {k: r[k] for k in ("phase1_seed", "arm", "distances", "kv", "in_doc")}
                (rows if rate is not None else defaults).append(dict(row, recurrence=rate))
    swept = {r["phase1_seed"] for r in rows}
    rows += [r for r in defaults if r["phase1_seed"] in swept]
    stats = {rate: overlap_stats(rate) for rate in {r["recurrence"] for r in rows}}
    for r in rows:
        r.update(stats[r["recurrence"]])
    key = (lambda r: (r["phase1_seed"], r["recurrence"] if r["recurrence"] is not None else 1.0, r["arm"] != "kd"))
    return sorted(rows, key=key)


def long_range(row):
    """Mean accuracy over the LONG distances."""
    kv = dict(zip(row["distances"], row["kv"]))
    return float(np.mean([kv[d] for d in LONG]))


def overlap_markdown(sweep) -> str:
    """A row per (phase-1 student, rate): what the packer made, and the KD and CE students on the held-out probes."""
    out = ["| phase-1 seed | recurrence asked | records reusing a key (measured) | far-back targets per window | "
           "answers per window | KD, D=256 / 512 / 768 / 900 | KD in-doc | CE, D=256 / 512 / 768 / 900 | CE in-doc |",
           "|" + " --- |" * 9]
    by = {}
    for r in sweep["rows"]:
        by.setdefault((r["phase1_seed"], r["recurrence"]), {})[r["arm"]] = r

    def cells(r):
        if r is None:
            return "not run", "-"
        kv = dict(zip(r["distances"], r["kv"]))
        return " / ".join(f"{kv[d]:.2f}" for d in (256, 512, 768, 900)), f"{r['in_doc']:.2f}"
    for (seed, rate), arms in by.items():
        any_row = next(iter(arms.values()))
        kd, kd_doc = cells(arms.get("kd"))
        ce, ce_doc = cells(arms.get("ce"))
        asked = "default (uniform keys)" if rate is None else f"{rate:g}"
        out.append(f"| {seed} | {asked} | {any_row['recurrence_measured']:.0%} | {any_row['far_back_per_window']:.0f} | "
                   f"{any_row['answers_per_window']:.0f} | {kd} | {kd_doc} | {ce} | {ce_doc} |")
    return "\n".join(out)


def plot(sweep, out, name="overlap"):
    """Long-range accuracy (mean over D = 512, 768, 900) against the measured recurrence, KD solid, CE dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, seed in enumerate(sorted({r["phase1_seed"] for r in sweep["rows"]})):
        for arm, style in (("kd", "-o"), ("ce", "--s")):
            pts = sorted((r["recurrence_measured"], long_range(r)) for r in sweep["rows"]
                         if r["phase1_seed"] == seed and r["arm"] == arm)
            if pts:
                ax.plot(*zip(*pts), style, color=f"C{i}", label=f"phase-1 seed {seed}, {arm.upper()}")
    ax.set_xlabel("records reusing a key of an earlier document (measured)")
    ax.set_ylabel("accuracy, mean of D = 512, 768, 900")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("Long-range retrieval against cross-document overlap (held-out probes)", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, f"{name}.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description="Tabulate and plot the overlap sweep (train.py --recurrence) from band "
                                "files and the default runs' rows.")
    p.add_argument("inputs", nargs="+", help="band JSON files (…-recR-… in the name for rate R), JSON files with "
                   "the default runs' rows (research.robustness band, or research/notes/leakfree.json), and an "
                   "earlier sweep "
                   "(its --out) whose rows are kept as they are")
    p.add_argument("--out", default="research/notes/overlap.json", help="the sweep's JSON; the figure goes next to it")
    args = p.parse_args(argv)
    from config import fail
    from evaluate import HELDOUT_SEEDS
    try:
        rows = collect(args.inputs)
    except (OSError, ValueError, KeyError) as e:
        fail(f"cannot read the sweep's inputs: {e}")
    if not rows:
        fail("no rate files among the inputs (a band file of a --recurrence run is named band-...-recR-...)")
    sweep = {"probe_seeds": list(HELDOUT_SEEDS), "long_range": list(LONG), "rows": rows}
    atomic_write(args.out, lambda f: json.dump(sweep, f, indent=1), mode="w")
    print(overlap_markdown(sweep))
    print(f"figure: {plot(sweep, os.path.dirname(os.path.abspath(args.out)))}")


if __name__ == "__main__":
    main()
