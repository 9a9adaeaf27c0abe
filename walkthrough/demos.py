"""The classroom walkthrough's own demonstrations (WALKTHROUGH.md): one subcommand per stop.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) in four pictures that no other
script prints: the batch a phase-2 student trains on (short documents packed into a long
window), how RoPE turns each frequency pair over that window, the attention that retrieval
is made of, and the distillation target next to the one-hot target at one position. Each
subcommand uses the shipped checkpoints and the project's own functions (never a copy of
them), prints what WALKTHROUGH.md shows, and draws one figure into --out:

  python -m walkthrough data       samples of the data: a long document, a packed window, a probe (no figure)
  python -m walkthrough batch      the first phase-2 batch, as train.py draws it   packed_window.png
  python -m walkthrough rope       RoPE's relative property and its spectrum        rope_turns.png
  python -m walkthrough attention  retrieval at D=512: teacher vs the step-0 student  (no figure)
  python -m walkthrough kd         that batch through the loss: CE, KL, train_step   kd_target.png

Each runs in a few seconds on a CPU. tests/test_walkthrough.py runs every command of
WALKTHROUGH.md and checks what it prints against the text.
"""
import argparse
import math
import os
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from config import SHIPPED, build_parser as train_parser, check_out_dir, resolve
from data import SEP, TaskSpec, kv_probe, synthetic_batch, to_device
from research.overlap import key_recurrence
from distill import kd_loss, load_teacher, teacher_logits
from variants import chunked
from interp.qk import queries_and_keys
from model import atomic_write, load_model, switch_rope
from rope import (apply_rope, critical_dimension, critical_pair, default_inv_freq, rope_cos_sin, rotations,
                  spectrum_utilization)
from evaluate import KeyValueTask
from train import Lab, make_optimizer, make_stages, train_step

CPU = torch.device("cpu")
F32 = nullcontext()  # the walkthrough runs in float32 whatever train.py's --dtype default becomes
CHUNK = 256  # tokens per chunk of variants/chunked.py's KL, which a real vocabulary takes
PHASE2_ARGV = ["--phase", "2", "--device", "cpu", "--dtype", "float32"]  # train.py's main job, defaults


# ----------------------------------------------------------------------------- shared


def render(tokens, spec, answers=None, width=24):
    """Readable tokens: | for SEP, K12 / V3 / f for key, value, filler; [V3] marks an answer."""
    out = []
    for i, t in enumerate(tokens[:width]):
        t = int(t)
        s = "|" if t == SEP else f"K{t - 1}" if t <= spec.n_keys else (
            f"V{t - 1 - spec.n_keys}" if t <= spec.n_keys + spec.n_values else ".")
        out.append(f"[{s}]" if answers is not None and answers[i] else s)
    return " ".join(out)


def run_data(args):
    """Samples of data.py: a long document (teacher data), a packed window of short documents, a probe."""
    spec, rng = TaskSpec(), np.random.default_rng(args.seed)
    print(f"vocabulary {spec.vocab_size}: SEP=0 '|', keys K0..K{spec.n_keys - 1}, values V0..V{spec.n_values - 1}, "
          f"filler '.' (Markov, {spec.branching} successors)\n")
    long = synthetic_batch(spec, rng, "long", 1, args.window)
    print("A long document (teacher data), first 48 tokens, answers in [ ]:")
    print(" ", render(long["tokens"][0], spec, long["answers"][0], 48))
    packed = synthetic_batch(spec, rng, "packed", 8, args.window, args.max_doc_len, recurrence=args.recurrence)
    starts = np.flatnonzero(packed["tokens"][0] == SEP)
    print(f"\nA packed window of short documents: {len(starts)} documents start at {starts.tolist()}")
    print("  the first 48 tokens:", render(packed["tokens"][0], spec, packed["answers"][0], 48))
    print(f"  records whose key already appeared in an earlier document of the window: "
          f"{key_recurrence(spec, packed):.0%}; far-back value targets: {packed['far_back'].sum() / 8:.0f} per window")
    probe = kv_probe(spec, args.window, 256, n_windows=1, n_pairs=4)
    q = np.flatnonzero(probe["answers"][0])
    print(f"\nA retrieval probe at D=256: answers at positions {q.tolist()}; around the first:")
    print("  record:", render(probe["tokens"][0][q[0] - 257:], spec, width=3),
          "  query:", render(probe["tokens"][0][q[0] - 1:], spec, probe["answers"][0][q[0] - 1:], 3))


def phase2_batch():
    """(resolved train.py args, numpy batch): step 0 of the phase-2 data stream, exactly as train.py draws it."""
    args = resolve(train_parser().parse_args(PHASE2_ARGV))
    name, src, steps, _ = make_stages(args, KeyValueTask(), Lab())[-1]  # phase 2 has one stage, "main"
    return args, src.batch(0)


def shipped_models():
    """The shipped teacher and the walkthrough's step-0 student: its phase-1 weights (window 32, base 1e4; the
    earlier recipe's seed 0) under base 5e5."""
    spec = TaskSpec()
    teacher = load_teacher(os.path.join(SHIPPED, "teacher.pt"), CPU, spec.vocab_size)
    phase1, _ = load_model(os.path.join(SHIPPED, "phase1-b10000-kd0.5.pt"))
    return teacher, switch_rope(phase1, 5e5, max_seq_len=1024)


def token_name(spec, t):
    return render([t], spec)


def recurring_records(spec, tokens, doc_ids, answers):
    """[(query key position, earlier position of that key in an earlier document)] for the answers of one window.

    The answer at a is the value after the query key at a - 1; the earlier occurrence is the last one before the
    current document began (the long-range signal of the packed window).
    """
    out = []
    for a in np.flatnonzero(answers):
        q = a - 1
        earlier = np.flatnonzero((tokens[:q] == tokens[q]) & (doc_ids[:q] < doc_ids[q]))
        if len(earlier):
            out.append((int(q), int(earlier[-1])))
    return out


def same_within(a, b, tol):
    """'equal within tol' when |a - b| < tol, else the difference: float rounding differs from CPU to CPU."""
    diff = abs(float(a) - float(b))
    return f"equal within {tol:.0e}" if diff < tol else f"difference {diff:.1e}, above {tol:.0e}"


def save(fig, out, name):
    import matplotlib.pyplot as plt
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format=os.path.splitext(name)[1][1:] or "png"))
    plt.close(fig)
    return path


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# ----------------------------------------------------------------------------- stop 1: the batch


def run_batch(args):
    spec = TaskSpec()
    targs, batch = phase2_batch()
    tok, pos, doc, ans = (batch[k][0] for k in ("tokens", "positions", "doc_ids", "answers"))
    starts = np.flatnonzero(tok == SEP)
    lengths = np.diff(np.append(starts, len(tok)))
    B, L1 = batch["tokens"].shape
    print(f"train.py's phase-2 stream (make_stages -> DataSource.batch(0)): {B} windows of {L1} tokens "
          f"(window {targs.window} + 1)")
    print(f"window 0: {len(starts)} documents starting at {starts.tolist()}")
    print(f"  lengths {lengths.min()}..{lengths.max()} tokens (separator included): each drawn uniformly from "
          f"{targs.min_doc_len}..{targs.max_doc_len}, except the last, which takes the {lengths[-1]} tokens left")
    print(f"  tokens     {render(tok, spec, ans, 16)} ...")
    print(f"  positions  {' '.join(map(str, pos[:6]))} ... {pos[-1]} (continuous across documents)")
    print(f"  doc_ids    {' '.join(map(str, doc[:6]))} ... {doc[-1]} (+1 at every separator)")
    rec = recurring_records(spec, tok, doc, ans)
    print(f"  answers    {int(ans.sum())} query values; {len(rec)} of them follow a key that an earlier document "
          f"of the window also used")
    x, y, p, d, a = to_device(batch, CPU)
    print(f"to_device: x = tokens[:, :-1], y = tokens[:, 1:] -> x {tuple(x.shape)}, y {tuple(y.shape)}, "
          f"positions {tuple(p.shape)}, doc_ids {tuple(d.shape)}, answer mask on y {tuple(a.shape)}")
    q, e = rec[0]
    print(f"the first recurring key: {token_name(spec, tok[q])} at position {q} (document {doc[q]}) answers "
          f"{token_name(spec, tok[q + 1])}; at position {e} (document {doc[e]}) it answered "
          f"{token_name(spec, tok[e + 1])}")
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 3.6), height_ratios=[1, 1.3], layout="constrained")
    cmap = plt.get_cmap("tab20")
    for i, (s, n) in enumerate(zip(starts, lengths)):
        ax.axvspan(s, s + n, color=cmap(i % 20), alpha=0.8)
        ax.text(s + n / 2, 0.5, str(i + 1), ha="center", va="center", fontsize=8)
    ax.vlines(np.flatnonzero(ans), 0, 0.25, color="k", lw=1, label="answer (query value)")
    ax.vlines([q + 1 for q, _ in rec], 0.75, 1, color="r", lw=1.5, label="answer whose key an earlier document used")
    ax.set(xlim=(0, len(tok)), ylim=(0, 1), yticks=[], xlabel="position (RoPE sees 0..1023 across documents)",
           title=f"One packed window of the phase-2 data: {len(starts)} short documents (colours) in "
                 f"{targs.window} tokens")
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1, 1.6), ncol=2)
    lo, hi = max(0, e - 12), max(0, e - 12) + 64  # around the first recurring key and its earlier occurrence
    for i in range(lo, min(hi, len(tok))):
        ax2.add_patch(plt.Rectangle((i, 0), 1, 1, color=cmap((doc[i] - 1) % 20), alpha=0.8))
        ax2.text(i + 0.5, 0.5, render([tok[i]], spec, [ans[i]], 1), ha="center", va="center", fontsize=6.5,
                 rotation=90, color="r" if i in (q, e) else "k")
    ax2.set(xlim=(lo, hi), ylim=(0, 1), yticks=[], xlabel=f"positions {lo}..{hi - 1}: the key {token_name(spec, tok[q])} "
            f"(red) of document {doc[e]} recurs in document {doc[q]} with another value ([V]: a query's answer, what "
            f"the retrieval probes check)")
    print(f"figure: {save(fig, args.out, 'packed_window.png')}")


# ----------------------------------------------------------------------------- stop 2: RoPE


def run_rope(args):
    d = 32  # the head dimension of every model here (d_model 128, 4 heads)
    print(f"RoPE turns pair i of a head (dims i and i + {d // 2}) by the angle m * base^(-2i/{d}) at position m")
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)  # (B, H, T, hd)
    inv = default_inv_freq(d, 1e4)

    def score(m, n):
        cq, sq = rope_cos_sin(torch.tensor([[m]]), inv)
        ck, sk = rope_cos_sin(torch.tensor([[n]]), inv)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    a, b = score(600, 100), score(510, 10)
    print(f"relative: q.k with q at 600, k at 100 = {a:.4f}; q at 510, k at 10 = {b:.4f} "
          f"({same_within(a, b, 1e-4)}): only m - n matters")
    settings = [("teacher", 1e4, 1024), ("phase 1", 1e4, 32), ("phase 2", 5e5, 1024)]
    print(f"full turns within the window, pairs 0..{d // 2 - 1}:")
    for name, base, L in settings:
        r = rotations(default_inv_freq(d, base), L)
        print(f"  {name:8s} base {base:<6g} L={L:<5d}" + " ".join(f"{v:.0f}" if v >= 10 else f"{v:.2g}" for v in r.tolist()))
    print("first pair that never turns once (the critical pair i; rope.py and train.py print the critical "
          "dimension 2i) and the share of pairs that do (utilization):")
    for name, base, L in settings:
        pair = critical_pair(d, base, L)
        print(f"  {name:8s} pair {pair:2d} (dimension {critical_dimension(d, base, L):2d}), "
              f"utilization {spectrum_utilization(d, base, L):.2f}")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained", sharey=True)
    m = np.arange(1024)
    for ax, base in zip(axes, (1e4, 5e5)):
        theta = default_inv_freq(d, base).double().numpy()
        im = ax.imshow(np.cos(theta[:, None] * m[None, :]), aspect="auto", cmap="RdBu", vmin=-1, vmax=1,
                       interpolation="nearest", origin="lower")
        ax.axvline(32, color="k", ls="--", lw=1.2, label="phase 1 sees only positions < 32")
        crit = critical_pair(d, base, 1024)
        ax.axhline(crit - 0.5, color="k", ls=":", lw=1.2, label=f"pairs >= {crit} never turn once in 1024 tokens")
        ax.set(title=f"base {base:g}: cos(m * theta_i)", xlabel="position (or distance) m in tokens",
               ylabel="frequency pair i (fast -> slow)")
        ax.legend(fontsize=7, loc="upper right")
    fig.colorbar(im, ax=axes.tolist(), label="cos of the rotation angle")
    fig.suptitle("RoPE: how far each pair turns over the 1024-token window")
    print(f"figure: {save(fig, args.out, 'rope_turns.png')}")


# ----------------------------------------------------------------------------- stop 3: attention


def attention_probs(q_rot, k_rot):
    """Causal softmax(q k^T / sqrt(hd)) from the post-RoPE queries and keys of a forward pass: (B, H, T, T)."""
    k_rot = k_rot.repeat_interleave(q_rot.shape[1] // k_rot.shape[1], dim=1)  # GQA: each kv head serves a group
    scores = q_rot @ k_rot.transpose(-1, -2) / math.sqrt(q_rot.shape[-1])
    T = scores.shape[-1]
    return scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)


@torch.no_grad()
def run_attention(args):
    spec, D = TaskSpec(), 512
    teacher, step0 = shipped_models()
    batch = kv_probe(spec, 1024, D, n_windows=1)  # window 0 of evaluate()'s probe at this distance
    x, y, pos, _, ans = to_device(batch, CPU)
    queries = torch.nonzero(ans[0]).flatten()  # x[q] is a query key; y[q] its value (the answer)
    q0 = int(queries[0])
    print(f"kv_probe at D={D}, window 0: {len(queries)} queries; the first: record "
          f"{render(batch['tokens'][0][q0 - D:], spec, width=2)} at position {q0 - D}, query "
          f"{render(batch['tokens'][0][q0:], spec, batch['answers'][0][q0:], 2)} at {q0}")
    print(f"{'model':28s} {'accuracy':>8s} {'p(answer)':>10s}   layer-1 attention from the query key to the record's "
          f"value (best head)")
    for name, model in (("teacher", teacher), ("step 0 (phase 1, base 5e5)", step0)):
        logits, qk = queries_and_keys(model.eval(), x, pos)
        p = logits.softmax(-1)[0, queries, y[0, queries]]
        acc = (logits[0, queries].argmax(-1) == y[0, queries]).float().mean()
        att = attention_probs(qk["q_post"][1], qk["k_post"][1])[0]  # (H, T, T)
        on_value = att[:, queries, queries - D + 1].amax(0)  # the value follows the record's key: q - D + 1
        print(f"{name:28s} {acc:8.2f} {p.mean():10.2f}   {on_value.mean():.2f} (mean over the {len(queries)} queries)")


# ----------------------------------------------------------------------------- stop 4: the loss


def run_kd(args):
    spec = TaskSpec()
    targs, batch = phase2_batch()
    teacher, student = shipped_models()
    x, y, pos, doc, ans = to_device(batch, CPU)
    print(f"the first phase-2 batch: x, y, positions, doc_ids, answers {tuple(x.shape)}; loss "
          f"{1 - targs.kd_weight:g} CE + {targs.kd_weight:g} KD (forward KL, T={targs.temperature:g})")
    with torch.no_grad():
        s_logits = student.eval()(x, pos)  # (B, T, V)
    t_logits = teacher_logits(teacher, x, pos)
    tok, docs, answers = (batch[k][0] for k in ("tokens", "doc_ids", "answers"))
    q, e = recurring_records(spec, tok, docs, answers)[0]
    target, older = int(tok[q + 1]), int(tok[e + 1])
    pt, ps = t_logits[0, q].softmax(-1), s_logits[0, q].softmax(-1)

    def top(p, k=3):
        v, i = p.topk(k)
        return ", ".join(f"{token_name(spec, int(t))} {float(pv):.2f}" for pv, t in zip(v, i))

    print(f"position {q} (document {docs[q]}): key {token_name(spec, tok[q])}, target {token_name(spec, target)}; "
          f"the same key answered {token_name(spec, older)} at position {e} (document {docs[e]})")
    print(f"  CE target (one-hot): {token_name(spec, target)} 1.00")
    print(f"  KD target (teacher): {top(pt)}")
    print(f"  step-0 student:      {top(ps)}")
    kl_here = float((pt * (pt.log() - ps.log())).sum())
    older_hits = this_hits = n_rec = 0
    gaps = []
    for w in range(len(batch["tokens"])):  # every answer of the batch whose key an earlier document used
        tw, dw, aw = (batch[k][w] for k in ("tokens", "doc_ids", "answers"))
        for qw, ew in recurring_records(spec, tw, dw, aw):
            guess = int(t_logits[w, qw].argmax())
            older_hits += guess == tw[ew + 1]
            this_hits += guess == tw[qw + 1]
            n_rec += 1
            gaps.append(qw - ew)
    print(f"  here: CE = -log p_student({token_name(spec, target)}) = {-float(ps[target].log()):.3f}, "
          f"KL(teacher || student) = {kl_here:.3f}")
    print(f"the batch's {n_rec} answers after a key that an earlier document used ({min(gaps)}..{max(gaps)} tokens "
          f"back): the teacher's top guess is the earlier document's value in {older_hits}, this document's in "
          f"{this_hits}")
    ce = F.cross_entropy(s_logits.flatten(0, 1), y.flatten())
    kd, kl = chunked.kd_loss(s_logits, t_logits, temperature=targs.temperature, chunk_size=CHUNK)
    _, kl_whole = kd_loss(s_logits, t_logits, temperature=targs.temperature)
    loss = (1 - targs.kd_weight) * ce + targs.kd_weight * kd
    print(f"over all {x.numel():,} tokens: CE {ce:.4f}, KL {kl:.4f}, loss {1 - targs.kd_weight:g} * CE + "
          f"{targs.kd_weight:g} * KL = {loss:.4f}")
    print(f"  KL in chunks of {CHUNK} tokens vs all at once: {same_within(kl, kl_whole, 1e-5)}")
    opt = make_optimizer(student.train(), targs, CPU)
    t_loss, t_ce, t_kl, t_acc = train_step(student, teacher, opt, (x, y, pos, doc, ans), targs, F32)
    print(f"train.py's train_step on the same batch: loss {t_loss:.4f}, CE {t_ce:.4f}, KL {t_kl:.4f} "
          f"(then one AdamW step)")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.4), layout="constrained")
    values = spec.values()
    xs = np.arange(len(values))
    onehot = (values == target).astype(float)
    ax.bar(xs - 0.27, onehot, 0.27, color="0.6", label=f"CE target: one-hot on {token_name(spec, target)}")
    ax.bar(xs, pt[values].numpy(), 0.27, color="tab:blue", label="KD target: teacher's p")
    ax.bar(xs + 0.27, ps[values].numpy(), 0.27, color="tab:orange", label="step-0 student's p")
    for v, what in ((target, "this document's value"), (older, "value of the earlier document")):
        i = int(np.flatnonzero(values == v)[0])
        ax.annotate(f"{token_name(spec, v)}\n{what}", (i, 1.02), ha="center", fontsize=7)
    ax.set(xticks=xs[::4], xticklabels=[token_name(spec, int(v)) for v in values[::4]], ylim=(0, 1.2),
           ylabel="probability", xlabel="the 64 value tokens (the rest of the vocabulary is off the chart)",
           title=f"Position {q} of the first phase-2 window: key {token_name(spec, tok[q])} recurs from document "
                 f"{docs[e]}")
    ax.legend(fontsize=7, loc="upper left")
    print(f"figure: {save(fig, args.out, 'kd_target.png')}")


# ----------------------------------------------------------------------------- CLI

COMMANDS = {"data": run_data, "batch": run_batch, "rope": run_rope, "attention": run_attention, "kd": run_kd}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=list(COMMANDS), help="the stop: data, batch, rope, attention or kd")
    p.add_argument("--window", type=int, default=1024, help="data: the long window L; default 1024")
    p.add_argument("--max-doc-len", type=int, default=128, help="data: the longest short document (separator "
                   "included); default 128")
    p.add_argument("--seed", type=int, default=0, help="data: the random seed; default 0")
    p.add_argument("--recurrence", type=float, default=None, help="data: ask this fraction of records to reuse a key "
                   "of an earlier document (default: uniform keys)")
    p.add_argument("--out", default="figures", help="folder for the figure; default figures/ (docs/walkthrough "
                   "holds the ones WALKTHROUGH.md shows)")
    args = p.parse_args(argv)
    check_out_dir(args.out, "--out")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    COMMANDS[args.command](args)


if __name__ == "__main__":
    main()
