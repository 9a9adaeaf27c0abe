"""config.py: what --dtype auto resolves to (bf16 only where the CPU multiplies bf16 natively)."""
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

import config

CPU = torch.device("cpu")


def cpu_flags(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize("avx512_bf16, amx, want", [(False, False, torch.float32), (True, False, torch.bfloat16),
                                                     (False, True, torch.bfloat16)])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, avx512_bf16, amx, want):
    cpu_flags(monkeypatch, avx512_bf16, amx)
    assert config.autocast_dtype(CPU, "auto") == want
    assert config.autocast_dtype(CPU, "float32") == torch.float32  # an explicit dtype wins either way
    assert config.autocast_dtype(CPU, "bfloat16") == torch.bfloat16
    assert config.autocast_dtype(torch.device("cuda"), "auto") == torch.bfloat16


def test_auto_is_float32_when_torch_cannot_tell(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert not config.cpu_has_native_bf16() and config.autocast_dtype(CPU) == torch.float32


@pytest.mark.parametrize("native", [False, True])
def test_pick_device_resolves_auto_and_returns_the_matching_autocast(monkeypatch, native):
    cpu_flags(monkeypatch, native, False)
    args = SimpleNamespace(device="cpu", dtype="auto", threads=0)
    _, autocast = config.pick_device(args)
    assert args.dtype == ("bfloat16" if native else "float32")  # the speed report reads it
    if native:
        assert isinstance(autocast, torch.autocast) and autocast.fast_dtype == torch.bfloat16
    else:
        assert isinstance(autocast, nullcontext)
