"""Evaluation: accuracy counts exactly what the model predicts, the heuristic floors, unmeasurable probes."""
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from data import SEP, TaskSpec, kv_probe
from evaluate import evaluate, floor_accuracies, format_table, heuristic_floors, probe_accuracy
from scale import device as device_module
from scale.device import matmul_peak_flops

SPEC = TaskSpec()
CPU = torch.device("cpu")


class Rule(torch.nn.Module):
    """A 'model' whose argmax at position t is rule(x[b, :t + 1]): a heuristic in model form."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def forward(self, x, position_ids=None, doc_ids=None):
        logits = torch.zeros(*x.shape, SPEC.vocab_size)  # (B, T, V)
        for b in range(x.shape[0]):
            for t in range(x.shape[1]):
                logits[b, t, self.rule(x[b, : t + 1].numpy())] = 1.0
        return logits


def last_value(prefix):
    seen = prefix[np.isin(prefix, SPEC.values())]
    return int(seen[-1]) if len(seen) else SEP


def test_probe_accuracy_scores_what_the_model_predicts():
    batch = kv_probe(SPEC, 64, 4, n_windows=2)
    copier = probe_accuracy(Rule(last_value), batch, CPU, nullcontext())
    assert copier == pytest.approx(floor_accuracies(SPEC, batch)[0])  # two independent counts of one heuristic
    assert 0 < copier < 1
    assert probe_accuracy(Rule(lambda prefix: SEP), batch, CPU, nullcontext()) == 0.0


def test_floors_on_a_hand_made_window():
    k1, k2, v1, v2, f = 1, 2, *SPEC.values()[:2], SPEC.filler_ids()[0]
    tokens = np.array([[SEP, k1, v1, k2, v2, f, k1, v1, k2, v2]])
    answers = np.zeros_like(tokens, dtype=bool)
    answers[0, [7, 9]] = True
    # answer v1 at 7: last value seen is v2 (miss), 1 of 2 distinct values; v2 at 9: last is v1, 1 of 2
    assert floor_accuracies(SPEC, {"tokens": tokens, "answers": answers}) == (0.0, 0.5)
    assert floor_accuracies(SPEC, {"tokens": tokens, "answers": np.zeros_like(answers)}) is None


def test_floors_of_the_cpu_preset_probes():
    """Reference values of the cpu preset's probes (1024-token windows, 16 of them): chance (1/64) is not the floor."""
    floors = heuristic_floors(SPEC, 1024, [16, 900], n_windows=16)
    assert floors["last_value"][16] == pytest.approx(0.668, abs=0.005)
    assert floors["uniform_seen"][900] == pytest.approx(0.070, abs=0.005)
    assert floors["best"] == {16: floors["last_value"][16], 900: floors["uniform_seen"][900]}


def test_a_distance_that_does_not_fit_is_not_measurable():
    model = Rule(last_value)
    res = evaluate(model, SPEC, 41, [39, 40], 16, CPU, nullcontext(), n_windows=1)  # D=40 needs a 42-token window
    assert res["kv"][40] is None and res["kv"][39] is not None
    floors = heuristic_floors(SPEC, 41, [39, 40], n_windows=1)
    assert floors["best"][40] is None and floors["last_value"][40] is None and floors["best"][39] is not None
    table = format_table({"m": res}, 16, floors["best"])
    assert "| m | " + f"{res['kv'][39]:.2f} | - |" in table
    assert "| floor | " + f"{floors['best'][39]:.2f} | - | - |" in table


class Spy(torch.nn.Module):
    """Records the positions and document ids each forward call receives; predicts SEP everywhere."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, position_ids=None, doc_ids=None):
        self.calls.append((position_ids, doc_ids))
        return torch.zeros(*x.shape, SPEC.vocab_size)


@pytest.mark.parametrize("doc_mask,reset", [(False, False), (True, False), (True, True)])
def test_in_document_probe_runs_under_the_runs_mask_and_positions(doc_mask, reset):
    spy = Spy()
    evaluate(spy, SPEC, 64, [8], 16, CPU, nullcontext(), n_windows=2, doc_mask=doc_mask, reset_positions=reset)
    (kv_pos, kv_doc), (doc_pos, doc_ids) = spy.calls[0], spy.calls[-1]  # one chunk each: kv probe, in-doc probe
    assert (kv_doc is not None) == doc_mask and (doc_ids is not None) == doc_mask
    assert torch.equal(kv_pos, torch.arange(64).expand(2, 64))  # one document per kv window: positions 0..L-1
    restarts = bool((doc_pos[:, 1:] < doc_pos[:, :-1]).any())
    assert restarts == reset  # the packed windows' positions restart at each document only under --reset-positions


def test_matmul_peak_is_the_best_run_over_sizes_and_is_measured_once(monkeypatch):
    """The peak is the best of several timed products over a few sizes (one slow run under load must not lower
    it), per dtype, and a second call in the same process measures nothing."""
    monkeypatch.setattr(device_module, "_PEAKS", {})
    times = iter([4.0, 1.0, 3.0, 2.0, 9.0, 9.0, 8.0, 8.0])  # seconds, in call order
    calls = []

    def fake_seconds(a, b):
        calls.append(a.shape[0])
        return next(times)

    monkeypatch.setattr(device_module, "matmul_seconds", fake_seconds)
    peak = matmul_peak_flops(CPU, torch.float32, sizes=(8, 16), repeats=2)
    assert calls == [8, 8, 16, 16] and peak == max(2 * 8**3 / 1.0, 2 * 16**3 / 2.0)
    assert matmul_peak_flops(CPU, torch.float32, sizes=(8, 16), repeats=2) == peak and len(calls) == 4  # cached
    other = matmul_peak_flops(CPU, torch.bfloat16, sizes=(8, 16), repeats=2)  # another dtype: its own peak
    assert len(calls) == 8 and other == 2 * 16**3 / 8.0


def test_held_out_probe_windows_are_other_draws_than_the_selection_ones():
    from evaluate import HELDOUT_SEEDS, SELECTION_SEED
    assert SELECTION_SEED not in HELDOUT_SEEDS and len(HELDOUT_SEEDS) >= 3
    for d in (256, 900):
        sel = kv_probe(SPEC, 1024, d, 16, seed=SELECTION_SEED)["tokens"]
        for s in HELDOUT_SEEDS:
            held = kv_probe(SPEC, 1024, d, 16, seed=s)["tokens"]
            assert not any(np.array_equal(a, b) for a in sel for b in held)  # no selection window is reported


def test_evaluate_heldout_is_the_mean_over_the_held_out_seeds():
    from evaluate import evaluate_heldout
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(d_model=32, n_head=2, n_kv_head=2, max_seq_len=64))
    per_seed = [evaluate(model, SPEC, 64, [4, 40], 16, CPU, nullcontext(), n_windows=2, seed=s) for s in (1, 2, 3)]
    mean = evaluate_heldout(model, SPEC, 64, [4, 40], 16, CPU, nullcontext(), n_windows=2)
    for d in (4, 40):
        assert mean["kv"][d] == pytest.approx(np.mean([r["kv"][d] for r in per_seed]))
    assert mean["in_doc"] == pytest.approx(np.mean([r["in_doc"] for r in per_seed]))
    r = per_seed[0]  # the in-document score splits into fresh and recurring keys
    assert min(r["in_doc_fresh"], r["in_doc_recurring"]) <= r["in_doc"] <= max(r["in_doc_fresh"], r["in_doc_recurring"])


def test_earlier_values_is_the_keys_value_in_its_last_earlier_document():
    from data import far_back_targets, pack_documents
    from interp.probes import earlier_values
    k, f = 1, 150
    docs = [np.array([k, 70, f, k, 70]), np.array([k, 71, f, k, 71]), np.array([k, 72, f, k, 72])]
    b = pack_documents(docs, 18, answers=[np.array([0, 0, 0, 0, 1], bool)] * 3)
    b["far_back"] = far_back_targets(SPEC, b["tokens"], b["doc_ids"])
    far = earlier_values(b)[0]
    assert far[11] == 70 and far[17] == 71 and far[5] == -1  # the last earlier document's value, at the answers
    assert far[8] == 70 and far[14] == 71 and far[2] == -1  # and at the records
