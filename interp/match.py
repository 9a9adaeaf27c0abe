"""Where a hole in retrieval-by-distance comes from: a layer-0 key's match with itself D tokens back, per RoPE pair.

In this task the query key K at position p + D finds its record by attending to the same token K at p. In layer 0
a query and a key are functions of one token each (its embedding after the block's RMSNorm), so that score is
fixed by the weights: s(D) = q(K) . R(theta D) k(K) / sqrt(hd), a sum over RoPE pairs i of
amp_i cos(theta_i D - phi_i) (RoFormer, Su et al. 2021, the relative form of the rotation). Pairs whose
wavelength 2 pi / theta_i is longer than the window barely turn over it and carry the content match; faster
pairs add a term that wanders with D. Where the fast terms turn negative together the match loses its margin
over the other tokens, and retrieval at that distance fails for a reason visible without any data.
`python -m interp match --ckpt CKPT` prints and draws it; the head is the layer-0 head with the best margin.
"""
import math

import torch

from data import to_device
from interp.qk import queries_and_keys
from rope import apply_rope, rope_cos_sin


@torch.no_grad()
def layer0_qk(model):
    """Pre-RoPE queries and keys of every vocabulary token for every layer-0 head: 2 x (V, H, hd), keys repeated over
    a grouped-query group. Read from the forward pass (interp/qk.py) on each token alone, all layer 0 sees of it."""
    cfg = model.config
    _, qk = queries_and_keys(model, torch.arange(cfg.vocab_size, device=model.inv_freq.device)[:, None])  # (V, 1)
    k = qk["k_pre"][0][:, :, 0].float().cpu().repeat_interleave(cfg.n_head // cfg.n_kv_head, dim=1)
    return qk["q_pre"][0][:, :, 0].float().cpu(), k


def rotate_to(model, x, distances):
    """Vectors x (N, hd) placed at each position of `distances`, rotated by the model's RoPE: (N, nD, hd)."""
    pos = torch.as_tensor(distances, dtype=torch.long)[None]  # (1, nD)
    cos, sin = rope_cos_sin(pos, model.inv_freq.cpu(), model.attention_factor)  # (1, nD, hd)
    return apply_rope(x[None, :, None, :], cos, sin)[0]


def pair_terms(q_rot, k_rot):
    """Per-pair attention logit of rotated queries (N, nD, hd) against rotated keys (N, 1, hd): (N, nD, hd/2). Their
    sum is q_rot . k_rot / sqrt(hd), the logit the forward pass computes for these two positions."""
    prod = q_rot * k_rot / math.sqrt(q_rot.shape[-1])
    half = q_rot.shape[-1] // 2
    return prod[..., :half] + prod[..., half:]  # pair i: dims i and i + hd/2 (rotate-half layout)


@torch.no_grad()
def self_match(model, q, k, tokens, distances) -> dict:
    """One layer-0 head's self-match profile over `tokens` (e.g. the task's keys), from its q, k (V, hd); means over
    the tokens: match (nD,), the score of a query at D against the same token at 0; rival (nD,), the best score
    against any other token at 0; pairs (nD, hd/2), match split by RoPE pair."""
    idx = torch.as_tensor(tokens, dtype=torch.long)
    q_rot, k_rot = rotate_to(model, q[idx], distances), rotate_to(model, k, [0])[:, 0]  # (N, nD, hd), (V, hd)
    terms = pair_terms(q_rot, k_rot[idx][:, None])  # (N, nD, hd/2)
    other = torch.einsum("ndh,vh->ndv", q_rot, k_rot) / math.sqrt(q.shape[-1])  # (N, nD, V)
    other[torch.arange(len(idx)), :, idx] = float("-inf")  # not the token itself
    return {"match": terms.sum(-1).mean(0), "rival": other.amax(-1).mean(0), "pairs": terms.mean(0)}


def match_head(model, tokens, distances, qk=None) -> int:
    """The layer-0 head whose self-match beats its rivals by the most on average over `distances`."""
    q, k = layer0_qk(model) if qk is None else qk
    margins = []
    for h in range(model.config.n_head):
        res = self_match(model, q[:, h], k[:, h], tokens, distances)
        margins.append((res["match"] - res["rival"]).mean().item())
    return max(range(len(margins)), key=margins.__getitem__)


def slow_pairs(model, window: int) -> torch.Tensor:
    """(hd/2,) bool: pairs whose wavelength 2 pi / theta exceeds the window (they turn less than once over it)."""
    return 2 * math.pi / model.inv_freq.cpu() > window


def match_results(model, tokens, window: int, step: int = 1, head: int | None = None) -> dict:
    """The profile of `head` (default: match_head) at D = 0, step, ..., window - 1, split into slow and fast pairs;
    at_zero: every layer-0 head's slow and fast parts at D = 0 (a self-match head with a 'not itself' term: slow
    parts well above 0, fast parts well below)."""
    q, k = layer0_qk(model)
    distances = list(range(0, window, step))
    head = match_head(model, tokens, distances[:: max(1, len(distances) // 64)], (q, k)) if head is None else head
    res = self_match(model, q[:, head], k[:, head], tokens, distances)
    slow = slow_pairs(model, window)
    at0 = [self_match(model, q[:, h], k[:, h], tokens, [0])["pairs"][0] for h in range(model.config.n_head)]
    return {"head": head, "window": window, "distances": distances, "match": res["match"].tolist(),
            "rival": res["rival"].tolist(), "slow": res["pairs"][:, slow].sum(-1).tolist(),
            "fast": res["pairs"][:, ~slow].sum(-1).tolist(), "pairs": res["pairs"].tolist(),
            "at_zero": [{"slow": p[slow].sum().item(), "fast": p[~slow].sum().item()} for p in at0],
            "wavelengths": (2 * math.pi / model.inv_freq.cpu()).tolist()}


@torch.no_grad()
def record_attention(model, batch, head: int, distance: int) -> float:
    """Mean attention weight of a layer-0 head from each query key to its record's key, `distance` tokens back, on a
    probe batch (data.kv_probe): what the weight-only profile above predicts, measured in the forward pass."""
    x, _, pos, _, ans = to_device(batch, model.inv_freq.device)
    _, qk = queries_and_keys(model, x, pos)
    kv_head = head // (model.config.n_head // model.config.n_kv_head)
    q, k = qk["q_post"][0][:, head].float(), qk["k_post"][0][:, kv_head].float()  # (B, T, hd)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, T, T)
    causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    rows, cols = ans.nonzero(as_tuple=True)  # a query key sits at input position c (its answer is the next token)
    return weights[rows, cols, cols - distance].mean().item()


def match_markdown(res) -> str:
    """The measured rows of `python -m interp match`'s JSON as a table: per model, the fast pairs' part of the self-match
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
