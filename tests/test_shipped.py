"""The shipped checkpoints load safely and still retrieve as recorded (so code changes cannot break them).

They are the main command's prerequisites: the teacher, the default phase-1 student (window 32, base 1e4) whose
retrieval with the phase-2 base fails beyond its window (the starting point that phase 2 must *acquire* from), the
walkthrough's phase-1 student (the earlier recipe's seed 0), and the window-256 phase-1 student whose retrieval the
base switch alone extends (the "keep" finding).
"""
import json
import os
from contextlib import nullcontext

import pytest
import torch

from data import TaskSpec, kv_probe
from evaluate import packed_probe
from evaluate import probe_accuracy
from model import load_model, switch_rope

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")
CPU = torch.device("cpu")


def recorded(name):
    with open(os.path.join(SHIPPED, name + ".json")) as f:
        res = json.load(f)
    return res["results"][res["run"]]


def kv(model, window, d, n=4):  # the first n of the probe windows the recorded figures used
    return probe_accuracy(model, kv_probe(TaskSpec(), window, d, n_windows=n), CPU, nullcontext())


def with_base(model, base, window=1024):
    """The same weights with another RoPE base (phase 2's starting point)."""
    return switch_rope(model, base, max_seq_len=window).eval()


@pytest.mark.parametrize("name, distances", [("teacher", [32, 512, 900]), ("phase1-b10000-w256", [16, 64]),
                                             ("phase1-b10000", [16]), ("phase1-b10000-kd0.5", [16])])
def test_shipped_checkpoint_reproduces_its_recorded_accuracy(name, distances):
    model, ckpt = load_model(os.path.join(SHIPPED, name + ".pt"))
    assert ckpt["done"] and model.config.vocab_size == TaskSpec().vocab_size
    rec = recorded(name)
    window = ckpt["args"]["window"]
    for d in distances:
        assert kv(model, window, d) == pytest.approx(rec["kv"][str(d)], abs=0.15), (name, d)
    if name == "teacher":
        assert min(rec["kv"][str(d)] for d in distances) >= 0.95
    else:
        in_doc = probe_accuracy(model, packed_probe(TaskSpec(), window, ckpt["args"]["max_doc_len"], n_windows=4),
                                CPU, nullcontext())
        assert in_doc >= 0.9 and in_doc == pytest.approx(rec["in_doc"], abs=0.1)


def test_phase2_starting_points_fail_or_extrapolate_as_the_readme_says():
    """With base 5e5 in a 1024 window: the window-32 student cannot retrieve at D >= 512 (<= 0.3), the window-256
    student already can (>= 0.9)."""
    long_ = with_base(load_model(os.path.join(SHIPPED, "phase1-b10000-w256.pt"))[0], 5e5)
    for name in ("phase1-b10000", "phase1-b10000-kd0.5"):
        short = with_base(load_model(os.path.join(SHIPPED, name + ".pt"))[0], 5e5)
        for d in (512, 900):
            assert kv(short, 1024, d) <= 0.3 and kv(long_, 1024, d) >= 0.9, (name, d)
