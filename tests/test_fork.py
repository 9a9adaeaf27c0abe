"""Forking in one command: size flags shape the student through phase 1 and phase 2 (the teacher keeps its size),
the sizes name the runs, and a task of one's own is one file (docs/copy_task.py, docs/fork.md's example)."""
import json
import os

import numpy as np
import pytest

import config
import train
from evaluate import load_task_file
from model import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPY_TASK = os.path.join(ROOT, "docs", "copy_task.py")
TINY = ["--preset", "tiny", "--threads", "1", "--device", "cpu"]


def parse(argv):
    return config.resolve(config.build_parser().parse_args(argv), train.Lab())


def sizes(path):
    cfg = load_checkpoint(path)["config"]
    return cfg["d_model"], cfg["n_layer"]


def test_sizes_that_differ_from_the_preset_name_the_run_and_its_phase_1_student():
    assert parse(["--phase", "2", "--d-model", "128"]).run_name == "phase2-kd-b10000-b500000"  # the cpu preset's
    sized = parse(["--phase", "2", "--d-model", "48", "--n-layer", "3"])
    assert sized.run_name == "phase2-kd-b10000-b500000-d48-l3"
    assert config.phase1_file(sized, train.Lab()) == "phase1-b10000-d48-l3.pt"  # never the shipped d128 student
    assert config.teacher_file(sized, train.Lab()) == "teacher.pt"  # the teacher keeps its own size
    assert parse(["--phase", "teacher", "--n-head", "2", "--n-kv-head", "1"]).run_name == "teacher-h2-kv1"
    seeded = parse(["--phase", "2", "--d-model", "64", "--phase1-seed", "3"])
    assert config.phase1_file(seeded, train.Lab()) == "phase1-b10000-d64-s3.pt"
    assert parse(["--phase", "1", "--d-model", "64", "--seed", "3"]).run_name == "phase1-b10000-d64-s3"


def test_one_command_trains_phase_1_and_phase_2_at_the_asked_size_on_your_text(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    words = "the river flows slowly through the old town past the market square".split()
    text.write_text("\n\n".join(" ".join(rng.choice(words, rng.integers(20, 60))) for _ in range(300)))
    out = tmp_path / "out"
    train.main(["--phase", "2", "--data", str(text), "--d-model", "48", "--n-layer", "3", "--out-dir", str(out)]
               + TINY)
    assert sizes(out / "corpus-teacher.pt") == (32, 2)  # the tiny preset's teacher
    assert sizes(out / "corpus-phase1-b10000-d48-l3.pt") == (48, 3)
    assert sizes(out / "corpus-phase2-kd-b10000-b500000-d48-l3.pt") == (48, 3)
    assert sizes(out / "corpus-phase2-ce-b10000-b500000-d48-l3.pt") == (48, 3)
    printed = capsys.readouterr().out
    assert "tiny preset is a smoke test" in printed and "CE student" in printed


def test_the_example_task_file_runs_end_to_end_from_one_file(tmp_path, capsys):
    out = tmp_path / "out"
    train.main(["--phase", "2", "--data", COPY_TASK, "--out-dir", str(out)] + TINY)
    res = json.load(open(out / "copy-phase2-kd-b10000-b500000.json"))
    assert set(res["results"]) == {"copy-phase2-kd-b10000-b500000", "teacher", "step 0"}
    assert all(set(row) == {"short copy", "long copy"} for row in res["results"].values())
    assert res["floors"] == {"short copy": 1 / 32, "long copy": 1 / 32}
    assert (out / "copy-phase2-ce-b10000-b500000.json").exists() and (out / "copy-teacher.pt").exists()
    assert "| model | short copy | long copy |" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["long", "packed"])
def test_the_example_task_keeps_the_batch_contract_and_every_answer_is_readable_in_its_window(kind):
    task = load_task_file(COPY_TASK)
    batch = task.batch(kind, 64, 3, np.random.default_rng(0))
    assert all(batch[k].shape == (3, 65) for k in ("tokens", "positions", "doc_ids", "answers"))
    assert batch["tokens"].max() < task.vocab_size and batch["answers"].any()
    for tokens, answers, doc in zip(batch["tokens"], batch["answers"], batch["doc_ids"]):
        for a in np.flatnonzero(answers):  # the second copy's letter i stands n + 1 tokens back, same document
            marker = a - 1 - np.flatnonzero(tokens[a - 1::-1] == 1)[0]  # this copy's marker
            start = np.flatnonzero(tokens[:marker] == 0)[-1]  # the document's separator
            back = a - (marker - start)  # n + 1 tokens back, n = marker - start - 1
            assert tokens[back] == tokens[a] and doc[back] == doc[a]


def test_the_lab_example_of_docs_fork_changes_a_setting_and_names_the_run(tmp_path):
    """docs/fork.md's Warmer: a setting that is no flag, set by the lab's configure, and its suffix in the name."""
    page = open(os.path.join(ROOT, "docs", "fork.md"), encoding="utf-8").read()
    start = page.index("class Warmer")
    code = page[start:page.index("\ntrain.main(", start)]
    namespace = {"train": train}
    exec(code, namespace)  # the page's own class
    out = tmp_path / "out"
    train.main(["--phase", "1", "--out-dir", str(out), "--steps", "2"] + TINY, namespace["Warmer"]())
    ckpt = load_checkpoint(str(out / "phase1-b10000-warm200.pt"))
    assert ckpt["args"]["warmup"] == 200
