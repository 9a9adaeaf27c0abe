"""Model: causality, document mask, GQA, position override, checkpoints (Llama weights: test_hf.py)."""
import pytest
import torch

from model import GPT, CheckpointError, GPTConfig, Inspect, load_model, save_checkpoint


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
    assert len(clean.q_pre) == 3 and clean.q_pre[0].shape == (1, 4, 16, 8)


def test_flops_per_token_follows_nanogpt_formula():
    m = tiny(d_ff=0)
    matmul_params = m.num_params() - sum(p.numel() for n, p in m.named_parameters() if "norm" in n)
    assert m.flops_per_token(64) == 6 * matmul_params + 12 * 2 * 4 * 8 * 64


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
