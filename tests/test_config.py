"""config.py: what --dtype auto resolves to (bf16 only where the CPU multiplies bf16 natively, and there only for
phase 2, whose results bf16 was measured to keep)."""
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

import config

CPU = torch.device("cpu")


def cpu_flags(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize("avx512_bf16, amx, native", [(False, False, False), (True, False, True),
                                                       (False, True, True)])
def test_auto_is_bf16_only_for_phase_2_on_a_cpu_with_native_bf16(monkeypatch, avx512_bf16, amx, native):
    cpu_flags(monkeypatch, avx512_bf16, amx)
    assert config.autocast_dtype(CPU, "auto", "2") == (torch.bfloat16 if native else torch.float32)
    for phase in ("teacher", "1"):  # their curricula stay float32 (docs/performance.md, "bf16 on CPU")
        assert config.autocast_dtype(CPU, "auto", phase) == torch.float32
        assert config.autocast_dtype(CPU, "bfloat16", phase) == torch.bfloat16  # an explicit dtype wins
    assert config.autocast_dtype(CPU, "float32", "2") == torch.float32
    assert config.autocast_dtype(torch.device("cuda"), "auto", "1") == torch.bfloat16  # CUDA: bf16 everywhere


def test_auto_is_float32_when_torch_cannot_tell(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert not config.cpu_has_native_bf16() and config.autocast_dtype(CPU, "auto", "2") == torch.float32


@pytest.mark.parametrize("native", [False, True])
def test_pick_device_resolves_auto_and_returns_the_matching_autocast(monkeypatch, native):
    cpu_flags(monkeypatch, native, False)
    args = SimpleNamespace(device="cpu", dtype="auto", threads=0, phase="2")
    _, autocast = config.pick_device(args)
    assert args.autocast_dtype == ("bfloat16" if native else "float32")  # the speed report reads it
    assert args.dtype == "auto"  # prerequisites trained on the way get the flag itself and resolve it per phase
    if native:
        assert isinstance(autocast, torch.autocast) and autocast.fast_dtype == torch.bfloat16
    else:
        assert isinstance(autocast, nullcontext)
