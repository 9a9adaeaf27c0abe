"""What a run promises when it is interrupted or fails: Ctrl-C at a stage's early stop resumes exactly, the run
lock comes before anything is read or trained, and results files are replaced whole or not at all."""
import json
import os
import signal

import pytest
import torch

import config
import train
from model import atomic_write, load_checkpoint

TINY = ["--preset", "tiny", "--threads", "1", "--device", "cpu"]


def losses(path):
    return [(r["step"], r["stage"], r["loss"]) for r in map(json.loads, open(path)) if "loss" in r]


@pytest.fixture
def terminal():
    """SIGINT handled as in a foreground process (a background job, such as a CI run, starts with it ignored)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


EARLY = 50  # the step at which the first curriculum stage reaches its accuracy target (train.py: not before 50)


def target_reached_at_once(monkeypatch, ctrl_c_at=None):
    """Every step's running accuracy set to 1.0, so the first curriculum stage stops at step EARLY; SIGINT after
    step ctrl_c_at is recorded (the step of the early stop itself)."""
    real = config.record_step

    def record(state, *a, **k):
        real(state, *a, **k)
        state["acc_ema"] = 1.0
        if state["step"] == ctrl_c_at:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(train, "record_step", record)


class SaveRarely(train.Lab):
    """No periodic checkpoint in these runs: the one Ctrl-C saves is the one tested."""

    def configure(self, args):
        args.save_interval = 1000


def test_ctrl_c_in_the_step_where_a_stage_stops_early_resumes_exactly(tmp_path, monkeypatch, terminal):
    """The checkpoint saved at Ctrl-C records the stage advanced (stage 1 starting at step 50), and --resume
    trains the same steps, stages and weights as an uninterrupted run."""
    argv = ["--phase", "teacher", "--curriculum-steps", "60", "--steps", "4", "--eval-interval", "0"] + TINY
    full = str(tmp_path / "full")
    cut = str(tmp_path / "cut")
    target_reached_at_once(monkeypatch)
    train.main(argv + ["--out-dir", full], SaveRarely())
    target_reached_at_once(monkeypatch, ctrl_c_at=EARLY)
    with pytest.raises(SystemExit) as e:
        train.main(argv + ["--out-dir", cut], SaveRarely())
    ckpt = load_checkpoint(os.path.join(cut, "teacher.pt"))
    assert e.value.code == 130 and (ckpt["step"], ckpt["stage"], ckpt["stage_start"]) == (EARLY, 1, EARLY)
    target_reached_at_once(monkeypatch)
    train.main(argv + ["--out-dir", cut, "--resume"], SaveRarely())
    a, b = losses(os.path.join(cut, "teacher.jsonl")), losses(os.path.join(full, "teacher.jsonl"))
    assert a == b and len(b) == EARLY + 10 + 4  # 50 early-stopped + 60 / 6 + the main stage's 4
    wa, wb = load_checkpoint(os.path.join(cut, "teacher.pt")), load_checkpoint(os.path.join(full, "teacher.pt"))
    assert wa["done"] and all(torch.equal(wa["model"][k], wb["model"][k]) for k in wb["model"])


def test_the_run_lock_comes_before_any_input_is_read_or_any_prerequisite_trained(tmp_path, monkeypatch, capsys, hold_run_lock):
    """A second process refuses at the lock: it reads no checkpoint and trains nothing, so a first process that
    finishes the run meanwhile is never trained over."""
    out = tmp_path / "out"
    holder = hold_run_lock(out, "teacher", 4242)  # what a running first process holds
    called = []
    monkeypatch.setattr(train, "check_inputs", lambda *a: called.append("check_inputs"))
    monkeypatch.setattr(train, "train_prerequisites", lambda *a: called.append("train_prerequisites"))
    with pytest.raises(SystemExit) as e:
        train.main(["--phase", "teacher", "--out-dir", str(out), "--steps", "4"] + TINY)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "pid 4242" in err[0] and called == []
    holder.close()



def test_a_prerequisite_another_process_finished_after_the_look_is_used_not_refused(tmp_path, capsys):
    """Phase 2 looks for its teacher, finds none, and trains it; if another process finished that teacher between
    the look and this one's lock, the finished teacher is used as it is: no error, nothing retrained."""
    out = str(tmp_path)
    argv = ["--phase", "teacher", "--out-dir", out, "--steps", "2"] + TINY
    train.main(argv)  # the other process's teacher, finished
    path = os.path.join(out, "teacher.pt")
    before = open(path, "rb").read()
    args = config.resolve(config.build_parser().parse_args(["--phase", "2", "--out-dir", out] + TINY), train.Lab())
    assert train.ensure(args, "teacher", None, "teacher.pt", argv, train.Lab()) is None  # the look found none
    assert open(path, "rb").read() == before
    assert "finished run" not in capsys.readouterr().err


def test_every_promise_in_docs_checkpoints_names_a_test_that_exists():
    """docs/checkpoints.md's table of promises (Ctrl-C, SIGKILL, disk full, a second process): each row names
    tests, and each named test is defined in its file."""
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    page = open(os.path.join(root, "docs", "checkpoints.md"), encoding="utf-8").read()
    table = page[page.index("## What a run promises when interrupted or failing"):].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "tests/" in line]
    assert len(rows) >= 8 and all(w in table for w in ("Ctrl-C", "SIGKILL", "disk full", "a second process"))
    for row in rows:
        current = None
        for m in re.finditer(r"`(tests/\w+\.py)::(\w+)`|`(test_\w+)`", row):
            current = m.group(1) or current
            name = m.group(2) or m.group(3)
            assert f"def {name}(" in open(os.path.join(root, current)).read(), (current, name)
