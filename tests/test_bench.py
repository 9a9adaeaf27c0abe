"""scale/bench.py: the chunked KD loss really holds less memory than the unchunked one; a failed measurement is null;
bf16-vs-float32 steps are timed side by side and their MFU taken against each dtype's peak; a quick run and the
targets write JSON with the schema of the committed docs/bench/*.json."""
import json
from types import SimpleNamespace

import pytest
import torch

from scale import bench, loss_memory
from schema import assert_committed_schema, assert_same_schema, committed_params


def test_chunked_kd_loss_peak_memory_is_lower():
    cpu = torch.device("cpu")
    chunked = bench.kd_peak_bytes(vocab=4000, tokens=2048, chunk=256, device=cpu)
    whole = bench.kd_peak_bytes(vocab=4000, tokens=2048, chunk=0, device=cpu)
    grad_bytes = 2048 * 4000 * 4  # the (N, V) float32 gradient both must hold
    assert chunked < whole
    assert whole > 3 * grad_bytes and chunked < 2 * grad_bytes


def test_a_zero_memory_measurement_is_flagged_and_stored_as_null(monkeypatch, capsys):
    """A peak of 0.0 MB (peak RSS not reset) once went into a JSON as 0.0 with a NaN ratio, without a word."""
    from scale import loss_memory
    monkeypatch.setattr(loss_memory, "kd_peak_bytes", lambda vocab, tokens, chunk, device: 0 if chunk else 2**30)
    cli = SimpleNamespace(kd_vocab=1000, kd_tokens=64, kd_chunk=16, dev=torch.device("cpu"))
    memory = bench.kd_memory(cli)
    assert memory["chunked_peak_mb"] is None and memory["unchunked_over_chunked"] is None
    assert memory["unchunked_peak_mb"] == 1024
    assert capsys.readouterr().err.startswith("warning: kd_loss chunked peak memory measured 0.0 MB")
    json.dumps(memory, allow_nan=False)


def test_interleaved_timing_alternates_the_calls_and_keeps_each_ones_best(monkeypatch):
    """Side by side: a burst of load hits every variant alike, so the ratio of the bests is fair."""
    order = []
    seconds = iter([0.5, 0.9, 0.2, 0.8, 0.4, 0.3])  # a, b, a, b, a, b
    monkeypatch.setattr(bench, "time_step", lambda fn, device, warmup, iters: (fn(), next(seconds))[1])
    best = bench.interleaved_seconds({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                     torch.device("cpu"), warmup=1, rounds=3)
    assert order == ["a", "b"] * 4 and best == {"a": 0.2, "b": 0.3}


def test_targets_measure_mfu_against_the_peak_of_each_dtype(monkeypatch, tmp_path):
    tiny = dict(d_model=32, n_layer=1, n_head=2, n_kv_head=2, d_ff=0, window=64, batch=1)
    monkeypatch.setattr(bench, "TARGET_MODELS", dict.fromkeys(("default", "d256", "d512", "short"), tiny))
    res = bench.main(["--targets", "--quick", "--iters", "1", "--json", str(tmp_path / "t.json")])
    peaks = res["peak_flops_per_s"]
    assert peaks["bfloat16"] != peaks["float32"]
    for m in res["models"].values():
        flops = bench.flops_per_token(bench.GPT(bench.GPTConfig(**m["config"])), m["window"])  # the causal count
        for mode, tok_s in m["tokens_per_s"].items():
            assert m["mfu"][mode] * peaks[mode.split()[0]] == pytest.approx(flops * tok_s)
        assert m["bf16_speedup"] == pytest.approx(m["tokens_per_s"]["bfloat16"] / m["tokens_per_s"]["float32"])
    for t in res["targets"]:
        op, threshold = t["threshold"].split()
        assert t["pass"] == (t["value"] >= float(threshold) if op == ">=" else t["value"] <= float(threshold))
    assert json.load(open(tmp_path / "t.json"))["targets"] == res["targets"]
    assert_committed_schema("scale.bench --targets", tmp_path / "t.json")


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    """`python -m scale.bench --quick` at the smallest sizes without the data-parallel figure: (its results, its
    JSON). The KD loss's memory comes from a stand-in: it is measured for real above, in processes of its own."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loss_memory, "kd_peak_bytes", lambda vocab, tokens, chunk, device: 2**20 * (1 + (chunk == 0)))
        res = bench.main(["--quick", "--device", "cpu", "--d-model", "32", "--n-layer", "1", "--window", "64",
                          "--sweep", "32", "64", "--iters", "1", "--warmup", "0", "--cpu-ranks", "--json", str(path)])
    return res, path


def test_a_quick_run_writes_the_figures_it_measured(quick_bench):
    res, path = quick_bench
    assert json.load(open(path)) == json.loads(json.dumps(res))
    assert set(res["window_sweep"]) == {32, 64} and res["kd_memory"]["unchunked_over_chunked"] == 2
    assert res["ce_step_tokens_per_s"] > 0 and res["cpu_ranks_tokens_per_s"] == {}


@pytest.mark.parametrize("committed", committed_params("scale.bench"))
def test_a_quick_run_has_the_schema_of_the_committed_ones(quick_bench, committed):
    assert_same_schema(quick_bench[1], committed)


def test_the_loss_memory_command_prints_one_row_per_loss_in_chunks_and_at_once(monkeypatch, capsys):
    """python -m scale.loss_memory: each loss measured in chunks and all at once (the measurement itself, a fresh
    process per figure, is test_chunked_kd_loss_peak_memory_is_lower's); its flags checked."""
    asked = []

    def measured(loss, vocab, tokens, chunk, device, k):
        asked.append((loss, chunk))
        return 2**20 * (1 if chunk else 4)  # 1 MB in chunks, 4 MB at once
    monkeypatch.setattr(loss_memory, "peak_bytes", measured)
    table = loss_memory.main(["--vocab", "64", "--tokens", "32", "--chunk", "8", "--topk", "4"])
    assert asked == [(loss, c) for loss in loss_memory.LOSSES for c in (8, 0)]
    assert table.count("| 1.0 MB | 4.0 MB |") == len(loss_memory.LOSSES) and table in capsys.readouterr().out
    with pytest.raises(SystemExit):
        loss_memory.main(["--vocab", "8", "--topk", "9"])
