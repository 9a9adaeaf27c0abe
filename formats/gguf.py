"""llama.cpp GGUF files read as Hugging Face Llama: metadata to config.json, tensor names, W_q / W_k rows.

Paper idea: in "Short Data, Long Context" (arXiv 2604.06070) the teacher is a pretrained long-context LLM;
such models are often shared as llama.cpp GGUF files, quantized. This file reads one into what formats/hf.py
loads: an HF-style config.json from the GGUF metadata (every size checked before it is used), the HF names
of its tensors, and its W_q / W_k rows back in the rotate-half order of rope.py (llama.cpp permutes them so
that its RoPE can pair adjacent dimensions). formats/hf.py builds the model from these (load_gguf) and writes
the HF folder with the tokenizer (convert_gguf).
"""
import os

import torch

from formats.files import FormatError
from model import first_line

GGUF_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
              "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}


def llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The row permutation llama.cpp's convert_hf_to_gguf.py (LlamaModel.permute) applies to W_q / W_k:
    within each head, rows (i, i + d/2) -- a rotate-half pair -- become adjacent rows (2i, 2i + 1)."""
    out, d_in = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, d_in).transpose(1, 2).reshape(out, d_in)


def llama_cpp_unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama_cpp_permute: adjacent rows (2i, 2i + 1) of each head back to (i, i + d/2)."""
    out, d_in = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, d_in).transpose(1, 2).reshape(out, d_in)


def gguf_field(reader, key, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(reader) -> dict:
    """HF-style config.json of a llama-architecture GGUF, from its metadata."""
    arch = gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise FormatError(f"GGUF architecture {arch!r} is not supported (only 'llama')")
    g = lambda k, default=None: gguf_field(reader, f"llama.{k}", default)
    tokens = gguf_field(reader, "tokenizer.ggml.tokens") or []
    hf = {"model_type": "llama", "vocab_size": g("vocab_size", len(tokens)), "hidden_size": g("embedding_length"),
          "num_hidden_layers": g("block_count"), "num_attention_heads": g("attention.head_count"),
          "num_key_value_heads": g("attention.head_count_kv", g("attention.head_count")),  # llama.cpp's default
          "intermediate_size": g("feed_forward_length"),
          "max_position_embeddings": g("context_length", 2048), "rope_theta": g("rope.freq_base", 10000.0),
          "rms_norm_eps": g("attention.layer_norm_rms_epsilon", 1e-5),
          "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors)}
    for key, name in (("hidden_size", "embedding_length"), ("num_attention_heads", "attention.head_count"),
                      ("num_key_value_heads", "attention.head_count_kv")):
        v = hf[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:  # divided by below and in formats/hf.py
            raise FormatError(f"GGUF llama.{name} is missing" if v is None else
                              f"GGUF llama.{name} must be an integer >= 1, got {v!r}")
    rope_type = g("rope.scaling.type", "none")
    if rope_type != "none":
        raise FormatError(f"GGUF rope scaling {rope_type!r} is not supported")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise FormatError("GGUF rope_freqs tensor (llama3 rope scaling) is not supported")
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    if g("rope.dimension_count", head_dim) != head_dim:
        raise FormatError(f"partial RoPE ({g('rope.dimension_count')} of {head_dim} dims) is not supported")
    return hf


def gguf_tensor(t) -> torch.Tensor:
    """Dequantized float32 tensor in PyTorch (out, in) order (GGUF lists shapes innermost first)."""
    from gguf.quants import dequantize
    return torch.from_numpy(dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist()))).copy())


def gguf_hf_name(name: str) -> str:
    """The HF Llama name of a GGUF tensor ("blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight")."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in GGUF_NAMES:
        return f"model.layers.{parts[1]}.{GGUF_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in GGUF_NAMES:
        return f"{GGUF_NAMES[parts[0]]}.{parts[1]}"
    raise FormatError(f"GGUF tensor {name!r} has no Llama counterpart")


def gguf_state_dict(reader, hf: dict, unpermute=True) -> dict:
    """HF Llama state dict of a GGUF; W_q / W_k un-permuted back to rotate-half unless unpermute=False."""
    sd = {}
    for t in reader.tensors:
        name = gguf_hf_name(t.name)
        w = gguf_tensor(t)
        if unpermute and name.endswith("q_proj.weight"):
            w = llama_cpp_unpermute(w, hf["num_attention_heads"])
        elif unpermute and name.endswith("k_proj.weight"):
            w = llama_cpp_unpermute(w, hf["num_key_value_heads"])
        sd[name] = w
    return sd


def open_gguf(path: str):
    try:
        import gguf
    except ImportError:
        raise FormatError("reading GGUF needs the gguf package: pip install gguf") from None
    if not os.path.isfile(path):
        raise FormatError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # bad magic, truncated file, unknown version
        raise FormatError(f"cannot read {path} as GGUF: {first_line(e)}") from None


