"""Figures of the analyses beyond analyze.py's (python -m interp): one drawing function per analysis, fed with its
JSON-able results.

Paper idea: the figures of "Short Data, Long Context" (arXiv 2604.06070) beyond the claim and finding 2 (analyze.py
draws those): the RoPE spectrum of the phase-wise schedule (finding 1), per-frequency query updates (finding 3), a
head's self-match by RoPE pair and a phase alias. interp/ measures; this file only draws (matplotlib, Agg backend).
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import CenteredNorm  # noqa: E402

from model import atomic_write  # noqa: E402
from rope import critical_pair, default_inv_freq, rotations  # noqa: E402


def save(fig, out, name):
    os.makedirs(out, exist_ok=True)  # only now, once analyze.py has checked every input
    path = os.path.join(out, name)
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format=os.path.splitext(name)[1][1:] or "png"))
    plt.close(fig)
    return path


def mark_critical(ax, pairs: dict):
    """Vertical lines at the critical pairs {label: pair index} of a pair-indexed heatmap."""
    for (label, pair), style in zip(pairs.items(), ["--", ":"]):
        ax.axvline(pair - 0.5, color="tab:cyan", ls=style, lw=2, label=label)


def plot_spectrum(res, out, name):
    d, pairs = res["head_dim"], np.arange(res["head_dim"] // 2)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), width_ratios=[1.3, 1], layout="constrained")
    colors = {b: f"C{i}" for i, b in enumerate(sorted({s["base"] for s in res["settings"]}))}
    styles = {w: ls for w, ls in zip(sorted({s["window"] for s in res["settings"]}), ["-", "--", "-.", ":"] * 4)}
    for s in res["settings"]:
        c, ls = colors[s["base"]], styles[s["window"]]
        ax.plot(pairs, s["rotations"], color=c, ls=ls, label=f"base {s['base']:g}, L={s['window']}: crit dim "
                f"{s['critical_dim']}, util {s['utilization']:.2f}{'' if s['above_men_bound'] else ' (< Men bound)'}")
        ax.axvline(s["critical_pair"] - 0.5, color=c, ls=ls, lw=0.8)
    ax.axhline(1, color="k", lw=0.8)
    ax.set(yscale="log", xlabel="frequency pair i (dims i and i + d/2)", ylabel="full rotations within the window",
           title=f"RoPE spectrum, head_dim {d} (vertical: critical pair; Men bound: " + ", ".join(
               f"L={w}: {v:.3g}" for w, v in res["men_lower_bound"].items()) + ")")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    rows = [(k, v["window"], v["base"]) for k, v in res["schedule"].items()]
    grid = np.log10(np.stack([rotations(default_inv_freq(d, b), w).numpy() for _, w, b in rows]))
    im = ax2.imshow(grid, cmap="RdBu", norm=CenteredNorm(0), aspect="auto")
    for r, (_, w, b) in enumerate(rows):
        ax2.plot(critical_pair(d, b, w) - 0.5, r, "k|", ms=30, mew=3)
    ax2.set_yticks(range(len(rows)), [f"{k}\nL={w}, base {b:g}" for k, w, b in rows])
    ax2.set(xlabel="frequency pair i", title="phase-wise schedule (|: critical pair; blue: turns >= once)")
    fig.colorbar(im, ax=ax2, label="log10 rotations within the window")
    return [save(fig, out, f"{name}.png")]


def plot_qupdate(res, title, out, name):
    panels = [("wq", "W_q relative update"), ("wk", "W_k relative update"),
              ("q_norm_change", "query norm change (after/before - 1)")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), layout="constrained")
    for ax, (key, what) in zip(axes, panels):
        grid = np.array(res[key]).mean(1)  # (L, hd/2), averaged over heads
        style = (dict(cmap="RdBu_r", norm=CenteredNorm(0)) if key == "q_norm_change" else
                 dict(cmap="magma", vmin=0, vmax=max(grid.max(), 1e-12)))
        im = ax.imshow(grid, aspect="auto", interpolation="nearest", **style)
        mark_critical(ax, res["critical_pairs"])
        ax.set_yticks(range(len(grid)))
        ax.set(title=f"{what}, mean over heads", xlabel="RoPE frequency pair i (high -> low frequency)",
               ylabel="layer")
        fig.colorbar(im, ax=ax, label="relative change (fraction)")
    axes[0].legend(fontsize=7, title="critical pair", title_fontsize=7)
    fig.suptitle(f"Finding 3: {title}")
    wq = np.array(res["wq"])  # (L, H, hd/2)
    fig2, axes2 = plt.subplots(len(wq), 1, figsize=(7, 1.5 + 0.5 * wq.shape[1] * len(wq)), squeeze=False,
                               layout="constrained")
    for layer, ax in enumerate(axes2[:, 0]):
        im = ax.imshow(wq[layer], aspect="auto", cmap="magma", vmin=0, vmax=max(wq.max(), 1e-12),
                       interpolation="nearest")
        mark_critical(ax, res["critical_pairs"])
        ax.set_yticks(range(wq.shape[1]))
        ax.set(title=f"layer {layer}", xlabel="RoPE frequency pair i", ylabel="head")
    axes2[0, 0].legend(fontsize=7)
    fig2.colorbar(im, ax=axes2[:, 0].tolist(), label="relative update (fraction)")
    fig2.suptitle(f"W_q relative update per head: {title}")
    return [save(fig, out, f"{name}.png"), save(fig2, out, f"{name}_heads.png")]


def plot_qupdate_seeds(res, out, name):
    """Finding 3 over seeds: per layer, W_q and W_k relative update per RoPE pair, KD vs CE, mean ± std band."""
    n_layer = len(res["kd"]["wq"]["mean"])
    fig, axes = plt.subplots(2, n_layer, figsize=(5 * n_layer, 6), squeeze=False, layout="constrained")
    for row, w in enumerate(("wq", "wk")):
        for layer in range(n_layer):
            ax = axes[row, layer]
            for loss, color in (("kd", "tab:blue"), ("ce", "tab:orange")):
                m, s = (np.array(res[loss][w][k][layer]) for k in ("mean", "std"))
                x = np.arange(len(m))
                ax.plot(x, m, marker="o", color=color, label=f"{loss.upper()} (mean of {len(res['seeds'])} seeds)")
                ax.fill_between(x, m - s, m + s, color=color, alpha=0.25)
            for (label, pair), style in zip(res["critical_pairs"].items(), ["--", ":"]):
                ax.axvline(pair, color="tab:cyan", ls=style, lw=2, label=f"critical pair, {label}")
            ax.set(title=f"layer {layer}: {'W_q' if w == 'wq' else 'W_k'}", xlabel="RoPE frequency pair i "
                   "(high -> low frequency)", ylabel="relative update")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Finding 3 over seeds: per-pair update, phase 1 -> phase 2 (mean over heads; band: ± std)")
    return [save(fig, out, f"{name}.png")]


def plot_alias(res, out, name):
    """Accuracy by distance, one line per RoPE base, with the marked pair's whole-turn distances in its colour."""
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    for (base, b), color in zip(res["bases"].items(), plt.cm.viridis(np.linspace(0, 0.85, len(res["bases"])))):
        ax.plot(res["distances"], [np.nan if a is None else a for a in b["acc"]], marker="o", ms=3, color=color,
                label=f"base {float(base):.0e}")
        for t in b["turns"]:
            ax.axvline(t, color=color, ls="--", lw=1)
    ax.set(xlabel="distance D (records at the window's start)", ylabel="retrieval accuracy", ylim=(0, 1),
           title=f"{os.path.basename(res['ckpt'])}: dashed, pair {res['pair']} has turned a whole number of times")
    ax.legend(fontsize=8)
    return save(fig, out, f"{name}.png")


def plot_depth(res, out, name):
    """One depth x distance heatmap of retrieval accuracy per model, the student's longest document dashed."""
    distances = res["distances"]
    depths = res["depths"]
    models = res["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(3.4 * len(models) + 1.2, 3.8), squeeze=False,
                             layout="constrained")
    n_short = sum(d <= res["max_doc_len"] for d in distances)
    for ax, (label, sweep) in zip(axes[0], models.items()):
        grid = np.array([[np.nan if sweep[dp][d] is None else sweep[dp][d] for d in distances] for dp in depths])
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")  # (depths, distances)
        if 0 < n_short < len(distances):
            ax.axvline(n_short - 0.5, color="w", ls="--", label="longest student document")
        ax.set_xticks(range(len(distances)), [str(d) for d in distances], rotation=60)
        ax.set_yticks(range(len(depths)), [f"{dp:g}" for dp in depths])
        ax.set(title=label, xlabel="distance D (tokens)", ylabel="query depth (fraction of window)")
    fig.colorbar(im, ax=axes[0].tolist(), label="retrieval accuracy (fraction)")
    fig.suptitle("Key-value retrieval: depth x distance")
    return save(fig, out, f"{name}.png")


def plot_match(res, out, name):
    """Per model: a layer-0 head's self-match score by distance, its slow- and fast-pair parts, the best other token,
    and (dots, right axis) the head's measured attention to the record."""
    models = res["models"]
    fig, axes = plt.subplots(len(models), 1, figsize=(9, 3.2 * len(models)), layout="constrained", squeeze=False)
    for ax, (label, r) in zip(axes[:, 0], models.items()):
        d = r["distances"]
        ax.plot(d, r["match"], color="k", lw=1, label="self-match (all pairs)")
        ax.plot(d, r["slow"], color="tab:blue", lw=1, label="slow pairs (turn < once in the window)")
        ax.plot(d, r["fast"], color="tab:orange", lw=1, label="fast pairs")
        ax.plot(d, r["rival"], color="grey", lw=1, ls=":", label="best other token, same D")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(ylabel="attention logit", title=f"{label}: layer-0 head {r['head']}")
        if r["measured"]:
            tw = ax.twinx()
            tw.plot([int(k) for k in r["measured"]], list(r["measured"].values()), "o", color="tab:red", ms=4,
                    label="attention to the record (measured)")
            tw.set(ylim=(0, 1.05), ylabel="attention weight")
            tw.legend(fontsize=7, loc="lower right")
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    axes[-1, 0].set_xlabel("distance D between the query key and the same key earlier")
    return save(fig, out, f"{name}.png")
