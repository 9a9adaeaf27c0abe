"""bench.py: the chunked KD loss really holds less memory than the unchunked one; a failed measurement is null."""
import json
from types import SimpleNamespace

import torch

import bench


def test_chunked_kd_loss_peak_memory_is_lower():
    cpu = torch.device("cpu")
    chunked = bench.kd_peak_bytes(vocab=4000, tokens=2048, chunk=256, device=cpu)
    whole = bench.kd_peak_bytes(vocab=4000, tokens=2048, chunk=0, device=cpu)
    grad_bytes = 2048 * 4000 * 4  # the (N, V) float32 gradient both must hold
    assert chunked < whole
    assert whole > 3 * grad_bytes and chunked < 2 * grad_bytes


def test_a_zero_memory_measurement_is_flagged_and_stored_as_null(monkeypatch, capsys):
    """A peak of 0.0 MB (peak RSS not reset) once went into a JSON as 0.0 with a NaN ratio, without a word."""
    monkeypatch.setattr(bench, "kd_peak_bytes", lambda vocab, tokens, chunk, device: 0 if chunk else 2**30)
    cli = SimpleNamespace(kd_vocab=1000, kd_tokens=64, kd_chunk=16, dev=torch.device("cpu"))
    memory = bench.kd_memory(cli)
    assert memory["chunked_peak_mb"] is None and memory["unchunked_over_chunked"] is None
    assert memory["unchunked_peak_mb"] == 1024
    assert capsys.readouterr().err.startswith("warning: kd_loss chunked peak memory measured 0.0 MB")
    json.dumps(memory, allow_nan=False)
