"""formats/hf.py: Llama names, HF folders (config mapping, safetensors, shards, export), GGUF conversion."""
import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from formats import hf
from formats.hf import FormatError, config_from_hf, load_hf_folder, load_llama_state_dict, llama_state_dict
from model import GPT, GPTConfig, save_checkpoint
from formats.tokenizer import Tokenizer, bytes_to_unicode


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=48, max_seq_len=64)
    cfg.update(kw)
    m = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():
        for p in m.parameters():  # make norms non-trivial too
            p += 0.05 * torch.randn_like(p)
    return m


def reference_llama(sd, cfg, idx):
    """An independent float64 Llama forward written from the formulas (HF modeling_llama), default RoPE."""
    d, H, Hkv, hd = cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim
    T = idx.shape[1]
    w = {k: v.double() for k, v in sd.items()}
    norm = lambda x, g: x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * g
    inv = 1.0 / cfg.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    rot = lambda x: x * cos + torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1) * sin
    x = w["model.embed_tokens.weight"][idx[0]]
    mask = torch.full((T, T), -math.inf, dtype=torch.float64).triu(1)
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        h = norm(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(T, H, hd).transpose(0, 1)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(T, Hkv, hd).transpose(0, 1)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(T, Hkv, hd).transpose(0, 1)
        k, v = k.repeat_interleave(H // Hkv, 0), v.repeat_interleave(H // Hkv, 0)
        att = torch.softmax(rot(q) @ rot(k).transpose(1, 2) / math.sqrt(hd) + mask, -1)
        x = x + (att @ v).transpose(0, 1).reshape(T, d) @ w[p + "self_attn.o_proj.weight"].T
        h = norm(x, w[p + "post_attention_layernorm.weight"])
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    x = norm(x, w["model.norm.weight"])
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


HF_LLAMA = {"model_type": "llama", "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 64, "tie_word_embeddings": False, "rope_theta": 10000.0}


# ----------------------------------------------------------------------------- names and config


def test_llama_state_dict_matches_reference_and_round_trips():
    m = tiny(tie_embeddings=False)
    sd = llama_state_dict(m)
    assert "model.layers.1.self_attn.q_proj.weight" in sd and "lm_head.weight" in sd
    x = torch.randint(0, 50, (1, 12))
    assert torch.allclose(m(x)[0].double(), reference_llama(sd, m.config, x), atol=1e-4)
    fresh = GPT(m.config).eval()
    load_llama_state_dict(fresh, sd)
    assert torch.equal(fresh(x), m(x))


def test_bad_state_dict_names_the_key_and_loads_nothing():
    m = tiny()
    sd = llama_state_dict(m)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    other = {k: v + 1 for k, v in sd.items()}
    with pytest.raises(FormatError, match="shape mismatch for model.layers.1.mlp.down_proj"):
        load_llama_state_dict(m, dict(other, **{"model.layers.1.mlp.down_proj.weight": torch.zeros(3, 3)}))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # nothing half-loaded
    with pytest.raises(FormatError, match="missing keys.*model.norm.weight"):
        load_llama_state_dict(m, {k: v for k, v in sd.items() if k != "model.norm.weight"})
    with pytest.raises(FormatError, match="unknown keys.*extra"):
        load_llama_state_dict(m, dict(sd, extra=torch.zeros(1)))


def test_config_mapping_reads_every_hf_field():
    cfg = config_from_hf(dict(HF_LLAMA, head_dim=8, rope_theta=5e5, tie_word_embeddings=True,
                              rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}))
    assert (cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.d_ff, cfg.norm_eps, cfg.max_seq_len) == (32, 4, 2, 48, 1e-5, 64)
    assert cfg.tie_embeddings and cfg.rope_base == 5e5 and cfg.rope_scaling["rope_type"] == "yarn"
    # transformers >= 4.56 writes rope_parameters, theta included; dynamic falls back to max_position_embeddings
    new = config_from_hf(dict(HF_LLAMA, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}))
    assert new.rope_base == 1e6 and new.rope_scaling["original_max_position_embeddings"] == 64
    plain = config_from_hf({k: v for k, v in HF_LLAMA.items() if k not in ("num_key_value_heads", "rms_norm_eps")})
    assert plain.n_kv_head == 4 and plain.norm_eps == 1e-6 and plain.rope_scaling is None  # LlamaConfig defaults


@pytest.mark.parametrize("change, message", [
    ({"model_type": "qwen2"}, "model_type 'qwen2'"), ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"), ({"sliding_window": 4096}, "sliding_window"),
    ({"head_dim": 16}, "head_dim 16"), ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 2}}, "longrope"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8}}, "low_freq_factor"),
    ({"intermediate_size": None}, "intermediate_size")])
def test_unsupported_configs_are_named(change, message):
    bad = {k: v for k, v in dict(HF_LLAMA, **change).items() if v is not None}
    with pytest.raises(FormatError, match=message):
        config_from_hf(bad)


# ----------------------------------------------------------------------------- folders


@pytest.mark.parametrize("kw", [
    dict(tie_embeddings=True),
    dict(tie_embeddings=False, d_ff=0, n_kv_head=4),  # attention-only: zero MLPs of width 1
    dict(rope_scaling={"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
                       "original_max_position_embeddings": 16}),
    dict(rope_scaling={"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 16}),
    dict(rope_scaling={"rope_type": "ntk", "factor": 4}),  # written as the equivalent plain base
    dict(rope_scaling={"rope_type": "dynamic", "factor": 4, "original_max_position_embeddings": 16}),  # likewise
])
def test_export_then_read_back_gives_identical_logits(tmp_path, kw):
    m = tiny(**kw)
    hf.save_hf_folder(m, str(tmp_path / "out"))
    conf = json.load(open(tmp_path / "out" / "config.json"))
    assert conf["architectures"] == ["LlamaForCausalLM"] and conf["model_type"] == "llama"
    assert conf["tie_word_embeddings"] == m.config.tie_embeddings
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp folder left
    back, info = load_hf_folder(str(tmp_path / "out"))
    x = torch.randint(0, 50, (2, 40))
    assert torch.equal(back.eval()(x), m(x))
    assert info["step"] == 0 and back.config.d_ff == (m.config.d_ff or 1)


def test_exported_weights_are_hf_llama_weights(tmp_path):
    """The folder's tensors, read without this project's GPT, give the reference Llama's logits."""
    m = tiny(tie_embeddings=True)
    hf.save_hf_folder(m, str(tmp_path / "out"))
    sd = hf.read_weights(str(tmp_path / "out"))
    assert "lm_head.weight" not in sd and len(sd) == 2 + 2 * 9  # what save_pretrained writes for a tied Llama
    x = torch.randint(0, 50, (1, 16))
    assert torch.allclose(m(x)[0].double(), reference_llama(sd, m.config, x), atol=1e-4)


def write_shards(folder, m):
    """An HF sharded folder: two safetensors files and their index."""
    os.makedirs(folder)
    json.dump(hf.hf_config(m.config), open(os.path.join(folder, "config.json"), "w"))
    sd = {k: v.clone() for k, v in llama_state_dict(m).items()}
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[:7], "model-00002-of-00002.safetensors": names[7:]}
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, os.path.join(folder, shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    json.dump({"weight_map": weight_map}, open(os.path.join(folder, hf.INDEX), "w"))
    return weight_map


def test_sharded_folder_loads_and_a_missing_shard_is_named(tmp_path):
    m = tiny()
    folder = str(tmp_path / "sharded")
    weight_map = write_shards(folder, m)
    back, _ = load_hf_folder(folder)
    x = torch.randint(0, 50, (1, 10))
    assert torch.equal(back.eval()(x), m(x))
    json.dump({"weight_map": dict(weight_map, **{"model.extra.weight": weight_map["model.norm.weight"]})},
              open(os.path.join(folder, hf.INDEX), "w"))
    with pytest.raises(FormatError, match="model.extra.weight.*not in their shards"):
        load_hf_folder(folder)
    os.remove(os.path.join(folder, "model-00002-of-00002.safetensors"))
    with pytest.raises(FormatError, match="missing shard.*00002-of-00002"):
        load_hf_folder(folder)


def test_pickled_weights_are_refused_and_never_loaded(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    json.dump(HF_LLAMA, open(folder / "config.json", "w"))
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(FormatError, match="pickled weights.*pytorch_model.bin.*never loaded"):
        load_hf_folder(str(folder))


@pytest.mark.parametrize("case", ["missing_ckpt", "not_a_ckpt", "out_not_empty", "bad_gguf", "info_no_config",
                                  "truncated_safetensors", "shape_mismatch"])
def test_bad_input_is_one_error_line_exit_2_nothing_written(tmp_path, capsys, case):
    m = tiny()
    ckpt = str(tmp_path / "m.pt")
    import dataclasses
    save_checkpoint({"model": m.state_dict(), "config": dataclasses.asdict(m.config), "step": 1}, ckpt)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    out = str(tmp_path / "new")
    argv = {"missing_ckpt": ["export", str(tmp_path / "nope.pt"), out],
            "not_a_ckpt": ["export", str(tmp_path / "junk.gguf"), out],
            "out_not_empty": ["export", ckpt, str(tmp_path / "full")],
            "bad_gguf": ["convert-gguf", str(tmp_path / "junk.gguf"), out],
            "info_no_config": ["info", str(tmp_path / "full")],
            "truncated_safetensors": ["info", out], "shape_mismatch": ["info", out]}[case]
    if case in ("truncated_safetensors", "shape_mismatch"):
        hf.save_hf_folder(m, out)
        path = os.path.join(out, hf.WEIGHTS)
        if case == "truncated_safetensors":
            open(path, "r+b").truncate(os.path.getsize(path) // 2)
        else:  # config.json promises a vocabulary the tensors do not have
            json.dump(dict(hf.hf_config(m.config), vocab_size=51), open(os.path.join(out, hf.CONFIG), "w"))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as e:
        hf.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:")
    assert case != "shape_mismatch" or "model.embed_tokens.weight has shape (50, 32) but the config implies" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp folder
    assert os.listdir(tmp_path / "full") == ["keep.txt"]


# ----------------------------------------------------------------------------- GGUF


def interleaved_rope(x, pos, base):
    """GGML's 'normal' RoPE (what llama.cpp runs for llama): dims (2i, 2i + 1) form pair i."""
    hd = x.shape[-1]
    ang = pos[:, None] * (1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))  # (T, hd/2)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * ang.cos() - x1 * ang.sin(), x0 * ang.sin() + x1 * ang.cos()], -1).flatten(-2)


def test_llama_cpp_permutation_turns_rotate_half_into_interleaved_rope():
    """llama.cpp rotates dims (2i, 2i + 1) of rows it permuted; HF rotates (i, i + d/2) of the
    original rows: the attention scores agree, so unpermuting recovers the HF weights exactly."""
    torch.manual_seed(0)
    H, hd, d, T = 3, 8, 16, 6
    wq, wk = torch.randn(H * hd, d, dtype=torch.float64), torch.randn(H * hd, d, dtype=torch.float64)
    h, pos = torch.randn(T, d, dtype=torch.float64), torch.arange(T, dtype=torch.float64)
    assert torch.equal(hf.llama_cpp_unpermute(hf.llama_cpp_permute(wq, H), H), wq)
    inv = 1.0 / 10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.cat([pos[:, None] * inv] * 2, -1)
    rotate_half = lambda x: x * ang.cos() + torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1) * ang.sin()
    heads = lambda w: (h @ w.T).view(T, H, hd).transpose(0, 1)  # (H, T, hd)
    hf_scores = rotate_half(heads(wq)) @ rotate_half(heads(wk)).transpose(1, 2)
    cpp = lambda w: interleaved_rope(heads(hf.llama_cpp_permute(w, H)), pos, 10000.0)
    assert torch.allclose(cpp(wq) @ cpp(wk).transpose(1, 2), hf_scores, atol=1e-10)
    wrong = lambda w: interleaved_rope(heads(w), pos, 10000.0)  # interleaved RoPE on unpermuted rows
    assert not torch.allclose(wrong(wq) @ wrong(wk).transpose(1, 2), hf_scores, atol=1e-3)


def tiny_vocab():
    """Every byte as a token, a few merges, and two special tokens."""
    chars = list(bytes_to_unicode().values())
    merges = ["t h", "th e", "Ġ t", "Ġt he", "a n", "Ġ an", "Ġan d"]
    tokens = ["<|endoftext|>", "<|im_start|>"] + chars + ["th", "the", "Ġt", "Ġthe", "an", "Ġan", "Ġand"]
    return tokens, merges


def write_gguf(path, m, quantized=True, head_count_kv=True):
    """A llama.cpp-style GGUF of `m`: permuted W_q / W_k, Q8_0 embedding, Q4_1 matrices, F32 norms."""
    import gguf
    cfg, tokens, merges = m.config, *tiny_vocab()
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(cfg.n_layer); w.add_embedding_length(cfg.d_model); w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_head); w.add_rope_freq_base(cfg.rope_base)
    if head_count_kv:
        w.add_head_count_kv(cfg.n_kv_head)
    w.add_layer_norm_rms_eps(cfg.norm_eps); w.add_context_length(cfg.max_seq_len)
    w.add_rope_dimension_count(cfg.head_dim); w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("smollm"); w.add_token_list(tokens)
    w.add_token_merges(merges); w.add_token_types([3, 3] + [1] * (len(tokens) - 2)); w.add_eos_token_id(0)
    names = {v: k for k, v in hf.GGUF_NAMES.items()}
    dequantized = {}
    for name, t in llama_state_dict(m).items():
        parts = name.split(".")
        g = f"blk.{parts[2]}.{names['.'.join(parts[3:-1])]}.weight" if parts[1] == "layers" else \
            f"{names['.'.join(parts[:-1])]}.weight"
        a = t.numpy().astype(np.float32)
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            a = hf.llama_cpp_permute(t, cfg.n_head if "q_proj" in name else cfg.n_kv_head).numpy()
        qtype = (gguf.GGMLQuantizationType.Q8_0 if "embed" in name else gguf.GGMLQuantizationType.Q4_1) \
            if quantized and a.ndim == 2 else gguf.GGMLQuantizationType.F32
        data = gguf.quants.quantize(a, qtype) if qtype != gguf.GGMLQuantizationType.F32 else a
        w.add_tensor(g, data, raw_dtype=qtype)
        deq = torch.from_numpy(gguf.quants.dequantize(data, qtype).reshape(a.shape).copy())
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            deq = hf.llama_cpp_unpermute(deq, cfg.n_head if "q_proj" in name else cfg.n_kv_head)
        dequantized[name] = deq
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return dequantized


def test_gguf_conversion_matches_a_float64_reference_and_needs_the_unpermutation(tmp_path):
    m = tiny(vocab_size=len(tiny_vocab()[0]), tie_embeddings=True, d_model=64, n_head=4, n_kv_head=2, d_ff=64)
    path = str(tmp_path / "tiny.gguf")
    dequantized = write_gguf(path, m)  # the weights as the file holds them, in HF layout
    converted, _ = hf.load_gguf(path)
    x = torch.randint(0, m.config.vocab_size, (1, 24))
    ref = reference_llama(dequantized, m.config, x)
    assert (converted.eval()(x)[0].double() - ref).abs().max() < 1e-4
    assert (m(x)[0].double() - ref).abs().max() > 1e-3  # Q4_1 really changed the weights
    raw, _ = hf.load_gguf(path, unpermute=False)
    assert (raw.eval()(x)[0].double() - ref).abs().max() > 1e-2  # llama.cpp's layout as is: wrong logits


def test_convert_gguf_writes_a_folder_with_the_tokenizer(tmp_path):
    m = tiny(vocab_size=len(tiny_vocab()[0]), d_model=64, n_head=4, n_kv_head=4, d_ff=64, tie_embeddings=False)
    write_gguf(str(tmp_path / "t.gguf"), m, quantized=False)
    hf.main(["convert-gguf", str(tmp_path / "t.gguf"), str(tmp_path / "out")])
    back, _ = load_hf_folder(str(tmp_path / "out"))
    x = torch.randint(0, m.config.vocab_size, (1, 20))
    assert torch.allclose(back.eval()(x), m(x), atol=1e-5)  # F32 file: the same model
    tok = Tokenizer.from_folder(str(tmp_path / "out"))
    assert tok.split_digits and tok.decode(tok.encode("the and 123")) == "the and 123"
    assert [tok.decode([i]) for i in tok.encode("the and")] == ["the", " and"]


def test_gguf_of_another_architecture_is_refused(tmp_path):
    import gguf
    w = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "qwen2")
    w.add_block_count(1)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(FormatError, match="architecture 'qwen2'"):
        hf.load_gguf(str(tmp_path / "q.gguf"))


HOSTILE = {"vocab_2e9": {"vocab_size": 2e9}, "vocab_int_2e9": {"vocab_size": 2_000_000_000},
           "hidden_2e7": {"hidden_size": 20_000_000}, "layers_1e6": {"num_hidden_layers": 1_000_000},
           "heads_0": {"num_attention_heads": 0}, "vocab_text": {"vocab_size": "50"},
           # within the bounds, but not what the weights' headers hold: refused before anything is built
           "vocab_4e6": {"vocab_size": 4_000_000}, "wide": {"hidden_size": 65536, "num_attention_heads": 512,
                                                            "num_key_value_heads": 512, "intermediate_size": 1 << 20},
           "layers_1000": {"num_hidden_layers": 1000}}


def test_hostile_configs_are_one_error_line_each_in_bounded_memory(tmp_path):
    """config.json sizes are checked against bounds and against the safetensors headers' shapes before
    anything is allocated: `formats/hf.py info` on each folder ends in one error line, exit 2, nothing written,
    all under a 4 GB address-space limit (one subprocess runs every case: torch loads once)."""
    import subprocess
    import sys
    folders = []
    for case, change in HOSTILE.items():
        folder = str(tmp_path / case)
        hf.save_hf_folder(tiny(), folder)
        cfg = json.load(open(os.path.join(folder, hf.CONFIG)))
        json.dump(dict(cfg, **change), open(os.path.join(folder, hf.CONFIG), "w"))
        folders.append(folder)
    before = {f: sorted(os.listdir(f)) for f in folders}
    script = """
import contextlib, io, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from formats import hf
report = []
for folder in sys.argv[1:]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            hf.main(["info", folder])
            code = 0
        except SystemExit as e:
            code = e.code
    report.append([code, err.getvalue(), out.getvalue()])
print(json.dumps(report))
"""
    here = os.path.dirname(os.path.dirname(os.path.abspath(hf.__file__)))
    run = subprocess.run([sys.executable, "-c", script, *folders], capture_output=True, text=True, cwd=here,
                         timeout=300, env={**os.environ, "PYTHONPATH": here})
    assert run.returncode == 0, run.stderr[-3000:]
    for case, (code, err, out) in zip(HOSTILE, json.loads(run.stdout)):
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and not out, (case, err)
    assert {f: sorted(os.listdir(f)) for f in folders} == before and len(os.listdir(tmp_path)) == len(HOSTILE)


def test_a_gguf_whose_tensors_do_not_match_its_metadata_is_refused_before_building(tmp_path, monkeypatch):
    m = tiny(vocab_size=len(tiny_vocab()[0]), d_model=64, n_head=4, n_kv_head=4, d_ff=64, tie_embeddings=False)
    path = str(tmp_path / "t.gguf")
    write_gguf(path, m, quantized=False)
    real = hf.gguf_config
    monkeypatch.setattr(hf, "gguf_config", lambda r: dict(real(r), intermediate_size=1 << 20))
    monkeypatch.setattr(hf, "GPT", lambda cfg: pytest.fail("the model was built before the shapes were checked"))
    with pytest.raises(FormatError, match="mlp.gate_proj.weight has shape .* but the config implies"):
        hf.load_gguf(path)


def hf_dynamic_inv_freq(base, factor, max_position_embeddings, head_dim, seq_len):
    """transformers' dynamic NTK (_compute_dynamic_ntk_parameters + dynamic_rope_update) for an input of
    seq_len tokens: measured from max_position_embeddings, unscaled up to it."""
    seq_len = max(seq_len, max_position_embeddings)
    base = base * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (head_dim / (head_dim - 2))
    return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def test_dynamic_rope_follows_transformers_convention_both_ways(tmp_path):
    """Import: an HF dynamic config scales nothing up to max_position_embeddings, whatever
    original_max_position_embeddings says. Export: a dynamic model is written as the plain base rope.py
    uses for its window, which transformers computes identically at every length."""
    from rope import rope_frequencies
    hd = HF_LLAMA["hidden_size"] // HF_LLAMA["num_attention_heads"]
    cfg = config_from_hf(dict(HF_LLAMA, rope_scaling={"rope_type": "dynamic", "factor": 4.0,
                                                      "original_max_position_embeddings": 16}))
    ours = rope_frequencies(cfg.head_dim, cfg.rope_base, cfg.rope_scaling, cfg.max_seq_len)[0].double()
    hf_freq = hf_dynamic_inv_freq(1e4, 4.0, HF_LLAMA["max_position_embeddings"], hd, seq_len=40)
    assert torch.allclose(ours, hf_freq, rtol=1e-6, atol=0)  # inputs within the window: unscaled in both
    m = tiny(rope_scaling={"rope_type": "dynamic", "factor": 4, "original_max_position_embeddings": 16})
    conf = hf.hf_config(m.config)
    assert conf["rope_scaling"] is None and conf["max_position_embeddings"] == m.config.max_seq_len
    theirs = 1.0 / conf["rope_theta"] ** (torch.arange(0, m.config.head_dim, 2, dtype=torch.float64) / m.config.head_dim)
    assert torch.allclose(m.inv_freq.double(), theirs, rtol=1e-6, atol=0)
    assert conf["rope_theta"] > 2 * m.config.rope_base  # the window's stretch is kept, not dropped


def test_gguf_without_head_count_kv_defaults_to_head_count(tmp_path):
    m = tiny(vocab_size=len(tiny_vocab()[0]), d_model=64, n_head=4, n_kv_head=4, d_ff=64, tie_embeddings=False)
    path = str(tmp_path / "t.gguf")
    write_gguf(path, m, quantized=False, head_count_kv=False)
    converted, reader = hf.load_gguf(path)
    assert hf.gguf_field(reader, "llama.attention.head_count_kv") is None and converted.config.n_kv_head == 4
    x = torch.randint(0, m.config.vocab_size, (1, 12))
    assert torch.allclose(converted.eval()(x), m(x), atol=1e-5)


@pytest.mark.parametrize("target", ["cwd", "foreign", "extra_file", "export"])
def test_overwrite_replaces_only_a_previous_export(tmp_path, monkeypatch, capsys, target):
    m = tiny()
    ckpt = str(tmp_path / "m.pt")
    save_checkpoint({"model": m.state_dict(), "config": dataclasses.asdict(m.config), "step": 1}, ckpt)
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    out = {"cwd": ".", "foreign": str(work), "extra_file": "prev", "export": "prev"}[target]
    if target in ("extra_file", "export"):
        hf.save_hf_folder(m, "prev")
        if target == "extra_file":
            (work / "prev" / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    if target == "export":
        hf.main(["export", ckpt, out, "--overwrite"])
        assert sorted(os.listdir("prev")) == ["config.json", "model.safetensors"]
        return
    with pytest.raises(SystemExit) as e:
        hf.main(["export", ckpt, out, "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "replaces only a folder this tool wrote" in err[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing deleted or written
