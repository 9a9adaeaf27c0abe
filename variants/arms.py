"""Phase 2's arms: the KD student, its CE twin, and the baselines and ablations that ask where the long-range signal
comes from (python -m variants --arm ARM).

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) claims that the teacher's logits carry positional,
long-range information. In a packed window a key can recur in a later document with another value: the data's label
there is the recent value, while a long-context teacher answers with the far-back one. These "far-back" targets (the
value at the key's later record or at its query) are one way the teacher's logits can carry what the short
documents cannot; a key that recurs with its earlier value is another (the teacher can read it there too). Each arm
takes one thing away:

- ce-masked, kd-masked: every far-back target, same-value recurrences included (`far_back_mask`), left out of the
  CE loss, or out of the KD term;
- ce-teacher-labels: CE on the teacher's argmax instead of its distribution (hard-label distillation);
- kd-teacher-docmask: the teacher scored under the document mask, so it cannot see other documents.

`ArmLoss` is the loss hook (train.Lab.loss / counts) that trains an arm; its far-back mask comes from the batch's
own tokens (`far_back_mask`) or, when the batch carries one, from its sixth tensor (tests force uneven masks so).
"""
import dataclasses

import torch

from distill import cross_entropy, kd_loss, teacher_logits


@dataclasses.dataclass(frozen=True)
class Arm:
    """One objective, as ArmLoss reads it: what the teacher sees, the CE's targets, the positions each term counts.
    loss = (1 - w) CE + w KD (--kd-weight w; an arm without a KD term trains with w = 0)."""
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
CE_ARMS = tuple(k for k, a in ARMS.items() if a.kd_positions == "none")  # trained at --kd-weight 0


def far_back_mask(x, y, doc, n_keys=64, n_values=64):
    """(b, T) bool, aligned with y: the value targets y[t] (a key x[t] followed by its value) whose key stood in an
    earlier document of the window, followed by a value: a long-context teacher can read them there. Where that
    value was another, the data's label and far-back retrieval disagree (data.far_back_targets, all inside this
    mask, tested); where it was the same, the label is this document's own draw that repeats it, and a teacher
    that answers it confidently still reads the earlier document. Both are left out."""
    is_pair = (x >= 1) & (x <= n_keys) & (y > n_keys) & (y <= n_keys + n_values)  # (b, T)
    same_key = x[:, :, None] == x[:, None, :]  # (b, T, T): target t against occurrence j
    earlier = doc[:, None, :] < doc[:, :, None]
    return (same_key & earlier & is_pair[:, None, :]).any(-1) & is_pair


class ArmLoss:
    """train.Lab's loss and counts for one arm: what each loss term learns from on a batch, and how many positions
    it counts (for a global batch that arrives in micro-batches and ranks)."""

    def __init__(self, arm, kd=kd_loss, ce=cross_entropy):
        self.arm = ARMS[arm]
        self.kd = kd  # the KD term and the CE term, distill.py's signatures (variants/chunked.py: in chunks)
        self.ce = ce

    def far_back(self, batch):
        x, y, pos, doc = batch[:4]
        return batch[5] if len(batch) > 5 else far_back_mask(x, y, doc)

    def kept(self, batch, where):
        """(b, T) bool, True = the position counts in a loss term; None = every position."""
        return ~self.far_back(batch) if where == "leak-free" else None

    def __call__(self, model, teacher, batch, args, autocast, counts=None):
        """(loss, ce, kl, correct answers, answers) of one batch, as train.training_loss, for this arm."""
        arm = self.arm
        x, y, pos, doc, ans = batch[:5]  # (b, T) each
        with autocast:
            logits = model(x, pos, doc if args.doc_mask else None)  # (b, T, V)
        t_logits = None
        if teacher is not None and arm.teacher != "none":
            with autocast:
                t_logits = teacher_logits(teacher, x, pos, doc if args.doc_mask or arm.teacher == "document" else None)
        targets = t_logits.argmax(-1) if arm.targets == "teacher" else y  # hard-label distillation: the argmax
        ce_total = None if counts is None else counts[0]
        kd_total = None if counts is None else counts[1]
        ce = self.ce(logits, targets, self.kept(batch, arm.ce_positions), ce_total)
        loss = ce
        kl = torch.tensor(float("nan"))
        if t_logits is not None and arm.kd_positions != "none":
            kept = self.kept(batch, arm.kd_positions)
            kd, kl = self.kd(logits, t_logits, kept, args.temperature, kd_total)
            loss = (1 - args.kd_weight) * ce + args.kd_weight * kd
        correct = (logits.detach()[ans].argmax(-1) == y[ans]).float().sum()
        return loss, ce, kl, correct, ans.sum().float()

    def counts(self, batch, args):
        """(2,) float: how many positions the CE and the KD term count in this batch."""
        y = batch[1]
        keeps = (self.kept(batch, self.arm.ce_positions), self.kept(batch, self.arm.kd_positions))
        return torch.stack([torch.tensor(y.numel(), device=y.device) if k is None else k.sum() for k in keeps]).float()
