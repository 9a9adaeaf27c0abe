"""Logit distillation: a frozen long-context teacher and the KL loss the student learns from.

Paper idea: in "Short Data, Long Context" (arXiv 2604.06070) the student is trained on
packed short documents with a *logit-based* knowledge-distillation loss against a
long-context teacher run on the same packed window. Because the teacher's next-token
distribution depends on what lies far back in the window (finding 2), the KL carries
positional, long-range information that the short documents alone do not.

- `load_teacher`: a checkpoint written by train.py (loaded with weights_only=True) or a
  Hugging Face Llama folder (formats/hf.py, e.g. SmolLM2 converted from GGUF), frozen (eval,
  requires_grad False), bf16 on CUDA; a checkpoint must be a finished teacher run, and the
  vocabulary must match the student's.
- `teacher_logits`: the teacher's forward under torch.inference_mode().
- `forward_kl` / `plain_kd_loss`: the paper's loss as it writes it, T^2 * mean over tokens of
  KL(p_t || p_s) = sum_v p_t (log p_t - log p_s): the reference, read this first. It is what
  a default training step runs.
- `kd_loss`: what train.py calls: the forward KL (plain_kd_loss itself unless chunked), the
  reverse KL, or the generalized JSD of GKD (Agarwal et al. 2024), with temperature T (scaled by
  T^2), averaged over unmasked tokens, in float32. A memory optimisation, `ChunkedDivergence`,
  computes it over chunks of tokens: only one chunk of vocabulary-wide float32 probabilities
  exists at a time, in the forward *and* the backward pass (the backward recomputes each chunk);
  tested equal, value and gradient, to the plain autograd path (chunk_size 0). train.py chunks
  only logits above train.CHUNK_ABOVE floats (a real vocabulary on long windows).
- `ARMS` / `arm_terms`: phase 2's objectives (train.py --arm): the KD student, its CE-only twin, and the baselines
  and ablations that ask where the long-range signal comes from; what each loss term learns from on a batch.
- `teacher_topk` / `topk_forward_kl` / `TopK`: a teacher's logits cached as their top-k tokens, and the
  forward KL over those k tokens plus one "rest" bucket (train.py --teacher-topk, longctx/topk.py: a real
  teacher, computed once per window); `kd_loss` takes it when the teacher answers with a TopK.
"""
import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from formats.hf import load_pretrained
from model import CheckpointError

# ----------------------------------------------------------------------------- the paper's loss


def forward_kl(s, t):
    """KL(p_t || p_s) = sum_v p_t (log p_t - log p_s), per token (n,): the paper's logit KD (mass-covering).

    s, t: float32 logits (n, V) of student and teacher, already divided by the temperature."""
    log_ps, log_pt = F.log_softmax(s, -1), F.log_softmax(t, -1)  # (n, V)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # (n,)


def plain_kd_loss(student_logits, teacher_logits, mask=None, temperature=1.0, total=None):
    """The reference: T^2 * mean over unmasked tokens of KL(p_t || p_s) at temperature T (Hinton et al. 2015).

    student_logits, teacher_logits (B, T, V); mask (B, T) bool, True = use. total: divide the sum over the unmasked
    tokens by this count instead of their number (train.py: the count of a whole global batch that arrives in
    micro-batches and ranks). kd_loss with chunk_size 0 runs exactly this; it adds other divergences and the
    chunked option."""
    V = student_logits.shape[-1]
    kl = forward_kl(student_logits.reshape(-1, V).float() / temperature,
                    teacher_logits.reshape(-1, V).detach().float() / temperature)  # (B*T,)
    if mask is not None:
        kl = kl[mask.reshape(-1)]
    return temperature**2 * (kl.mean() if total is None else kl.sum() / total)


# ----------------------------------------------------------------------------- other divergences
# Each maps float32 logits (n, V) of student and teacher, already divided by T, to (n,).


def reverse_kl(s, t):
    """KL(p_s || p_t): mode-seeking."""
    log_ps, log_pt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    return (log_ps.exp() * (log_ps - log_pt)).sum(-1)


def generalized_jsd(s, t, beta):
    """beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s (GKD, as TRL).

    JSD / beta -> KL(p_t || p_s) as beta -> 0 and JSD / (1 - beta) -> KL(p_s || p_t) as beta -> 1.
    """
    log_ps, log_pt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    log_m = torch.logsumexp(torch.stack([log_pt + math.log(beta), log_ps + math.log(1 - beta)]), 0)
    kl_t = (log_pt.exp() * (log_pt - log_m)).sum(-1)
    kl_s = (log_ps.exp() * (log_ps - log_m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def divergence_fn(kind: str, beta: float = 0.5):
    if kind == "forward":
        return forward_kl
    if kind == "reverse":
        return reverse_kl
    if kind == "jsd":
        if not 0 < beta < 1:
            raise ValueError(f"jsd beta must lie strictly between 0 and 1, got {beta}")
        return lambda s, t: generalized_jsd(s, t, beta)
    raise ValueError(f"unknown KD loss {kind!r}: forward, reverse or jsd")


def weighted_divergence(student, teacher, weights, div, temperature):
    """sum_n weights_n * div(student_n / T, teacher_n / T) in float32, by plain autograd: the reference."""
    return (div(student.float() / temperature, teacher.float() / temperature) * weights).sum()


# ----------------------------------------------------------------------------- memory optimisation: chunks


class ChunkedDivergence(torch.autograd.Function):
    """weighted_divergence, chunk by chunk: the same value and gradient (tested), less memory.

    Plain autograd keeps every float32 (N, V) intermediate of the divergence for the backward pass;
    this forward keeps none beyond one chunk, and the backward recomputes each chunk under autograd
    and writes its gradient into the student's dtype. It matters when N * V is large (a real
    vocabulary on a long window); at this project's vocabulary of 193 it changes nothing.
    """

    @staticmethod
    def forward(ctx, student, teacher, weights, div, temperature, chunk_size):
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        for i in range(0, student.shape[0], chunk_size):
            s = student[i:i + chunk_size].float() / temperature
            t = teacher[i:i + chunk_size].float() / temperature
            total += (div(s, t) * weights[i:i + chunk_size]).sum()
        ctx.save_for_backward(student, teacher, weights)
        ctx.div, ctx.temperature, ctx.chunk_size = div, temperature, chunk_size
        return total

    @staticmethod
    def backward(ctx, grad_out):
        student, teacher, weights = ctx.saved_tensors
        grad = torch.empty_like(student)
        for i in range(0, student.shape[0], ctx.chunk_size):
            with torch.enable_grad():
                s = student[i:i + ctx.chunk_size].detach().float().requires_grad_()
                t = teacher[i:i + ctx.chunk_size].float() / ctx.temperature
                d = (ctx.div(s / ctx.temperature, t) * weights[i:i + ctx.chunk_size]).sum()
                (g,) = torch.autograd.grad(d, s)
            grad[i:i + ctx.chunk_size] = (g * grad_out).to(grad.dtype)
        return grad, None, None, None, None, None


def kd_loss(student_logits, teacher_logits, mask=None, temperature=1.0, kind="forward", beta=0.5,
            chunk_size=0, total=None):
    """Distillation loss, averaged over unmasked tokens and scaled by T^2 (Hinton et al. 2015).

    student_logits, teacher_logits (B, T, V) or (N, V); mask (B, T) or (N,) bool, True = use.
    chunk_size: tokens per float32 chunk (ChunkedDivergence); 0 = plain autograd (for kind forward
    plain_kd_loss itself, else weighted_divergence). Both give the same value and gradient.
    total: the sum over the unmasked tokens is divided by this count instead of their number.
    Returns (loss, divergence): `divergence` is the detached per-token divergence itself
    (for kind forward: the true KL at temperature T, 0 when the distributions match).
    """
    if isinstance(teacher_logits, TopK):  # a cached teacher (train.py --teacher-topk): k tokens and the rest
        return topk_kd_loss(student_logits, teacher_logits, mask)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"student vocabulary {student_logits.shape[-1]} != teacher vocabulary "
                         f"{teacher_logits.shape[-1]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if kind == "forward" and not chunk_size:  # the reference, as written
        loss = plain_kd_loss(student_logits, teacher_logits, mask, temperature, total)
        return loss, loss.detach() / temperature**2
    V = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, V), teacher_logits.reshape(-1, V).detach()  # (N, V)
    m = torch.ones(s.shape[0], device=s.device) if mask is None else mask.reshape(-1).float()
    weights = m / (m.sum().clamp(min=1) if total is None else total)  # (N,): a mean over the unmasked tokens
    div = divergence_fn(kind, beta)
    if chunk_size:
        div = ChunkedDivergence.apply(s, t, weights, div, float(temperature), chunk_size)
    else:
        div = weighted_divergence(s, t, weights, div, float(temperature))
    return div * temperature**2, div.detach()


def chunked_cross_entropy(logits, targets, keep=None, chunk_size=256, total=None):
    """Mean next-token cross-entropy over the positions `keep` marks, as F.cross_entropy on float32 logits
    gives it (tested), through ChunkedDivergence: one chunk of float32 logits at a time instead of a float32
    copy of all (N, V) of them (at a 49,152-token vocabulary on 16 x 4,096 tokens, 12.9 GB).

    logits (B, T, V) or (N, V), any float dtype; targets (B, T) or (N,) token ids; keep (B, T) or (N,) bool;
    total: divide the sum over the kept tokens by this count instead of their number.
    The ids ride in ChunkedDivergence's teacher slot as an (N, 1) float column: exact below 2^24.
    """
    V = logits.shape[-1]
    s, y = logits.reshape(-1, V), targets.reshape(-1, 1).float()  # (N, V), (N, 1)
    m = torch.ones(s.shape[0], device=s.device) if keep is None else keep.reshape(-1).float()
    weights = m / (m.sum().clamp(min=1) if total is None else total)  # (N,): a mean over the kept tokens

    def ce(chunk, ids):
        return F.cross_entropy(chunk, ids[:, 0].long(), reduction="none")  # (n,)
    return ChunkedDivergence.apply(s, y, weights, ce, 1.0, chunk_size)


# ----------------------------------------------------------------------------- cached teacher (top-k)
# A real teacher costs far more than a small student: its logits can be computed once and kept as
# their k most likely tokens per position (a (B, T, k) id and log-prob pair instead of (B, T, V)).
# The loss then compares the two distributions coarsened to k + 1 outcomes: each of the teacher's
# k tokens, and one bucket "any other token" holding the rest of the mass. That is a true KL
# (between two distributions on k + 1 outcomes): >= 0, zero with zero gradient when the student
# equals the teacher, equal to the full forward KL when k = V, and never above it (coarsening
# cannot increase a KL: the data-processing inequality). Dropping the bucket would not be a
# divergence: its minimum puts all the student's mass on the k tokens.


def teacher_topk(logits, k):
    """(ids int64 (..., k), log-probs float32 (..., k)) of the k most likely next tokens."""
    logp, ids = torch.topk(F.log_softmax(logits.float(), -1), k, dim=-1)
    return ids, logp


def topk_forward_kl(student_logp, top_ids, top_logp):
    """KL(p_t || p_s) over the teacher's k tokens plus one bucket for the rest, per position (...,).

    = sum_k p_t (log p_t - log p_s) + r_t (log r_t - log r_s), r = 1 - sum_k p (the mass outside
    the k tokens). student_logp: log-softmax (..., V); top_ids, top_logp: teacher_topk (..., k).
    k = V gives forward_kl exactly (no rest).
    """
    log_ps = student_logp.gather(-1, top_ids)  # (..., k)
    kl = (top_logp.exp() * (top_logp - log_ps)).sum(-1)  # (...,)
    if top_ids.shape[-1] == student_logp.shape[-1]:
        return kl
    rest_t = (-torch.expm1(torch.logsumexp(top_logp, -1))).clamp(min=0)  # (...,) teacher mass outside
    log_rest_s = student_logp.scatter(-1, top_ids, float("-inf")).logsumexp(-1)  # (...,) log of the student's
    return kl + torch.xlogy(rest_t, rest_t) - rest_t * log_rest_s


class TopK(NamedTuple):
    """What a cached teacher answers instead of logits: its k most likely next tokens, ids int64 (..., k) and
    log-probs float32 (..., k) (teacher_topk)."""
    ids: torch.Tensor
    logp: torch.Tensor

    def clone(self):  # as logits.clone(): normal tensors out of inference mode (teacher_logits)
        return TopK(self.ids.clone(), self.logp.clone())


def topk_kd_loss(student_logits, top, mask=None):
    """(loss, divergence): the mean over unmasked tokens of topk_forward_kl between the student's logits
    (B, T, V) and a cached teacher's TopK (B, T, k); mask (B, T) bool, True = use. No temperature: the cache
    holds the teacher's probabilities at T = 1."""
    kl = topk_forward_kl(F.log_softmax(student_logits.float(), -1), top.ids, top.logp)  # (B, T)
    loss = kl.mean() if mask is None else (kl * mask).sum() / mask.sum().clamp(min=1)
    return loss, loss.detach()


def topk_coverage(top_logp):
    """Mean share of the teacher's probability mass its k tokens hold (what the top-k loss sees exactly)."""
    return top_logp.exp().sum(-1).mean().item()


# ----------------------------------------------------------------------------- teacher


def load_teacher(path, device, vocab_size=None):
    """Load a frozen teacher from a train.py checkpoint (weights_only) or an HF folder; bf16 on CUDA."""
    teacher, ckpt = load_pretrained(path, device)
    if ckpt.get("phase", "teacher") != "teacher":  # checkpoints made outside train.py carry no phase
        raise CheckpointError(f"{path} is a phase-{ckpt['phase']} student checkpoint, not a teacher "
                              f"(train one with: python train.py --phase teacher)")
    if not ckpt.get("done", True):
        raise CheckpointError(f"{path} is an unfinished teacher run (step {ckpt['step']}): finish it first "
                              f"(python train.py --phase teacher --resume, with its --out-dir)")
    if vocab_size is not None and teacher.config.vocab_size != vocab_size:
        raise CheckpointError(f"teacher {path} has vocabulary {teacher.config.vocab_size} but the student has "
                              f"{vocab_size}: teacher and student must share the vocabulary")
    return freeze_teacher(teacher, device)


def freeze_teacher(teacher, device):
    """eval(), no gradients, and bf16 weights on CUDA: the teacher only ever runs forward."""
    teacher.eval().requires_grad_(False)
    if device.type == "cuda":
        teacher.to(torch.bfloat16)
    return teacher


def teacher_logits(teacher, x, position_ids=None, doc_ids=None):
    """Teacher logits (B, T, V) under inference mode, cloned into a normal tensor for autograd."""
    with torch.inference_mode():
        logits = teacher(x, position_ids, doc_ids)
    return logits.clone()


# ----------------------------------------------------------------------------- phase 2's arms


# Phase 2's training objective (--arm): the KD student and its CE twin, and the baselines and ablations that ask
# where the long-range signal comes from. "Far-back" targets (data.far_back_targets) are the values, at a record or
# an answer, whose key stood in an earlier document of the packed window with another value: there the data's label
# is the recent value while a long-context teacher answers with the far-back one.
@dataclasses.dataclass(frozen=True)
class Arm:
    """One objective, as arm_terms reads it: what the teacher sees, the CE's targets, the positions each term
    counts. loss = (1 - w) CE + w KD (--kd-weight w; an arm without a KD term trains with w = 0)."""
    what: str  # for --help
    teacher: str = "window"  # what the teacher sees: the whole packed "window", its own "document" only, or "none"
    targets: str = "data"  # the CE's labels: the "data"'s next tokens, or the "teacher"'s argmax (hard labels)
    ce_positions: str = "all"  # positions in the CE: "all", or "leak-free" (the far-back targets left out)
    kd_positions: str = "all"  # positions in the KD term: "all", "leak-free", or "none" (no KD term)
    suffix: str = ""  # of the run name (run names already say kd or ce)


ARMS = {
    "ce": Arm("CE on the data's labels (the CE-only twin)", teacher="none", kd_positions="none"),
    "ce-masked": Arm("CE without the far-back targets in the loss (not trained against far retrieval)",
                     teacher="none", ce_positions="leak-free", kd_positions="none", suffix="-masked"),
    "ce-teacher-labels": Arm("CE on the teacher's argmax tokens (hard-label distillation)", targets="teacher",
                             kd_positions="none", suffix="-tlabels"),
    "kd": Arm("(1 - w) CE + w KD against the teacher's logits (the KD student)"),
    "kd-masked": Arm("as kd, with the far-back targets removed from the KD term", kd_positions="leak-free",
                     suffix="-masked"),
    "kd-teacher-docmask": Arm("as kd, the teacher scored under the document mask (it cannot see other documents)",
                              teacher="document", suffix="-tdocmask"),
}
CE_ARMS = tuple(k for k, a in ARMS.items() if a.kd_positions == "none")  # --kd-weight 0
MASKED_ARMS = tuple(k for k, a in ARMS.items() if "leak-free" in (a.ce_positions, a.kd_positions))  # need far_back


def run_arm(args):
    """The Arm this run trains: phase 2's --arm; the teacher and phase 1 train kd, or ce at --kd-weight 0."""
    return ARMS[args.arm or ("kd" if args.kd_weight > 0 else "ce")]


def arm_terms(teacher, batch, args, autocast):
    """What the loss learns from on this batch, as the run's arm (ARMS) says: (CE targets (b, T), CE positions
    (counted), the teacher's logits (b, T, V) for the KD term or None = no KD term, KD positions (counted)).

    The teacher sees the whole window, or its own document only (the document mask, as under --doc-mask: any
    long-range signal it then passes on is not retrieval from an earlier document).
    """
    arm = run_arm(args)
    x, y, pos, doc = batch[:4]  # (b, T) each
    t_logits = None
    if teacher is not None and arm.teacher != "none":
        with autocast:
            t_logits = teacher_logits(teacher, x, pos, doc if args.doc_mask or arm.teacher == "document" else None)
    targets = t_logits.argmax(-1) if arm.targets == "teacher" else y  # hard-label distillation: the teacher's argmax
    kd_logits = t_logits if arm.kd_positions != "none" else None
    return targets, counted(batch, arm.ce_positions), kd_logits, counted(batch, arm.kd_positions)


def counted(batch, where):
    """(b, T) bool, True = the position counts in a loss term; None = every position. "leak-free": all but the
    far-back targets (batch[5], data.far_back_targets), where the teacher answers from an earlier document."""
    return ~batch[5] if where == "leak-free" else None


def term_counts(batch, args):
    """(2,) float: how many positions the CE and the KD term count in this batch (arm_terms)."""
    arm = run_arm(args)
    y = batch[1]  # (b, T)
    keeps = (counted(batch, arm.ce_positions), counted(batch, arm.kd_positions))
    return torch.stack([torch.tensor(y.numel(), device=y.device) if k is None else k.sum() for k in keeps]).float()


def masked_cross_entropy(logits, targets, keep=None, total=None, chunk_size=0):
    """Mean next-token cross-entropy over the positions `keep` (b, T) marks (all when None); with `total`, their sum
    divided by total instead of their number.

    chunk_size > 0 (train.py: logits above CHUNK_ABOVE floats, a real vocabulary on long windows) goes through
    distill.chunked_cross_entropy in chunks of chunk_size (--kd-chunk) tokens: no float32 copy of them all.
    """
    if chunk_size:
        return chunked_cross_entropy(logits, targets, keep, chunk_size, total)
    if keep is None and total is None:
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (b T,)
    if keep is not None:
        per_token = per_token[keep.flatten()]
    return per_token.sum() / (max(1, per_token.numel()) if total is None else total)
