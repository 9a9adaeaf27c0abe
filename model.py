"""A small Llama-style GPT with explicit RoPE: the teacher and the student of the paper.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distills a long-context
teacher into a student through its logits; both are decoder-only transformers whose
only notion of position is RoPE applied to queries and keys. This file is that model:
pre-norm blocks (RMSNorm -> attention with RoPE -> residual; RMSNorm -> SwiGLU MLP ->
residual), grouped-query attention, optional attention-only blocks (d_ff = 0),
tied or untied LM head, no biases: the Llama architecture, so that formats/hf.py can load and
write Hugging Face Llama and llama.cpp GGUF weights (this file knows only its own checkpoint).

It can also be looked inside (analyze.py needs this for findings 2 and 3): pass an
`Inspect` object to `forward` to record residual streams and pre/post-RoPE queries and
keys, or to override the positions that RoPE applies to the queries and/or keys of
chosen layers. Without it, nothing extra runs.

Run `python model.py` for the parameter count and FLOPs/token of the default config.
"""
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from formats.checkpoint import (CHECKPOINT_KEYS, CheckpointError, archive_problem, atomic_write,  # noqa: F401
                                check_config, load_checkpoint, save_checkpoint)  # re-exported: callers import them here
from rope import apply_rope, rope_cos_sin, rope_frequencies


@dataclass
class GPTConfig:
    vocab_size: int = 193  # the synthetic language of data.py (TaskSpec().vocab_size)
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 4  # < n_head gives grouped-query attention
    d_model: int = 128
    d_ff: int = 0  # hidden size of the SwiGLU MLP; 0 = attention-only blocks
    rope_base: float = 10000.0
    rope_scaling: dict | None = None  # Hugging Face `rope_scaling` format (rope.py)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_seq_len: int = 1024  # the window this model is trained for (dynamic NTK reads it)

    def __post_init__(self):
        if self.d_model % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"d_model {self.d_model} must divide by n_head {self.n_head}, "
                             f"and n_head by n_kv_head {self.n_kv_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"head_dim {self.d_model // self.n_head} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass
class Inspect:
    """Optional probe for `GPT.forward`: what to record and which RoPE positions to override.

    q_positions / k_positions: {layer: position ids (B, T)} used by RoPE for that layer's
    queries / keys instead of the model's positions (finding 2's perturbation).
    After the forward pass, `residuals[l]` is the residual stream after block l (index 0 is
    the embedding), and q_pre/q_post/k_pre/k_post[l] are the (B, H, T, hd) queries and keys
    of block l before and after RoPE (only if `record` is True).
    """
    record: bool = True
    q_positions: dict = field(default_factory=dict)
    k_positions: dict = field(default_factory=dict)
    residuals: list = field(default_factory=list)
    q_pre: list = field(default_factory=list)
    q_post: list = field(default_factory=list)
    k_pre: list = field(default_factory=list)
    k_post: list = field(default_factory=list)


class Attention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with RoPE on q and k."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x, rope_q, rope_k, attn_mask=None, inspect=None, kernel="sdpa"):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        in_float32 = kernel == "sdpa" and float32_attention(q)  # a CPU bf16 speed path (see float32_attention)
        if in_float32:
            q, k, v = q.float(), k.float(), v.float()
        q_rot, k_rot = apply_rope(q, *rope_q), apply_rope(k, *rope_k)  # position enters here, and only here
        if inspect is not None and inspect.record:
            inspect.q_pre.append(q.detach()); inspect.q_post.append(q_rot.detach())
            inspect.k_pre.append(k.detach()); inspect.k_post.append(k_rot.detach())
        if kernel == "reference":
            y = reference_attention(q_rot, k_rot, v, attn_mask)  # (B, H, T, hd)
        elif kernel == "flex":
            y = flex_attention(q_rot, k_rot, v, attn_mask)
        else:
            y = sdpa_attention(q_rot, k_rot, v, attn_mask, in_float32)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


# ----------------------------------------------------------------------------- attention
# The formula first, then the kernels that compute the same thing faster. A test
# (tests/test_model.py) checks every kernel against reference_attention.


def reference_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(hd) + mask) v, written out (Vaswani et al. 2017, eq. 1).

    q (B, H, T, hd); k, v (B, Hkv, T, hd) with Hkv dividing H (grouped-query attention: each key/value head
    serves H / Hkv query heads, Ainslie et al. 2023). mask: None = causal; else a bool (B, 1, T, T), True =
    may attend (document_mask). Memory O(B * H * T^2): the reading path, not the training one.
    """
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, H, T, hd)
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, T): query t against key s
    allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() if mask is None else mask  # s <= t
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = scores.softmax(dim=-1)  # (B, H, T, T), each row sums to 1 over the keys it may see
    return weights @ v  # (B, H, T, hd)


def sdpa_attention(q, k, v, mask=None, in_float32=False):
    """The same as reference_attention through torch's fused kernel: flash attention when mask is None
    (is_causal=True; never materialises the T x T scores), a masked kernel for a dense document mask."""
    with torch.autocast(q.device.type, enabled=False) if in_float32 else nullcontext():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              enable_gqa=k.shape[1] != q.shape[1])  # (B, H, T, hd)


# Below this many tokens a CPU training step attends in float32 under bf16 autocast (float32_attention).
FLOAT32_ATTENTION_BELOW = 1024


def float32_attention(q) -> bool:
    """A speed path: whether RoPE and attention run in float32 although autocast made q (B, H, T, hd) bf16:
    on CPU, when a backward will follow and the window is short. torch 2.13's CPU flash attention is slower in
    bf16 than in float32 forward + backward, by a cost per (batch, head) that dominates short windows (one
    thread, 4,096 tokens, head_dim 32: x4.5 at T = 64, x3.7 at 128, x1.8 at 256, x1.4 at 512, x1.03 at 1024,
    x1.05 at 2048; x11 at the curriculum's 16), while its bf16 forward alone is faster (x1.5 at 1024). From
    1024 tokens on, float32 would only add the casts, so a training step there stays bf16, as does every
    forward-only pass (the teacher, the probes). The projections and the LM head run in bf16 either way."""
    return (q.dtype == torch.bfloat16 and q.device.type == "cpu" and q.requires_grad and torch.is_grad_enabled()
            and q.shape[-2] < FLOAT32_ATTENTION_BELOW)


class SwiGLU(nn.Module):
    """MLP of Llama: down(silu(gate(x)) * up(x)) (Shazeer 2020)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w_down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-norm transformer block; attention-only when d_ff == 0."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.d_ff else None
        self.mlp = SwiGLU(cfg) if cfg.d_ff else None

    def forward(self, x, rope_q, rope_k, attn_mask=None, inspect=None, kernel="sdpa"):
        x = x + self.attn(self.attn_norm(x), rope_q, rope_k, attn_mask, inspect, kernel)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask (B, 1, T, T): token t sees token s iff s <= t and same document.

    Dense: B * T^2 bools (268 MB at the gpu preset's 16 x 4096), and SDPA with an explicit mask cannot take the
    flash kernel. `document_block_mask` is the sparse alternative (--attention flex).
    """
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    return (same_doc & causal).unsqueeze(1)


def document_block_mask(doc_ids: torch.Tensor, compile_mask: bool | None = None):
    """The same mask as a flex-attention BlockMask: 128 x 128 tiles, the fully masked ones skipped (PyTorch's
    FlexAttention, 2024). Memory O(B * (T/128)^2) instead of O(B * T^2).

    compile_mask (default: on CUDA) builds it with torch.compile, tile by tile: built eagerly, it first
    materialises the B x T x T bools it summarises (394 MiB at B = 2, T = 4096, more than the dense mask).
    The mask of the last doc_ids is kept, so a step's student and teacher, which see the same batch, share one.
    """
    from torch.nn.attention.flex_attention import create_block_mask
    last = _LAST_BLOCK_MASK.get("doc_ids")
    if last is not None and last[0] is doc_ids and last[1] == doc_ids._version:
        return _LAST_BLOCK_MASK["mask"]

    def same_doc_causal(b, h, q, k):
        return (q >= k) & (doc_ids[b, q] == doc_ids[b, k])
    B, T = doc_ids.shape
    compile_mask = doc_ids.is_cuda if compile_mask is None else compile_mask
    mask = create_block_mask(same_doc_causal, B, None, T, T, device=doc_ids.device, _compile=compile_mask)
    _LAST_BLOCK_MASK.update(doc_ids=(doc_ids, doc_ids._version), mask=mask)  # holds doc_ids: its id stays unique
    return mask


_LAST_BLOCK_MASK = {}  # {"doc_ids": (the tensor, its version counter), "mask": its BlockMask}


def flex_attention(q, k, v, block_mask):
    """A speed path for --doc-mask: torch's flex_attention with a BlockMask (document_block_mask), the same as
    reference_attention under document_mask; compiled on CUDA (fused kernel), eager elsewhere (unfused, and no
    backward on CPU)."""
    from torch.nn.attention.flex_attention import flex_attention as flex
    global _compiled_flex
    enable_gqa = k.shape[1] != q.shape[1]
    if q.device.type == "cuda":
        _compiled_flex = _compiled_flex or torch.compile(flex)
        return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
    with warnings.catch_warnings():  # torch warns that eager flex is unfused: known, it only checks the CUDA path
        warnings.simplefilter("ignore")
        return flex(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


_compiled_flex = None


class GPT(nn.Module):
    """Token embedding -> n_layer pre-norm blocks -> RMSNorm -> LM head."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        inv_freq, self.attention_factor = rope_frequencies(cfg.head_dim, cfg.rope_base, cfg.rope_scaling,
                                                           cfg.max_seq_len)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.attention = "sdpa"  # the kernel: "sdpa" (default), "reference" (the formula) or "flex" (--attention)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith(("wo.weight", "w_down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _apply(self, fn, recurse=True):
        """.to() / .cuda() / .bfloat16() land here: RoPE's inv_freq stays float32 whatever the weights' dtype.

        A bf16 inv_freq is off by up to 3.7e-3 relative: phase errors of 1.75 rad (base 1e4) and 3.65 rad
        (base 5e5) at D=4000 with head_dim 64. So it is recomputed in float32 on the new device.
        """
        super()._apply(fn, recurse)
        inv_freq, _ = rope_frequencies(self.config.head_dim, self.config.rope_base, self.config.rope_scaling,
                                       self.config.max_seq_len)
        self.inv_freq = inv_freq.to(self.inv_freq.device)
        return self

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx, position_ids=None, doc_ids=None, inspect: Inspect | None = None):
        """idx (B, T) -> logits (B, T, vocab). doc_ids (B, T) switches to block-diagonal attention."""
        B, T = idx.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=idx.device).expand(B, T)
        x = self.tok_emb(idx)  # (B, T, C)
        rope = rope_cos_sin(position_ids, self.inv_freq, self.attention_factor, x.dtype)  # 2 x (B, T, hd)
        kernel = self.attention
        attn_mask = None if doc_ids is None else document_block_mask(doc_ids) if kernel == "flex" else document_mask(doc_ids)
        if kernel == "flex" and doc_ids is None:
            kernel = "sdpa"  # plain causal attention: flash is the fast path
        if inspect is not None and inspect.record:
            inspect.residuals.append(x.detach())
        for layer, block in enumerate(self.blocks):
            rope_q = rope_k = rope
            if inspect is not None:  # finding 2: RoPE sees other positions for q and/or k here
                if layer in inspect.q_positions:
                    rope_q = rope_cos_sin(inspect.q_positions[layer], self.inv_freq, self.attention_factor, x.dtype)
                if layer in inspect.k_positions:
                    rope_k = rope_cos_sin(inspect.k_positions[layer], self.inv_freq, self.attention_factor, x.dtype)
            x = block(x, rope_q, rope_k, attn_mask, inspect, kernel)
            if inspect is not None and inspect.record:
                inspect.residuals.append(x.detach())
        return self.lm_head(self.norm(x))

    # ------------------------------------------------------------------ accounting

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def flops_per_token(self, seq_len: int, causal: bool = True) -> float:
        """Training FLOPs per token: 6N for the weights plus the attention scores and their weighted sum.

        N counts the weights that take part in matmuls: all parameters except the input
        embedding table (which is a lookup) unless it is tied to the LM head.
        Attention: nanoGPT's estimate_mfu counts 12 * L * H * Q * T, the full T x T score matrix
        (causal=False); a causal kernel computes only the lower triangle, about half of it, so the
        default counts 6 * L * H * Q * T. With the full count MFU rises with the window past what the
        hardware can do (at window 1024 it is 3/4 of this model's FLOPs).
        """
        cfg = self.config
        n = self.num_params()
        if not cfg.tie_embeddings:
            n -= self.tok_emb.weight.numel()
        n -= sum(p.numel() for name, p in self.named_parameters() if "norm" in name)
        attention = 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len  # (Q K^T and A V, fwd + bwd) per token
        return 6 * n + (attention / 2 if causal else attention)


def switch_rope(model: GPT, rope_base: float, rope_scaling: dict | None = None, max_seq_len: int | None = None) -> GPT:
    """The same weights under another RoPE: phase 2's base change (ABF, Xiong et al. 2023) or a scaling variant.

    RoPE has no weights (inv_freq is a buffer computed from the config), so switching the base is a new config
    and a copy of every parameter. Used by train.py (phase 2's start) and the walkthrough.
    """
    cfg = replace(model.config, rope_base=rope_base, rope_scaling=rope_scaling,
                  max_seq_len=max_seq_len or model.config.max_seq_len)
    switched = GPT(cfg).to(model.inv_freq.device)
    switched.load_state_dict(model.state_dict())
    return switched


def student_config(args, init_config=None):
    """The model config a run trains: from the flags (teacher, phase 1), or phase 1's config (init_config) with
    phase 2's base, scaling and window (the same weights under a new RoPE: switch_rope). args: config.resolve's."""
    if init_config is not None:
        return replace(init_config, rope_base=args.rope_base, rope_scaling=args.scaling, max_seq_len=args.window)
    return GPTConfig(vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head, n_kv_head=args.n_kv_head,
                     d_model=args.d_model, d_ff=args.d_ff, rope_base=args.rope_base, rope_scaling=args.scaling,
                     max_seq_len=args.window)


# ----------------------------------------------------------------------------- checkpoints


def gpt_shapes(cfg: GPTConfig) -> dict:
    """{state_dict name: shape} of GPT(cfg), computed without building it (nothing is allocated)."""
    d, hd, V, ff = cfg.d_model, cfg.head_dim, cfg.vocab_size, cfg.d_ff
    shapes = {"tok_emb.weight": (V, d), "norm.weight": (d,), "lm_head.weight": (V, d)}  # tied: both names
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        shapes.update({p + "attn_norm.weight": (d,), p + "attn.wq.weight": (cfg.n_head * hd, d),
                       p + "attn.wk.weight": (cfg.n_kv_head * hd, d), p + "attn.wv.weight": (cfg.n_kv_head * hd, d),
                       p + "attn.wo.weight": (d, cfg.n_head * hd)})
        if ff:
            shapes.update({p + "mlp_norm.weight": (d,), p + "mlp.w_gate.weight": (ff, d),
                           p + "mlp.w_up.weight": (ff, d), p + "mlp.w_down.weight": (d, ff)})
    return shapes


def load_model(path: str, device="cpu"):
    """(GPT with the checkpoint's weights on `device`, checkpoint dict). Every check runs before the model is
    built: the config's types and sizes against bounds (formats/checkpoint.py), then against the shapes of the
    tensors the file holds, so a hostile config allocates nothing; each failure is one CheckpointError."""
    ckpt = load_checkpoint(path)
    check_config(ckpt["config"], path)
    try:
        cfg = GPTConfig(**ckpt["config"])
        rope_frequencies(cfg.head_dim, cfg.rope_base, cfg.rope_scaling, cfg.max_seq_len)  # a complete rope_scaling?
    except (TypeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} does not hold a model of this project: its config {first[:200]}") from None
    weights, expected = ckpt["model"], gpt_shapes(cfg)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path} does not hold a model of this project: its 'model' entry is not a dict "
                              f"of tensors")
    problems = ([f"missing {k}" for k in expected if k not in weights]
                + [f"unexpected {k}" for k in weights if k not in expected]
                + [f"{k} has shape {tuple(weights[k].shape)}, its config needs {shape}"
                   for k, shape in expected.items() if k in weights and tuple(weights[k].shape) != shape])
    if problems:
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        raise CheckpointError(f"{path}: weights and config disagree: {'; '.join(problems[:2])}{more}")
    model = GPT(cfg)
    model.load_state_dict(weights)
    return model.to(device), ckpt


if __name__ == "__main__":
    cfg = GPTConfig()
    model = GPT(cfg)
    print(cfg)
    print(f"parameters: {model.num_params():,}; training FLOPs/token at window {cfg.max_seq_len}: "
          f"{model.flops_per_token(cfg.max_seq_len):,.0f}")
