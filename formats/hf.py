"""Real pretrained models in and out: Hugging Face Llama folders and llama.cpp GGUF files.

Paper idea: in "Short Data, Long Context" (arXiv 2604.06070) the teacher is a *pretrained*
long-context LLM, not a toy. This file is the bridge between such models and this
project's GPT (model.py), which knows no file format beyond its own checkpoint:

- HF folders: config.json + model.safetensors (or shards + model.safetensors.index.json)
  of a Llama-family model <-> GPTConfig + weights, by name, with shape checks. Anything the
  GPT cannot compute (biases, sliding windows, other model types, other RoPE types) is
  rejected in one line, before anything is loaded. safetensors only: no file is unpickled.
- GGUF (llama.cpp): formats/gguf.py reads and dequantizes tensors with the `gguf` package and undoes
  llama.cpp's row permutation of W_q / W_k (its RoPE pairs adjacent dims; HF and rope.py pair i with
  i + d/2); here they become a GPT (load_gguf) and an HF folder plus the tokenizer (tokenizer.json,
  tokenizer_config.json, vocab.json, merges.txt; formats/tokenizer.py).
- `load_pretrained`: a checkpoint file of this project or an HF folder, for --teacher,
  --init (train.py) and --ckpt (analyze.py).

  python -m formats.hf export out/teacher.pt out/teacher-hf          # LlamaForCausalLM.from_pretrained loads it
  python -m formats.hf convert-gguf SmolLM2-135M-Instruct.Q4_1.gguf out/smollm2
  python -m formats.hf info out/smollm2                                # what the folder maps to
"""
import argparse
import dataclasses
import json
import math
import os
import sys

import torch

from formats.files import FormatError, atomic_folder
from formats.gguf import gguf_config, gguf_field, gguf_hf_name, gguf_state_dict, open_gguf
from formats.gguf import GGUF_NAMES, llama_cpp_permute, llama_cpp_unpermute  # noqa: F401 (formats.hf's names too)
from model import GPT, CheckpointError, GPTConfig, atomic_write, first_line, load_model
from rope import rope_frequencies, scaling_type
import variants.rope_scaling  # noqa: F401 (real models may carry a rope_scaling: its variants registered)
from formats.tokenizer import Tokenizer

WEIGHTS, INDEX, CONFIG = "model.safetensors", "model.safetensors.index.json", "config.json"
HF_ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3")  # the HF rope types rope.py computes


# ----------------------------------------------------------------------------- names


def llama_key_map(cfg: GPTConfig) -> dict:
    """{Hugging Face LlamaForCausalLM parameter name: GPT parameter name}."""
    m = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "norm.weight"}
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = "lm_head.weight"
    for i in range(cfg.n_layer):
        hf, me = f"model.layers.{i}.", f"blocks.{i}."
        m[hf + "input_layernorm.weight"] = me + "attn_norm.weight"
        for proj in "qkvo":
            m[hf + f"self_attn.{proj}_proj.weight"] = me + f"attn.w{proj}.weight"
        if cfg.d_ff:
            m[hf + "post_attention_layernorm.weight"] = me + "mlp_norm.weight"
            for proj in ("gate", "up", "down"):
                m[hf + f"mlp.{proj}_proj.weight"] = me + f"mlp.w_{proj}.weight"
    return m


def llama_shapes(cfg: GPTConfig) -> dict:
    """{HF parameter name: shape} the config implies, computed without allocating anything."""
    d, hd, ff, V = cfg.d_model, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    by_suffix = {"embed_tokens.weight": (V, d), "lm_head.weight": (V, d), "norm.weight": (d,),
                 "layernorm.weight": (d,), "q_proj.weight": (cfg.n_head * hd, d),
                 "k_proj.weight": (cfg.n_kv_head * hd, d), "v_proj.weight": (cfg.n_kv_head * hd, d),
                 "o_proj.weight": (d, cfg.n_head * hd), "gate_proj.weight": (ff, d), "up_proj.weight": (ff, d),
                 "down_proj.weight": (d, ff)}
    return {name: next(v for k, v in by_suffix.items() if name.endswith(k)) for name in llama_key_map(cfg)}


def check_shapes(cfg: GPTConfig, shapes: dict, where: str):
    """The tensors' {name: shape} (from file headers) against the config, before any model is built."""
    expected = llama_shapes(cfg)
    shapes = {k: tuple(v) for k, v in shapes.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        shapes.pop("lm_head.weight", None)
    unknown, missing = sorted(set(shapes) - set(expected)), sorted(set(expected) - set(shapes))
    if unknown or missing:
        raise FormatError(f"{where} does not match its config: unknown tensors {unknown[:3]}, missing {missing[:3]}")
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise FormatError(f"{where}: {name} has shape {shapes[name]} but the config implies {shape}")


def llama_state_dict(model: GPT) -> dict:
    """The model's weights under Hugging Face Llama names (HF uses rotate-half RoPE too)."""
    own = model.state_dict()
    return {hf: own[me] for hf, me in llama_key_map(model.config).items()}


@torch.no_grad()
def load_llama_state_dict(model: GPT, state_dict: dict):
    """Copy HF Llama weights into `model`; an unknown/missing key or a bad shape is an error
    raised before any weight is copied (nothing is half-loaded)."""
    key_map = llama_key_map(model.config)
    state_dict = dict(state_dict)
    if model.config.tie_embeddings:  # HF may store the tied head too; it must equal the embedding
        head = state_dict.pop("lm_head.weight", None)
        if head is not None and not torch.equal(head, state_dict.get("model.embed_tokens.weight")):
            raise FormatError("lm_head.weight differs from model.embed_tokens.weight but the config ties them")
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
    unknown = sorted(set(state_dict) - set(key_map))
    missing = sorted(set(key_map) - set(state_dict))
    if unknown or missing:
        raise FormatError(f"Llama state dict mismatch: unknown keys {unknown[:3]}, missing keys {missing[:3]}")
    params = dict(model.named_parameters())
    for hf, me in key_map.items():
        if state_dict[hf].shape != params[me].shape:
            raise FormatError(f"shape mismatch for {hf}: got {tuple(state_dict[hf].shape)}, "
                              f"expected {tuple(params[me].shape)}")
    for hf, me in key_map.items():
        params[me].copy_(state_dict[hf])


# ----------------------------------------------------------------------------- config.json


def rope_from_hf(hf: dict):
    """(rope_base, rope_scaling or None) from `rope_theta` + `rope_scaling`, or HF >= 4.56 `rope_parameters`;
    FormatError for a value of the wrong type (checked before it is used)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(params, dict):
        key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
        raise FormatError(f"config.json: {key} must be an object or null, got {params!r}")
    base = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not math.isfinite(base) or base <= 0:
        raise FormatError(f"config.json: rope_theta must be a finite number > 0, got {base!r}")
    base = float(base)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if not isinstance(rope_type, str):
        raise FormatError(f"config.json: the rope type must be a string, got {rope_type!r}")
    if rope_type == "default":
        return base, None
    if rope_type not in HF_ROPE_TYPES:
        raise FormatError(f"rope type {rope_type!r} is not supported (default, {', '.join(HF_ROPE_TYPES)})")
    extra = sorted(set(params) & {"mscale", "mscale_all_dim", "long_factor", "short_factor"})
    if extra:
        raise FormatError(f"rope_scaling keys {extra} are not supported")
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "type")}
    scaling["rope_type"] = rope_type
    if rope_type == "yarn":  # HF falls back to max_position_embeddings
        scaling.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings", 2048))
    if rope_type == "dynamic":  # HF measures dynamic NTK from max_position_embeddings and does not scale below it
        scaling["original_max_position_embeddings"] = hf.get("max_position_embeddings", 2048)
    return base, scaling


# Sizes a config.json may declare: far above any Llama-family model (vocabularies up to 256K, widths up to
# 16K, 126 layers), far below what would exhaust memory before the weights' own shapes are compared.
SIZE_BOUNDS = {"vocab_size": 1 << 22, "hidden_size": 1 << 16, "num_hidden_layers": 1024, "num_attention_heads": 1024,
               "num_key_value_heads": 1024, "intermediate_size": 1 << 20, "head_dim": 1024,
               "max_position_embeddings": 1 << 24}


def check_sizes(hf: dict):
    """Every size in config.json an integer in 1..SIZE_BOUNDS (FormatError otherwise): checked before the
    config is used for anything, so a hostile value (vocab_size 2e9, 1e6 layers) allocates nothing."""
    for key, bound in SIZE_BOUNDS.items():
        v = hf.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= bound:
            raise FormatError(f"config.json: {key} must be an integer from 1 to {bound:,}, got {v!r}")


def config_from_hf(hf: dict) -> GPTConfig:
    """GPTConfig of an HF Llama config.json; FormatError names the first thing the GPT cannot compute."""
    check_sizes(hf)
    if hf.get("model_type") != "llama":
        raise FormatError(f"model_type {hf.get('model_type')!r} is not supported (only 'llama')")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise FormatError(f"{key}: true is not supported (this GPT has no biases)")
    if hf.get("sliding_window"):
        raise FormatError(f"sliding_window {hf['sliding_window']} is not supported (full causal attention only)")
    if hf.get("hidden_act", "silu") != "silu":
        raise FormatError(f"hidden_act {hf['hidden_act']!r} is not supported (SwiGLU with silu only)")
    needed = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in needed if k not in hf]
    if missing:
        raise FormatError(f"config.json lacks {missing}")
    d, H = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, d // H) or d % H:
        raise FormatError(f"head_dim {hf.get('head_dim')} != hidden_size / num_attention_heads ({d}/{H}) "
                          "is not supported")
    base, scaling = rope_from_hf(hf)
    eps = hf.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise FormatError(f"config.json: rms_norm_eps must be a finite number > 0, got {eps!r}")
    try:
        cfg = GPTConfig(vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=H,
                         n_kv_head=hf.get("num_key_value_heads") or H, d_model=d, d_ff=hf["intermediate_size"],
                         rope_base=base, rope_scaling=scaling, norm_eps=eps,
                         tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                         max_seq_len=hf.get("max_position_embeddings", 2048))
    except ValueError as e:
        raise FormatError(f"config.json: {e}") from None
    try:
        rope_frequencies(cfg.head_dim, cfg.rope_base, cfg.rope_scaling, cfg.max_seq_len)  # complete scaling keys?
    except (ValueError, TypeError, KeyError) as e:  # a key missing or of the wrong type
        raise FormatError(f"config.json: rope_scaling {scaling}: {e}") from None
    return cfg


def hf_config(cfg: GPTConfig) -> dict:
    """config.json for LlamaForCausalLM. Attention-only blocks (d_ff 0) cannot be expressed in HF
    Llama; they are written with intermediate_size 1 and zero MLP weights (see export_weights)."""
    base, scaling = cfg.rope_base, cfg.rope_scaling
    kind = scaling_type(scaling)
    if kind == "ntk":
        # NTK-aware scaling is a plain base change: base' = base * s^(d/(d-2)) (rope.py _ntk)
        base, scaling = base * float(scaling["factor"]) ** (cfg.head_dim / (cfg.head_dim - 2)), None
    elif kind == "dynamic":
        # rope.py fixes dynamic NTK's base for the model's window (max_seq_len); HF's `dynamic` would measure
        # from max_position_embeddings and leave every shorter input unscaled. The exact equivalent is the
        # plain base rope.py uses: base' = base * (s L / L_orig - (s - 1))^(d/(d-2)), L = max_seq_len (rope.py)
        factor, orig = float(scaling["factor"]), scaling["original_max_position_embeddings"]
        L = max(cfg.max_seq_len, orig)
        base, scaling = base * (factor * L / orig - (factor - 1)) ** (cfg.head_dim / (cfg.head_dim - 2)), None
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff or 1, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
            "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
            "rope_theta": base, "rope_scaling": scaling, "tie_word_embeddings": cfg.tie_embeddings,
            "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}


# ----------------------------------------------------------------------------- folders


def read_json(path) -> dict:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"cannot read {path}: {e}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path} does not hold a JSON object")
    return obj


def read_safetensors(path: str) -> dict:
    """{name: tensor} from one .safetensors file (a header and raw bytes: nothing to unpickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path)
    except (OSError, SafetensorError, ValueError) as e:
        raise FormatError(f"cannot read {path}: {first_line(e)}") from None


def safetensors_shapes(path: str) -> dict:
    """{name: shape} from a .safetensors file's header only (no tensor is read)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (OSError, SafetensorError, ValueError) as e:
        raise FormatError(f"cannot read {path}: {first_line(e)}") from None


def weight_files(folder: str) -> list:
    """The .safetensors files holding an HF folder's weights: model.safetensors, or the shards its index
    names (all must exist)."""
    single, index = os.path.join(folder, WEIGHTS), os.path.join(folder, INDEX)
    if os.path.isfile(single):
        return [single]
    if not os.path.isfile(index):
        bins = [f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth"))]
        raise FormatError(f"{folder} has no {WEIGHTS} or {INDEX}" +
                          (f" (pickled weights {bins[:2]} are never loaded: convert them to safetensors)" if bins else ""))
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise FormatError(f"{index} has no weight_map")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise FormatError(f"{index}: weight_map values must be file names")
    shards = sorted(set(weight_map.values()))
    absent = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
    if absent:
        raise FormatError(f"{folder}: missing shard(s) {absent[:3]} named in {INDEX}")
    return [os.path.join(folder, s) for s in shards]


def read_weight_shapes(folder: str) -> dict:
    """{name: shape} of every tensor of an HF folder, from the headers alone."""
    shapes = {}
    for path in weight_files(folder):
        shapes.update(safetensors_shapes(path))
    index = os.path.join(folder, INDEX)
    if os.path.isfile(index) and not os.path.isfile(os.path.join(folder, WEIGHTS)):
        lost = sorted(k for k in read_json(index)["weight_map"] if k not in shapes)
        if lost:
            raise FormatError(f"{folder}: tensors {lost[:3]} listed in {INDEX} are not in their shards")
    return shapes


def read_weights(folder: str) -> dict:
    """All tensors of an HF folder: model.safetensors, or the shards its index names."""
    tensors = {}
    for path in weight_files(folder):
        tensors.update(read_safetensors(path))
    return tensors


def load_hf_folder(folder: str, device="cpu"):
    """(GPT float32 on `device`, info dict) from an HF Llama folder. Every check runs before anything is
    allocated: the config's sizes against bounds, then against the tensors' shapes in the file headers."""
    cfg_path = os.path.join(folder, CONFIG)
    if not os.path.isfile(cfg_path):
        raise FormatError(f"{folder} is not a Hugging Face model folder (no {CONFIG})")
    cfg = config_from_hf(read_json(cfg_path))
    check_shapes(cfg, read_weight_shapes(folder), folder)
    tensors = {k: v.float() for k, v in read_weights(folder).items()}
    model = GPT(cfg)
    load_llama_state_dict(model, tensors)
    return model.to(device), {"model": model.state_dict(), "config": dataclasses.asdict(cfg), "step": 0,
                              "done": True, "source": os.path.abspath(folder)}


def load_pretrained(path: str, device="cpu"):
    """(GPT, checkpoint-like dict) from a checkpoint file of this project or an HF Llama folder."""
    if os.path.isdir(path):
        return load_hf_folder(path, device)
    return load_model(path, device)


def export_weights(model: GPT) -> dict:
    """HF tensors, contiguous float32; an attention-only model gets zero MLPs of width 1 (exactly
    x + 0 in every block, so the logits do not change) because HF Llama always has an MLP."""
    sd = {k: v.detach().float().contiguous().cpu() for k, v in llama_state_dict(model).items()}
    if not model.config.d_ff:
        d = model.config.d_model
        for i in range(model.config.n_layer):
            p = f"model.layers.{i}."
            sd[p + "post_attention_layernorm.weight"] = torch.ones(d)
            sd[p + "mlp.gate_proj.weight"] = sd[p + "mlp.up_proj.weight"] = torch.zeros(1, d)
            sd[p + "mlp.down_proj.weight"] = torch.zeros(d, 1)
    return {k: v.clone() for k, v in sd.items()}  # no shared storage (safetensors refuses it)


EXPORT_FILES = {CONFIG, WEIGHTS, "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"}


def is_previous_export(folder: str) -> bool:
    """A folder that save_hf_folder wrote: config.json and model.safetensors, and no other files than its own."""
    if not os.path.isdir(folder) or os.path.islink(folder):
        return False
    entries = set(os.listdir(folder))
    return {CONFIG, WEIGHTS} <= entries and entries <= EXPORT_FILES and \
        all(os.path.isfile(os.path.join(folder, e)) for e in entries)


def write_folder(out_dir: str, files: dict, overwrite=False):
    """Write {name: callable(path)} as the folder out_dir, whole or not at all (atomic_folder), replacing only an
    empty folder or, with overwrite, one that this tool wrote."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        if not overwrite:
            raise FormatError(f"{out_dir} exists and is not empty (pass --overwrite)")
        if not is_previous_export(out_dir):
            raise FormatError(f"--overwrite replaces only a folder this tool wrote ({CONFIG} and {WEIGHTS}, "
                              f"nothing else but tokenizer files): {out_dir} is not one, so it is left alone")
    atomic_folder(out_dir, files)


def write_json(path, obj):
    """`obj` as JSON at `path`, written atomically (a kill leaves the old file or the new one)."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=2), mode="w")


def save_hf_folder(model: GPT, out_dir: str, extra_files: dict | None = None, overwrite=False):
    """Write config.json + model.safetensors (+ extra files) that LlamaForCausalLM.from_pretrained loads."""
    from safetensors.torch import save_file
    config, weights = hf_config(model.config), export_weights(model)
    files = {CONFIG: lambda p: write_json(p, config),
             WEIGHTS: lambda p: save_file(weights, p, metadata={"format": "pt"})}
    write_folder(out_dir, {**files, **(extra_files or {})}, overwrite)


# ----------------------------------------------------------------------------- GGUF (llama.cpp): formats/gguf.py


def load_gguf(path: str, unpermute=True):
    """(GPT, GGUF reader) from a llama.cpp llama-architecture GGUF file."""
    reader = open_gguf(path)
    hf = gguf_config(reader)
    cfg = config_from_hf(hf)
    check_shapes(cfg, {gguf_hf_name(t.name): tuple(reversed(t.shape.tolist())) for t in reader.tensors}, path)
    model = GPT(cfg)
    try:
        sd = gguf_state_dict(reader, hf, unpermute)
    except (ValueError, NotImplementedError, RuntimeError) as e:
        raise FormatError(f"cannot dequantize {path}: {first_line(e)}") from None
    load_llama_state_dict(model, sd)
    return model, reader


def convert_gguf(path: str, out_dir: str, overwrite=False) -> GPT:
    """GGUF -> HF folder (config.json, model.safetensors) with the tokenizer's files (tokenizer.json,
    tokenizer_config.json, vocab.json, merges.txt)."""
    model, reader = load_gguf(path)
    try:
        tok = Tokenizer.from_gguf(lambda key: gguf_field(reader, key))
    except ValueError as e:
        raise FormatError(f"{path}: {e}") from None
    save_hf_folder(model, out_dir, tok.files(), overwrite)
    return model


# ----------------------------------------------------------------------------- command line


def main(argv=None):
    p = argparse.ArgumentParser(description="Write a checkpoint as a Hugging Face Llama folder, convert a llama.cpp "
                                "GGUF into one, or show what a folder maps to.")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="checkpoint of this project -> HF folder (config.json + model.safetensors)")
    e.add_argument("ckpt", help="a .pt checkpoint written by train.py")
    e.add_argument("out", help="output folder (created; must not exist or be empty)")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    c = sub.add_parser("convert-gguf", help="llama.cpp GGUF (llama architecture) -> HF folder with tokenizer files")
    c.add_argument("gguf", help="the .gguf file")
    c.add_argument("out", help="output folder (created; must not exist or be empty)")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    i = sub.add_parser("info", help="print the GPTConfig an HF folder or checkpoint maps to")
    i.add_argument("path", help="HF folder or .pt checkpoint")
    args = p.parse_args(argv)
    try:
        if args.cmd == "export":
            model, _ = load_model(args.ckpt)
            save_hf_folder(model, args.out, overwrite=args.overwrite)
            note = " (attention-only: written with zero MLPs of width 1)" if not model.config.d_ff else ""
            print(f"wrote {args.out}: {CONFIG}, {WEIGHTS}{note}")
        elif args.cmd == "convert-gguf":
            model = convert_gguf(args.gguf, args.out, args.overwrite)
            print(f"wrote {args.out}: {model.num_params():,} parameters; {CONFIG}, {WEIGHTS}, tokenizer.json, "
                  "tokenizer_config.json, vocab.json, merges.txt")
        else:
            model, _ = load_pretrained(args.path)
            print(model.config)
            print(f"parameters: {model.num_params():,}")
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
