"""RoPE scaling variants in Hugging Face's rope_scaling form: linear, NTK-aware, dynamic NTK, YaRN and llama3.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) extends the context by raising the RoPE base between the
phases (ABF, rope.py); these are the other ways to stretch RoPE to a longer window, each as Hugging Face's
modeling_rope_utils.py computes it, returning (inv_freq, attention_factor). Importing this file registers them in
rope.SCALINGS (python -m variants --rope-scaling, formats/hf.py for real models that carry one).
"""
import math

import torch

from rope import SCALINGS, default_inv_freq


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


SCALINGS.update({"linear": _linear, "ntk": _ntk, "dynamic": _dynamic, "yarn": _yarn, "llama3": _llama3})
