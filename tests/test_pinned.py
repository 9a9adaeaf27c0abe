"""Values pinned by an independent reference or a hand-made case with a known answer, where a one-line change to
the arithmetic used to leave the suite green: the learning rate of each stage after a curriculum, the recurring-key
probes' scores (local vs far-back answers), the running answer accuracy that ends a curriculum stage, the initial
weights' scales."""
import json
import math
import os

import numpy as np
import pytest

import config
import evaluate
import train
from data import TaskSpec
from evaluate import packed_probe
from interp import probes

TINY = ["--preset", "tiny", "--threads", "1", "--device", "cpu"]


class Cosine(train.Lab):
    def configure(self, args):
        args.schedule = "cosine"


def test_every_stage_after_a_curriculum_restarts_the_warmup_and_the_cosine(tmp_path):
    """Teacher, tiny preset (lr 2e-3, warmup 2): curriculum stages of 3 and 1 steps, then 6 main steps on a
    cosine to 10%. Each stage's schedule runs on its own step count from its own first step."""
    train.main(["--phase", "teacher", "--out-dir", str(tmp_path), "--curriculum-steps", "3", "--steps", "6",
                "--eval-interval", "0"] + TINY, Cosine())
    recs = [r for r in map(json.loads, open(tmp_path / "teacher.jsonl")) if "loss" in r]
    lr = 2e-3

    def schedule(i, steps, warmup=2):  # written out: linear warmup, then 0.1 + 0.9 of a half cosine
        if i < warmup:
            return lr * (i + 1) / warmup
        return lr * (0.1 + 0.9 * (1 + math.cos(math.pi * (i - warmup) / max(1, steps - warmup))) / 2)
    expect = ([("curriculum-8", schedule(i, 3)) for i in range(3)] + [("curriculum-16", schedule(0, 1))]
              + [("main", schedule(i, 6)) for i in range(6)])
    assert [r["stage"] for r in recs] == [s for s, _ in expect]
    assert [r["lr"] for r in recs] == pytest.approx([v for _, v in expect], rel=1e-12)
    assert [round(r["lr"] / lr, 6) for r in recs[4:]] == [0.5, 1.0, 1.0, 0.868198, 0.55, 0.231802]  # main: cos 0, pi/4, pi/2, 3pi/4


# ----------------------------------------------------------------------------- recurring-key probes


def far_back_by_hand(batch):
    """(N, L + 1): at each recurring answer, the value its key had in the nearest earlier document; -1 elsewhere.
    Written per document, apart from interp.probes.earlier_values."""
    tok, doc, rec = batch["tokens"], batch["doc_ids"], batch["far_back"] & batch["answers"]
    out = np.full(tok.shape, -1)
    for r in range(len(tok)):
        last = {}  # key -> (document, value) of its last occurrence so far
        for a in range(1, tok.shape[1]):
            key = tok[r, a - 1]
            if rec[r, a]:
                earlier = [v for d, v in last.get(key, []) if d < doc[r, a - 1]]
                out[r, a] = earlier[-1]
            last.setdefault(key, []).append((doc[r, a - 1], tok[r, a]))
    return out


@pytest.mark.parametrize("oracle, local, far_back, fresh", [("local", 1.0, 0.0, 1.0), ("far", 0.0, 1.0, 1.0),
                                                            ("wrong", 0.0, 0.0, 0.0)])
def test_recurring_signal_scores_a_model_that_answers_as_told(monkeypatch, oracle, local, far_back, fresh):
    """A model that answers every label (local), or the far-back value at recurring answers and the label
    elsewhere (far), or nothing right (wrong): its scores are known in advance."""
    spec = TaskSpec()

    def predictions(model, batch, *a, **k):  # (N, L) aligned with tokens[:, 1:]
        y = batch["tokens"][:, 1:]
        if oracle == "wrong":
            return np.full(y.shape, -7)
        far = far_back_by_hand(batch)[:, 1:]
        return np.where((batch["far_back"] & batch["answers"])[:, 1:], far, y) if oracle == "far" else y
    monkeypatch.setattr(probes, "predictions", predictions)
    got = probes.recurring_signal(None, spec, 512, 64, None, None, n_windows=4, seeds=(1, 2))
    batch = packed_probe(spec, 512, 64, n_windows=4, seed=1)
    rec = (batch["far_back"] & batch["answers"])[:, 1:]  # the recurring answers
    assert rec.sum() > 10  # the probe has recurring answers to score
    same = (far_back_by_hand(batch)[:, 1:] == batch["tokens"][:, 1:])[rec]  # an earlier value equal to this one
    assert not same.any()  # (the nearest earlier value differs here, so local and far-back exclude each other)
    assert got == pytest.approx({"local": local, "far_back": far_back, "fresh": fresh})


# ----------------------------------------------------------------------------- the running accuracy


class Bar:
    def set_postfix(self, **k):
        pass

    def update(self, n):
        pass


def test_the_running_answer_accuracy_is_a_0_9_moving_average_and_counts_each_step():
    """config.record_step: acc_ema = 0.9 acc_ema + 0.1 acc (a NaN accuracy, no answer in the batch, leaves it), the
    tokens and seconds summed; a curriculum stage ends when acc_ema passes the curriculum target."""
    state = {"step": 0, "acc_ema": 0.0}
    clock = {"tokens": 0, "seconds": 0.0}
    log = open(os.devnull, "w")
    for acc in (1.0, 1.0, float("nan"), 0.0, 1.0):
        config.record_step(state, clock, (2.0, 1.5, 0.5, acc), "main", 64, 0.5, 1e-3, Bar(), log)
    assert state["step"] == 5 and clock == {"tokens": 320, "seconds": 2.5}
    assert state["acc_ema"] == pytest.approx(((0.1 * 0.9 + 0.1) * 0.9) * 0.9 + 0.1)  # 0.1, 0.19, 0.19, 0.171, 0.2539


# ----------------------------------------------------------------------------- the model's initial weights


def test_initial_weights_have_gpt2_scales_and_the_residual_projections_are_scaled_by_depth():
    """N(0, 0.02) everywhere, the projections into the residual stream (W_o, W_down) N(0, 0.02 / sqrt(2 L))
    (GPT-2); 65,536 draws per matrix put the sample std within 2% of its value."""
    import torch
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=256, n_layer=4, n_head=4, n_kv_head=4, d_model=256, d_ff=256))
    stds = {name: p.std().item() for name, p in m.named_parameters() if p.dim() == 2}
    for name, std in stds.items():
        want = 0.02 / math.sqrt(2 * 4) if name.endswith(("wo.weight", "w_down.weight")) else 0.02
        assert std == pytest.approx(want, rel=0.02), name
