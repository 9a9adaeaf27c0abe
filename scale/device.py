"""The device and the autocast dtype a run trains in (config's --device, --dtype and --threads, resolved).

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) trains in phases; each phase runs in float32 or bf16
autocast by what the device multiplies fastest and what was measured to keep its results (CPU_BF16_PHASES).
config.py imports it (train.py and scale/bench.py take pick_device and fail from config), so it cannot import config;
`fail`, the one-line error of every entry point, is defined here for that reason.
"""
import os
import re
import sys
import time
from contextlib import nullcontext

import torch


def fail(msg):
    """One clear line on stderr and a non-zero exit (under torchrun every rank fails alike: rank 0 says it).
    Every entry point ends a bad input this way; it lives here, below config.py, so that both can use it."""
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def pick_device(args):
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        fail(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {args.device} asked for, but no CUDA device is available")
    if args.device.startswith("cuda:") and int(args.device[5:]) >= torch.cuda.device_count():
        fail(f"--device {args.device}: there are only {torch.cuda.device_count()} CUDA devices")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = autocast_dtype(device, args.dtype, args.phase)
    args.autocast_dtype = str(dtype).removeprefix("torch.")  # float32 or bfloat16: the speed report reads it
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext())
    return device, autocast


def cpu_has_native_bf16() -> bool:
    """True if this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles), where torch's bf16 matmuls beat
    float32 several times over; elsewhere bf16 is emulated and slower. Read from the CPU's feature flags, not
    timed, so that the choice (and with it every result) does not depend on the load of the machine."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch >= 2.2 (private, hence getattr)
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


# Phases that --dtype auto runs in bf16 on a CPU with native bf16. Phase 2 gave the same results in bf16 as in
# float32 (3 seeds, docs/performance.md, "bf16 on CPU"); the teacher and phase 1 stay float32: a phase-1 student trained in
# bf16 (same seed) came out one that phase 2 cannot extend, and the shipped checkpoints were trained in float32.
CPU_BF16_PHASES = ("2",)


def autocast_dtype(device, flag="auto", phase="2") -> torch.dtype:
    """--dtype as a torch dtype. auto: bf16 on CUDA; on a CPU with native bf16 matmuls, bf16 for the phases in
    CPU_BF16_PHASES and float32 for the others; float32 on any other CPU.

    Under bf16 autocast the matmuls and attention run in bf16: RoPE's angles (rope.py), the loss, the KD
    softmax (distill.py), the weights and the AdamW state stay float32 (tests/test_train.py checks it), and so
    does a CPU training pass's attention below 1,024 tokens (model.float32_attention).
    """
    if flag == "auto":
        native = device.type == "cuda" or (cpu_has_native_bf16() and phase in CPU_BF16_PHASES)
        return torch.bfloat16 if native else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[flag]


PEAK_SIZES = {"cpu": (1024, 2048, 4096), "cuda": (4096, 8192)}  # square matmuls the peak is the best of
_PEAKS = {}  # (device, dtype, threads) -> FLOP/s: measured once per process


def matmul_seconds(a, b) -> float:
    """Wall time of one product a @ b (synchronized on CUDA)."""
    sync = torch.cuda.synchronize if a.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    a @ b
    sync()
    return time.perf_counter() - t0


def matmul_peak_flops(device, dtype=torch.float32, sizes=None, repeats=50, seconds=0.5) -> float:
    """The 'peak' for MFU: the best FLOP/s of square matmuls of a few sizes in `dtype` on `device`.

    Best of up to `repeats` products per size (at least 2, as many as fit in about `seconds`), so that a moment
    of load from other processes cannot lower it much: one timed size taken while other jobs ran once read
    64 GFLOP/s on a core that does 120. It cannot undo steady load, though: a process that gets a third of a
    core reads a third of the peak. Measured once per process for each device, dtype and CPU thread count.
    """
    key = (str(device), dtype, torch.get_num_threads() if device.type == "cpu" else 0)
    if key not in _PEAKS:
        best = 0.0
        for n in sizes or PEAK_SIZES.get(device.type, PEAK_SIZES["cuda"]):
            a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
            t0, runs = time.perf_counter(), 0
            while runs < 2 or (runs < repeats and time.perf_counter() - t0 < seconds):  # the first run warms up
                best = max(best, 2 * n**3 / matmul_seconds(a, b))  # 2 n^3 FLOPs per product
                runs += 1
        _PEAKS[key] = best
    return _PEAKS[key]
