"""Logit distillation: a frozen long-context teacher and the KL loss the student learns from.

Paper idea: in "Short Data, Long Context" (arXiv 2604.06070) the student is trained on
packed short documents with a *logit-based* knowledge-distillation loss against a
long-context teacher run on the same packed window. Because the teacher's next-token
distribution depends on what lies far back in the window (finding 2), the KL carries
positional, long-range information that the short documents alone do not.

- `load_teacher`: a checkpoint written by train.py (loaded with weights_only=True) or a
  Hugging Face Llama folder (hf.py, e.g. SmolLM2 converted from GGUF), frozen (eval,
  requires_grad False), bf16 on CUDA; a checkpoint must be a finished teacher run, and the
  vocabulary must match the student's.
- `teacher_logits`: the teacher's forward under torch.inference_mode().
- `teacher_topk` / `topk_forward_kl`: a teacher's logits cached as their top-k tokens, and
  the forward KL over those (realtext.py: a real teacher, computed once per window).
- `kd_loss`: forward KL(teacher || student), reverse KL, or the generalized JSD of GKD
  (Agarwal et al. 2024), with temperature T (scaled by T^2), averaged over unmasked
  tokens, in float32 over chunks of tokens: only one chunk of vocabulary-wide float32
  probabilities exists at a time, in the forward *and* the backward pass (the backward
  recomputes each chunk), so memory does not grow with B*T*V in float32.
"""
import math

import torch
import torch.nn.functional as F

from hf import load_pretrained
from model import CheckpointError

# ----------------------------------------------------------------------------- divergences
# Each maps float32 logits (n, V) of student and teacher, already divided by T, to (n,).


def forward_kl(s, t):
    """KL(p_t || p_s) = sum p_t (log p_t - log p_s): mass-covering; the paper's logit KD."""
    log_ps, log_pt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1)


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


class ChunkedDivergence(torch.autograd.Function):
    """sum_n weights_n * div(student_n / T, teacher_n / T), chunk by chunk, in float32.

    Forward keeps no float32 vocab-wide tensor beyond one chunk; backward recomputes
    each chunk under autograd and writes its gradient into the student's dtype.
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
            chunk_size=256):
    """Distillation loss, averaged over unmasked tokens and scaled by T^2 (Hinton et al. 2015).

    student_logits, teacher_logits (B, T, V) or (N, V); mask (B, T) or (N,) bool, True = use.
    chunk_size: tokens per float32 chunk (0 = all at once).
    Returns (loss, divergence): `divergence` is the detached per-token divergence itself
    (for kind forward: the true KL at temperature T, 0 when the distributions match).
    """
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"student vocabulary {student_logits.shape[-1]} != teacher vocabulary "
                         f"{teacher_logits.shape[-1]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    V = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, V), teacher_logits.reshape(-1, V).detach()
    m = torch.ones(s.shape[0], device=s.device) if mask is None else mask.reshape(-1).float()
    weights = m / m.sum().clamp(min=1)
    div = ChunkedDivergence.apply(s, t, weights, divergence_fn(kind, beta), float(temperature),
                                  chunk_size or s.shape[0])
    return div * temperature**2, div.detach()


# ----------------------------------------------------------------------------- cached teacher (top-k)
# A real teacher costs far more than a small student: its logits can be computed once and kept as
# their k most likely tokens per position (a (B, T, k) id and log-prob pair instead of (B, T, V)).


def teacher_topk(logits, k):
    """(ids int64 (..., k), log-probs float32 (..., k)) of the k most likely next tokens."""
    logp, ids = torch.topk(F.log_softmax(logits.float(), -1), k, dim=-1)
    return ids, logp


def topk_forward_kl(student_logp, top_ids, top_logp):
    """sum over the teacher's top-k tokens of p_t (log p_t - log p_s), per position (...,).

    The forward KL of kd_loss restricted to those k tokens (p_t not renormalized): the part of
    the teacher's mass outside them, 1 - sum p_t, gives no gradient. student_logp: log-softmax (..., V).
    """
    return (top_logp.exp() * (top_logp - student_logp.gather(-1, top_ids))).sum(-1)


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
