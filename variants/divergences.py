"""Divergences other than the paper's forward KL, for the KD term (python -m variants --kd-loss reverse | jsd).

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distils with the forward KL(p_t || p_s) (distill.py),
which is mass-covering. These two are the usual alternatives; each maps float32 logits (n, V) of student and teacher,
already divided by the temperature, to (n,), and plugs into distill.kd_loss's `div` (plain or chunked, the same
value and gradient).
"""
import math

import torch
import torch.nn.functional as F


def reverse_kl(s, t):
    """KL(p_s || p_t): mode-seeking."""
    log_ps = F.log_softmax(s, -1)
    log_pt = F.log_softmax(t, -1)
    return (log_ps.exp() * (log_ps - log_pt)).sum(-1)


def generalized_jsd(s, t, beta):
    """beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s (GKD, Agarwal et al. 2024, as TRL).

    JSD / beta -> KL(p_t || p_s) as beta -> 0 and JSD / (1 - beta) -> KL(p_s || p_t) as beta -> 1.
    """
    log_ps = F.log_softmax(s, -1)
    log_pt = F.log_softmax(t, -1)
    log_m = torch.logsumexp(torch.stack([log_pt + math.log(beta), log_ps + math.log(1 - beta)]), 0)
    kl_t = (log_pt.exp() * (log_pt - log_m)).sum(-1)
    kl_s = (log_ps.exp() * (log_ps - log_m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def divergence_fn(kind: str, beta: float = 0.5):
    """The divergence of --kd-loss: forward (distill.forward_kl), reverse or jsd (with --jsd-beta)."""
    from distill import forward_kl
    if kind == "forward":
        return forward_kl
    if kind == "reverse":
        return reverse_kl
    if kind == "jsd":
        if not 0 < beta < 1:
            raise ValueError(f"jsd beta must lie strictly between 0 and 1, got {beta}")
        return lambda s, t: generalized_jsd(s, t, beta)
    raise ValueError(f"unknown KD loss {kind!r}: forward, reverse or jsd")
