"""research/finding3.py: per-pair update norms and the permutation tests behind the finding-3 table; its JSON has the
schema of research/notes/finding3.json."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from research import finding3
from interp.qupdate import pair_norm, pair_update
from model import GPT, GPTConfig, save_checkpoint
from schema import assert_committed_schema


def test_pair_norm_groups_rows_i_and_i_plus_half():
    w = torch.zeros(2 * 4, 3)  # 2 heads, head_dim 4 (pairs 0, 1), d_model 3
    w[1, :] = 1.0  # head 0, pair 1, first row
    w[3, :] = 1.0  # head 0, pair 1, second row (i + hd/2)
    w[4, 0] = 2.0  # head 1, pair 0
    n = pair_norm(w, 2)
    assert n.shape == (2, 2)
    assert torch.allclose(n, torch.tensor([[0.0, 6 ** 0.5], [2.0, 0.0]]))


def test_pair_update_is_the_absolute_update_over_the_before_norm():
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert torch.allclose(pair_update(b, a, 2), pair_norm(a - b, 2) / pair_norm(b, 2))


def test_span_test_finds_a_planted_span_and_not_a_flat_profile():
    rng = np.random.default_rng(0)
    noise = rng.normal(1.0, 0.05, size=(5, 16))
    planted = noise.copy()
    planted[:, 4:8] += 0.5  # the same span raised in every seed
    stat, start, p = finding3.span_test(finding3.layer_normalised(planted), 4, 999, np.random.default_rng(1))
    assert start == 4 and p == pytest.approx(1 / 1000)
    _, _, p_flat = finding3.span_test(finding3.layer_normalised(noise), 4, 999, np.random.default_rng(1))
    assert p_flat > 0.05


def test_span_test_needs_agreement_across_seeds():
    """Each seed has its own high span at a different place: the seed mean has none to show."""
    profiles = np.ones((4, 16))
    for s, start in enumerate((0, 4, 8, 12)):
        profiles[s, start:start + 4] = 2.0
    _, _, p = finding3.span_test(finding3.layer_normalised(profiles), 4, 999, np.random.default_rng(0))
    assert p > 0.05


def test_sign_flip_maxt_exact_values():
    diff = np.array([[1.0, 0.1], [1.0, -0.1], [1.0, 0.1]])  # pair 0: every seed +1; pair 1: mixed
    p = finding3.sign_flip_maxt(diff)
    # 8 sign patterns; the max |mean| reaches 1.0 only for all + and all -: 2/8
    assert p[0] == pytest.approx(2 / 8)
    assert p[1] == pytest.approx(1.0)


def test_sign_flip_p_never_falls_below_what_the_seeds_allow():
    """float32 profiles (as torch gives them): the observed pattern is one of the 2^S, so p >= 2 / 2^S."""
    diff = np.random.default_rng(0).normal(0.2, 0.01, size=(5, 16)).astype(np.float32)
    assert min(finding3.sign_flip_maxt(diff)) == pytest.approx(2 / 32)


def test_holm_matches_the_step_down_rule():
    assert finding3.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert finding3.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_finding3_end_to_end_on_tiny_checkpoints(tmp_path):
    """Phase-1 and phase-2 checkpoints for two phase-1 seeds -> JSON, table and figure; the KD student moved only
    pairs 1-2 of layer 0's W_q, which the table and JSON say."""
    cfg = GPTConfig(vocab_size=16, d_model=32, n_layer=1, n_head=2, n_kv_head=2, d_ff=0, max_seq_len=32,
                    rope_base=1e4)
    out = tmp_path / "out"
    out.mkdir()
    for p1 in (0, 1):
        torch.manual_seed(p1)
        before = GPT(cfg)
        sfx = f"-s{p1}" if p1 else ""
        save_checkpoint({"config": dataclasses.asdict(cfg), "model": before.state_dict(), "step": 0},
                        str(out / f"phase1-b10000{sfx}.pt"))
        for stem, pairs in (("phase2-kd-b10000-b500000", [1, 2]), ("phase2-ce-b10000-b500000", [5, 6])):
            after = GPT(cfg)
            after.load_state_dict(before.state_dict())
            with torch.no_grad():
                for head in range(2):
                    for i in pairs:
                        for row in (i, i + 8):  # head_dim 16: pair i is rows i and i + 8
                            after.blocks[0].attn.wq.weight[head * 16 + row] += 1.0
            psfx = f"-p{p1}" if p1 else ""
            save_checkpoint({"config": dataclasses.asdict(cfg), "model": after.state_dict(), "step": 1}, str(out / f"{stem}{psfx}.pt"))
    docs = tmp_path / "docs"
    finding3.main(["--out-dir", str(out), "--phase1-seeds", "0", "1", "--width", "2", "--n-perm", "200",
                   "--docs-dir", str(docs)])
    res = json.loads((docs / "finding3.json").read_text())
    assert res["students"]["kd"]["seeds"] == [0, 1] and "kd 1e4->1e4" not in res["students"]
    span = res["students"]["kd"]["wq"]["span"][0]
    assert span["pairs"] == [1, 2] and span["mean"] == pytest.approx(4.0, rel=1e-5)  # 2 of 8 pairs hold it all
    assert res["students"]["ce"]["wq"]["span"][0]["pairs"] == [5, 6]
    assert res["kd_vs_ce"]["seeds"] == [0, 1]
    assert (docs / "finding3.png").stat().st_size > 0
    assert "| W_q | 0 | kd | 2 |" in (docs / "finding3.md").read_text()
    assert_committed_schema("research.finding3", docs / "finding3.json")


def test_finding3_refuses_an_empty_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        finding3.main(["--out-dir", str(tmp_path), "--docs-dir", str(tmp_path / "docs")])
    assert e.value.code != 0 and "no phase-1 / phase-2 checkpoint pair" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "docs")
