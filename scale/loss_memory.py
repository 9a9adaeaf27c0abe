"""What the losses over a vocabulary cost in memory: the extra peak of the KD term, the CE and a cached teacher's
top-k KD term, each in chunks of tokens against all at once.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distills through the teacher's full next-token
distribution, a (tokens x vocabulary) tensor per step; variants/chunked.py computes the KL and the CE in chunks of
tokens so that no float32 copy of all of it is held, and longctx/topk.py the top-k KL of a cached real teacher the
same way. This file measures the price either way (scale/bench.py reports the KD term's): the extra peak memory of
a loss's forward + backward beyond its inputs, by torch.cuda.max_memory_allocated on CUDA; on CPU the peak-RSS
increase of a fresh process that runs only the loss (Linux: peak reset after start-up, every block >= 64 KiB its own
mmap, so RSS follows live tensors).

    python -m scale.loss_memory --vocab 49152 --tokens 4096 --chunk 256 --topk 64   # a table of the three losses
"""
import argparse
import os
import resource
import subprocess
import sys

import torch

from longctx.topk import TopK, teacher_topk, topk_kd_loss
from variants.chunked import cross_entropy, kd_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSSES = {"kd": "KD term (forward KL over the full vocabulary)", "ce": "cross-entropy",
          "topk": "top-k KD term (a cached teacher's k tokens and the rest)"}


def loss_inputs(loss, vocab, tokens, device, dtype=torch.float32, k=64):
    """(student logits (1, N, V) that need a gradient, what the loss compares them with): the teacher's logits
    (1, N, V), the targets (1, N), or the teacher's TopK (1, N, k). One window of N tokens."""
    student = torch.randn(1, tokens, vocab, device=device, dtype=dtype, requires_grad=True)
    if loss == "ce":
        return student, torch.randint(0, vocab, (1, tokens), device=device)
    teacher = torch.randn(1, tokens, vocab, device=device, dtype=dtype)
    if loss == "topk":
        return student, TopK(*teacher_topk(teacher, k))
    return student, teacher


def loss_value(loss, student, other, chunk):
    """The 0-dim loss of `loss` on loss_inputs' pair, in chunks of `chunk` tokens (0: all at once)."""
    if loss == "ce":
        return cross_entropy(student, other, chunk_size=chunk)
    if loss == "topk":
        return topk_kd_loss(student, other, chunk_size=chunk)[0]
    return kd_loss(student, other, chunk_size=chunk)[0]


def peak_rss(loss, vocab, tokens, chunk, k=64) -> int:
    """CPU, in a fresh process: bytes the peak RSS grows by while `loss` runs forward + backward."""
    cpu = torch.device("cpu")
    loss_value(loss, *loss_inputs(loss, 8, 4, cpu, k=2), chunk=2).backward()  # load the kernels
    student, other = loss_inputs(loss, vocab, tokens, cpu, k=k)
    try:  # Linux: reset the peak RSS to the current RSS, so start-up peaks do not hide the loss's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = peak_rss_kib()
    loss_value(loss, student, other, chunk).backward()
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


def peak_bytes(loss, vocab, tokens, chunk, device, k=64) -> int:
    """Extra peak memory (bytes) of `loss` forward + backward beyond its inputs; chunk 0 = all at once."""
    if device.type != "cuda":  # glibc: each block >= 64 KiB its own mmap, returned when freed, so RSS = live bytes
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        code = f"from scale import loss_memory; print(loss_memory.peak_rss({loss!r}, {vocab}, {tokens}, {chunk}, {k}))"
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{loss} memory subprocess failed:\n{out.stderr[-2000:]}")
        return int(out.stdout.split()[-1])
    student, other = loss_inputs(loss, vocab, tokens, device, torch.bfloat16, k)  # bf16 logits, as autocast's
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    loss_value(loss, student, other, chunk).backward()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def kd_peak_bytes(vocab, tokens, chunk, device) -> int:
    """peak_bytes of the KD term (what scale/bench.py reports)."""
    return peak_bytes("kd", vocab, tokens, chunk, device)


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


def memory_table(vocab, tokens, chunk, device, k, losses=tuple(LOSSES)) -> str:
    """A markdown table: each loss's extra peak MB in chunks of `chunk` tokens and all at once."""
    head = f"| loss (V = {vocab:,}, {tokens:,} tokens, forward + backward) | in chunks of {chunk} tokens |"
    out = [head + " all at once |", "| --- | --- | --- |"]
    for loss in losses:
        mb = [peak_bytes(loss, vocab, tokens, c, device, k) / 2**20 for c in (chunk, 0)]
        name = LOSSES[loss] + (f", k = {k}" if loss == "topk" else "")
        out.append(f"| {name} | {megabytes(mb[0])} | {megabytes(mb[1])} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m scale.loss_memory", description="the extra peak memory of the losses "
                                "over a vocabulary, in chunks of tokens and all at once")
    p.add_argument("--vocab", type=int, default=49152, help="vocabulary (default 49152: SmolLM2's)")
    p.add_argument("--tokens", type=int, default=4096, help="tokens of logits (default 4096)")
    p.add_argument("--chunk", type=int, default=256, help="tokens per chunk (default 256, --kd-chunk's)")
    p.add_argument("--topk", type=int, default=64, help="k of the cached teacher's top-k (default 64)")
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES), help="which (default: all)")
    p.add_argument("--device", default="cpu", help="cpu (peak RSS of a fresh process) or cuda (max_memory_allocated)")
    cli = p.parse_args(argv)
    for flag, value in (("--vocab", cli.vocab), ("--tokens", cli.tokens), ("--chunk", cli.chunk), ("--topk", cli.topk)):
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    if cli.topk > cli.vocab:
        p.error(f"--topk {cli.topk} is larger than --vocab {cli.vocab}")
    table = memory_table(cli.vocab, cli.tokens, cli.chunk, torch.device(cli.device), cli.topk, cli.losses)
    print(table)
    return table


if __name__ == "__main__":
    main()
