"""The claim and finding 2 of "Short Data, Long Context", drawn from this project's checkpoints.

Paper idea (arXiv 2604.06070): a student trained only on short documents packed into a long window inherits a
long-context teacher's long-range retrieval through logit distillation (the claim), and it can, because a change of
the positions RoPE sees reaches the teacher's logits, so the KL carries positional information (finding 2):

- retrieval  (the claim) key-value retrieval accuracy against distance, one line per model, the student's
             longest document marked, the floor that needs no retrieval dashed.
- perturb    (finding 2) on repeated-token or packed windows, move the positions RoPE applies to the queries
             and/or keys of one layer; trace the relative change of every residual stream and the KL at the
             logits. A nonzero KL is positional signal in the logits.

Only the model's `Inspect` hooks and the probes of data.py and evaluate.py are used, never a copy of the forward
pass. Each subcommand writes PNGs and a JSON of its numbers into --out (default figures/). The other analyses
(the RoPE spectrum, finding 3's query updates, a head's self-match, a phase alias, retrieval by the query's depth in
the window) are `python -m interp`.

  python analyze.py retrieval --ckpt checkpoints/teacher.pt out/phase2-kd-b10000-b500000.pt
  python analyze.py perturb --ckpt checkpoints/teacher.pt --target q --layers 0 1 --shift 1 4 16
"""
import argparse
import math
import os
from contextlib import nullcontext

import matplotlib

matplotlib.use("Agg")  # figures into files, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from config import check_out_dir, fail  # noqa: E402
from data import TaskSpec, to_device  # noqa: E402
from distill import forward_kl  # noqa: E402
from evaluate import evaluate, format_accuracy, format_table, heuristic_floors, packed_probe  # noqa: E402
from evaluate import repeated_tokens_window  # noqa: E402
from model import CheckpointError, Inspect, atomic_write, first_line, load_model, write_json  # noqa: E402

REACHES_LOGITS_KL = 1e-6  # nats; our choice: a mean KL above this is a real change, not float rounding


def load(path, device, reader=load_model):
    """(model in eval mode, checkpoint dict), or one error line and exit 2. The in-document probe then runs under
    the mask and positions the model trained with. reader: (path, device) -> (model, checkpoint dict)."""
    try:
        model, ckpt = reader(path, device)
    except CheckpointError as e:
        fail(str(e))
    if model.config.vocab_size < TaskSpec().vocab_size:
        fail(f"{path}: vocabulary {model.config.vocab_size} is smaller than the probes' {TaskSpec().vocab_size}")
    run = ckpt.get("args") or {}
    if run.get("data"):
        fail(f"{path} was trained on --data {run['data']}: the probes speak the synthetic language, not that data's")
    model.probe_conditions = {key: bool(run.get(key)) for key in ("doc_mask", "reset_positions")}
    return model.eval(), ckpt


def load_all(paths, labels, device, reader=load_model):
    """{label: model} in the given order; labels default to the file names."""
    if labels and len(labels) != len(paths):
        fail(f"--labels gives {len(labels)} names for {len(paths)} checkpoints")
    labels = labels or [os.path.splitext(os.path.basename(os.path.normpath(p)))[0] for p in paths]
    if len(set(labels)) < len(labels):  # same file name in two folders: one model would silently replace the other
        fail(f"two checkpoints are named {sorted({x for x in labels if labels.count(x) > 1})}: give --labels")
    return {label: load(p, device, reader)[0] for label, p in zip(labels, paths)}


def save_json(out, name, obj):
    """OUT/name, written atomically (a kill leaves the old file or the new one)."""
    path = os.path.join(out, name)
    write_json(path, obj)
    return path


def save_figure(fig, out, name):
    """OUT/name as a PNG, written atomically; the folder only now, once every input was checked."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- retrieval (the claim)


def retrieval_results(models, window, distances, max_doc_len, device, n_windows=8, seed=0):
    """{label: {"kv": {D: acc}, "in_doc": acc, "max_seq_len": its window, "rope_base": its base}} on the same
    probes."""
    out = {}
    for label, model in models.items():
        r = evaluate(model, TaskSpec(), window, distances, max_doc_len, device, nullcontext(), n_windows, seed=seed,
                     **getattr(model, "probe_conditions", {}))
        out[label] = {"kv": r["kv"], "in_doc": r["in_doc"], "max_seq_len": model.config.max_seq_len,
                      "rope_base": model.config.rope_base}
    return out


def plot_retrieval(res, window, distances, max_doc_len, out, name, floor=None):
    """Accuracy against distance, one line per model (floor: {D: acc} that needs no retrieval, dashed)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    if floor is not None:
        ax.plot(distances, [floor[d] for d in distances], color="0.5", ls="--",
                label="floor: copy the last value, or guess among the values seen")
    for label, r in res.items():
        line, = ax.plot(distances, [r["kv"][d] for d in distances], marker="o",
                        label=f"{label} (base {r['rope_base']:g}, in-doc acc {format_accuracy(r['in_doc'])})")
        if r["max_seq_len"] < window:  # dotted: the window this model was trained on
            ax.axvline(r["max_seq_len"], color=line.get_color(), ls=":", lw=1)
    ax.axvline(max_doc_len, color="k", ls="--", label=f"longest student document ({max_doc_len} tokens)")
    ax.set(xscale="log", ylim=(-0.03, 1.03), xlabel="distance D from record to query (tokens, log scale)",
           ylabel="key-value retrieval accuracy (fraction)",
           title=f"Long-range retrieval on {window}-token windows (dotted: a model's training window)")
    ax.legend(fontsize=8)
    return [save_figure(fig, out, f"{name}.png")]


def run_retrieval(args):
    models = load_all(args.ckpt, args.labels, args.device, args.reader)
    window = args.window or max(m.config.max_seq_len for m in models.values())
    powers = [2**k for k in range(4, 40) if 2**k < window] + [int(0.75 * window), int(0.9 * window)]
    distances = sorted(args.distances or {d for d in powers if 2 <= d < window - 2})  # the same for every model
    if distances[0] < 2 or distances[-1] >= window - 2:
        fail(f"--distances must lie in [2, {window - 3}] for a {window}-token window, got {distances}")
    res = retrieval_results(models, window, distances, args.max_doc_len, args.device, args.n_windows, args.seed)
    floors = heuristic_floors(TaskSpec(), window, distances, args.n_windows, args.seed)  # the same probes
    paths = plot_retrieval(res, window, distances, args.max_doc_len, args.out, args.name, floors["best"])
    paths.append(save_json(args.out, f"{args.name}.json", {
        "window": window, "max_doc_len": args.max_doc_len, "distances": distances,
        "n_windows": args.n_windows, "ckpts": dict(zip(res, args.ckpt)), "models": res, "floors": floors}))
    print(format_table(res, args.max_doc_len, floors["best"]))
    for label, r in res.items():
        far = [r["kv"][d] for d in distances if d > args.max_doc_len]
        print(f"{label}: retrieval {np.mean(list(r['kv'].values())):.2f} over all distances, "
              f"{np.mean(far) if far else float('nan'):.2f} beyond {args.max_doc_len} tokens; in-doc "
              f"{format_accuracy(r['in_doc'])}")
    return paths


# ----------------------------------------------------------------------------- perturbation (finding 2)


def relative_change(h_pert, h_clean):
    """||h_pert - h_clean|| / ||h_clean|| over the model dimension: (B, T)."""
    return (h_pert - h_clean).float().norm(dim=-1) / h_clean.float().norm(dim=-1).clamp_min(1e-12)


@torch.no_grad()
def perturbation_propagation(model, batch, layers, perturbations, target="q", device="cpu", seed=0):
    """For each layer l and (kind, size): relative change of residual streams 0..n_layer and KL at the logits.

    kind "shift": the positions + size; "noise": + Gaussian noise of std size (the same draw for every layer).
    residuals[0] is the embedding, residuals[j] the stream after block j-1, so moving block l's RoPE positions
    leaves residuals[0..l] unchanged. Shifting q and k by the same constant is a no-op up to rounding (RoPE depends
    only on relative positions); noise is not.
    """
    x, _, pos, _, _ = to_device(batch, torch.device(device))
    clean = Inspect()
    logits = model(x, pos, inspect=clean)
    noise = torch.randn(pos.shape, generator=torch.Generator().manual_seed(seed)).to(pos.device)
    runs = []
    for layer in layers:
        for kind, size in perturbations:
            new = pos.float() + size * (1 if kind == "shift" else noise)
            probe = Inspect(q_positions={layer: new} if "q" in target else {},
                            k_positions={layer: new} if "k" in target else {})
            pert = model(x, pos, inspect=probe)
            change = torch.stack([relative_change(p, c).mean(0) for p, c in zip(probe.residuals, clean.residuals)])
            kl = forward_kl(pert.float(), logits.float()).clamp_min(0).mean(0)  # KL(clean || perturbed), (T,)
            runs.append({"layer": layer, "kind": kind, "size": size, "rel_change": change.mean(1).tolist(),
                         "rel_change_per_position": change.tolist(), "kl_mean": kl.mean().item(),
                         "kl_per_position": kl.tolist(), "reaches_logits": kl.mean().item() > REACHES_LOGITS_KL})
    return runs


def plot_perturb(res, period, target, out, name, smooth=16):
    """Per model: the relative change of every residual stream, and the KL at the logits along the window."""
    n = len(res)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False, layout="constrained")
    fig2, axes2 = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False, layout="constrained")
    for ax, ax2, (label, r) in zip(axes[0], axes2[0], res.items()):
        for run in r["runs"]:
            run_label = f"layer {run['layer']}, {run['kind']} {run['size']:g}"
            ax.plot(range(len(run["rel_change"])), run["rel_change"], marker="o", label=run_label)
            kl = np.convolve(run["kl_per_position"], np.ones(smooth) / smooth, mode="valid")  # running mean
            ax2.plot(np.arange(len(kl)) + smooth - 1, kl, lw=0.8, label=f"{run_label} (mean {run['kl_mean']:.2g})")
        ax.set_yscale("symlog", linthresh=1e-3)  # log above 1e-3, linear through the exact zeros
        ax.set_xticks(range(len(r["runs"][0]["rel_change"])))
        ax.set(title=f"{label}: {target} positions of one layer moved", ylabel="relative L2 change ||h' - h|| / ||h||",
               xlabel="residual stream (0 = embedding, j = after block j-1)")
        if period is not None:
            ax2.axvline(period, color="k", ls="--", lw=1, label=f"first repeat (period {period})")
        if max((v for run in r["runs"] for v in run["kl_per_position"]), default=0) > 0:
            ax2.set_yscale("log")
        ax2.set(title=f"{label}: next-token KL(clean || perturbed)", xlabel="position in window (tokens)",
                ylabel=f"KL (nats, running mean over {smooth} positions)")
        ax.legend(fontsize=7)
        ax2.legend(fontsize=7)
    fig.suptitle("Finding 2: propagation of a RoPE position perturbation")
    fig2.suptitle("Finding 2: the perturbation at the logits")
    return [save_figure(fig, out, f"{name}.png"), save_figure(fig2, out, f"{name}_kl.png")]


def run_perturb(args):
    models = load_all(args.ckpt, args.labels, args.device, args.reader)
    window = args.window or max(m.config.max_seq_len for m in models.values())
    if args.inputs == "packed":  # what the students train on: short documents of the synthetic language, packed
        batch = packed_probe(TaskSpec(), window, args.max_doc_len, n_windows=args.n_windows, seed=args.seed)
    else:  # a random sequence of --period tokens repeated back to back
        batch = repeated_tokens_window(TaskSpec(), window, args.period, args.n_windows, args.seed)
    perturbations = [("shift", float(s)) for s in args.shift] + [("noise", float(s)) for s in args.noise]
    if not perturbations:
        fail("give at least one --shift or --noise size")
    res = {}
    for (label, model), path in zip(models.items(), args.ckpt):
        n_layer = model.config.n_layer
        layers = list(range(n_layer)) if args.layers is None else args.layers
        if not all(0 <= layer < n_layer for layer in layers):
            fail(f"{path}: --layers {layers} out of range 0..{n_layer - 1}")
        runs = perturbation_propagation(model, batch, layers, perturbations, args.target, args.device, args.seed)
        res[label] = {"ckpt": path, "n_layer": n_layer, "runs": runs}
        for run in runs:
            verdict = "reaches" if run["reaches_logits"] else "does not reach"
            print(f"{label}: layer {run['layer']} {args.target} {run['kind']} {run['size']:g}: relative change at "
                  f"the last residual {run['rel_change'][-1]:.3g}, mean logit KL {run['kl_mean']:.3g} nats -> "
                  f"{verdict} the logits")
        print(f"{label}: the perturbation reaches the logits (mean KL > {REACHES_LOGITS_KL:g} nats) in "
              f"{sum(run['reaches_logits'] for run in runs)} of {len(runs)} runs")
    paths = plot_perturb(res, args.period if args.inputs == "repeated" else None, args.target, args.out, args.name)
    return paths + [save_json(args.out, f"{args.name}.json", {
        "window": window, "inputs": args.inputs, "period": args.period, "target": args.target,
        "n_windows": args.n_windows, "seed": args.seed, "reaches_logits_kl": REACHES_LOGITS_KL, "models": res})]


# ----------------------------------------------------------------------------- CLI


def add_command(sub, name, help, n_windows, ckpts=None):
    """A subcommand with the flags every one has (and the checkpoint / probe flags some share); returns its
    add_argument. interp/analyses.py adds its own subcommands with it too."""
    a = sub.add_parser(name, help=help, description=help).add_argument
    a("--out", default="figures", help="folder for the PNGs and the JSON; default figures/")
    a("--device", default="cpu", help="torch device (cpu, cuda); default cpu")
    a("--name", default=name, help="file name prefix of the outputs; default: the subcommand's name")
    if ckpts:
        a("--ckpt", nargs="+", required=True, help=ckpts)
        a("--labels", nargs="+", help="one legend name per checkpoint; default: the file names")
        a("--window", type=int, help="probe window (tokens); default: the largest max_seq_len of the checkpoints")
    if n_windows:
        a("--n-windows", type=int, default=n_windows, help="probe windows (per distance); default %(default)s")
        a("--seed", type=int, default=0, help="seed of the probes and of the position noise; default 0")
    return a


def add_commands(sub):
    a = add_command(sub, "retrieval", "retrieval accuracy vs distance of checkpoints on the same probes", 8,
                    "checkpoints to compare")
    a("--distances", type=int, nargs="+", help="record-query distances (tokens); default 16, 32, ... of the window")
    a("--max-doc-len", type=int, default=128, help="the student's longest document (tokens), marked; default 128")
    a = add_command(sub, "perturb", "propagation of a RoPE position perturbation to the logits (finding 2)", 2,
                    "checkpoints (teacher, phase-2 students)")
    a("--target", choices=["q", "k", "qk"], default="q", help="move the positions of q, k or both; default q")
    a("--layers", type=int, nargs="+", help="layers to perturb, one at a time; default all")
    a("--shift", type=float, nargs="*", default=[1, 4, 16], help="constant position shifts (tokens); default 1 4 16")
    a("--noise", type=float, nargs="*", default=[], help="stds of Gaussian position noise (tokens); default none")
    a("--period", type=int, default=64, help="length of the repeated token sequence (tokens); default 64")
    a("--inputs", choices=["repeated", "packed"], default="repeated", help="what the models read: a random sequence "
      "repeated (--period), or packed short documents, the students' training data; default repeated")
    a("--max-doc-len", type=int, default=128, help="--inputs packed: the longest document (tokens); default 128")


RULES = [  # (flag, holds, rule): each numeric flag's range and the output name
    ("n_windows", lambda v: v >= 1, "must be >= 1"),
    ("seed", lambda v: 0 <= v < 2**32, "must lie in [0, 2**32)"),
    ("window", lambda v: v is None or v >= 8, "must be >= 8 tokens"),
    ("max_doc_len", lambda v: v >= 2, "must be >= 2"),
    ("shift", lambda v: all(math.isfinite(x) for x in v), "must be finite"),
    ("noise", lambda v: all(math.isfinite(x) and x >= 0 for x in v), "must be finite and >= 0"),
    ("period", lambda v: v >= 1, "must be >= 1"),
    ("name", lambda v: v not in ("", ".", "..") and os.path.basename(v) == v, "must be a plain file name"),
]
COMMANDS = {"retrieval": run_retrieval, "perturb": run_perturb}


def run_command(args, commands, rules=RULES):
    """Check the flags (rules), then run the parsed subcommand; returns the paths written. Bad input: one `error:`
    line, exit 2, nothing written."""
    for key, ok, rule in rules:
        if key in vars(args) and not ok(vars(args)[key]):
            fail(f"--{key.replace('_', '-')} {rule}, got {vars(args)[key]!r}")
    check_out_dir(args.out, "--out")
    try:
        args.device = torch.device(args.device)
        if args.device.type == "cuda" and not torch.cuda.is_available():
            fail(f"--device {args.device}: no CUDA device available")
        return commands[args.command](args)
    except (ValueError, RuntimeError, OSError) as e:  # CheckpointError is a ValueError
        fail(first_line(e))


def main(argv=None):
    """Run one subcommand; returns the paths written."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_commands(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    args.reader = load_model
    return run_command(args, COMMANDS)


if __name__ == "__main__":
    main()
