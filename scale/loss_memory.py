"""What the KD loss costs in memory: the extra peak of distill.kd_loss, chunked against unchunked.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distills through the teacher's full next-token
distribution, a (tokens x vocabulary) tensor per step; distill.py computes the KL in chunks of tokens so
that no float32 copy of all of it is held. This file measures the price either way (scale/bench.py reports
it): the extra peak memory of kd_loss forward + backward beyond its two (N, V) inputs, by
torch.cuda.max_memory_allocated on CUDA; on CPU the peak-RSS increase of a fresh process that runs only the
loss (Linux: peak reset after start-up, every block >= 64 KiB its own mmap, so RSS follows live tensors).
"""
import os
import resource
import subprocess
import sys

import torch

from variants.chunked import kd_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kd_peak_rss(vocab, tokens, chunk) -> int:
    """CPU, in a fresh process: bytes the peak RSS grows by while kd_loss runs forward + backward."""
    kd_loss(torch.randn(4, 8, requires_grad=True), torch.randn(4, 8), chunk_size=2)[0].backward()  # load kernels
    student = torch.randn(tokens, vocab, requires_grad=True)  # (N, V)
    teacher = torch.randn(tokens, vocab)  # (N, V)
    try:  # Linux: reset the peak RSS to the current RSS, so start-up peaks do not hide the loss's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = peak_rss_kib()
    kd_loss(student, teacher, chunk_size=chunk)[0].backward()
    return (peak_rss_kib() - before) * 1024


def peak_rss_kib() -> int:
    """The process's peak RSS in KiB: Linux's VmHWM, which /proc/self/clear_refs resets. getrusage's ru_maxrss
    is not enough: it also keeps the peak a thread had when it exited, which no reset clears, so a peak of the
    start-up could hide the loss's (a measured growth of 0 bytes on a loaded machine, where the thread pool
    changes)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def kd_peak_bytes(vocab, tokens, chunk, device) -> int:
    """Extra peak memory (bytes) of kd_loss forward + backward beyond its (N, V) inputs; chunk 0 = unchunked."""
    if device.type != "cuda":  # glibc: each block >= 64 KiB its own mmap, returned when freed, so RSS = live bytes
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        code = f"from scale import loss_memory; print(loss_memory.kd_peak_rss({vocab}, {tokens}, {chunk}))"
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"kd_loss memory subprocess failed:\n{out.stderr[-2000:]}")
        return int(out.stdout.split()[-1])
    student = torch.randn(tokens, vocab, device=device, dtype=torch.bfloat16, requires_grad=True)  # (N, V), as autocast
    teacher = torch.randn(tokens, vocab, device=device, dtype=torch.bfloat16)  # (N, V)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    kd_loss(student, teacher, chunk_size=chunk)[0].backward()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def kd_memory(cli) -> dict:
    """Peak extra MB of kd_loss, chunked (cli.kd_chunk tokens) vs unchunked, and their ratio.

    The loss must at least hold the (N, V) gradient of the student's logits, so a peak of 0 MB is a failed
    measurement (e.g. the process's peak RSS was not reset): it is flagged on stderr and stored as None.
    """
    mb = {}
    for key, chunk in (("chunked_peak_mb", cli.kd_chunk), ("unchunked_peak_mb", 0)):
        mb[key] = kd_peak_bytes(cli.kd_vocab, cli.kd_tokens, chunk, cli.dev) / 2**20
        if mb[key] <= 0:
            print(f"warning: kd_loss {key.split('_')[0]} peak memory measured {mb[key]:.1f} MB, which cannot be "
                  f"(the gradient alone needs {cli.kd_tokens * cli.kd_vocab * 4 / 2**20:,.0f} MB): stored as null",
                  file=sys.stderr)
            mb[key] = None
    ratio = None if None in mb.values() else mb["unchunked_peak_mb"] / mb["chunked_peak_mb"]
    return {"vocab": cli.kd_vocab, "tokens": cli.kd_tokens, "chunk_tokens": cli.kd_chunk, **mb,
            "unchunked_over_chunked": ratio}


def megabytes(mb) -> str:
    return "not measured" if mb is None else f"{mb:,.1f} MB"
