"""experiment.py: the grid it launches (nothing is trained here)."""
import experiment


def test_device_and_dtype_reach_every_training_run_and_the_analysis(tmp_path, monkeypatch):
    jobs, commands = [], []
    monkeypatch.setattr(experiment, "run_all", lambda todo, args: jobs.extend(todo))
    monkeypatch.setattr(experiment, "summarize", lambda args: "")
    monkeypatch.setattr(experiment.subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    experiment.main(["--preset", "tiny", "--device", "cuda", "--dtype", "float32", "--out-dir", str(tmp_path)])
    phases = [argv[argv.index("--phase") + 1] for _, argv in jobs]
    assert phases.count("teacher") == 1 and "1" in phases and phases.count("2") >= 8
    assert all(argv[argv.index("--device") + 1] == "cuda" for _, argv in jobs)
    assert all(argv[argv.index("--dtype") + 1] == "float32" for _, argv in jobs)  # the README grid pins it
    (cmd,) = commands
    assert cmd[cmd.index("all") - 1].endswith("analyze.py") and cmd[cmd.index("--device") + 1] == "cuda"
