"""The queries and keys of every attention layer, before and after RoPE, read off a forward pass.

Paper idea: finding 3 of "Short Data, Long Context" (arXiv 2604.06070) is about the query projection, and a head's
match of a query with a key is where RoPE acts; these analyses need the queries and keys themselves. Forward hooks
on each layer's W_q and W_k (model.py's Attention) catch them as the model computes them, and RoPE is applied here
with the model's own frequencies (rope.apply_rope), so that the model records nothing for it.
"""
import torch

from rope import apply_rope, rope_cos_sin


@torch.no_grad()
def queries_and_keys(model, x, position_ids=None, doc_ids=None):
    """(logits (B, T, V), {"q_pre", "q_post", "k_pre", "k_post"}): per layer, the queries (B, H, T, hd) and keys
    (B, Hkv, T, hd) before and after RoPE at position_ids (0..T-1 when None), from one forward pass."""
    found = {"q_pre": [], "k_pre": []}
    hooks = []
    for block in model.blocks:
        attn = block.attn
        for name, linear, heads in (("q_pre", attn.wq, attn.n_head), ("k_pre", attn.wk, attn.n_kv_head)):
            hooks.append(linear.register_forward_hook(split_heads(found[name], heads, attn.head_dim)))
    try:
        logits = model(x, position_ids, doc_ids)
    finally:
        for hook in hooks:
            hook.remove()
    B, T = x.shape
    pos = torch.arange(T, device=x.device).expand(B, T) if position_ids is None else position_ids
    cos, sin = rope_cos_sin(pos, model.inv_freq, model.attention_factor, found["q_pre"][0].dtype)  # (B, T, hd)
    found["q_post"] = [apply_rope(q, cos, sin) for q in found["q_pre"]]
    found["k_post"] = [apply_rope(k, cos, sin) for k in found["k_pre"]]
    return logits, found


def split_heads(into, n_heads, head_dim):
    """A forward hook that appends a projection's output (B, T, n_heads * head_dim) as (B, n_heads, T, head_dim)."""
    def hook(module, inputs, output):
        B, T, _ = output.shape
        into.append(output.detach().view(B, T, n_heads, head_dim).transpose(1, 2))
    return hook
