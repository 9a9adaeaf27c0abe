"""interp/match.py: a layer-0 head's self-match profile, checked against the forward pass and a hand-built head.

The profile is computed from the weights alone, so two things must hold: its pairs sum to the attention logit the
model itself computes between a key and the same key D tokens back, and a head built by hand to match only through
one RoPE pair gives that pair's closed form, amp * cos(theta D) / sqrt(hd), and nothing in the others.
"""
import math

import pytest
import torch

import interp.analyses
from data import TaskSpec
from interp.match import layer0_qk, match_head, match_results, pair_terms, rotate_to, slow_pairs
from interp.qk import queries_and_keys
from model import GPT, GPTConfig

from schema import assert_committed_schema
from test_analyze import outputs, write_ckpt

torch.set_num_threads(1)


def tiny(base=5e5, window=256, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=TaskSpec().vocab_size, d_model=32, n_head=2, n_kv_head=2, n_layer=2, rope_base=base,
                    max_seq_len=window)
    return GPT(cfg).eval()


def test_pairs_sum_to_the_forward_pass_logit():
    model = tiny()
    key, D = int(TaskSpec().keys()[3]), 77
    idx = torch.full((1, D + 1), int(TaskSpec().keys()[5]))
    idx[0, 0] = idx[0, D] = key
    _, qk = queries_and_keys(model, idx)
    hd = model.config.head_dim
    for head in range(2):
        logit = (qk["q_post"][0][0, head, D] @ qk["k_post"][0][0, head, 0]).item() / math.sqrt(hd)
        q, k = layer0_qk(model)
        terms = pair_terms(rotate_to(model, q[[key], head], [D]), rotate_to(model, k[[key], head], [0]))  # (1, 1, hd/2)
        assert terms.sum().item() == pytest.approx(logit, rel=1e-4, abs=1e-5)


def test_a_head_matching_through_one_pair_gives_its_closed_form():
    model, pair = tiny(), 2
    hd, d = model.config.head_dim, model.config.d_model
    with torch.no_grad():
        wq, wk = model.blocks[0].attn.wq.weight, model.blocks[0].attn.wk.weight
        wq.zero_(); wk.zero_()
        wq[pair].fill_(1.0); wk[pair].fill_(1.0)  # head 0, first dim of `pair` only: q = k = sum of the input
    keys = TaskSpec().keys()[:4]
    q, _ = layer0_qk(model)
    amp = q[keys, 0, pair] ** 2  # (4,): |q||k| of that pair, phase 0
    res = match_results(model, keys, 256, step=8, head=0)
    theta = float(model.inv_freq[pair])
    for i, D in enumerate(res["distances"]):
        expect = (amp * math.cos(theta * D)).mean().item() / math.sqrt(hd)
        assert res["match"][i] == pytest.approx(expect, rel=1e-4, abs=1e-5)
        assert all(abs(v) < 1e-6 for j, v in enumerate(res["pairs"][i]) if j != pair)
    fast = not bool(slow_pairs(model, 256)[pair])  # pair 2 turns several times over 256 tokens at base 5e5
    assert fast and res["slow"][0] == pytest.approx(0, abs=1e-6) and res["fast"][0] == pytest.approx(res["match"][0])


def test_match_head_picks_the_matching_head_over_an_anti_matching_one():
    model = tiny(seed=1)
    hd = model.config.head_dim
    with torch.no_grad():  # the same projection for q and k: head 1 matches a key with itself, head 0 repels it
        wq, wk = model.blocks[0].attn.wq.weight, model.blocks[0].attn.wk.weight
        w = torch.randn(hd, model.config.d_model)
        wq[:hd], wk[:hd] = w, -w
        wq[hd:], wk[hd:] = w, w
    assert match_head(model, TaskSpec().keys(), list(range(0, 256, 16))) == 1


def test_record_attention_is_a_probability_and_analyze_match_writes_its_files(tmp_path):
    path = write_ckpt(tmp_path / "m.pt", base=5e5, max_seq_len=128, phase="2", seed=5)
    interp.analyses.main(["match", "--ckpt", path, "--measure", "40", "80", "--n-windows", "1", "--out", str(tmp_path)])
    res = outputs(tmp_path, "match")["models"]["m"]
    assert len(res["match"]) == 128 and set(res["measured"]) == {"40", "80"}
    assert all(0 <= w <= 1 for w in res["measured"].values()) and set(res["pairs"]) == {"40", "80"}
    assert res["match"] == pytest.approx([s + f for s, f in zip(res["slow"], res["fast"])], abs=3e-4)  # 4 decimals each
    assert_committed_schema("interp match", tmp_path / "match.json")
    with pytest.raises(SystemExit) as e:
        interp.analyses.main(["match", "--ckpt", path, "--head", "7", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
