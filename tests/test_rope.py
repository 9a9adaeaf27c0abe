"""RoPE: relative-position property, numerics, scaling variants against float64 formulas, spectrum."""
import math

import numpy as np
import pytest
import torch

import variants.rope_scaling  # noqa: F401  (registers the scaling variants in rope.SCALINGS)
from interp.spectrum import men_lower_bound
from rope import (apply_rope, critical_dimension, full_rotation_base, rope_cos_sin, rope_frequencies, rotations,
                  spectrum_utilization)


def rotate(x, pos, inv_freq):
    cos, sin = rope_cos_sin(torch.tensor([[pos]], dtype=torch.float32), inv_freq)
    return apply_rope(x, cos, sin)


def test_dot_product_depends_only_on_position_difference():
    torch.manual_seed(0)
    inv, _ = rope_frequencies(32, 10000.0)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)
    ref = (rotate(q, 7, inv) * rotate(k, 3, inv)).sum()
    for shift in (1, 100, 5000):
        assert torch.allclose((rotate(q, 7 + shift, inv) * rotate(k, 3 + shift, inv)).sum(), ref, atol=1e-3)
    assert not torch.allclose((rotate(q, 8, inv) * rotate(k, 3, inv)).sum(), ref, atol=1e-3)


def test_rotation_preserves_norm_and_pairs_i_with_i_plus_half():
    torch.manual_seed(0)
    inv, _ = rope_frequencies(16, 10000.0)
    x = torch.randn(2, 3, 5, 16)
    cos, sin = rope_cos_sin(torch.arange(5).expand(2, 5) * 37, inv)
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    # each pair (i, i + d/2) keeps its own norm: the rotate-half layout
    pair = lambda t: (t[..., :8] ** 2 + t[..., 8:] ** 2).sqrt()
    assert torch.allclose(pair(y), pair(x), atol=1e-5)


def test_float32_angles_at_large_positions_match_float64_and_beat_bf16():
    inv, _ = rope_frequencies(64, 10000.0)
    pos = torch.arange(100000, 100064, dtype=torch.float32)[None]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # must not leak into the angles
        cos, _ = rope_cos_sin(pos, inv, dtype=torch.float32)
    ref = np.cos(np.arange(100000, 100064)[:, None] * inv.double().numpy()[None])
    err32 = np.abs(cos[0, :, :32].numpy() - ref).max()
    bf16_angles = (pos.bfloat16()[..., None] * inv.bfloat16()).float()
    err16 = np.abs(np.cos(bf16_angles[0].numpy()) - ref).max()
    assert err32 < 1e-2
    assert err16 > 10 * err32


def f64_inv(d, base):
    return 1.0 / base ** (np.arange(0, d, 2) / d)


@pytest.mark.parametrize("d, base, s", [(64, 10000.0, 4.0), (128, 500000.0, 8.0)])
def test_scaling_variants_match_float64_formulas(d, base, s):
    inv = f64_inv(d, base)
    lin, f = rope_frequencies(d, base, {"rope_type": "linear", "factor": s})
    assert np.allclose(lin.numpy(), inv / s, rtol=1e-5) and f == 1.0
    ntk, _ = rope_frequencies(d, base, {"rope_type": "ntk", "factor": s})
    assert np.allclose(ntk.numpy(), f64_inv(d, base * s ** (d / (d - 2))), rtol=1e-5)
    # dynamic NTK: unchanged up to L_orig, then base' = base * ((s L / L_orig) - (s - 1))^(d/(d-2))
    dyn = {"rope_type": "dynamic", "factor": s, "original_max_position_embeddings": 1024}
    assert np.allclose(rope_frequencies(d, base, dyn, 512)[0].numpy(), inv, rtol=1e-5)
    new_base = base * ((s * 4096 / 1024) - (s - 1)) ** (d / (d - 2))
    assert np.allclose(rope_frequencies(d, base, dyn, 4096)[0].numpy(), f64_inv(d, new_base), rtol=1e-5)
    # YaRN: ramp over pair index between the correction dims of beta_fast=32 and beta_slow=1
    cd = lambda r: d * math.log(1024 / (2 * math.pi * r)) / (2 * math.log(base))
    low, high = max(math.floor(cd(32)), 0), min(math.ceil(cd(1)), d - 1)
    ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0, 1)
    yarn, att = rope_frequencies(d, base, {"rope_type": "yarn", "factor": s, "original_max_position_embeddings": 1024})
    assert np.allclose(yarn.numpy(), inv / s * ramp + inv * (1 - ramp), rtol=1e-5)
    assert att == pytest.approx(0.1 * math.log(s) + 1)
    # llama3: keep short waves, divide long waves by s, blend in between
    ll, _ = rope_frequencies(d, base, {"rope_type": "llama3", "factor": s, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 1024})
    wl = 2 * math.pi / inv
    smooth = (1024 / wl - 1.0) / (4.0 - 1.0)
    expect = np.where(wl < 1024 / 4.0, inv, np.where(wl > 1024 / 1.0, inv / s, (1 - smooth) * inv / s + smooth * inv))
    assert np.allclose(ll.numpy(), expect, rtol=1e-5)


def test_bad_scaling_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown rope_type"):
        rope_frequencies(64, 1e4, {"rope_type": "nope"})
    with pytest.raises(ValueError, match="factor"):
        rope_frequencies(64, 1e4, {"rope_type": "yarn", "original_max_position_embeddings": 10})
    with pytest.raises(ValueError, match="base"):
        rope_frequencies(64, -5.0)


def test_critical_dimension_reference_value():
    assert critical_dimension(128, 1e4, 4096) == 92  # Liu et al. 2023


def test_full_rotation_base_and_utilization():
    inv, _ = rope_frequencies(64, full_rotation_base(64, 1024))
    assert float(rotations(inv, 1024)[-1]) == pytest.approx(1.0, rel=1e-4)
    assert spectrum_utilization(64, full_rotation_base(64, 1024) * 0.99, 1024) == 1.0
    utils = [spectrum_utilization(64, b, 1024) for b in (1e3, 1e4, 1e5, 1e6)]
    assert utils == sorted(utils, reverse=True) and utils[0] > utils[-1]


@pytest.mark.parametrize("d, L, expected", [(128, 1024, 4.3e3), (128, 4096, 2.7e4), (64, 512, 3.4e3),
                                            (64, 1024, 7.8e3)])
def test_men_lower_bound_matches_method_values(d, L, expected):
    assert men_lower_bound(d, L) == pytest.approx(expected, rel=0.1)
