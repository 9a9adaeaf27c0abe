"""RoPE spectrum figures beyond rope.py's: the lower bound on the base a context needs (Men et al. 2024) and the
distances at which one frequency pair has turned a whole number of times (a phase alias).

Paper idea: finding 1 of "Short Data, Long Context" (arXiv 2604.06070), phase-wise base scaling, rests on how much of
the rotational spectrum each phase uses (rope.py); these two figures say where a base is too small for a window, and
where a pair's rotation repeats, so that a query-key match relying on it looks like a short-range one.
"""
import math

import numpy as np

from rope import (critical_dimension, default_inv_freq, full_rotation_base, rotations,  # noqa: F401
                  spectrum_utilization)


def turn_distances(head_dim, base, pair, max_distance):
    """[D <= max_distance] where RoPE pair `pair` has turned k = 1, 2, ... whole times: D = 2 pi k / theta_pair,
    theta_pair = base^(-2 pair / head_dim) (default_inv_freq). At such a D that pair's rotation is the
    identity, as at D = 0, so a query-key match that relies on it looks like a short-range one there."""
    period = 2 * math.pi / float(default_inv_freq(head_dim, base)[pair])
    return [period * k for k in range(1, int(max_distance // period) + 1)]


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
    """Every spectrum figure of one (base, window) phase, as a dict (python -m interp spectrum)."""
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
