"""Finding 3 of "Short Data, Long Context": what phase 2 changed in W_q and W_k, per RoPE frequency pair.

Between a phase-1 checkpoint and a phase-2 student of the same architecture: the relative update of each head's
rows of W_q / W_k that one RoPE pair rotates (pair i: rows i and i + head_dim/2, the rotate-half layout), and the
relative change of the mean query norm per pair on a fixed probe, next to the critical pair of each (base,
window). The paper expects the largest updates around and beyond the critical pair. `python -m interp qupdate`
runs this on checkpoints and draws it (viz.plots.plot_qupdate); research/finding3.py repeats it over seeds.
"""
import numpy as np
import torch

from data import to_device
from interp.qk import queries_and_keys
from rope import critical_pair


def pair_norm(w, n_heads):
    """Frobenius norm of each head's RoPE pair of a q or k projection: (H, hd/2).

    W is (n_heads * hd, d_model); pair i of a head is its rows i and i + hd/2 (rotate-half
    layout), so (H, 2, hd/2, d_model) groups them.
    """
    return w.detach().float().reshape(n_heads, 2, -1, w.shape[1]).norm(dim=(1, 3))


def pair_update(w_before, w_after, n_heads):
    """Relative update ||W_after - W_before|| / ||W_before|| per head and RoPE pair: (H, hd/2)."""
    return pair_norm(w_after.float() - w_before.float(), n_heads) / pair_norm(w_before, n_heads).clamp_min(1e-12)


@torch.no_grad()
def query_pair_norms(model, batch, device):
    """Mean over windows and positions of ||q_pair|| (pre-RoPE), per layer, head and pair: (L, H, hd/2)."""
    x, _, pos, _, _ = to_device(batch, torch.device(device))
    _, qk = queries_and_keys(model, x, pos)
    return torch.stack([q.float().unflatten(-1, (2, -1)).norm(dim=-2).mean(dim=(0, 2)) for q in qk["q_pre"]])


def above_percentile_spans(values, q=75):
    """Contiguous index ranges where `values` exceeds its q-th percentile, largest mean first."""
    values = np.asarray(values, dtype=float)
    hot = np.concatenate([values > np.percentile(values, q), [False]])
    spans, start = [], None
    for i, h in enumerate(hot):
        if h and start is None:
            start = i
        elif not h and start is not None:
            spans.append({"pairs": [start, i - 1], "mean": float(values[start:i].mean())})
            start = None
    return sorted(spans, key=lambda s: -s["mean"])


def qupdate_results(before, after, batch, device):
    """Per (layer, head, pair): W_q / W_k relative updates and the relative change of query norms."""
    cfg = before.config
    wq = torch.stack([pair_update(b.attn.wq.weight, a.attn.wq.weight, cfg.n_head)
                      for b, a in zip(before.blocks, after.blocks)])  # (L, H, hd/2)
    wk = torch.stack([pair_update(b.attn.wk.weight, a.attn.wk.weight, cfg.n_kv_head)
                      for b, a in zip(before.blocks, after.blocks)])  # (L, Hkv, hd/2)
    nb, na = query_pair_norms(before, batch, device), query_pair_norms(after, batch, device)
    qn = (na - nb) / nb.clamp_min(1e-12)  # signed relative change of the mean per-pair query norm
    layer, head, pair = (int(i) for i in np.unravel_index(int(wq.argmax()), wq.shape))
    critical = {f"{k} (base {m.config.rope_base:g}, L={m.config.max_seq_len})":
                critical_pair(cfg.head_dim, m.config.rope_base, m.config.max_seq_len)
                for k, m in (("before", before), ("after", after))}
    spans = {key: {str(l): above_percentile_spans(v[l].abs().mean(0).cpu().numpy()) for l in range(cfg.n_layer)}
             for key, v in (("wq", wq), ("wk", wk), ("q_norm_change", qn))}
    return {"wq": wq.tolist(), "wk": wk.tolist(), "q_norm_change": qn.tolist(), "q_norm_before": nb.tolist(),
            "q_norm_after": na.tolist(), "critical_pairs": critical, "spans_above_p75": spans,
            "wq_max": {"layer": layer, "head": head, "pair": pair, "value": wq[layer, head, pair].item()}}
