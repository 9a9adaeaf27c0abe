"""Evaluation: unmeasurable probes."""
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from data import SEP, TaskSpec, kv_probe
from evaluate import evaluate, format_table, probe_accuracy

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


def test_a_distance_that_does_not_fit_is_not_measurable():
    model = Rule(last_value)
    res = evaluate(model, SPEC, 41, [39, 40], 16, CPU, nullcontext(), n_windows=1)  # D=40 needs a 42-token window
    assert res["kv"][40] is None and res["kv"][39] is not None
    table = format_table({"m": res}, 16)
    assert "| m | " + f"{res['kv'][39]:.2f} | - |" in table
