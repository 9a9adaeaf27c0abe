"""Tiny runs that the tests of the core (train.py) and of the lab (python -m variants) share: a teacher of 3 steps,
and a phase-1 run of a few steps whose step log is read back. `run(argv)` trains, `parse(argv)` resolves the
settings (each test module passes its own entry point's)."""
import json
import math
import os

import pytest


def teacher(run, out):
    """A 3-step teacher in folder `out` (a pathlib.Path); returns its checkpoint's path."""
    run(["--phase", "teacher", "--out-dir", str(out), "--curriculum-steps", "0", "--steps", "3", "--eval-interval",
         "0"])
    return str(out / "teacher.pt")


def phase1(run, parse, out, teacher_path, *flags, steps=4):
    """A tiny phase-1 run (KD 0.5 from the shared teacher) with extra flags; returns (log records, out folder)."""
    argv = ["--phase", "1", "--out-dir", str(out), "--teacher", teacher_path, "--curriculum-steps", "0", "--steps",
            str(steps), "--eval-interval", "0", *flags]
    run(argv)
    name = parse(argv).run_name  # flags like --doc-mask or --kd-loss name it
    recs = [r for r in map(json.loads, open(os.path.join(out, name + ".jsonl"))) if "loss" in r]
    assert len(recs) == steps and all(math.isfinite(r["loss"]) for r in recs)
    return recs, out


def fixtures(run, parse):
    """(tiny_teacher fixture, phase1(out, teacher, *flags, steps=4), reference fixture: a plain phase-1 run's
    records) for a test module whose entry point is `run` / `parse`: assign them to those three names."""
    @pytest.fixture(scope="module")
    def tiny_teacher(tmp_path_factory):
        return teacher(run, tmp_path_factory.mktemp("teacher"))

    def run_phase1(out, teacher_path, *flags, steps=4):
        return phase1(run, parse, out, teacher_path, *flags, steps=steps)

    @pytest.fixture(scope="module")
    def reference(tiny_teacher, tmp_path_factory):
        return run_phase1(tmp_path_factory.mktemp("ref"), tiny_teacher)[0]

    return tiny_teacher, run_phase1, reference


def nan_loss_at_step(monkeypatch, train_module, step):
    """Make train.train_step report a NaN loss at its `step`-th call (1-based): a run stopped by a non-finite loss."""
    real = train_module.train_step
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        loss, ce, kl, acc = real(*a, **k)
        return (float("nan") if len(calls) == step else loss), ce, kl, acc

    monkeypatch.setattr(train_module, "train_step", flaky)
