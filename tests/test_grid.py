"""research/grid.py on the smallest inputs: a phase-1 student's acceptance measurement (`measure accept`) on a tiny
checkpoint, and `status`, which reads the protocol's verdicts from what the folder holds (none is committed)."""
import dataclasses
import datetime
import json
import os

import pytest

from data import TaskSpec
from model import GPT, GPTConfig, save_checkpoint
from research import grid
from schema import assert_committed_schema
from tracked import ROOT


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


def write_band(folder, model, seed, band, short=0.5, in_doc=0.6):
    """A band row as `measure band` writes it: `short` at D < 512 and D = 900, `band` on the band."""
    kv = [short if d < 512 or d == 900 else band for d in grid.DISTANCES]
    (folder / f"band-{model}.json").write_text(json.dumps({"phase1_seed": seed, "model": model,
                                                           "distances": grid.DISTANCES, "kv": kv,
                                                           "in_doc": in_doc, "probe_seeds": grid.HELDOUT}))


def accepted_student(folder, seed, kd_band, ce_band, step0_band=0.1):
    """An accepted student (stage passed, D = 16 = 0.9) with its step 0, KD and CE rows at both overlaps."""
    write_student(folder, seed, 5)
    (folder / f"accept-s{seed}.json").write_text(json.dumps({"phase1_seed": seed, "probe_seed": 0, "kv": 0.9}))
    write_band(folder, f"s{seed}-step0", seed, step0_band)
    for overlap in grid.OVERLAPS:
        for arm, band in (("kd", kd_band), ("ce", ce_band)):
            name = grid.phase2_run(seed, arm, overlap)
            (folder / f"{name}.json").write_text(json.dumps({"run": name}))
            write_band(folder, name, seed, band)


def test_the_report_counts_passes_by_the_criterion_and_averages_the_cells_over_students(tmp_path):
    screen = tmp_path / "screen"
    screen.mkdir()
    for seed in grid.SCREEN_SEEDS:  # a decided screen: every student turned down
        write_student(screen, seed, 5)
        (screen / f"accept-s{seed}.json").write_text(json.dumps({"phase1_seed": seed, "probe_seed": 0, "kv": 0.1}))
    out = tmp_path / "grid"
    out.mkdir()
    accepted_student(out, 100, kd_band=1.0, ce_band=0.2)  # passes
    accepted_student(out, 101, kd_band=0.8, ce_band=0.2)  # KD below 0.9 on the band: fails
    accepted_student(out, 102, kd_band=1.0, ce_band=0.9)  # the CE twin within 0.3 of KD: fails
    grid.main(["report", "--stage", "grid", "--out", str(out), "--screen", str(screen), "--json",
               str(tmp_path / "grid.json")])
    assert_committed_schema("research.grid report", tmp_path / "grid.json")
    res = json.loads((tmp_path / "grid.json").read_text())  # the tables read what the JSON holds
    assert res["head_dim"] == 32 and res["accepted"] == [100, 101, 102]
    assert res["passes"]["default"]["passed"] == 1 and res["passes"]["default"]["decided"] == 3
    kd = res["cells"]["default"]["KD student"]
    assert kd["students"] == 3 and abs(kd["band_mean"]["mean"] - 2.8 / 3) < 1e-9
    assert [kd["band_mean"]["min"], kd["band_mean"]["max"]] == pytest.approx([0.8, 1.0]) and kd["kv"]["900"] == 0.5
    table = grid.headline_markdown(res)
    assert "| keys drawn uniformly | KD student | 3 | 0.50 | 0.50 | 0.93 (0.80-1.00) | 0.50 | 0.60 |" in table
    assert "**1 of 3**" in table and table.count("| step 0 |") == 1  # step 0 once: the same student at both
    assert "| 100 | 5 | 0.90 | 2.0 | accepted |" in grid.students_markdown(res)
    combos = grid.combinations_markdown(res)
    assert "| 100 | keys drawn uniformly | 0 | **passes** |" in combos
    assert "| 101 | no key recurs | 0 | kd below 0.9 at 25 of 25 band distances (lowest 0.80 at D=512)" in combos
    assert "| keys drawn uniformly | CE twin | 3 | 0.50 |" in grid.cells_markdown(res)


def git(*argv):
    """git's finished process (subprocess.CompletedProcess) in the repository, or None where git is not at hand."""
    import subprocess
    try:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done


def test_every_run_of_the_grid_ran_on_a_commit_after_the_protocol():
    """research/protocol.md was committed before every run it governs: its first commit is an ancestor of the
    commit each run of the grid and of the screen records (research/notes/grid/grid.json)."""
    shallow = git("rev-parse", "--is-shallow-repository")
    if shallow is None or shallow.returncode != 0 or shallow.stdout.strip() != "false":
        pytest.skip("no whole git history here (no git, or a shallow clone)")
    first = git("log", "--diff-filter=A", "--format=%H", "--", "research/protocol.md")
    protocol = first.stdout.split()[-1]
    with open(os.path.join(ROOT, "research", "notes", "grid", "grid.json"), encoding="utf-8") as f:
        res = json.load(f)
    runs = {**res["runs"], **{"screen " + k: v for k, v in res["screen"]["runs"].items()}}
    assert runs and all(r["commit"] and r["started"] for r in runs.values())
    assert [name for name, r in runs.items() if r["commit"].endswith("+dirty")] == []  # each on a committed tree
    later = {name: git("merge-base", "--is-ancestor", protocol, r["commit"]).returncode for name, r in runs.items()}
    assert {name: rc for name, rc in later.items() if rc != 0} == {}  # 0: the protocol's commit is an ancestor
    committed = datetime.datetime.fromisoformat(git("show", "-s", "--format=%cI", protocol).stdout.strip())
    assert min(datetime.datetime.fromisoformat(r["started"]) for r in runs.values()) > committed


def test_a_finished_control_gets_its_band_measured(tmp_path):
    """Finding 3's control (the KD student with the base kept small): once trained, the runner measures its band,
    which the report's control row reads."""
    accepted_student(tmp_path, 100, kd_band=1.0, ce_band=0.2)
    control = grid.phase2_run(100, "kd", base=10000)
    keys = [key for key, *_ in grid.jobs("grid", str(tmp_path), False)]
    assert control in keys  # not trained yet: a training job
    (tmp_path / f"{control}.json").write_text(json.dumps({"run": control}))
    keys = [key for key, *_ in grid.jobs("grid", str(tmp_path), False)]
    assert f"band-{control}" in keys and control not in keys


def test_a_student_accepted_before_an_earlier_verdict_waits_and_is_not_called_not_needed(tmp_path):
    write_student(tmp_path, 100, 5)  # trained, its acceptance not measured yet: undecided
    accepted_student(tmp_path, 101, kd_band=1.0, ce_band=0.2)
    status = grid.status("grid", str(tmp_path))
    assert status["accepted"] == []  # list order: 101 counts once 100 is decided
    (later,) = [s for s in status["students"] if s["phase1_seed"] == 101]
    assert later["why"] == "accepted; waits for an earlier seed's verdict"
