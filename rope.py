"""Rotary position embedding (RoPE), its base scaling variants, and its spectrum.

Paper idea: finding 1 of "Short Data, Long Context" (arXiv 2604.06070) is that
*phase-wise RoPE base scaling* works best: a small base while the window is short,
a large base once it is long, so that each phase uses as much of the rotational
spectrum as it can. This file makes every quantity behind that statement explicit:

- `rope_frequencies`: inv_freq for a base plus the Hugging Face `rope_scaling`
  variants (linear, dynamic NTK, NTK-aware, YaRN, llama3), each returning
  (inv_freq, attention_factor) like HF `modeling_rope_utils.py`.
- `rope_cos_sin` / `apply_rope`: the rotation itself, for arbitrary (B, T) position
  ids (packed windows and the perturbation experiment need them), rotate-half layout.
- Spectrum tools: wavelengths, rotations over a window, the critical dimension of
  Liu et al. 2023, spectrum utilization, the lower bound on the base of
  Men et al. 2024, and the distances at which one pair has turned whole times (a phase alias).

Pairs and dimensions, one vocabulary: a head of d dimensions holds d/2 frequency pairs;
pair i turns at the frequency base^(-2i/d). Counted in dimensions, as Su et al. and
Liu et al. do (their interleaved layout stores pair i at dimensions 2i and 2i + 1),
dimension 2i belongs to pair i; the rotate-half layout used here stores the same pair at
dimensions i and i + d/2, which changes where it sits in memory, not its frequency. So a
critical dimension d_extra (Liu et al.'s number, printed as "crit dim") is always even
and names the critical pair d_extra / 2: for d = 32 and a 1,024-token window, critical
dimension 18 is pair 9 at base 1e4, and 14 is pair 7 at base 5e5.

Run `python rope.py --head-dim 64 --window 1024 --base 10000 500000` for a table.
"""
import argparse
import math

import numpy as np
import torch

# ----------------------------------------------------------------------------- frequencies


def default_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """inv_freq_i = base^(-2i/d), i = 0..d/2-1 (Su et al. 2021), float32, shape (d/2,)."""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even number, got {head_dim}")
    if not (math.isfinite(base) and base > 1):
        raise ValueError(f"RoPE base must be a finite number > 1, got {base}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    return (1.0 / base**exponents).float()


def _need(scaling: dict, *keys):
    """Return scaling[k] for each key, with a clear error naming a missing one."""
    missing = [k for k in keys if k not in scaling]
    if missing:
        raise ValueError(f"rope_scaling of type {scaling.get('rope_type')!r} needs key(s) {missing}")
    values = [float(scaling[k]) for k in keys]
    return values[0] if len(values) == 1 else values


def _linear(head_dim, base, scaling, seq_len):
    # Position interpolation (Chen et al. 2023): every frequency divided by s.
    factor = _need(scaling, "factor")
    return default_inv_freq(head_dim, base) / factor, 1.0


def _ntk(head_dim, base, scaling, seq_len):
    # NTK-aware scaling (bloc97 2023): base' = base * s^(d/(d-2)).
    factor = _need(scaling, "factor")
    return default_inv_freq(head_dim, base * factor ** (head_dim / (head_dim - 2))), 1.0


def _dynamic(head_dim, base, scaling, seq_len):
    # Dynamic NTK (HF): base' = base * ((s*L/L_orig) - (s-1))^(d/(d-2)), only when L > L_orig.
    factor, orig = _need(scaling, "factor", "original_max_position_embeddings")
    seq_len = max(seq_len or orig, orig)
    new_base = base * ((factor * seq_len / orig) - (factor - 1)) ** (head_dim / (head_dim - 2))
    return default_inv_freq(head_dim, new_base), 1.0


def _yarn(head_dim, base, scaling, seq_len):
    # YaRN (Peng et al. 2023), as in HF `_compute_yarn_parameters`.
    factor, orig = _need(scaling, "factor", "original_max_position_embeddings")
    beta_fast = float(scaling.get("beta_fast", 32.0))
    beta_slow = float(scaling.get("beta_slow", 1.0))

    def correction_dim(rotations):  # the pair index that completes `rotations` turns in orig
        return head_dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001  # avoid a division by zero, as HF does
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    inv = default_inv_freq(head_dim, base)
    inv_freq = (inv / factor) * ramp + inv * (1 - ramp)  # interpolate slow pairs, keep fast ones
    # attention_factor multiplies cos and sin (rope_cos_sin), so q.k by its square: 0.1 ln s + 1 on each of q, k
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return inv_freq, float(attention_factor)


def _llama3(head_dim, base, scaling, seq_len):
    # Llama 3.1 (Meta 2024), as in HF `_compute_llama3_parameters`.
    factor, low_ff, high_ff, orig = _need(
        scaling, "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    inv = default_inv_freq(head_dim, base)
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = orig / low_ff, orig / high_ff
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)  # long waves: divide by s
    smooth = (orig / wavelen - low_ff) / (high_ff - low_ff)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled), 1.0


ROPE_VARIANTS = {"linear": _linear, "ntk": _ntk, "dynamic": _dynamic, "yarn": _yarn, "llama3": _llama3}


def scaling_type(scaling: dict | None) -> str | None:
    """The rope_scaling dict's variant ("rope_type", or the older "type"); None for no scaling or "default"."""
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    return None if rope_type == "default" else rope_type


def rope_frequencies(head_dim: int, base: float, scaling: dict | None = None, seq_len: int | None = None):
    """(inv_freq float32 (head_dim/2,), attention_factor) for a base and an HF-style rope_scaling dict."""
    rope_type = scaling_type(scaling)
    if rope_type is None:
        return default_inv_freq(head_dim, base), 1.0
    if rope_type not in ROPE_VARIANTS:
        raise ValueError(f"unknown rope_type {rope_type!r}; choose one of default, {', '.join(ROPE_VARIANTS)}")
    return ROPE_VARIANTS[rope_type](head_dim, base, scaling, seq_len)


# ----------------------------------------------------------------------------- rotation


def rope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float = 1.0,
                 dtype: torch.dtype = torch.float32):
    """cos, sin of shape (B, T, head_dim) for position ids (B, T), which may be non-integer.

    attention_factor (YaRN's, 1 otherwise) multiplies both cos and sin, as in HF: the rotated
    q and k each grow by it, so every attention score q.k grows by its square.
    Angles are formed in float32 with autocast off (bf16 cannot even hold integer
    positions above 256 exactly); only the final cos/sin are cast to `dtype`.
    """
    device_type = position_ids.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        angles = position_ids.float()[..., None] * inv_freq.float().to(position_ids.device)  # (B, T, d/2)
        angles = torch.cat([angles, angles], dim=-1)  # (B, T, d): pair i <-> i + d/2
        cos, sin = angles.cos() * attention_factor, angles.sin() * attention_factor
    return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim (GPT-NeoX / HF Llama layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, d) by cos/sin (B, T, d): pair (i, i + d/2) turns by angle pos * inv_freq_i."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)  # (B, 1, T, d); bf16 q stays bf16
    return x * cos + rotate_half(x) * sin


# ----------------------------------------------------------------------------- spectrum


def wavelengths(inv_freq: torch.Tensor) -> torch.Tensor:
    """lambda_i = 2*pi / inv_freq_i, in tokens: how far apart two positions are for pair i to turn once."""
    return 2 * math.pi / inv_freq.double()


def rotations(inv_freq: torch.Tensor, window: int) -> torch.Tensor:
    """Full turns each pair completes across a window of L tokens: L / lambda_i."""
    return window / wavelengths(inv_freq)


def critical_dimension(head_dim: int, base: float, window: int) -> int:
    """d_extra = 2*ceil((d/2) * log_base(L / 2pi)) (Liu et al. 2023, arXiv 2310.05209, eq. 6).

    Counted in dimensions (dimension 2i belongs to pair i, see the top of this file), so
    d_extra is even and critical_pair = d_extra / 2. Dimensions at or above d_extra (pairs
    >= d_extra/2) never complete a full rotation inside L tokens, so their angles at
    distances beyond L are never seen in training.
    """
    return int(2 * math.ceil((head_dim / 2) * math.log(window / (2 * math.pi)) / math.log(base)))


def critical_pair(head_dim: int, base: float, window: int) -> int:
    """The critical pair d_extra/2, clamped to [0, d/2]: the first pair that never turns once in the window."""
    return int(min(max(critical_dimension(head_dim, base, window) // 2, 0), head_dim // 2))


def spectrum_utilization(head_dim: int, base: float, window: int) -> float:
    """Fraction of pairs that complete >= 1 rotation within the window (the paper's 'spectrum use')."""
    return float((rotations(default_inv_freq(head_dim, base), window) >= 1).double().mean())


def turn_distances(head_dim, base, pair, max_distance):
    """[D <= max_distance] where RoPE pair `pair` has turned k = 1, 2, ... whole times: D = 2 pi k / theta_pair,
    theta_pair = base^(-2 pair / head_dim) (default_inv_freq). At such a D that pair's rotation is the
    identity, as at D = 0, so a query-key match that relies on it looks like a short-range one there."""
    period = 2 * math.pi / float(default_inv_freq(head_dim, base)[pair])
    return [period * k for k in range(1, int(max_distance // period) + 1)]


def full_rotation_base(head_dim: int, window: int) -> float:
    """Base at which the slowest pair (i = d/2-1) turns exactly once over L: (L/2pi)^(d/(d-2))."""
    return (window / (2 * math.pi)) ** (head_dim / (head_dim - 2))


def _base_bound_holds(head_dim: int, base: float, window: int) -> bool:
    m = np.arange(window, dtype=np.float64)[:, None]  # (L, 1) relative distances
    theta = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (d/2,)
    return bool((np.cos(m * theta).sum(axis=1) >= 0).all())


def men_lower_bound(head_dim: int, window: int, step: float = 1.005, hi: float = 1e12) -> float:
    """Smallest base with sum_i cos(m * base^(-2i/d)) >= 0 for all m < L (Men et al. 2024, arXiv 2405.14591).

    Brute force: scan bases upward from L/2 on a 0.5% geometric grid (the condition is not
    monotone in the base: it holds in narrow islands below the final threshold, e.g. near
    4.3e3 for d=128, L=1K, so a coarse grid overshoots), then bisect the last step.
    """
    base = max(window / 2, 2.0)
    while not _base_bound_holds(head_dim, base, window):
        base *= step
        if base > hi:
            raise ValueError(f"no base below {hi:g} satisfies the bound for d={head_dim}, L={window}")
    low, high = base / step, base
    for _ in range(20):
        mid = math.sqrt(low * high)
        low, high = (low, mid) if _base_bound_holds(head_dim, mid, window) else (mid, high)
    return high


def spectrum_summary(head_dim: int, base: float, window: int) -> dict:
    """Every spectrum figure of one (base, window) phase, as a dict (used by train.py and analyze.py)."""
    inv = default_inv_freq(head_dim, base)
    return {
        "head_dim": head_dim, "base": base, "window": window,
        "critical_dim": critical_dimension(head_dim, base, window),
        "utilization": spectrum_utilization(head_dim, base, window),
        "slowest_rotations": float(rotations(inv, window)[-1]),
        "full_rotation_base": full_rotation_base(head_dim, window),
    }


def format_spectrum(s: dict) -> str:
    """One line of spectrum figures; "critical dim" is Liu et al.'s d_extra, i.e. critical pair d_extra / 2."""
    return (f"RoPE base {s['base']:g}, window {s['window']}, head_dim {s['head_dim']}: critical dim "
            f"{s['critical_dim']}, utilization {s['utilization']:.2f}, slowest pair turns "
            f"{s['slowest_rotations']:.3g}x (full-rotation base {s['full_rotation_base']:.3g})")


def main():
    p = argparse.ArgumentParser(description="Print the RoPE spectrum figures for some bases and one window.")
    p.add_argument("--head-dim", type=int, default=32, help="attention head dimension d (even)")
    p.add_argument("--window", type=int, default=1024, help="context window L in tokens")
    p.add_argument("--base", type=float, nargs="+", default=[1e4, 5e5], help="one or more RoPE bases")
    args = p.parse_args()
    try:
        print(f"head_dim {args.head_dim}, window {args.window}; full-rotation base "
              f"{full_rotation_base(args.head_dim, args.window):.4g}; Men lower bound "
              f"{men_lower_bound(args.head_dim, args.window):.4g}")
        # crit dim: the critical dimension d_extra (pair d_extra / 2 is the first that never turns once)
        print(f"{'base':>10} {'crit dim':>9} {'util':>6} {'slowest turns':>14} {'fastest wavelength':>19}")
        for base in args.base:
            s = spectrum_summary(args.head_dim, base, args.window)
            lam = wavelengths(default_inv_freq(args.head_dim, base))
            print(f"{base:>10g} {s['critical_dim']:>9d} {s['utilization']:>6.2f} "
                  f"{s['slowest_rotations']:>14.3g} {float(lam[0]):>19.3g}")
    except ValueError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
