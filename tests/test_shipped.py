"""The shipped checkpoints load safely and still retrieve as recorded (so code changes cannot break them)."""
import json
import os
from contextlib import nullcontext

import pytest
import torch

from data import TaskSpec, kv_probe, packed_probe
from evaluate import probe_accuracy
from model import load_model

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")
CPU = torch.device("cpu")


def recorded(name):
    with open(os.path.join(SHIPPED, name + ".json")) as f:
        return json.load(f)["results"][name]


@pytest.mark.parametrize("name, distances", [("teacher", [32, 512, 900]), ("phase1-b10000", [16, 64])])
def test_shipped_checkpoint_reproduces_its_recorded_accuracy(name, distances):
    model, ckpt = load_model(os.path.join(SHIPPED, name + ".pt"))
    assert ckpt["done"] and model.config.vocab_size == TaskSpec().vocab_size
    rec = recorded(name)
    window = ckpt["args"]["window"]
    for d in distances:  # the first 4 of the 16 probe windows the recorded figure used
        acc = probe_accuracy(model, kv_probe(TaskSpec(), window, d, n_windows=4), CPU, nullcontext())
        assert acc == pytest.approx(rec["kv"][str(d)], abs=0.15), (name, d)
    if name == "teacher":
        assert min(rec["kv"][str(d)] for d in distances) >= 0.95
    else:
        in_doc = probe_accuracy(model, packed_probe(TaskSpec(), window, 128, n_windows=4), CPU, nullcontext())
        assert in_doc >= 0.9
