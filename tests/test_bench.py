"""bench.py: the chunked KD loss really holds less memory than the unchunked one."""
import torch

import bench


def test_chunked_kd_loss_peak_memory_is_lower():
    cpu = torch.device("cpu")
    chunked = bench.kd_peak_bytes(vocab=4000, tokens=2048, chunk=256, device=cpu)
    whole = bench.kd_peak_bytes(vocab=4000, tokens=2048, chunk=0, device=cpu)
    grad_bytes = 2048 * 4000 * 4  # the (N, V) float32 gradient both must hold
    assert chunked < whole
    assert whole > 3 * grad_bytes and chunked < 2 * grad_bytes
