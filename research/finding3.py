"""Finding 3 with statistics: where, per RoPE frequency pair, phase 2 moves W_q and W_k.

Paper idea (arXiv 2604.06070, finding 3): long-context extension updates the query projection
in structured, frequency-specific spans. Here, for every phase-1 seed that has phase-wise
(1e4 -> 5e5) KD and CE students, we measure per layer and pair i (rows i and i + hd/2 of each
head) the absolute update ||W_after - W_before|| (mean over heads), and ask two questions with
permutation tests whose null is built from the same numbers:

1. Span: is there a contiguous span of `--width` pairs whose update stands above the layer's
   mean, the same across phase-1 seeds? Statistic: the largest mean over `width` adjacent
   pairs of the seed-averaged profile, each seed's profile divided by its layer mean. Null:
   each seed's pair labels shuffled independently (the same values, no frequency order).
   Holm's correction over every (matrix, layer, student) test.
2. KD vs CE: per pair, the mean over seeds of the difference of the normalised profiles.
   Null: the sign of each seed's difference flipped (KD and CE exchangeable within a seed),
   every one of the 2^S patterns. Max-|t| over pairs gives adjusted p-values that hold for all
   pairs of a layer at once (Westfall & Young's single-step maxT).

The relative update ||dW|| / ||W_before|| used elsewhere divides by the phase-1 weights, so it
also tracks 1 / ||W_before||; the absolute and layer-normalised profiles here do not.

  python -m research.finding3 --out-dir out --phase1-seeds 0 1 2 3 4
writes research/notes/finding3.json, research/notes/finding3.md (the table of research/notes/results.md) and
research/notes/finding3.png.
"""
import argparse
import itertools
import json
import os

import numpy as np

from config import PRESETS, fail, phase1_name
from research.experiment import LARGE, SMALL, run_name
from research.robustness import shipped_path
from model import atomic_write
from rope import critical_pair

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDENTS = {"kd": ("kd", LARGE), "ce": ("ce", LARGE),
            "kd 1e4->1e4": ("kd", SMALL)}  # (loss, phase-2 base); the last keeps the base: a null for the switch


def checkpoint(out_dir, name):
    """OUT/<name>.pt, else the shipped one (the earlier recipe's seed-0 phase-1 student: shipped_path), else None."""
    paths = [os.path.join(out_dir, name + ".pt"), shipped_path(name)]
    return next((path for path in paths if os.path.isfile(path)), None)


def update_profiles(before, after):
    """{"wq", "wk"}: (L, hd/2) absolute update ||W_after - W_before|| per layer and pair, mean over heads."""
    import torch
    from interp.qupdate import pair_norm
    cfg = before.config
    return {w: torch.stack([pair_norm(getattr(a.attn, w).weight.float() - getattr(b.attn, w).weight.float(),
                                      cfg.n_head if w == "wq" else cfg.n_kv_head).mean(0)
                            for b, a in zip(before.blocks, after.blocks)]).numpy() for w in ("wq", "wk")}


def layer_normalised(profile):
    """(..., P) -> each profile divided by its mean over pairs: 1.0 is the layer's average pair."""
    return profile / np.maximum(profile.mean(-1, keepdims=True), 1e-12)


def span_statistic(profile, width):
    """(largest mean over `width` adjacent pairs, first pair of that span) of a (P,) profile."""
    means = np.convolve(profile, np.ones(width) / width, mode="valid")
    return float(means.max()), int(means.argmax())


def span_test(profiles, width, n_perm, rng):
    """profiles (S, P), layer-normalised. (statistic, first pair, p): the seed-mean's top span against the same
    statistic with each seed's pairs shuffled independently; p = (1 + #null >= observed) / (1 + n_perm)."""
    stat, start = span_statistic(profiles.mean(0), width)
    null = np.array([span_statistic(np.stack([rng.permutation(p) for p in profiles]).mean(0), width)[0]
                     for _ in range(n_perm)])
    return stat, start, float((1 + (null >= stat * (1 - 1e-9)).sum()) / (1 + n_perm))


def sign_flip_maxt(diff):
    """diff (S, P): per pair, the maxT-adjusted p of mean_s diff != 0 under every sign pattern of the seeds."""
    diff = np.asarray(diff, dtype=np.float64)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=diff.shape[0])))  # (2^S, S); row 0: as observed
    null_max = np.abs(signs @ diff / diff.shape[0]).max(1)  # (2^S,)
    obs = np.abs(signs[0] @ diff / diff.shape[0])  # the same arithmetic as the null, so ties compare equal
    return [float((null_max >= o * (1 - 1e-9)).mean()) for o in obs]


def holm(pvalues):
    """Holm's step-down adjustment of a list of p-values (family-wise error), in the input order."""
    order = np.argsort(pvalues)
    adjusted, running = np.empty(len(pvalues)), 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(pvalues) - rank) * pvalues[i])
        adjusted[i] = min(1.0, running)
    return adjusted.tolist()


def collect(out_dir, seeds, preset="cpu"):
    """{student: {"seeds": [...], "wq"/"wk": (S, L, P) absolute updates}} for the students found, and the model
    config; a student counts only for seeds where its checkpoint and the phase-1 one exist."""
    from model import load_model
    found, cfg = {}, None
    for p1 in seeds:
        before_path = checkpoint(out_dir, phase1_name(SMALL, p1, preset=preset))
        if before_path is None:
            continue
        before, _ = load_model(before_path, "cpu")
        cfg = before.config
        for student, (loss, base) in STUDENTS.items():
            path = checkpoint(out_dir, run_name(loss, SMALL, base, 0, p1))  # phase-2 seed 0
            if path is None:
                continue
            prof = update_profiles(before, load_model(path, "cpu")[0])
            entry = found.setdefault(student, {"seeds": [], "wq": [], "wk": []})
            entry["seeds"].append(p1)
            for w in ("wq", "wk"):
                entry[w].append(prof[w])
    return {k: {"seeds": v["seeds"], "wq": np.array(v["wq"], dtype=np.float64), "wk": np.array(v["wk"], dtype=np.float64)}
            for k, v in found.items()}, cfg


def analyse(found, width=4, n_perm=10000, seed=0):
    """The two tests over the collected profiles; a JSON-ready dict."""
    rng = np.random.default_rng(seed)
    res = {"width": width, "n_perm": n_perm, "students": {}, "kd_vs_ce": {}}
    tests = []
    for student, v in found.items():
        s = res["students"][student] = {"seeds": v["seeds"]}
        for w in ("wq", "wk"):
            absolute, norm = v[w], layer_normalised(v[w])  # (S, L, P)
            s[w] = {"absolute_mean": absolute.mean(0).tolist(), "absolute_per_seed": absolute.tolist(),
                    "layer_total_mean": absolute.sum(-1).mean(0).tolist(), "normalised_mean": norm.mean(0).tolist(),
                    "normalised_per_seed": norm.tolist(), "span": []}
            for layer in range(absolute.shape[1]):
                stat, start, p = span_test(norm[:, layer], width, n_perm, rng)
                s[w]["span"].append({"layer": layer, "pairs": [start, start + width - 1], "mean": stat, "p": p})
                tests.append(s[w]["span"][-1])
    for t, adj in zip(tests, holm([t["p"] for t in tests]) if tests else []):
        t["p_holm"] = adj
    if "kd" in found and "ce" in found:
        common = sorted(set(found["kd"]["seeds"]) & set(found["ce"]["seeds"]))
        res["kd_vs_ce"]["seeds"] = common
        for w in ("wq", "wk"):
            kd = layer_normalised(found["kd"][w][[found["kd"]["seeds"].index(p) for p in common]])
            ce = layer_normalised(found["ce"][w][[found["ce"]["seeds"].index(p) for p in common]])
            res["kd_vs_ce"][w] = [{"layer": layer, "mean_difference": (kd - ce)[:, layer].mean(0).tolist(),
                                   "p_maxt": sign_flip_maxt((kd - ce)[:, layer]),
                                   "smallest_possible_p": 2 / 2 ** len(common)}
                                  for layer in range(kd.shape[1])]
    return res


def markdown(res, crit):
    """The results page's table from finding3.json: one row per (matrix, layer, student)."""
    lines = [f"| matrix | layer | student | seeds | total ‖ΔW‖ (mean) | top {res['width']}-pair span | its mean / layer mean "
             "| p (permutation) | p (Holm) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for w in ("wq", "wk"):
        for student, s in res["students"].items():
            for sp in s[w]["span"]:
                lines.append(f"| {'W_q' if w == 'wq' else 'W_k'} | {sp['layer']} | {student} | {len(s['seeds'])} | "
                             f"{s[w]['layer_total_mean'][sp['layer']]:.2f} | {sp['pairs'][0]}-{sp['pairs'][1]} | "
                             f"{sp['mean']:.2f} | {sp['p']:.4f} | {sp['p_holm']:.4f} |")
    first = next(iter(res["students"].values()))["wq"]["normalised_mean"]
    lines += ["", "W_q per pair, ‖ΔW‖ / layer mean (mean ± sample std over phase-1 seeds):", "",
              "| layer | student | " + " | ".join(f"p{i}" for i in range(len(first[0]))) + " |",
              "|" + " --- |" * (len(first[0]) + 2)]
    for layer in range(len(first)):
        for student, s in res["students"].items():
            per_seed = np.array(s["wq"]["normalised_per_seed"])[:, layer]  # (S, P)
            sd = per_seed.std(0, ddof=1) if len(per_seed) > 1 else np.zeros(per_seed.shape[1])
            lines.append(f"| {layer} | {student} | " + " | ".join(f"{m:.2f}±{e:.2f}" for m, e in
                                                               zip(per_seed.mean(0), sd)) + " |")
    lines += ["", f"Critical pairs: {crit}."]
    for w, layers in ((w, res["kd_vs_ce"].get(w, [])) for w in ("wq", "wk")):
        for entry in layers:
            best = int(np.argmin(entry["p_maxt"]))
            lines.append(f"- KD - CE, {'W_q' if w == 'wq' else 'W_k'} layer {entry['layer']} "
                         f"({len(res['kd_vs_ce']['seeds'])} seeds): smallest adjusted p {entry['p_maxt'][best]:.3f} "
                         f"at pair {best} (difference {entry['mean_difference'][best]:+.2f} layer means; the "
                         f"smallest p {len(res['kd_vs_ce']['seeds'])} seeds allow: {entry['smallest_possible_p']:.3f})")
    return "\n".join(lines) + "\n"


def plot(res, crit, path):
    """Per matrix and layer: each seed's layer-normalised profile (thin) and their mean (thick), per student."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    students = list(res["students"])
    n_layer = len(res["students"][students[0]]["wq"]["normalised_mean"])
    fig, axes = plt.subplots(2, n_layer, figsize=(5 * n_layer, 6), squeeze=False, layout="constrained")
    colors = dict(zip(students, ["tab:blue", "tab:orange", "tab:gray"]))
    for row, w in enumerate(("wq", "wk")):
        for layer in range(n_layer):
            ax = axes[row, layer]
            for student in students:
                s = res["students"][student][w]
                for prof in s["normalised_per_seed"]:
                    ax.plot(prof[layer], color=colors[student], lw=0.6, alpha=0.4)
                ax.plot(s["normalised_mean"][layer], color=colors[student], lw=2.2, marker="o", ms=3,
                        label=f"{student} ({len(res['students'][student]['seeds'])} phase-1 seeds)")
            for (label, pair), style in zip(crit.items(), ["--", ":"]):
                ax.axvline(pair, color="tab:cyan", ls=style, lw=1.5, label=f"critical pair, {label}")
            ax.axhline(1.0, color="k", lw=0.5)
            ax.set(title=f"layer {layer}: {'W_q' if w == 'wq' else 'W_k'}", xlabel="RoPE pair i (high -> low "
                   "frequency)", ylabel="‖ΔW‖ / layer mean")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Finding 3: per-pair update, phase 1 -> phase 2, over phase-1 seeds")
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description="Finding 3 over phase-1 seeds: absolute and layer-normalised W_q / W_k "
                                "updates per RoPE pair, with permutation tests")
    p.add_argument("--out-dir", default="out", help="folder with the phase-1 and phase-2 checkpoints")
    p.add_argument("--phase1-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="phase-1 seeds to use")
    p.add_argument("--width", type=int, default=4, help="pairs per span in the span test")
    p.add_argument("--n-perm", type=int, default=10000, help="random permutations per span test")
    p.add_argument("--docs-dir", default=os.path.join(ROOT, "research", "notes"), help="where finding3.{json,md,png} go")
    args = p.parse_args(argv)
    if args.n_perm < 1 or args.width < 1:
        fail(f"--n-perm and --width must be >= 1, got {args.n_perm} and {args.width}")
    if not os.path.isdir(args.out_dir):
        fail(f"--out-dir {args.out_dir} is not a folder")
    from model import CheckpointError
    try:
        found, cfg = collect(args.out_dir, args.phase1_seeds)
    except CheckpointError as e:
        fail(str(e))
    if not found:
        fail(f"no phase-1 / phase-2 checkpoint pair found in {args.out_dir} for phase-1 seeds {args.phase1_seeds}")
    if args.width > cfg.head_dim // 2:
        fail(f"--width must be at most {cfg.head_dim // 2} (pairs per head), got {args.width}")
    pre = PRESETS["cpu"]
    crit = {f"base {SMALL:.0e}".replace("e+0", "e") + f", L={pre['short_window']}":
            critical_pair(cfg.head_dim, SMALL, pre["short_window"]),
            f"base {LARGE:.0e}".replace("e+0", "e") + f", L={pre['long_window']}":
            critical_pair(cfg.head_dim, LARGE, pre["long_window"])}
    res = analyse(found, args.width, args.n_perm) | {"critical_pairs": crit}
    os.makedirs(args.docs_dir, exist_ok=True)
    atomic_write(os.path.join(args.docs_dir, "finding3.json"), lambda f: json.dump(res, f, indent=1), mode="w")
    md = markdown(res, crit)
    atomic_write(os.path.join(args.docs_dir, "finding3.md"), lambda f: f.write(md), mode="w")
    plot(res, crit, os.path.join(args.docs_dir, "finding3.png"))
    print(md)


if __name__ == "__main__":
    main()
