"""research/experiment.py: the grid it launches (nothing is trained for it), and the robustness grid on the tiny
preset, end to end; what both write has the schema of their committed JSON (tests/schema.py)."""
import json
from types import SimpleNamespace

import pytest

from research import experiment
from schema import assert_committed_schema, assert_same_schema, committed_params


def test_device_and_dtype_reach_every_training_run_and_the_analysis(tmp_path, monkeypatch):
    jobs, commands = [], []
    monkeypatch.setattr(experiment, "run_all", lambda todo, args: jobs.extend(todo))
    monkeypatch.setattr(experiment, "summarize", lambda args: "")
    monkeypatch.setattr(experiment.subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    experiment.main(["--preset", "tiny", "--device", "cuda", "--dtype", "float32", "--out-dir", str(tmp_path)])
    phases = [argv[argv.index("--phase") + 1] for _, argv in jobs]
    assert phases.count("teacher") == 1 and "1" in phases and phases.count("2") >= 8
    assert all(argv[argv.index("--device") + 1] == "cuda" for _, argv in jobs)
    assert all(argv[argv.index("--dtype") + 1] == "float32" for _, argv in jobs)  # as the notes' grid ran
    (cmd,) = commands
    assert cmd[cmd.index("all") - 2:cmd.index("all")] == ["-m", "interp"] and cmd[cmd.index("--device") + 1] == "cuda"


@pytest.fixture(scope="module")
def tiny_robustness(tmp_path_factory):
    """`python -m research.experiment robustness` on the tiny preset (runs in-process): teacher, phase 1, three
    arms. Its argv, run folder and docs folder, the runs it trained and the run_all that trained them."""
    import variants.train
    tmp = tmp_path_factory.mktemp("robustness")
    trained = []

    def run_in_process(jobs, args, done=None):
        done = done or (lambda n: experiment.results_path(args, n) is not None)
        for name, argv in jobs:
            if not done(name):
                trained.append(name)
                variants.train.main(argv + ["--threads", "1"])

    argv = ["robustness", "--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--out-dir",
            str(tmp / "out"), "--docs-dir", str(tmp / "docs"), "--seeds", "0", "--phase1-seeds", "0",
            "--arms", "ce-masked", "kd", "ce"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "run_all", run_in_process)
        experiment.main(argv)
    return SimpleNamespace(argv=argv, out=tmp / "out", docs=tmp / "docs", trained=trained, run_all=run_in_process)


def test_robustness_writes_the_schema_from_finished_runs_and_resumes(tiny_robustness, monkeypatch):
    """The tiny preset end to end: the rows of every finished run and the probes; then nothing is retrained."""
    argv = tiny_robustness.argv
    trained = tiny_robustness.trained
    docs = tiny_robustness.docs
    res = json.load(open(docs / "robustness.json"))
    assert res["criterion"] == {"min_distance": 512, "step0_max": 0.3, "kd_min": 0.9, "ce_max": 0.3}
    assert res["probe_seeds"] == [1, 2, 3]
    assert [r["arm"] for r in res["runs"]] == ["step0", "ce", "ce-masked", "kd"]  # the criterion's arms first
    for r in res["runs"]:
        assert set(r) == {"phase1_seed", "phase2_seed", "arm", "distances", "kv", "in_doc"}
        assert r["distances"] == [4, 12, 40] and len(r["kv"]) == 3 and (r["phase1_seed"], r["phase2_seed"]) == (0, 0)
    probes = json.load(open(docs / "probes.json"))
    assert {"teacher", "p0-step0", "p0-s0-kd", "p0-s0-ce", "p0-s0-ce-masked"} == set(probes["models"])
    assert (docs / "probes.png").is_file()
    n_trained = len(trained)
    monkeypatch.setattr(experiment, "run_all", tiny_robustness.run_all)
    experiment.main(argv)  # resumable: every run is reused
    assert len(trained) == n_trained and json.load(open(docs / "robustness.json")) == res


@pytest.mark.parametrize("name", ["robustness", "probes"])
def test_robustness_json_has_the_schema_of_the_committed_ones(tiny_robustness, name):
    """robustness.json and probes.json against the committed ones, the recipe's and a shorter screen's (--steps)."""
    assert_committed_schema("research.experiment robustness", tiny_robustness.docs / f"{name}.json", name)


@pytest.fixture(scope="module")
def grid_summary(tiny_robustness):
    """The grid's paper_results.json from --summary-only on the tiny runs: the robustness grid's KD student and CE
    twin (phase-1 seed 0, phase-2 seed 0) are the phase-wise schedule's runs, under the same names."""
    out = tiny_robustness.out
    experiment.main(["--summary-only", "--preset", "tiny", "--out-dir", str(out), "--seeds", "0", "--phase1-seeds",
                     "0"])
    return out / "paper_results.json"


def test_the_grid_summary_tabulates_the_schedules_with_runs(grid_summary):
    res = json.load(open(grid_summary))
    assert list(res["schedules"]) == ["phase-wise"]  # the other schedules have no run, and no row
    assert {"step 0", "KD", "CE"} <= set(res["schedules"]["phase-wise"]) and res["qupdate"]["seeds"] == [0]


@pytest.mark.parametrize("committed", committed_params("research.experiment"))
def test_the_grid_summary_has_the_schema_of_the_committed_one(grid_summary, committed):
    assert_same_schema(grid_summary, committed)


def test_criterion_verdicts_and_the_wilson_interval():
    def row(arm, kv, seed=0):
        return {"phase1_seed": 0, "phase2_seed": seed, "arm": arm, "distances": [256, 512, 900], "kv": kv,
                "in_doc": 0.9}
    good = [row("step0", [0.5, 0.1, 0.0]), row("kd", [1, 0.95, 0.9]), row("ce", [0.9, 0.3, 0.1]),
            row("ce-masked", [0.9, 0.2, 0.2])]
    bad = [dict(r, phase2_seed=1) for r in good[:3]] + [row("ce-masked", [0.1, 0.31, 0.0], seed=1)]
    half = [dict(r, phase2_seed=2) for r in good[:3]]  # ce-masked not run: undecided
    v = experiment.verdicts(good + bad + half)
    assert v[(0, 0)] == (True, []) and v[(0, 1)] == (False, ["ce-masked 0.31 at D=512"]) and v[(0, 2)][0] is None
    lo, hi = experiment.wilson_interval(5, 10)  # Wilson (1927): 0.237 .. 0.763
    assert round(lo, 3) == 0.237 and round(hi, 3) == 0.763
    assert experiment.wilson_interval(0, 4)[0] == 0 and experiment.wilson_interval(4, 4)[1] == pytest.approx(1)
