"""A real teacher cached as its top-k next tokens on the training windows (train.py --teacher-topk K).

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distils a long-context teacher's logits into the
student. A real teacher (a pretrained LLM, formats/hf.py) costs far more than a small student, and its logits
on a window never change: they are computed once per training window and kept as their k most likely tokens
(`teacher_topk`), in a safetensors file keyed by everything they depend on: the teacher's files, the device
type and dtype it ran in, k, and a hash of the exact windows (edited text gives other windows, another key); one
file for every rank of a job.
`CachedTopK` then stands in for the teacher in train.py's loop (train.Lab.teacher): called like a teacher on a
batch of training windows it returns their cached top-k (`TopK`), and the KD term (`topk_kd_loss`, the KD term
train.training_loss takes from the lab) is the forward KL over those k tokens plus one bucket for the rest
(`topk_forward_kl`), in chunks of tokens where the logits are large, as variants/chunked.py computes the CE
(`topk_term`): a real teacher's vocabulary is where they are.
"""
import hashlib
import json
import os
import time

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from config import is_main
from train import barrier
from variants.chunked import ChunkedDivergence, chunk_for, token_weights, weighted_divergence


# ----------------------------------------------------------------------------- the top-k KL
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


def packed_topk(top):
    """(N, 2k) float32: a TopK's ids as floats (exact below 2^24), then its log-probs, one row per token: the teacher
    that variants/chunked.py's divergences read, one tensor cut into chunks of tokens."""
    k = top.ids.shape[-1]
    return torch.cat([top.ids.reshape(-1, k).float(), top.logp.reshape(-1, k).float()], -1)


def topk_divergence(s, t):
    """topk_forward_kl per token (n,) of float32 student logits s (n, V) against packed_topk rows t (n, 2k)."""
    k = t.shape[-1] // 2
    return topk_forward_kl(F.log_softmax(s, -1), t[:, :k].long(), t[:, k:])


def topk_kd_loss(student_logits, top, mask=None, temperature=1.0, total=None, chunk_size=0):
    """(loss, divergence): the mean over unmasked tokens of topk_forward_kl between the student's logits
    (B, T, V) and a cached teacher's TopK (B, T, k); mask (B, T) bool, True = use; total: the sum over the unmasked
    tokens is divided by this count instead of their number (train.py: the count of a whole global batch that
    arrives in micro-batches and ranks). chunk_size: tokens per float32 chunk (variants/chunked.py's
    ChunkedDivergence: only one chunk's (n, V) log-probabilities at a time, in the forward and the backward pass);
    0 = all at once. Both give the same value and gradient (tested). The KD term's signature (distill.kd_loss,
    train.training_loss's kd) with chunk_size; no temperature: the cache holds the teacher's probabilities at T = 1
    (variants checks that T is 1)."""
    V = student_logits.shape[-1]
    s = student_logits.reshape(-1, V)  # (N, V)
    t = packed_topk(top)  # (N, 2k)
    weights = token_weights(s.shape[0], mask, total, s.device)  # (N,): a mean over the unmasked tokens
    if chunk_size:
        loss = ChunkedDivergence.apply(s, t, weights, topk_divergence, 1.0, chunk_size)
    else:
        loss = weighted_divergence(s, t, weights, topk_divergence, 1.0)
    return loss, loss.detach()


def topk_term(chunk_size=256):
    """train.training_loss's KD term for a cached teacher (python -m variants --teacher-topk): topk_kd_loss, in chunks
    of chunk_size tokens where the logits hold more than variants.chunked.CHUNK_ABOVE floats, as the CE."""
    def kd(student_logits, top, mask=None, temperature=1.0, total=None):
        return topk_kd_loss(student_logits, top, mask, temperature, total, chunk_for(student_logits, chunk_size))
    return kd


def topk_coverage(top_logp):
    """Mean share of the teacher's probability mass its k tokens hold (what the top-k loss sees exactly)."""
    return top_logp.exp().sum(-1).mean().item()


# ----------------------------------------------------------------------------- the cache


def teacher_identity(path) -> list:
    """What makes a teacher this teacher: its path and, for each of its files (a folder's, or the checkpoint file
    itself), size and modification time."""
    path = os.path.abspath(path)
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    return [path] + [[os.path.basename(f), os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files
                     if os.path.isfile(f)]


def windows_hash(windows) -> str:
    """sha256 of the exact training windows (their shape, dtype and every token): edited text, another hash."""
    w = np.ascontiguousarray(windows.numpy() if torch.is_tensor(windows) else windows)
    return hashlib.sha256(f"{w.shape} {w.dtype}".encode() + w.tobytes()).hexdigest()


def cache_key(teacher_path, teacher, device, k, windows) -> str:
    """The cache's key: the teacher's identity, the device type (cuda, cpu) and dtype it ran in, k, and a hash of the
    windows (which covers the text and every setting that shaped them: window, document lengths, their number, the
    seed). Not the device's index: under torchrun rank r runs on cuda:r, and every rank reads rank 0's file."""
    device_type = torch.device(device).type
    dtype = str(next(teacher.parameters()).dtype)
    return json.dumps([teacher_identity(teacher_path), device_type, dtype, k, windows_hash(windows)])


@torch.no_grad()
def cached_teacher_topk(teacher, windows, k, path, key, device, log=print):
    """Teacher top-k (ids int64, log-probs float32), each (N, L, k), on every window (N, L + 1), from `path` when
    its key matches.

    Position i of window w holds the teacher's prediction after reading w[:i + 1], the target the student is
    trained toward at the same position (windows[:, :-1] in, windows[:, 1:] out). The file is written to a
    temporary name first and renamed: a kill never leaves a half-written cache."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    if os.path.isfile(path):
        with safe_open(path, "pt") as f:
            if f.metadata().get("key") == key:
                t = load_file(path)
                return t["ids"].long(), t["logp"]
    ids, logp = [], []
    t0 = time.time()
    for i, w in enumerate(torch.as_tensor(windows)):
        top = teacher_topk(teacher(w[None, :-1].to(device)), k)
        ids.append(top[0].int().cpu()), logp.append(top[1].cpu())
        print(f"\r  teacher top-{k}: window {i + 1}/{len(windows)} ({time.time() - t0:.0f} s)", end="", flush=True)
    print()
    ids, logp = torch.cat(ids), torch.cat(logp)  # (N, L, k)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file({"ids": ids, "logp": logp}, tmp, metadata={"key": key})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return ids.long(), logp


class CachedTopK:
    """A teacher that answers from its cache: teacher(x, position_ids, doc_ids) -> TopK of (B, T, k) for rows of
    x (B, T) that are training windows (looked up by their tokens: any rank's or micro-batch's rows)."""

    def __init__(self, windows, ids, logp):
        self.index = {np.ascontiguousarray(row).tobytes(): i for i, row in
                      enumerate(np.asarray(windows, dtype=np.int64)[:, :-1])}  # input tokens -> cache row
        self.ids, self.logp = ids.int(), logp  # (N, L, k); ids kept as int32: half the memory of int64
        self.k = ids.shape[-1]

    def __call__(self, x, position_ids=None, doc_ids=None) -> TopK:
        rows = [self.index.get(np.ascontiguousarray(r, dtype=np.int64).tobytes()) for r in x.cpu().numpy()]
        if None in rows:
            raise RuntimeError("the top-k teacher was asked about a window it has no cache for")
        idx = torch.tensor(rows)
        return TopK(self.ids[idx].long().to(x.device), self.logp[idx].to(x.device))  # (B, T, k) each

    def coverage(self) -> float:
        """Mean share of the teacher's probability mass its k tokens hold (what the top-k loss sees exactly)."""
        return self.logp.exp().sum(-1).mean().item()


def cache_path(out_dir, k, key):
    """OUT/teacher-top<k>-<12 hex digits of the key's hash>.safetensors: one file per teacher, text and k."""
    return os.path.join(out_dir, f"teacher-top{k}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors")


def topk_teacher(teacher, teacher_path, windows, k, out_dir, device):
    """CachedTopK of `teacher` on the training windows (N, L + 1), computed on rank 0 if not cached yet in
    out_dir; every rank then reads the file."""
    if k > teacher.config.vocab_size:
        raise ValueError(f"--teacher-topk {k} is larger than the teacher's vocabulary of {teacher.config.vocab_size}")
    windows = torch.as_tensor(np.asarray(windows, dtype=np.int64))
    key = cache_key(teacher_path, teacher, device, k, windows)
    path = cache_path(out_dir, k, key)
    if is_main():
        os.makedirs(out_dir, exist_ok=True)
        cached = os.path.isfile(path)
        ids, logp = cached_teacher_topk(teacher, windows, k, path, key, device)
        print(f"teacher top-{k}: {'read from' if cached else 'computed on the training windows and cached in'} "
              f"{path}")
    barrier()
    if not is_main():
        ids, logp = cached_teacher_topk(teacher, windows, k, path, key, device)
    return CachedTopK(windows, ids, logp)
