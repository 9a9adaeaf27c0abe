"""Logit distillation: a frozen long-context teacher and the KL loss the student learns from.

Paper idea: in "Short Data, Long Context" (arXiv 2604.06070) the student is trained on packed short documents with a
*logit-based* knowledge-distillation loss against a long-context teacher run on the same packed window. Because the
teacher's next-token distribution depends on what lies far back in the window (finding 2), the KL carries
positional, long-range information that the short documents alone do not.

- `forward_kl` / `plain_kd_loss`: the paper's loss as it writes it, T^2 * mean over tokens of
  KL(p_t || p_s) = sum_v p_t (log p_t - log p_s): the reference, read this first. It is what a default training
  step runs.
- `kd_loss`: what train.py calls: plain_kd_loss with its checks; `cross_entropy`, the CE term. At a real vocabulary
  on long windows the lab computes the same two in chunks of tokens (variants/chunked.py, tested equal in value and
  gradient: only one chunk of vocabulary-wide float32 probabilities at a time); other divergences (reverse KL, JSD)
  are variants/divergences.py's.
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
    micro-batches and ranks)."""
    V = student_logits.shape[-1]
    kl = forward_kl(student_logits.reshape(-1, V).float() / temperature,
                    teacher_logits.reshape(-1, V).detach().float() / temperature)  # (B*T,)
    if mask is not None:
        kl = kl[mask.reshape(-1)]
    if total is not None:
        return temperature**2 * (kl.sum() / total)
    if kl.numel() == 0:  # nothing to learn from: 0 with a zero gradient, not the NaN of an empty mean
        return temperature**2 * kl.sum()
    return temperature**2 * kl.mean()


def kd_loss(student_logits, teacher_logits, mask=None, temperature=1.0, total=None):
    """(loss, divergence) of plain_kd_loss, after checking that the vocabularies match and T > 0: `divergence` is the
    detached KL itself at temperature T (0 when the distributions match). What train.training_loss calls; a lab
    passes another KD term of the same signature (variants/chunked.py: the same KL in chunks of tokens, for a real
    vocabulary; variants/divergences.py: other divergences; longctx/topk.py: a cached teacher's top-k)."""
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"student vocabulary {student_logits.shape[-1]} != teacher vocabulary "
                         f"{teacher_logits.shape[-1]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    loss = plain_kd_loss(student_logits, teacher_logits, mask, temperature, total)
    return loss, loss.detach() / temperature**2


def cross_entropy(logits, targets, keep=None, total=None):
    """Mean next-token cross-entropy over the positions `keep` (b, T) marks (all when None); with `total`, their sum
    divided by total instead of their number (a global batch that arrives in micro-batches and ranks)."""
    if keep is None and total is None:
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (b T,)
    if keep is not None:
        per_token = per_token[keep.flatten()]
    return per_token.sum() / (max(1, per_token.numel()) if total is None else total)


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
