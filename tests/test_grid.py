"""research/grid.py on the smallest inputs: a phase-1 student's acceptance measurement (`measure accept`) on a tiny
checkpoint, and `status`, which reads the protocol's verdicts from what the folder holds (none is committed)."""
import dataclasses
import json

from data import TaskSpec
from model import GPT, GPTConfig, save_checkpoint
from research import grid


def write_student(folder, seed, stage16_steps):
    """A finished phase-1 run of the screen as train.py leaves it: a tiny 32-token checkpoint, the step log (its
    16-token stage took `stage16_steps` steps) and the end-of-run JSON."""
    name = grid.phase1_run(seed)
    cfg = GPTConfig(vocab_size=TaskSpec().vocab_size, d_model=16, n_head=2, n_kv_head=2, n_layer=1, max_seq_len=32)
    save_checkpoint({"model": GPT(cfg).state_dict(), "config": dataclasses.asdict(cfg), "step": 1, "done": True},
                    str(folder / f"{name}.pt"))
    lines = [{"step": i + 1, "stage": "curriculum-16"} for i in range(stage16_steps)]
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / f"{name}.json").write_text(json.dumps({"run": name, "speed": {"train_seconds": 120}}))


def test_status_of_an_empty_folder_has_no_student_and_no_pass(tmp_path):
    res = grid.status("screen", str(tmp_path))
    assert res["students"] == [] and res["accepted"] == [] and res["passes"]["default"]["decided"] == 0


def test_measure_accept_then_status_judges_the_student(tmp_path, capsys):
    """An untrained student: D = 16 on the selection probe is measured and written, and status turns it down for
    that reason alone (its 16-token stage passed); a student without any file is not listed."""
    write_student(tmp_path, 200, 5)
    grid.main(["measure", "--out", str(tmp_path), "accept", "200"])
    row = json.loads((tmp_path / "accept-s200.json").read_text())
    assert row["phase1_seed"] == 200 and row["distance"] == 16 and 0 <= row["kv"] < grid.ACCEPT["min"]
    capsys.readouterr()
    grid.main(["status", "--stage", "screen", "--out", str(tmp_path)])
    status = json.loads(capsys.readouterr().out)
    (student,) = status["students"]
    assert student["phase1_seed"] == 200 and student["stage16_step"] == 5 and student["accepted"] is False
    assert student["why"] == f"D=16 {row['kv']:.2f} < 0.85" and status["accepted"] == []
