"""analyze.py and `python -m interp` on tiny random checkpoints (d_model 32, 2 heads, 3 layers, window 64) written here.

Each subcommand must write non-empty PNGs and a JSON whose numbers have the properties the
findings rest on: a zero perturbation changes nothing, a perturbation at layer l leaves the
residual streams 0..l alone, and a W_q edit of one pair is found exactly where it was made;
the JSON of `python -m interp` has the schema of its committed copy (tests/schema.py).
"""
import argparse
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch

import analyze
import evaluate
import interp.analyses
from interp import qupdate as interp_qupdate
from interp.probes import depth_probe, position_sweep
from interp.spectrum import turn_distances
from data import TaskSpec, kv_probe
from evaluate import heuristic_floors
from model import GPT, GPTConfig, save_checkpoint
from rope import critical_dimension
from schema import assert_committed_schema, assert_same_schema, committed_params

torch.set_num_threads(1)
HEAD_DIM, N_LAYER = 16, 3


def write_ckpt(path, base=10000.0, max_seq_len=64, phase="1", seed=0, edit=None, run_args=None, **cfg_kw):
    """A random model saved with train.checkpoint_dict's layout (the keys analyze.py reads)."""
    torch.manual_seed(seed)
    cfg = GPTConfig(**{"vocab_size": TaskSpec().vocab_size, "d_model": 32, "n_head": 2, "n_kv_head": 2,
                       "n_layer": N_LAYER, "rope_base": base, "max_seq_len": max_seq_len, **cfg_kw})
    model = GPT(cfg)
    with torch.no_grad():  # sharper attention than the 0.02 init, so that positions matter
        for block in model.blocks:
            block.attn.wq.weight.mul_(10)
            block.attn.wk.weight.mul_(10)
        if edit is not None:
            edit(model)
    save_checkpoint({"model": model.state_dict(), "config": dataclasses.asdict(cfg), "step": 1, "phase": phase,
                     "done": True, **({"args": run_args} if run_args else {})}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A train.py-like output folder: teacher, phase 1 (short window), KD and CE phase-2 students."""
    d = tmp_path_factory.mktemp("out")
    write_ckpt(d / "teacher.pt", phase="teacher", seed=0)
    write_ckpt(d / "phase1-b10000.pt", max_seq_len=32, seed=1)
    write_ckpt(d / "phase2-kd-b10000-b500000.pt", base=5e5, phase="2", seed=2)
    write_ckpt(d / "phase2-ce-b10000-b500000.pt", base=5e5, phase="2", seed=3)
    return d


def outputs(out, name):
    """The JSON of a run, after checking that every PNG named `name*.png` exists and is non-empty."""
    pngs = [f for f in os.listdir(out) if f.startswith(name) and f.endswith(".png")]
    assert pngs and all(os.path.getsize(os.path.join(out, f)) > 1000 for f in pngs)
    with open(os.path.join(out, name + ".json")) as f:
        return json.load(f)


def perturb(run_dir, out, *flags):
    analyze.main(["perturb", "--ckpt", str(run_dir / "teacher.pt"), "--out", str(out), "--n-windows", "1",
                  "--period", "16", *flags])
    return outputs(out, "perturb")["models"]["teacher"]["runs"]


def test_spectrum_critical_pair_is_first_pair_without_a_full_turn(tmp_path):
    interp.analyses.main(["spectrum", "--head-dim", str(HEAD_DIM), "--bases", "10000", "500000", "--windows", "64",
                          "256", "--out", str(tmp_path)])
    res = outputs(tmp_path, "spectrum")
    assert len(res["settings"]) == 4 and res["schedule"]["phase 2"] == {"window": 256, "base": 500000.0}
    for s in res["settings"]:
        turns, crit = np.array(s["rotations"]), s["critical_pair"]
        assert crit == critical_dimension(HEAD_DIM, s["base"], s["window"]) // 2
        assert (turns[:crit] >= 1).all() and (turns[crit:] < 1).all()
        assert s["utilization"] == pytest.approx((turns >= 1).mean())
    assert_committed_schema("interp spectrum", tmp_path / "spectrum.json")


def test_retrieval_same_probes_for_every_checkpoint(run_dir, tmp_path, monkeypatch):
    seen = {}  # model -> the probe windows it was scored on, in order
    score = evaluate.answer_hits  # every probe's forward pass goes through it

    def recorded(model, batch, *a, **k):
        seen.setdefault(id(model), []).append(batch["tokens"].copy())
        return score(model, batch, *a, **k)

    monkeypatch.setattr(evaluate, "answer_hits", recorded)
    ckpts = [str(run_dir / n) for n in ("teacher.pt", "phase1-b10000.pt", "phase2-kd-b10000-b500000.pt")]
    analyze.main(["retrieval", "--ckpt", *ckpts, "--labels", "T", "P1", "KD", "--distances", "4", "40",
                  "--n-windows", "2", "--max-doc-len", "16", "--out", str(tmp_path)])
    res = outputs(tmp_path, "retrieval")
    assert res["window"] == 64  # the largest max_seq_len, although phase 1 trained on 32
    assert list(res["models"]) == ["T", "P1", "KD"]
    for r in res["models"].values():
        assert set(r["kv"]) == {"4", "40"}
        assert all(0 <= a <= 1 for a in r["kv"].values())
    probes = list(seen.values())
    assert len(probes) == 3 and len(probes[0]) == 2 + 1  # kv at 2 distances, in-doc
    assert all(len(p) == len(probes[0]) and all(np.array_equal(a, b) for a, b in zip(p, probes[0]))
               for p in probes[1:])
    floors = heuristic_floors(TaskSpec(), 64, [4, 40], n_windows=2)  # the floor line: on these very probes
    assert res["floors"]["best"] == {str(d): a for d, a in floors["best"].items()}


def test_depth_sweeps_every_checkpoint_on_the_same_probes(run_dir, tmp_path, monkeypatch):
    seen = {}  # model -> the probe windows it was scored on, in order
    score = evaluate.answer_hits

    def recorded(model, batch, *a, **k):
        seen.setdefault(id(model), []).append(batch["tokens"].copy())
        return score(model, batch, *a, **k)

    monkeypatch.setattr(evaluate, "answer_hits", recorded)
    ckpts = [str(run_dir / n) for n in ("teacher.pt", "phase2-kd-b10000-b500000.pt")]
    interp.analyses.main(["depth", "--ckpt", *ckpts, "--labels", "T", "KD", "--distances", "4", "40", "--depths",
                          "0", "1", "--n-windows", "2", "--out", str(tmp_path)])
    res = outputs(tmp_path, "depth")
    assert list(res["models"]) == ["T", "KD"] and res["depths"] == [0.0, 1.0]
    for sweep in res["models"].values():
        assert set(sweep) == {"0.0", "1.0"} and all(set(row) == {"4", "40"} for row in sweep.values())
        assert all(0 <= a <= 1 for row in sweep.values() for a in row.values())
    probes = list(seen.values())
    assert len(probes) == 2 and len(probes[0]) == 2 * 2  # 2 depths x 2 distances
    assert all(np.array_equal(a, b) for a, b in zip(probes[1], probes[0]))
    deep = depth_probe(TaskSpec(), 64, 4, 1.0, 2)["tokens"]  # the depth reaches the probe
    assert any(np.array_equal(p, deep) for p in probes[0])


def test_retrieval_scores_in_document_under_the_checkpoints_own_mask(run_dir, tmp_path, monkeypatch):
    masked = write_ckpt(tmp_path / "masked.pt", phase="2", seed=4, run_args={"doc_mask": True, "reset_positions": True})
    calls = []  # (doc_mask, positions restart) of each in-document probe call
    score = evaluate.answer_hits  # every probe's forward pass goes through it

    def recorded(model, batch, *a, doc_mask=False, **k):
        if len(np.unique(batch["doc_ids"])) > 2:  # a packed window: the in-document probe
            calls.append((doc_mask, bool((np.diff(batch["positions"], axis=1) < 0).any())))
        return score(model, batch, *a, doc_mask=doc_mask, **k)

    monkeypatch.setattr(evaluate, "answer_hits", recorded)
    analyze.main(["retrieval", "--ckpt", str(run_dir / "teacher.pt"), masked, "--distances", "4",
                  "--n-windows", "2", "--max-doc-len", "16", "--out", str(tmp_path)])
    assert calls == [(False, False), (True, True)]  # the teacher as it trained, the masked student as it trained


def test_zero_perturbation_changes_nothing(run_dir, tmp_path):
    runs = perturb(run_dir, tmp_path, "--target", "qk", "--shift", "0", "--noise", "0")
    assert len(runs) == 2 * N_LAYER
    for run in runs:
        assert run["rel_change"] == [0.0] * (N_LAYER + 1)
        assert np.all(np.array(run["rel_change_per_position"]) == 0)
        assert run["kl_mean"] == 0 and not any(run["kl_per_position"]) and not run["reaches_logits"]


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_perturbation_at_layer_l_leaves_residuals_up_to_l_alone(run_dir, tmp_path, layer):
    (run,) = perturb(run_dir, tmp_path, "--target", "q", "--layers", str(layer), "--shift", "4")
    change = np.array(run["rel_change"])
    assert np.all(change[: layer + 1] == 0)  # residuals[0..l]: embedding and blocks before l
    assert np.all(change[layer + 1:] > 1e-4)
    assert np.all(np.array(run["rel_change_per_position"])[: layer + 1] == 0)
    assert run["kl_mean"] > analyze.REACHES_LOGITS_KL and run["reaches_logits"]


def test_shifting_queries_and_keys_together_is_invisible(run_dir, tmp_path):
    """RoPE scores depend only on relative positions: the same shift on q and k is rounding only."""
    (qk,) = perturb(run_dir, tmp_path, "--target", "qk", "--layers", "0", "--shift", "16")
    (q,) = perturb(run_dir, tmp_path, "--target", "q", "--layers", "0", "--shift", "16")
    assert qk["rel_change"][-1] < 1e-4 < q["rel_change"][-1]


def test_on_the_students_packed_windows_too_only_relative_positions_count(run_dir, tmp_path):
    """--inputs packed (the training data, not a repeated random sequence): a q shift reaches the logits, the
    same shift of q and k does not."""
    (qk,) = perturb(run_dir, tmp_path, "--target", "qk", "--layers", "0", "--shift", "16", "--inputs", "packed",
                    "--max-doc-len", "16")
    (q,) = perturb(run_dir, tmp_path, "--target", "q", "--layers", "0", "--shift", "16", "--inputs", "packed",
                   "--max-doc-len", "16")
    assert qk["kl_mean"] < 1e-6 < q["kl_mean"] and outputs(tmp_path, "perturb")["inputs"] == "packed"


def test_qupdate_of_a_checkpoint_against_itself_is_zero(run_dir, tmp_path):
    p1 = str(run_dir / "phase1-b10000.pt")
    interp.analyses.main(["qupdate", "--before", p1, "--after", p1, "--n-windows", "1", "--out", str(tmp_path)])
    res = outputs(tmp_path, "qupdate")
    for key in ("wq", "wk", "q_norm_change"):
        assert np.all(np.array(res[key]) == 0), key
        assert all(spans == [] for spans in res["spans_above_p75"][key].values())


def test_qupdate_finds_the_one_edited_pair(run_dir, tmp_path):
    layer, head, pair = 1, 1, 3
    rows = [head * HEAD_DIM + pair, head * HEAD_DIM + pair + HEAD_DIM // 2]  # pair i = rows i, i + d/2

    def edit(model):
        model.blocks[layer].attn.wq.weight[rows] += 0.5

    before = str(run_dir / "phase1-b10000.pt")
    after = write_ckpt(tmp_path / "edited.pt", max_seq_len=32, seed=1, edit=edit)
    interp.analyses.main(["qupdate", "--before", before, "--after", after, "--n-windows", "1", "--out", str(tmp_path)])
    res = outputs(tmp_path, "qupdate")
    assert {k: res["wq_max"][k] for k in ("layer", "head", "pair")} == {"layer": layer, "head": head, "pair": pair}
    wq = np.array(res["wq"])
    assert (wq > 0).sum() == 1 and np.all(np.array(res["wk"]) == 0)
    assert res["spans_above_p75"]["wq"][str(layer)][0]["pairs"] == [pair, pair]
    assert_committed_schema("interp qupdate", tmp_path / "qupdate.json")


@pytest.mark.parametrize("case", ["missing", "garbage", "architecture", "pair", "same-name"])
def test_bad_input_is_one_error_line_and_exit_2(run_dir, tmp_path, capsys, case):
    good = str(run_dir / "teacher.pt")
    if case == "missing":
        argv = ["perturb", "--ckpt", str(tmp_path / "nope.pt")]
    elif case == "garbage":
        (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
        argv = ["retrieval", "--ckpt", good, str(tmp_path / "bad.pt")]
    elif case == "pair":
        argv = ["alias", "--ckpt", good, "--pair", "8", "--distances", "16"]  # head_dim 16: pairs 0-7
    elif case == "same-name":  # teacher.pt from two folders: without --labels one would replace the other
        (tmp_path / "b").mkdir()
        shutil.copy(good, tmp_path / "b" / "teacher.pt")
        argv = ["match", "--ckpt", good, str(tmp_path / "b" / "teacher.pt")]
    else:
        other = write_ckpt(tmp_path / "wide.pt", n_kv_head=1)
        argv = ["qupdate", "--before", good, "--after", other]
    entry = analyze.main if argv[0] in analyze.COMMANDS else interp.analyses.main  # retrieval, perturb: analyze.py
    with pytest.raises(SystemExit) as e:
        entry(argv + ["--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error:") and len(err.splitlines()) == 1
    if case == "architecture":
        assert "architectures differ" in err
    if case == "same-name":
        assert "give --labels" in err
    if case == "pair":
        assert "--pair must lie in [0, 7]" in err and not os.path.exists(tmp_path / "alias.json")


def test_all_renders_every_figure_the_folder_allows(run_dir, tmp_path):
    interp.analyses.main(["all", "--dir", str(run_dir), "--n-windows", "1", "--out", str(tmp_path)])
    spectrum = outputs(tmp_path, "spectrum")
    assert {s["base"] for s in spectrum["settings"]} == {10000.0, 500000.0}
    assert {s["window"] for s in spectrum["settings"]} == {32, 64}
    assert set(outputs(tmp_path, "retrieval")["models"]) == {
        "teacher", "phase1-b10000", "phase2-kd-b10000-b500000", "phase2-ce-b10000-b500000"}
    assert set(outputs(tmp_path, "perturb")["models"]) == {
        "teacher", "phase2-kd-b10000-b500000", "phase2-ce-b10000-b500000"}
    for student in ("kd", "ce"):
        res = outputs(tmp_path, f"qupdate-phase2-{student}-b10000-b500000")
        assert res["before"].endswith("phase1-b10000.pt")
        assert_committed_schema("interp qupdate", tmp_path / f"qupdate-phase2-{student}-b10000-b500000.json")
    assert_committed_schema("interp spectrum", tmp_path / "spectrum.json")


@pytest.fixture(scope="module")
def hf_retrieval(run_dir, tmp_path_factory):
    """`python -m interp retrieval` on the teacher and its Hugging Face export: the folder it wrote into."""
    from formats import hf
    out = tmp_path_factory.mktemp("hf-retrieval")
    folder = str(out / "teacher-hf")
    hf.main(["export", str(run_dir / "teacher.pt"), folder])
    interp.analyses.main(["retrieval", "--ckpt", str(run_dir / "teacher.pt"), folder, "--distances", "4", "40",
                          "--n-windows", "2", "--max-doc-len", "16", "--out", str(out)])
    return out


def test_an_hf_folder_is_analyzed_like_the_checkpoint_it_was_exported_from(hf_retrieval):
    res = outputs(hf_retrieval, "retrieval")["models"]
    assert list(res) == ["teacher", "teacher-hf"] and res["teacher"]["kv"] == res["teacher-hf"]["kv"]
    assert res["teacher"]["in_doc"] == res["teacher-hf"]["in_doc"]


@pytest.mark.parametrize("committed", committed_params("interp retrieval"))
def test_retrieval_json_has_the_schema_of_its_committed_copies(hf_retrieval, committed):
    assert_same_schema(hf_retrieval / "retrieval.json", committed)


class CudaLike(torch.Tensor):
    """A CPU tensor that refuses .numpy() as a CUDA tensor does, until .cpu() brings it to the host."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")
        out = super().__torch_function__(func, types, args, kwargs or {})
        return out.as_subclass(torch.Tensor) if func is torch.Tensor.cpu else out


def test_qupdate_numbers_leave_the_device_before_numpy(run_dir, monkeypatch):
    """--device cuda: the updates and query norms live on the GPU; every numpy conversion must go through .cpu()."""
    norms, update = interp_qupdate.query_pair_norms, interp_qupdate.pair_update
    monkeypatch.setattr(interp_qupdate, "query_pair_norms", lambda *a: norms(*a).as_subclass(CudaLike))
    monkeypatch.setattr(interp_qupdate, "pair_update", lambda *a: update(*a).as_subclass(CudaLike))
    with pytest.raises(TypeError, match="cuda"):
        interp_qupdate.pair_update(torch.ones(4, 2), torch.ones(4, 2), 1).numpy()  # the stand-in does refuse
    before, _ = analyze.load(str(run_dir / "phase1-b10000.pt"), "cpu")
    after, _ = analyze.load(str(run_dir / "phase2-kd-b10000-b500000.pt"), "cpu")
    res = interp_qupdate.qupdate_results(before, after, kv_probe(TaskSpec(), 32, 16, n_windows=1), "cpu")
    assert len(res["wq"]) == N_LAYER and set(res["spans_above_p75"]["wq"]) == {"0", "1", "2"}
    json.dumps(res)


def test_all_passes_the_device_to_every_analysis(run_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(interp.analyses, "main", lambda argv: calls.append(argv) or [])
    interp.analyses.run_all(argparse.Namespace(dir=str(run_dir), out=str(tmp_path), device=torch.device("cuda"),
                                               seed=0, n_windows=1, reader=interp.analyses.load_pretrained))
    assert [argv[0] for argv in calls] == ["spectrum", "retrieval", "perturb", "qupdate", "qupdate"]
    assert all(argv[argv.index("--device") + 1] == "cuda" for argv in calls)


def test_turn_distances_are_whole_turns_of_the_pair():
    assert turn_distances(16, 1e4, 0, 20) == pytest.approx([2 * np.pi, 4 * np.pi, 6 * np.pi])
    two_turns = turn_distances(32, 5e5, 5, 1024)[1]  # the CE students' bump near D = 768 (research/notes/causal.md)
    assert two_turns == pytest.approx(4 * np.pi * 5e5 ** (10 / 32), rel=1e-6) and 740 < two_turns < 780


def test_alias_probes_one_checkpoint_under_each_base(run_dir, tmp_path):
    path = write_ckpt(tmp_path / "long.pt", base=5e5, max_seq_len=256, phase="2", seed=4)
    interp.analyses.main(["alias", "--ckpt", path, "--bases", "500000", "1000000", "--distances", "32", "96",
                          "160", "--max-doc-len", "16", "--peak-from", "90", "--n-windows", "1", "--pair", "1",
                          "--out", str(tmp_path)])
    res = outputs(tmp_path, "alias")
    assert list(res["bases"]) == ["500000", "1e+06"] and res["distances"] == [32, 96, 160]
    for base, b in res["bases"].items():
        assert len(b["acc"]) == 3 and all(0 <= a <= 1 for a in b["acc"]) and b["peak"] in (96, 160)
        assert b["turns"] and b["turns"] == pytest.approx(turn_distances(16, float(base), 1, 256))
    # the same weights under the base they were saved with score what the checkpoint itself scores there
    cpu = torch.device("cpu")
    direct = position_sweep(analyze.load(path, cpu)[0], TaskSpec(), 256, [96], [0], cpu,
                            __import__("contextlib").nullcontext(), 1, evaluate.HELDOUT_SEEDS)[0][96]
    assert res["bases"]["500000"]["acc"][1] == pytest.approx(direct)
    assert_committed_schema("interp alias", tmp_path / "alias.json")
