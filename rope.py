"""Rotary position embedding (RoPE), its base scaling variants, and its spectrum.

Paper idea: finding 1 of "Short Data, Long Context" (arXiv 2604.06070) is that
*phase-wise RoPE base scaling* works best: a small base while the window is short,
a large base once it is long, so that each phase uses as much of the rotational
spectrum as it can. This file makes every quantity behind that statement explicit:

- `rope_frequencies`: inv_freq for a base (the base change of ABF, the paper's extension), or a Hugging Face
  `rope_scaling` variant (linear, dynamic NTK, NTK-aware, YaRN, llama3: variants/rope_scaling.py), each returning
  (inv_freq, attention_factor) like HF `modeling_rope_utils.py`.
- `rope_cos_sin` / `apply_rope`: the rotation itself, for arbitrary (B, T) position
  ids (packed windows and the perturbation experiment need them), rotate-half layout.
- Spectrum tools: wavelengths, rotations over a window, the critical dimension of
  Liu et al. 2023, spectrum utilization (interp/spectrum.py adds the lower bound on the base of
  Men et al. 2024 and the distances at which one pair has turned whole times, a phase alias).

Pairs and dimensions, one vocabulary: a head of d dimensions holds d/2 frequency pairs;
pair i turns at the frequency base^(-2i/d). Counted in dimensions, as Su et al. and
Liu et al. do (their interleaved layout stores pair i at dimensions 2i and 2i + 1),
dimension 2i belongs to pair i; the rotate-half layout used here stores the same pair at
dimensions i and i + d/2, which changes where it sits in memory, not its frequency. So a
critical dimension d_extra (Liu et al.'s number, printed as "crit dim") is always even
and names the critical pair d_extra / 2: for d = 32 and a 1,024-token window, critical
dimension 18 is pair 9 at base 1e4, and 14 is pair 7 at base 5e5.

`python -m interp spectrum --head-dim 64 --bases 10000 500000 --windows 1024` prints and draws the figures.
"""
import math

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


# Scaling variants by rope_type (linear, dynamic, yarn, llama3, ...): each a function (head_dim, base, scaling dict,
# seq_len) -> (inv_freq, attention_factor), as Hugging Face's modeling_rope_utils.py. variants/rope_scaling.py
# registers them here; the core trains with a base change alone (ABF).
SCALINGS = {}


def scaling_type(scaling: dict | None) -> str | None:
    """The rope_scaling dict's variant ("rope_type", or the older "type"); None for no scaling or "default"."""
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    return None if rope_type == "default" else rope_type


def rope_frequencies(head_dim: int, base: float, scaling: dict | None = None, seq_len: int | None = None):
    """(inv_freq float32 (head_dim/2,), attention_factor) for a base and an HF-style rope_scaling dict."""
    rope_type = scaling_type(scaling)
    if rope_type is None:
        return default_inv_freq(head_dim, base), 1.0
    if rope_type not in SCALINGS:
        known = ", ".join(["default", *SCALINGS]) + (" (variants/rope_scaling.py has more)" if not SCALINGS else "")
        raise ValueError(f"unknown rope_type {rope_type!r}; choose one of {known}")
    return SCALINGS[rope_type](head_dim, base, scaling, seq_len)


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


def full_rotation_base(head_dim: int, window: int) -> float:
    """Base at which the slowest pair (i = d/2-1) turns exactly once over L: (L/2pi)^(d/(d-2))."""
    return (window / (2 * math.pi)) ** (head_dim / (head_dim - 2))
