"""Where a hole in retrieval-by-distance comes from: a layer-0 key's match with itself D tokens back, per RoPE pair.

In this task the query key K at position p + D finds its record by attending to the same token K at p. In layer 0
a query and a key are functions of one token each (its embedding after the block's RMSNorm), so that score is
fixed by the weights: s(D) = q(K) . R(theta D) k(K) / sqrt(hd), a sum over RoPE pairs i of
amp_i cos(theta_i D - phi_i) (RoFormer, Su et al. 2021, the relative form of the rotation). Pairs whose
wavelength 2 pi / theta_i is longer than the window barely turn over it and carry the content match; faster
pairs add a term that wanders with D. Where the fast terms turn negative together the match loses its margin
over the other tokens, and retrieval at that distance fails for a reason visible without any data.
`python analyze.py match --ckpt CKPT` prints and draws it; the head is the layer-0 head with the best margin.
"""
import math

import torch

from data import to_device
from model import Inspect
from rope import apply_rope, rope_cos_sin


@torch.no_grad()
def layer0_qk(model, head: int):
    """Pre-RoPE query and key of every vocabulary token for one layer-0 head: 2 x (V, hd). Read from the forward
    pass (model.Inspect) on each token alone, which is all that layer 0 sees of it."""
    cfg = model.config
    probe = Inspect()
    model(torch.arange(cfg.vocab_size, device=model.inv_freq.device)[:, None], inspect=probe)  # (V, 1): one token each
    kv_head = head // (cfg.n_head // cfg.n_kv_head)  # grouped-query attention: heads share a key head
    return probe.q_pre[0][:, head, 0].float().cpu(), probe.k_pre[0][:, kv_head, 0].float().cpu()


@torch.no_grad()
def pair_terms(model, q, k, distances):
    """Per-pair score of each query at position D against its own key at 0: (N, len(distances), hd/2).

    Rotated with the model's own RoPE (rope.apply_rope), so the pairs' sum is the attention logit q_rot . k_rot /
    sqrt(hd) that the forward pass computes for these two positions."""
    pos = torch.as_tensor(distances, dtype=torch.long)[None]  # (1, nD)
    cos, sin = rope_cos_sin(pos, model.inv_freq, model.attention_factor)  # (1, nD, hd)
    cos0, sin0 = rope_cos_sin(torch.zeros(1, 1, dtype=torch.long), model.inv_freq, model.attention_factor)
    q_rot = apply_rope(q[None, :, None, :], cos, sin)[0]  # (N, nD, hd)
    k_rot = apply_rope(k[None, :, None, :], cos0, sin0)[0]  # (N, 1, hd)
    prod = (q_rot * k_rot) / math.sqrt(q.shape[-1])
    half = q.shape[-1] // 2
    return prod[..., :half] + prod[..., half:]  # pair i: dims i and i + hd/2 (rotate-half layout)


@torch.no_grad()
def self_match(model, head: int, tokens, distances) -> dict:
    """The self-match profile of one layer-0 head over `tokens` (e.g. the task's keys), means over the tokens:
    match (nD,), the score against the same token D back; rival (nD,), the best score against any other token at
    the same distance; pairs (nD, hd/2), match split by RoPE pair."""
    q_all, k_all = layer0_qk(model, head)
    idx = torch.as_tensor(tokens, dtype=torch.long)
    terms = pair_terms(model, q_all[idx], k_all[idx], distances)  # (N, nD, hd/2)
    pos = torch.as_tensor(distances, dtype=torch.long)[None]
    cos, sin = rope_cos_sin(pos, model.inv_freq, model.attention_factor)
    q_rot = apply_rope(q_all[idx][None, :, None, :], cos, sin)[0]  # (N, nD, hd); a key at 0 is unrotated
    other = torch.einsum("ndh,vh->ndv", q_rot, k_all) / math.sqrt(q_all.shape[-1])  # (N, nD, V)
    other[torch.arange(len(idx)), :, idx] = float("-inf")  # not the token itself
    return {"match": terms.sum(-1).mean(0), "rival": other.amax(-1).mean(0), "pairs": terms.mean(0)}


def match_head(model, tokens, distances) -> int:
    """The layer-0 head whose self-match beats its rivals by the most on average over `distances`."""
    margins = []
    for h in range(model.config.n_head):
        res = self_match(model, h, tokens, distances)
        margins.append((res["match"] - res["rival"]).mean().item())
    return max(range(len(margins)), key=margins.__getitem__)


def slow_pairs(model, window: int) -> torch.Tensor:
    """(hd/2,) bool: pairs whose wavelength 2 pi / theta exceeds the window (they turn less than once over it)."""
    return 2 * math.pi / model.inv_freq > window


def match_results(model, tokens, window: int, step: int = 1, head: int | None = None) -> dict:
    """The profile of `head` (default: match_head) at D = 0, step, ..., window - 1, split into slow and fast pairs;
    at_zero: every layer-0 head's slow and fast parts at D = 0 (a self-match head with a 'not itself' term: slow
    parts well above 0, fast parts well below)."""
    distances = list(range(0, window, step))
    head = match_head(model, tokens, distances[:: max(1, len(distances) // 64)]) if head is None else head
    res = self_match(model, head, tokens, distances)
    slow = slow_pairs(model, window)
    at0 = [self_match(model, h, tokens, [0])["pairs"][0] for h in range(model.config.n_head)]  # (hd/2,) each
    return {"head": head, "at_zero": [{"slow": p[slow].sum().item(), "fast": p[~slow].sum().item()} for p in at0], "window": window, "distances": distances, "match": res["match"].tolist(),
            "rival": res["rival"].tolist(), "slow": res["pairs"][:, slow].sum(-1).tolist(),
            "fast": res["pairs"][:, ~slow].sum(-1).tolist(), "pairs": res["pairs"].tolist(),
            "wavelengths": (2 * math.pi / model.inv_freq).tolist()}


@torch.no_grad()
def record_attention(model, batch, head: int, distance: int) -> float:
    """Mean attention weight of a layer-0 head from each query key to its record's key, `distance` tokens back, on a
    probe batch (data.kv_probe): what the weight-only profile above predicts, measured in the forward pass."""
    x, _, pos, _, ans = to_device(batch, model.inv_freq.device)
    probe = Inspect()
    model(x, pos, inspect=probe)
    kv_head = head // (model.config.n_head // model.config.n_kv_head)
    q, k = probe.q_post[0][:, head].float(), probe.k_post[0][:, kv_head].float()  # (B, T, hd)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, T, T)
    causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    rows, cols = ans.nonzero(as_tuple=True)  # a query key sits at input position c (its answer is the next token)
    return weights[rows, cols, cols - distance].mean().item()


def match_markdown(res) -> str:
    """The measured rows of `analyze.py match`'s JSON as a table: per model, the fast pairs' part of the self-match
    and the head's attention to the record at each measured distance."""
    models = list(res["models"].items())
    ds = sorted(int(d) for d in models[0][1]["measured"])
    out = ["| model | layer-0 head | at each D | " + " | ".join(f"D={d}" for d in ds) + " |",
           "| --- | --- | --- | " + " | ".join("---" for _ in ds) + " |"]
    for label, r in models:
        out.append(f"| {label} | {r['head']} | fast pairs (logit) | "
                   + " | ".join(f"{r['fast'][r['distances'].index(d)]:+.2f}" for d in ds) + " |")
        out.append(f"| {label} | {r['head']} | attention to the record | "
                   + " | ".join(f"{r['measured'][str(d)]:.2f}" for d in ds) + " |")
    return "\n".join(out)
