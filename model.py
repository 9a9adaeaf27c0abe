"""A small Llama-style GPT with explicit RoPE: the teacher and the student of the paper.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distills a long-context
teacher into a student through its logits; both are decoder-only transformers whose
only notion of position is RoPE applied to queries and keys. This file is that model:
pre-norm blocks (RMSNorm -> attention with RoPE -> residual; RMSNorm -> SwiGLU MLP ->
residual), grouped-query attention, optional attention-only blocks (d_ff = 0),
tied or untied LM head, no biases: the Llama architecture, so that formats/hf.py can load and
write Hugging Face Llama and llama.cpp GGUF weights (this file knows only its own checkpoint).

It can also be looked inside (analyze.py needs this for finding 2): pass an `Inspect` object
to `forward` to record the residual streams, or to override the positions that RoPE applies to
the queries and/or keys of chosen layers. Without it, nothing extra runs.
"""
import json
import math
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

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
    """Optional probe for `GPT.forward`: which RoPE positions to override, and the residual streams it records.

    q_positions / k_positions: {layer: position ids (B, T)} used by RoPE for that layer's
    queries / keys instead of the model's positions (finding 2's perturbation).
    After the forward pass, `residuals[l]` is the residual stream after block l - 1 (index 0 is
    the embedding). (interp/qk.py reads the queries and keys themselves.)
    """
    q_positions: dict = field(default_factory=dict)
    k_positions: dict = field(default_factory=dict)
    residuals: list = field(default_factory=list)


class Attention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with RoPE on q and k."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head
        self.head_dim = cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x, rope_q, rope_k, attn_mask=None, kernel="sdpa"):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        q_rot, k_rot = apply_rope(q, *rope_q), apply_rope(k, *rope_k)  # position enters here, and only here
        if kernel == "reference":
            y = reference_attention(q_rot, k_rot, v, attn_mask)  # (B, H, T, hd)
        elif kernel in KERNELS:
            y = KERNELS[kernel](q_rot, k_rot, v, attn_mask)
        else:
            y = sdpa_attention(q_rot, k_rot, v, attn_mask)
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


def sdpa_attention(q, k, v, mask=None):
    """The same as reference_attention through torch's fused kernel: flash attention when mask is None
    (is_causal=True; never materialises the T x T scores), a masked kernel for a dense document mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                          enable_gqa=k.shape[1] != q.shape[1])  # (B, H, T, hd)


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

    def forward(self, x, rope_q, rope_k, attn_mask=None, kernel="sdpa"):
        x = x + self.attn(self.attn_norm(x), rope_q, rope_k, attn_mask, kernel)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask (B, 1, T, T): token t sees token s iff s <= t and same document.

    Dense: B * T^2 bools (268 MB at the gpu preset's 16 x 4096), and SDPA with an explicit mask cannot take the
    flash kernel. variants/flex.py's block mask is the sparse alternative (python -m variants --attention flex).
    """
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    return (same_doc & causal).unsqueeze(1)


# Kernels beyond "sdpa" and "reference", by name (model.attention): objects with mask(doc_ids) -> the mask they
# read and __call__(q, k, v, mask) -> (B, H, T, hd), each tested equal to reference_attention under document_mask.
# variants/flex.py registers "flex" (flex attention with a block mask, for --doc-mask on CUDA).
KERNELS = {}


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
        self.attention = "sdpa"  # the kernel: "sdpa" (default), "reference" (the formula) or one of KERNELS
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
        if kernel not in ("sdpa", "reference", *KERNELS):  # a lab's kernel registers itself when imported
            raise ValueError(f"unknown attention kernel {kernel!r}: sdpa, reference or one of {sorted(KERNELS)}")
        attn_mask = None
        if doc_ids is not None:
            attn_mask = KERNELS[kernel].mask(doc_ids) if kernel in KERNELS else document_mask(doc_ids)
        elif kernel in KERNELS:
            kernel = "sdpa"  # plain causal attention: flash is the fast path
        if inspect is not None:
            inspect.residuals.append(x.detach())
        for layer, block in enumerate(self.blocks):
            rope_q = rope_k = rope
            if inspect is not None:  # finding 2: RoPE sees other positions for q and/or k here
                if layer in inspect.q_positions:
                    rope_q = rope_cos_sin(inspect.q_positions[layer], self.inv_freq, self.attention_factor, x.dtype)
                if layer in inspect.k_positions:
                    rope_k = rope_cos_sin(inspect.k_positions[layer], self.inv_freq, self.attention_factor, x.dtype)
            x = block(x, rope_q, rope_k, attn_mask, kernel)
            if inspect is not None:
                inspect.residuals.append(x.detach())
        return self.lm_head(self.norm(x))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once


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


# ----------------------------------------------------------------------------- checkpoints
# Every file a later step reads is written whole or not at all (atomic_write), and read back without running code
# or trusting it: load_checkpoint checks the archive's checksums before torch.load(weights_only=True), check_config
# the stored sizes before anything is built, load_model the tensors' shapes against the config.


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, hostile or of the wrong kind."""


def first_line(e: BaseException) -> str:
    """An error's message in one line for a one-line report: its first line, at most 200 characters, or the
    error's type when it says nothing."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


CHECKPOINT_KEYS = ("model", "config", "step")


def atomic_write(path: str, write, mode: str = "wb"):
    """Write `path` atomically: write(f) into a temp file in the same folder, flush + fsync, rename over `path`.

    A kill at any moment leaves either the old or the new file, never a truncated one. The file gets the
    permissions a plain open() would give (0666 less the umask), not the temp file's private 0600.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj):
    """`obj` as indented JSON at `path`, written atomically (atomic_write)."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")


def save_checkpoint(obj: dict, path: str):
    """Atomic save of a checkpoint dict (atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def archive_problem(path: str) -> str | None:
    """What keeps `path` from being a sound torch.save archive, in words; None if it is one.

    torch.save writes a zip archive whose members carry CRC-32 checksums, so a file cut
    short or with flipped bytes is found here, before any of it is unpickled.
    """
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes), not a checkpoint"
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # the zip signature every torch.save file starts with
        return f"is not a checkpoint of this project ({size:,} bytes that are not a torch.save archive)"
    try:
        with zipfile.ZipFile(path) as z:
            if not any(name.endswith("/data.pkl") for name in z.namelist()):
                return (f"is not a checkpoint of this project (a zip archive of {size:,} bytes without "
                        f"torch.save's data.pkl)")
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):
        return f"is truncated or corrupt ({size:,} bytes: the end of the archive is missing or damaged)"
    if bad is not None:
        return f"is corrupt ({size:,} bytes: its member {bad} fails the checksum)"
    return None


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """torch.load with weights_only=True (loading never runs code), then check what came back.

    Every failure is a CheckpointError that says in one line what is wrong with the file.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    problem = archive_problem(path)
    if problem:
        raise CheckpointError(f"{path} {problem}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: not the user's business
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler met something it will not build
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{path} holds objects other than tensors and plain data{what}: refused for "
                              f"safety, nothing in it was run") from None
    except Exception as e:  # a sound archive that still does not load
        said = str(e).strip() and "weights_only" not in str(e)  # torch's advice on weights_only misleads here
        detail = f"{type(e).__name__}: {first_line(e)}" if said else type(e).__name__
        raise CheckpointError(f"{path} is corrupt ({os.path.getsize(path):,} bytes): {detail}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise CheckpointError(f"{path} is not a checkpoint of this project (a torch.save file without the keys "
                              f"{', '.join(CHECKPOINT_KEYS)})")
    return ckpt


# Sizes a stored config may declare: far above any model this project trains or loads (formats/hf.py has the same
# for config.json), far below what would exhaust memory before the tensors' own shapes are compared.
CONFIG_BOUNDS = {"vocab_size": (1, 1 << 22), "n_layer": (1, 1024), "n_head": (1, 1024), "n_kv_head": (1, 1024),
                 "d_model": (2, 1 << 16), "d_ff": (0, 1 << 20), "max_seq_len": (1, 1 << 24)}


def check_config(config, path: str):
    """CheckpointError unless `config` (a checkpoint's "config" entry) has sizes that are integers within
    CONFIG_BOUNDS, finite positive floats for rope_base and norm_eps, a bool tie_embeddings and a dict or None
    rope_scaling. Nothing is built or allocated here."""
    def bad(what):
        return CheckpointError(f"{path} does not hold a model of this project: its config {what}")
    if not isinstance(config, dict):
        raise bad(f"is a {type(config).__name__}, not a dict")
    for key, (lo, hi) in CONFIG_BOUNDS.items():
        v = config.get(key)
        if key in config and (isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi):
            raise bad(f"has {key} {v!r}: it must be an integer from {lo} to {hi:,}")
    for key in ("rope_base", "norm_eps"):
        v = config.get(key)
        if key in config and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or v <= 0):
            raise bad(f"has {key} {v!r}: it must be a finite number > 0")
    if not isinstance(config.get("tie_embeddings", True), bool):
        raise bad(f"has tie_embeddings {config['tie_embeddings']!r}: it must be true or false")
    if not isinstance(config.get("rope_scaling"), (dict, type(None))):
        raise bad(f"has rope_scaling {config['rope_scaling']!r}: it must be a dict or null")


def load_model(path: str, device="cpu"):
    """(GPT with the checkpoint's weights on `device`, checkpoint dict). Every check runs before the model is
    built: the config's types and sizes against bounds (check_config), then against the shapes of the
    tensors the file holds, so a hostile config allocates nothing; each failure is one CheckpointError."""
    ckpt = load_checkpoint(path)
    check_config(ckpt["config"], path)
    try:
        cfg = GPTConfig(**ckpt["config"])
        rope_frequencies(cfg.head_dim, cfg.rope_base, cfg.rope_scaling, cfg.max_seq_len)  # a complete rope_scaling?
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} does not hold a model of this project: its config {first_line(e)}") from None
    weights = ckpt["model"]
    with torch.device("meta"):  # the shapes GPT(cfg) has, without allocating them
        expected = {k: tuple(v.shape) for k, v in GPT(cfg).state_dict().items()}
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
