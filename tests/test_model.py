"""Model: causality, document mask, GQA, position override, checkpoints (Llama weights: test_hf.py)."""
from types import SimpleNamespace

import os
import pytest
import torch

from distill import freeze_teacher
from model import GPT, CheckpointError, GPTConfig, Inspect, document_mask, load_model, save_checkpoint, switch_rope
from rope import rope_cos_sin
from scale.bench import flops_per_token
from variants.flex import document_block_mask  # registers the "flex" kernel


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=48, max_seq_len=64)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def test_causal_changing_token_t_changes_no_earlier_logit():
    m = tiny()
    x = torch.randint(0, 50, (2, 20))
    y = x.clone()
    y[:, 12] = (y[:, 12] + 1) % 50
    a, b = m(x), m(y)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_document_mask_isolates_documents():
    m = tiny()
    x = torch.randint(0, 50, (1, 20))
    doc = torch.tensor([[0] * 8 + [1] * 12])
    y = x.clone()
    y[0, 3] = (y[0, 3] + 1) % 50  # a token of document 0
    a, b = m(x, doc_ids=doc), m(y, doc_ids=doc)
    assert torch.allclose(a[:, 8:], b[:, 8:], atol=1e-6)  # document 1 does not see it
    assert not torch.allclose(a[:, 3:8], b[:, 3:8])
    assert not torch.allclose(m(x)[:, 8:], m(y)[:, 8:])  # without the mask it does


def test_document_mask_is_causal_inside_a_document():
    doc = torch.tensor([[0] * 8 + [1] * 12])
    t, s = torch.meshgrid(torch.arange(20), torch.arange(20), indexing="ij")
    assert torch.equal(document_mask(doc)[0, 0], (s <= t) & (doc[0, t] == doc[0, s]))
    m = tiny()
    x = torch.randint(0, 50, (1, 20))
    y = x.clone()
    y[0, 14] = (y[0, 14] + 1) % 50  # a token of document 1
    a, b = m(x, doc_ids=doc), m(y, doc_ids=doc)
    assert torch.equal(a[:, :14], b[:, :14]) and not torch.allclose(a[:, 14:], b[:, 14:])


@torch.no_grad()
def test_flex_block_mask_gives_the_dense_masks_logits():
    """--attention flex: the same attention as the dense document mask (forward only: no flex backward on CPU)."""
    m = tiny()  # grouped-query attention: 4 query heads, 2 key/value heads
    x = torch.randint(0, 50, (2, 40))
    doc = torch.tensor([[0] * 9 + [1] * 20 + [2] * 11, [0] * 30 + [1] * 10])
    dense = m(x, doc_ids=doc)
    m.attention = "flex"
    flex = m(x, doc_ids=doc)
    assert torch.allclose(flex, dense, atol=1e-5)
    assert not torch.allclose(flex, m(x), atol=1e-3)  # and not plain causal attention
    assert document_block_mask(doc).shape == (2, 1, 40, 40)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("masked", [False, True])
def test_reference_attention_equals_the_sdpa_kernel(n_kv_head, masked):
    """The formula a learner reads (scores, mask, softmax, weighted sum; GQA by repeat) is what SDPA computes:
    outputs and gradients, causal and under the document mask, for MHA, GQA and MQA."""
    from model import reference_attention, sdpa_attention
    torch.manual_seed(0)
    B, H, T, hd = 2, 4, 24, 8
    q = torch.randn(B, H, T, hd, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, n_kv_head, T, hd, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, n_kv_head, T, hd, dtype=torch.float64, requires_grad=True)
    mask = document_mask(torch.tensor([[0] * 10 + [1] * 14, [0] * 3 + [1] * 21])) if masked else None
    ref, fast = reference_attention(q, k, v, mask), sdpa_attention(q, k, v, mask)
    assert torch.allclose(ref, fast, atol=1e-12)
    g_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    g_fast = torch.autograd.grad(fast.square().sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(g_ref, g_fast))
    # causal: the output at t does not move when a later key changes
    k2 = k.detach().clone()
    k2[:, :, -1] += 1.0
    assert torch.equal(reference_attention(q, k2, v, mask)[:, :, :-1], ref[:, :, :-1])


def test_model_with_the_reference_kernel_gives_the_same_logits():
    m = tiny()  # GQA
    x = torch.randint(0, 50, (2, 40))
    doc = torch.tensor([[0] * 9 + [1] * 31, [0] * 30 + [1] * 10])
    fast, fast_doc = m(x), m(x, doc_ids=doc)
    m.attention = "reference"
    assert torch.allclose(m(x), fast, atol=1e-5) and torch.allclose(m(x, doc_ids=doc), fast_doc, atol=1e-5)


@pytest.mark.parametrize("n_kv_head, tie, d_ff", [(4, True, 0), (2, False, 48), (1, True, 48)])
def test_shapes_gqa_and_tying(n_kv_head, tie, d_ff):
    m = tiny(n_kv_head=n_kv_head, tie_embeddings=tie, d_ff=d_ff)
    assert m(torch.randint(0, 50, (3, 10))).shape == (3, 10, 50)
    assert m.blocks[0].attn.wk.weight.shape == (n_kv_head * 8, 32)
    assert (m.lm_head.weight is m.tok_emb.weight) == tie
    assert (m.blocks[0].mlp is None) == (d_ff == 0)
    expect = 50 * 32 * (1 if tie else 2) + 32 + 2 * (32 * 32 * 2 + 2 * 32 * n_kv_head * 8 + 32
                                                  + (3 * 32 * d_ff + 32 if d_ff else 0))
    assert m.num_params() == expect


def test_position_override_changes_only_later_layers():
    m = tiny(n_layer=3)
    x = torch.randint(0, 50, (1, 16))
    clean = Inspect()
    ref = m(x, inspect=clean)
    assert torch.equal(ref, m(x))  # inspecting changes nothing
    same = Inspect(q_positions={1: torch.arange(16)[None]})
    assert torch.equal(m(x, inspect=same), ref)
    pert = Inspect(k_positions={1: torch.arange(16)[None] + 3.0})
    out = m(x, inspect=pert)
    for j in (0, 1):  # embedding and block 0 are before layer 1
        assert torch.equal(pert.residuals[j], clean.residuals[j])
    assert not torch.allclose(pert.residuals[2], clean.residuals[2])
    assert not torch.allclose(out, ref)
    assert len(clean.residuals) == 4 and clean.residuals[0].shape == (1, 16, 32)


def test_the_queries_and_keys_read_off_a_forward_pass_are_those_attention_uses():
    """interp/qk.py's hooks and RoPE give the queries and keys from which reference_attention rebuilds layer 0's
    output exactly, and leave the logits as they were."""
    from interp.qk import queries_and_keys
    from model import reference_attention
    m = tiny(n_layer=3, n_kv_head=2)
    x = torch.randint(0, 50, (2, 16))
    seen = []
    handle = m.blocks[0].attn.wo.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    logits, qk = queries_and_keys(m, x)
    handle.remove()
    assert torch.equal(logits, m(x)) and len(qk["q_pre"]) == 3
    assert qk["q_pre"][0].shape == (2, 4, 16, 8) and qk["k_post"][0].shape == (2, 2, 16, 8)
    y = reference_attention(qk["q_post"][0], qk["k_post"][0], values(m, x))  # (B, H, T, hd)
    assert torch.allclose(y.transpose(1, 2).reshape(2, 16, 32), seen[0], atol=1e-5)


def values(m, x):
    """Layer 0's values (B, Hkv, T, hd), as its attention computes them."""
    attn = m.blocks[0].attn
    v = attn.wv(m.blocks[0].attn_norm(m.tok_emb(x)))
    return v.view(x.shape[0], x.shape[1], attn.n_kv_head, attn.head_dim).transpose(1, 2)


def test_flops_per_token_counts_the_causal_half_of_attention():
    m = tiny(d_ff=0)
    matmul_params = m.num_params() - sum(p.numel() for n, p in m.named_parameters() if "norm" in n)
    attention = 12 * 2 * 4 * 8 * 64  # nanoGPT's 12 * L * H * Q * T: the full T x T scores
    assert flops_per_token(m, 64, causal=False) == 6 * matmul_params + attention
    assert flops_per_token(m, 64) == 6 * matmul_params + attention / 2
    # doubling the window adds only the causal half of the attention term per token
    assert flops_per_token(m, 128) - flops_per_token(m, 64) == attention / 2


def test_checkpoint_round_trip_and_errors(tmp_path):
    m = tiny()
    import dataclasses
    path = str(tmp_path / "m.pt")
    save_checkpoint({"model": m.state_dict(), "config": dataclasses.asdict(m.config), "step": 3}, path)
    m2, ckpt = load_model(path)
    x = torch.randint(0, 50, (1, 8))
    assert ckpt["step"] == 3 and torch.equal(m2(x), m(x))
    assert [f.name for f in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind
    with pytest.raises(CheckpointError, match="not found"):
        load_model(str(tmp_path / "nope.pt"))
    (tmp_path / "cut.pt").write_bytes(open(path, "rb").read()[:200])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_model(str(tmp_path / "cut.pt"))


def bad_file(kind, good, folder):
    """Write one kind of file that is not a sound checkpoint of this project into `folder`; returns its path."""
    import dataclasses
    import os
    import pickle
    import zipfile
    path = str(folder / f"{kind}.pt")
    raw = open(good, "rb").read()
    if kind == "text":
        open(path, "w").write("hello there\n")
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "cut":
        open(path, "wb").write(raw[:5000])
    elif kind == "flipped":  # one byte of the weights changed: only the CRC-32 of its member shows it
        flipped = bytearray(raw)
        flipped[len(raw) // 2] ^= 0xFF
        open(path, "wb").write(bytes(flipped))
    elif kind == "hostile":
        class Hostile:
            def __reduce__(self):
                return (os.system, (f"touch {folder / 'pwned'}",))
        torch.save({"model": Hostile(), "config": {}, "step": 0}, path)
    elif kind == "pickle":
        pickle.dump({"model": {}, "config": {}, "step": 0}, open(path, "wb"))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "hi")
    elif kind == "keys":
        torch.save({"weights": torch.zeros(2)}, path)
    elif kind == "mismatch":  # a config that does not fit the weights
        m = tiny()
        torch.save({"model": m.state_dict(), "config": dict(dataclasses.asdict(m.config), d_model=64), "step": 1},
                   path)
    elif kind == "folder":
        os.mkdir(path)
    return path


@pytest.mark.parametrize("kind, says", [
    ("text", r"is not a checkpoint of this project \(12 bytes"),
    ("empty", r"is empty \(0 bytes\)"),
    ("cut", r"is truncated or corrupt \(5,000 bytes"),
    ("flipped", r"is corrupt \([\d,]+ bytes: its member .* fails the checksum"),
    ("hostile", r"holds objects other than tensors and plain data \(posix.system\): refused for safety"),
    ("pickle", r"is not a checkpoint of this project \(\d+ bytes that are not a torch.save archive"),
    ("zip", r"is not a checkpoint of this project \(a zip archive"),
    ("keys", r"is not a checkpoint of this project \(a torch.save file without the keys model, config, step"),
    ("mismatch", r"weights and config disagree: .*has shape"),
    ("folder", r"is a folder"),
])
def test_load_errors_say_what_is_wrong_and_never_advise_unsafe_loading(kind, says, tmp_path):
    import dataclasses
    m = tiny()
    good = str(tmp_path / "good.pt")
    save_checkpoint({"model": m.state_dict(), "config": dataclasses.asdict(m.config), "step": 3}, good)
    path = bad_file(kind, good, tmp_path)
    with pytest.raises(CheckpointError, match=says) as e:
        load_model(path)
    msg = str(e.value)
    assert msg.startswith(path) and "\n" not in msg and "weights_only" not in msg
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("base", [1e4, 5e5])
def test_rope_stays_float32_in_a_bf16_teacher(base):
    """freeze_teacher casts a CUDA teacher with .to(bfloat16); RoPE's inv_freq must not follow (in bf16 it turns
    the phase at position 4000 by up to 1.75 rad with base 1e4, head_dim 64)."""
    cfg = GPTConfig(vocab_size=50, n_layer=1, n_head=1, n_kv_head=1, d_model=64, rope_base=base, max_seq_len=4096)
    ref = GPT(cfg)
    teacher = freeze_teacher(GPT(cfg), SimpleNamespace(type="cuda"))  # the CUDA path's cast, here on CPU
    assert teacher.tok_emb.weight.dtype == torch.bfloat16 and teacher.inv_freq.dtype == torch.float32
    pos = torch.tensor([[4000]])
    for got, want in zip(rope_cos_sin(pos, teacher.inv_freq), rope_cos_sin(pos, ref.inv_freq)):
        assert (got - want).abs().max() < 1e-6
    assert teacher(torch.randint(0, 50, (1, 8))).dtype == torch.bfloat16  # and the bf16 forward still runs


def test_switch_rope_keeps_every_weight_and_changes_only_the_rotation():
    """Phase 2's base change: the same parameters, a new inv_freq; back to the old base gives the same logits."""
    m = tiny()
    x = torch.randint(0, 50, (2, 20))
    switched = switch_rope(m, 5e5, max_seq_len=128).eval()
    assert switched.config.rope_base == 5e5 and switched.config.max_seq_len == 128
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), switched.state_dict().values()))
    assert not torch.allclose(switched.inv_freq, m.inv_freq) and not torch.allclose(switched(x), m(x))
    assert torch.equal(switch_rope(switched, m.config.rope_base).eval()(x), m(x))


def test_checkpoints_get_the_umask_permissions_not_the_temp_files(tmp_path):
    """A checkpoint written through the private temp file is readable as a plain open() would leave it."""
    from model import save_checkpoint
    old = os.umask(0o022)
    try:
        save_checkpoint({"x": torch.zeros(1)}, str(tmp_path / "a.pt"))
        os.umask(0o027)
        save_checkpoint({"x": torch.zeros(1)}, str(tmp_path / "b.pt"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == 0o640
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


@torch.no_grad()
def test_a_steps_student_and_teacher_share_one_flex_block_mask(monkeypatch):
    """--attention flex: the block mask of a batch is built once, not once per model; rebuilt for new doc ids;
    on CUDA it is built compiled (tile by tile), never from a materialised T x T mask (checked by reading the
    call here: no GPU in this suite)."""
    import torch.nn.attention.flex_attention as fa
    real, calls = fa.create_block_mask, []

    def counting(*a, **k):
        calls.append(k.get("_compile"))
        return real(*a, **{**k, "_compile": False})

    monkeypatch.setattr(fa, "create_block_mask", counting)
    student, teacher = tiny(), tiny()
    student.attention = teacher.attention = "flex"
    x = torch.randint(0, 50, (2, 40))
    doc = torch.tensor([[0] * 9 + [1] * 31, [0] * 30 + [1] * 10])
    student(x, doc_ids=doc), teacher(x, doc_ids=doc)
    assert calls == [False]  # once, eager on the CPU
    student(x, doc_ids=doc.clone())
    assert len(calls) == 2  # another batch: its own mask
    document_block_mask(doc.clone(), compile_mask=True)
    assert calls[-1] is True
