"""Logit distillation: a frozen long-context teacher and the KL loss the student learns from.

Paper idea: in "Short Data, Long Context" (arXiv 2604.06070) the student is trained on packed short documents with a
*logit-based* knowledge-distillation loss against a long-context teacher run on the same packed window. Because the
teacher's next-token distribution depends on what lies far back in the window (finding 2), the KL carries
positional, long-range information that the short documents alone do not.

- `forward_kl` / `plain_kd_loss`: the paper's loss as it writes it, T^2 * mean over tokens of
  KL(p_t || p_s) = sum_v p_t (log p_t - log p_s): the reference, read this first. It is what a default training
  step runs.
- `kd_loss`: what train.py calls: plain_kd_loss itself, or the same divergence over chunks of tokens
  (`ChunkedDivergence`: only one chunk of vocabulary-wide float32 probabilities exists at a time, in the forward
  *and* the backward pass), tested equal in value and gradient. train.py chunks only logits above
  train.CHUNK_ABOVE floats (a real vocabulary on long windows). `cross_entropy` is the CE term, chunked alike.
  Other divergences (reverse KL, JSD) plug into the same two paths (variants/divergences.py).
- `load_teacher`: a finished teacher checkpoint (loaded with weights_only=True), frozen (eval, requires_grad False),
  bf16 on CUDA; its vocabulary must match the student's. `teacher_logits`: its forward under inference mode.
"""
import torch
import torch.nn.functional as F

from model import CheckpointError, load_model

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


# ----------------------------------------------------------------------------- memory optimisation: chunks


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
        loss = plain_kd_loss(student_logits, teacher_logits, mask, temperature, total)
        return loss, loss.detach() / temperature**2
    V = student_logits.shape[-1]
    s = student_logits.reshape(-1, V)  # (N, V)
    t = teacher_logits.reshape(-1, V).detach()  # (N, V)
    m = torch.ones(s.shape[0], device=s.device) if mask is None else mask.reshape(-1).float()
    weights = m / (m.sum().clamp(min=1) if total is None else total)  # (N,): a mean over the unmasked tokens
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


# ----------------------------------------------------------------------------- teacher


def load_teacher(path, device, vocab_size=None, load=load_model):
    """A frozen teacher from a train.py checkpoint (weights_only; `load`: another reader, e.g. a lab's for model
    folders), bf16 on CUDA; one CheckpointError for a student, an unfinished run or another vocabulary."""
    teacher, ckpt = load(path, device)
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


def cross_entropy(logits, targets, keep=None, total=None, chunk_size=0):
    """Mean next-token cross-entropy over the positions `keep` (b, T) marks (all when None); with `total`, their sum
    divided by total instead of their number.

    chunk_size > 0 (train.py: logits above CHUNK_ABOVE floats, a real vocabulary on long windows) goes through
    chunked_cross_entropy in chunks of chunk_size tokens: no float32 copy of them all.
    """
    if chunk_size:
        return chunked_cross_entropy(logits, targets, keep, chunk_size, total)
    if keep is None and total is None:
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (b T,)
    if keep is not None:
        per_token = per_token[keep.flatten()]
    return per_token.sum() / (max(1, per_token.numel()) if total is None else total)
