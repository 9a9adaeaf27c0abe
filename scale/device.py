"""The matmul peak a benchmark's MFU is measured against (scale/bench.py).

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) trains a 1.1B student on 128K-token windows: speed
matters at scale, and model FLOPs utilisation (MFU) says how much of a device a step uses. The peak here is the best
FLOP/s of square matmuls in the dtype in use, measured on the machine itself.
"""
import time

import torch

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
