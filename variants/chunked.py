"""The KD term and the CE term in chunks of tokens: the same value and gradient, a fraction of the memory at a real
vocabulary (python -m variants chunks logits above CHUNK_ABOVE floats; --kd-chunk tokens per chunk).

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distils a real teacher, whose vocabulary makes the
(tokens x vocabulary) float32 probabilities of the KL the largest tensor of a step (49,152 x 16 x 4,096: 12.9 GB).
`ChunkedDivergence` computes any divergence (distill.forward_kl, variants/divergences.py's) over chunks of tokens:
only one chunk exists at a time, in the forward *and* the backward pass (the backward recomputes each chunk);
`kd_loss` and `cross_entropy` are distill.py's, chunked, each tested equal to the plain one. `terms` gives train.py's
loss the two terms, chunked where the logits are large.
"""
import torch
import torch.nn.functional as F

import distill
from distill import forward_kl

# Logits (256 MB in float32) above which the CE and the KD term go in chunks of --kd-chunk tokens; the default
# phase-2 step's are 0.8M (4 x 1024 x 193), so it runs distill.py's plain KL and F.cross_entropy.
CHUNK_ABOVE = 2**26


def chunk_for(logits, chunk_size):
    """Tokens per chunk for a loss over these logits: chunk_size where they hold more than CHUNK_ABOVE floats, else 0
    (the loss all at once)."""
    return chunk_size if logits.numel() > CHUNK_ABOVE else 0


def token_weights(n, mask, total, device):
    """(n,) float32: each token's weight in the mean over the tokens `mask` keeps (any shape of n bools; None: every
    one), or, with `total`, in their sum divided by total (the count of a whole global batch)."""
    m = torch.ones(n, device=device) if mask is None else mask.reshape(-1).float()
    return m / (m.sum().clamp(min=1) if total is None else total)


def weighted_divergence(student, teacher, weights, div, temperature):
    """sum_n weights_n * div(student_n / T, teacher_n / T) in float32, by plain autograd: the reference."""
    return (div(student.float() / temperature, teacher.float() / temperature) * weights).sum()


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
        ctx.div = div
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
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


def kd_loss(student_logits, teacher_logits, mask=None, temperature=1.0, chunk_size=0, total=None, div=forward_kl):
    """Distillation loss, averaged over unmasked tokens and scaled by T^2 (Hinton et al. 2015).

    student_logits, teacher_logits (B, T, V) or (N, V); mask (B, T) or (N,) bool, True = use.
    chunk_size: tokens per float32 chunk (ChunkedDivergence); 0 = plain autograd (for the forward KL plain_kd_loss
    itself, else weighted_divergence). Both give the same value and gradient. total: the sum over the unmasked tokens
    is divided by this count instead of their number. div: the divergence of float32 logits (n, V) -> (n,),
    forward_kl by default. Returns (loss, divergence): `divergence` is the detached per-token divergence itself
    (for the forward KL: the true KL at temperature T, 0 when the distributions match).
    """
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"student vocabulary {student_logits.shape[-1]} != teacher vocabulary "
                         f"{teacher_logits.shape[-1]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if div is forward_kl and not chunk_size:  # the reference, as written
        return distill.kd_loss(student_logits, teacher_logits, mask, temperature, total)
    V = student_logits.shape[-1]
    s = student_logits.reshape(-1, V)  # (N, V)
    t = teacher_logits.reshape(-1, V).detach()  # (N, V)
    weights = token_weights(s.shape[0], mask, total, s.device)  # (N,): a mean over the unmasked tokens
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
    s = logits.reshape(-1, V)  # (N, V)
    y = targets.reshape(-1, 1).float()  # (N, 1)
    weights = token_weights(s.shape[0], keep, total, s.device)  # (N,): a mean over the kept tokens

    def ce(chunk, ids):
        return F.cross_entropy(chunk, ids[:, 0].long(), reduction="none")  # (n,)
    return ChunkedDivergence.apply(s, y, weights, ce, 1.0, chunk_size)


def cross_entropy(logits, targets, keep=None, total=None, chunk_size=0):
    """Mean next-token cross-entropy over the positions `keep` (b, T) marks (all when None); with `total`, their sum
    divided by total instead of their number.

    chunk_size > 0 goes through chunked_cross_entropy in chunks of chunk_size tokens: no float32 copy of them all;
    0 is distill.cross_entropy itself.
    """
    if chunk_size:
        return chunked_cross_entropy(logits, targets, keep, chunk_size, total)
    return distill.cross_entropy(logits, targets, keep, total)


def terms(chunk_size=256, div=forward_kl):
    """(kd, ce): train.training_loss's two terms (distill.kd_loss's and distill.cross_entropy's signatures), in
    chunks of chunk_size tokens where the logits hold more than CHUNK_ABOVE floats, plain below; div: the KD
    term's divergence."""
    def kd(student_logits, teacher_logits, mask=None, temperature=1.0, total=None):
        return kd_loss(student_logits, teacher_logits, mask, temperature, chunk_for(student_logits, chunk_size), total,
                       div)

    def ce(logits, targets, keep=None, total=None):
        return cross_entropy(logits, targets, keep, total, chunk_for(logits, chunk_size))
    return kd, ce
