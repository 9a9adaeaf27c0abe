"""A real teacher cached as its top-k next tokens on the training windows (train.py --teacher-topk K).

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distils a long-context teacher's logits into the
student. A real teacher (a pretrained LLM, formats/hf.py) costs far more than a small student, and its logits
on a window never change: they are computed once per training window and kept as their k most likely tokens
(distill.teacher_topk), in a safetensors file keyed by everything they depend on: the teacher's files, the
device and dtype it ran in, k, and a hash of the exact windows (edited text gives other windows, another key).
`CachedTopK` then stands in for the teacher in train.py's loop: called like a teacher on a batch of training
windows it returns their cached top-k (distill.TopK), and distill.kd_loss takes the forward KL over those k
tokens plus one bucket for the rest (distill.topk_forward_kl).
"""
import hashlib
import json
import os
import time

import numpy as np
import torch

from distill import TopK, teacher_topk
from scale import dist


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
    """The cache's key: the teacher's identity, the device and dtype it ran in, k, and a hash of the windows (which
    covers the text and every setting that shaped them: window, document lengths, their number, the seed)."""
    dtype = str(next(teacher.parameters()).dtype)
    return json.dumps([teacher_identity(teacher_path), str(device), dtype, k, windows_hash(windows)])


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
    if dist.is_main():
        os.makedirs(out_dir, exist_ok=True)
        cached = os.path.isfile(path)
        ids, logp = cached_teacher_topk(teacher, windows, k, path, key, device)
        print(f"teacher top-{k}: {'read from' if cached else 'computed on the training windows and cached in'} "
              f"{path}")
    dist.barrier()
    if not dist.is_main():
        ids, logp = cached_teacher_topk(teacher, windows, k, path, key, device)
    return CachedTopK(windows, ids, logp)
