"""Loading never runs code; bad input is one line on stderr, exit code 2, and nothing written; faults keep the
last good checkpoint."""
import dataclasses
import errno
import hashlib
import os

import numpy as np
import pytest
import torch

import analyze
import config
import model
import train
from data import TaskSpec
from interp import analyses
from model import GPT, CheckpointError, GPTConfig, load_checkpoint, save_checkpoint
from research import experiment
from scale import bench
from variants import train as variants

TINY = ["--preset", "tiny", "--threads", "1", "--device", "cpu"]
MAIN = {"train": lambda argv: train.main(TINY + argv), "variants": lambda argv: variants.main(TINY + argv),
        "analyze": analyze.main, "interp": analyses.main, "experiment": experiment.main, "bench": bench.main}


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pt")
    torch.save({"model": Hostile(marker), "config": {}, "step": 0}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    with pytest.raises(SystemExit):
        train.main(["--phase", "1", "--out-dir", str(tmp_path / "o"), "--teacher", path] + TINY)
    assert not marker.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def snapshot(folder):
    """Every file (with its hash) and every folder under `folder`: what "nothing written" compares."""
    tree = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            tree[os.path.relpath(os.path.join(root, d), folder)] = "folder"
        for f in files:
            path = os.path.join(root, f)
            tree[os.path.relpath(path, folder)] = hashlib.md5(open(path, "rb").read()).hexdigest()
    return tree


def student_ckpt(path, vocab_size=TaskSpec().vocab_size, phase="1", done=True, **extra):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=vocab_size, d_model=16, n_head=2, n_kv_head=2, n_layer=1))
    save_checkpoint({"model": m.state_dict(), "config": dataclasses.asdict(m.config), "step": 1, "done": done,
                     "phase": phase, **extra}, str(path))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """An output folder with a finished tiny teacher, plus bad files beside it."""
    d = tmp_path_factory.mktemp("work")
    out = str(d / "out")
    train.main(["--phase", "teacher", "--out-dir", out, "--curriculum-steps", "0", "--steps", "2"] + TINY)
    teacher = open(os.path.join(out, "teacher.pt"), "rb").read()
    (d / "text.pt").write_text("hello there\n")
    (d / "cut.pt").write_bytes(teacher[:5000])  # a checkpoint cut short
    torch.save({"model": Hostile(d / "pwned"), "config": {}, "step": 0}, str(d / "evil.pt"))
    student_ckpt(d / "vocab50.pt", vocab_size=50, phase="teacher")
    student_ckpt(d / "phase1.pt")
    student_ckpt(d / "on-text.pt", args={"data": "corpus.txt"})
    unfinished = load_checkpoint(os.path.join(out, "teacher.pt"))
    save_checkpoint(dict(unfinished, done=False), os.path.join(out, "t-unfinished.pt"))
    save_checkpoint(dict(unfinished, phase="1"), os.path.join(out, "p2-ce-x.pt"))  # squats the twin's name
    (d / "run").mkdir()  # a training folder for analyze.py all: a sound teacher, a phase-1 run cut short
    (d / "run" / "teacher.pt").write_bytes(teacher)
    (d / "run" / "phase1-b10000.pt").write_bytes(teacher[:5000])
    (d / "empty.txt").write_text("")
    (d / "corpus.txt").write_text("\n\n".join("some words " * 30 for _ in range(20)))
    (d / "odd.bin").write_bytes(b"\x01\x02\x03")
    (d / "ids.bin").write_bytes(np.arange(1, 300, dtype=np.uint16).tobytes())
    return d


BAD = {  # case: (script, argv, a phrase the error line must hold); {d} is the work folder, train runs in {d}/out
    # loading errors: wrong kind of file, truncated, through the CE twin
    "teacher not a checkpoint": ("train", ["--phase", "1", "--teacher", "{d}/text.pt"], "not a checkpoint"),
    "init truncated": ("train", ["--phase", "2", "--init", "{d}/cut.pt"], "truncated or corrupt (5,000 bytes"),
    "phase 2 bad teacher, with twin": ("train", ["--phase", "2", "--teacher", "{d}/text.pt"], "not a checkpoint"),
    "phase 2 resume, nothing to resume": ("train", ["--phase", "2", "--resume"], "no checkpoint"),
    "vocabulary below the data's ids": ("variants", ["--phase", "teacher", "--vocab-size", "10"], "--vocab-size 10"),
    "out dir is a file": ("train", ["--phase", "1", "--out-dir", "{d}/text.pt"], "not a folder"),
    "negative eval interval": ("train", ["--phase", "teacher", "--eval-interval", "-3"], "--eval-interval"),
    # checkpoints of the wrong kind, or hostile
    "hostile teacher": ("train", ["--phase", "1", "--teacher", "{d}/evil.pt"], "refused for safety"),
    "teacher is a student": ("train", ["--phase", "1", "--teacher", "{d}/phase1.pt"], "not a teacher"),
    "unfinished teacher": ("train", ["--phase", "1", "--teacher", "{d}/out/t-unfinished.pt"], "unfinished"),
    "teacher vocabulary differs": ("train", ["--phase", "1", "--teacher", "{d}/vocab50.pt"], "vocabulary"),
    "missing teacher": ("train", ["--phase", "1", "--teacher", "{d}/nope.pt"], "not found"),
    "init is the teacher": ("train", ["--phase", "2", "--init", "{d}/out/teacher.pt", "--no-baseline"],
                            "not a phase-1 student"),
    "init size differs": ("train", ["--phase", "2", "--init", "{d}/phase1.pt", "--d-model", "64", "--no-baseline"],
                          "d_model 16"),
    "twin's checkpoint is in the way": ("train", ["--phase", "2", "--run-name", "p2-kd-x"], "p2-ce-x.pt"),
    "resume with other settings": ("train", ["--phase", "teacher", "--run-name", "t-unfinished", "--resume",
                                             "--rope-base", "20000"], "rope_base"),
    "finished run": ("train", ["--phase", "teacher"], "finished run"),
    "out dir below a file": ("train", ["--phase", "1", "--out-dir", "{d}/text.pt/sub"], "not a folder"),
    # ranges of single flags
    "nan base": ("train", ["--phase", "1", "--rope-base", "nan"], "--rope-base"),
    "zero steps": ("train", ["--phase", "1", "--steps", "0"], "--steps"),
    "negative batch": ("train", ["--phase", "1", "--batch-size", "-2"], "--batch-size"),
    "zero micro-batches": ("train", ["--phase", "1", "--grad-accum", "0"], "--grad-accum"),
    "batch does not split into micro-batches": ("train", ["--phase", "teacher", "--batch-size", "3", "--grad-accum",
                                                          "2"], "do not split into 1 ranks x 2 micro-batches"),
    "zero lr": ("train", ["--phase", "1", "--lr", "0"], "--lr"),
    "kd weight > 1": ("train", ["--phase", "1", "--kd-weight", "1.5"], "--kd-weight"),
    "zero save interval": ("variants", ["--phase", "1", "--save-interval", "0"], "--save-interval"),
    "negative seed": ("train", ["--phase", "1", "--seed", "-1"], "--seed"),
    "negative kd chunk": ("variants", ["--phase", "1", "--kd-chunk", "-1"], "--kd-chunk"),
    "curriculum target 0": ("variants", ["--phase", "1", "--curriculum-target", "0"], "--curriculum-target"),
    "window of 4 tokens": ("train", ["--phase", "1", "--window", "4"], "--window"),
    "unknown device": ("train", ["--phase", "1", "--device", "tpu"], "--device"),
    "run name with a folder": ("train", ["--phase", "1", "--run-name", "a/b"], "--run-name"),
    "rope scaling not an object": ("variants", ["--phase", "1", "--rope-scaling", "5"], "JSON object"),
    "rope scaling key missing": ("variants", ["--phase", "1", "--rope-scaling", '{"rope_type": "yarn", "factor": 4}'],
                                 "original_max_position_embeddings"),
    "negative rope factor": ("variants", ["--phase", "1", "--rope-scaling", '{"rope_type": "linear", "factor": -1}'],
                             "not finite and positive"),
    # flags that only make sense together
    "window below document length": ("train", ["--phase", "2", "--window", "8", "--max-doc-len", "16"],
                                     "smaller than the document"),
    "heads do not divide width": ("train", ["--phase", "1", "--d-model", "32", "--n-head", "3", "--n-kv-head", "3"],
                                  "divide"),
    "odd head dimension": ("train", ["--phase", "1", "--d-model", "18", "--n-head", "2", "--n-kv-head", "2"], "even"),
    "resume and overwrite": ("train", ["--phase", "1", "--resume", "--overwrite"], "pass one"),
    "reset positions without doc mask": ("train", ["--phase", "1", "--reset-positions"], "needs --doc-mask"),
    "flex attention without doc mask": ("variants", ["--phase", "1", "--attention", "flex"], "pass --doc-mask"),
    "flex attention on the CPU": ("variants", ["--phase", "1", "--attention", "flex", "--doc-mask", "--device", "cpu"],
                                  "CUDA only"),
    "init outside phase 2": ("train", ["--phase", "1", "--init", "{d}/phase1.pt"], "--phase 2"),
    "probes on --data": ("train", ["--phase", "teacher", "--data", "{d}/corpus.txt", "--eval-interval", "5"],
                         "synthetic language"),
    "eot id outside the vocabulary": ("variants", ["--phase", "teacher", "--data", "{d}/ids.bin", "--vocab-size", "400",
                                                "--eot-id", "500"], "--eot-id"),
    ".bin ids beyond the vocabulary": ("variants", ["--phase", "teacher", "--data", "{d}/ids.bin", "--vocab-size", "200",
                                                 "--eot-id", "0"], "outside the vocabulary"),
    "empty data file": ("train", ["--phase", "teacher", "--data", "{d}/empty.txt"], "no text"),
    "odd .bin": ("variants", ["--phase", "teacher", "--data", "{d}/odd.bin"], "uint16"),
    # analyze.py and python -m interp
    "analyze: not a checkpoint": ("analyze", ["retrieval", "--ckpt", "{d}/text.pt", "--out", "{d}/figs"],
                                  "not a checkpoint"),
    "analyze: truncated": ("analyze", ["perturb", "--ckpt", "{d}/cut.pt", "--out", "{d}/figs"], "truncated"),
    "analyze: zero probe windows": ("analyze", ["retrieval", "--ckpt", "{d}/phase1.pt", "--n-windows", "0",
                                                "--out", "{d}/figs"], "--n-windows"),
    "interp: odd head dim": ("interp", ["spectrum", "--head-dim", "7", "--out", "{d}/figs"], "--head-dim"),
    "interp: base below 1": ("interp", ["spectrum", "--bases", "0.5", "--out", "{d}/figs"], "--bases"),
    "interp: probe distance beyond window": ("interp", ["qupdate", "--before", "{d}/phase1.pt", "--after",
                                                          "{d}/phase1.pt", "--probe-distance", "5000",
                                                          "--out", "{d}/figs"], "--probe-distance"),
    "analyze: labels do not match": ("analyze", ["retrieval", "--ckpt", "{d}/phase1.pt", "--labels", "a", "b",
                                                 "--out", "{d}/figs"], "--labels"),
    "analyze: model of --data": ("analyze", ["retrieval", "--ckpt", "{d}/on-text.pt", "--out", "{d}/figs"],
                                 "synthetic language"),
    "analyze: out is a file": ("analyze", ["retrieval", "--ckpt", "{d}/phase1.pt", "--out", "{d}/text.pt"], "not a folder"),
    "interp: all, one bad checkpoint": ("interp", ["all", "--dir", "{d}/run", "--out", "{d}/figs"],
                                         "phase1-b10000.pt is truncated"),
    # research/experiment.py
    "experiment: no jobs": ("experiment", ["--jobs", "0", "--out-dir", "{d}/exp"], "--jobs"),
    "experiment: a seed twice": ("experiment", ["--seeds", "0", "0", "--out-dir", "{d}/exp"], "distinct"),
    "experiment: zero steps": ("experiment", ["--steps", "0", "--out-dir", "{d}/exp"], "--steps"),
    "experiment: out is a file": ("experiment", ["--out-dir", "{d}/text.pt"], "not a folder"),
    # scale/bench.py
    "bench: vocabulary too small": ("bench", ["--quick", "--vocab", "10", "--json", "{d}/b/x.json"], "--vocab"),
    "bench: odd head size": ("bench", ["--quick", "--d-model", "33"], "even"),
    "bench: zero batch": ("bench", ["--quick", "--batch", "0"], "--batch"),
    "bench: json folder is a file": ("bench", ["--quick", "--json", "{d}/text.pt/x.json"], "not a folder"),
    "bench: unknown device": ("bench", ["--quick", "--device", "tpu"], "--device"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, workdir, capsys):
    script, argv, match = BAD[case]
    argv = [a.replace("{d}", str(workdir)) for a in argv]
    if script in ("train", "variants") and "--out-dir" not in argv:
        argv += ["--out-dir", str(workdir / "out")]
    before = snapshot(workdir)
    with pytest.raises(SystemExit) as e:
        MAIN[script](argv)
    assert e.value.code == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert "Traceback" not in out.out + out.err and "weights_only" not in err[0]
    assert snapshot(workdir) == before
    assert not (workdir / "pwned").exists()


def test_every_model_flag_has_its_own_help():
    helps = {a.dest: a.help for a in train.build_parser()._actions if a.dest != "help"}
    assert all(helps.values())
    model_helps = [helps[k] for k in ("d_model", "n_layer", "n_head", "n_kv_head", "d_ff")]
    assert len(set(model_helps)) == 5 and sum("d_ff" in h or "MLP" in h for h in model_helps) == 1


# ----------------------------------------------------------------------------- faults while writing


class SaveEvery3(train.Lab):
    def configure(self, args):
        args.save_interval = 3


@pytest.mark.parametrize("fault", ["disk full mid-write", "folder not writable"])
def test_failed_save_keeps_the_previous_checkpoint(fault, tmp_path, capsys, monkeypatch):
    real_save = torch.save
    real_mkstemp = model.tempfile.mkstemp
    saves = []

    def full_disk(obj, f, *a, **k):  # the second save writes part of the archive, then the disk is full
        saves.append(obj["step"])
        if len(saves) == 2:
            f.write(b"PK\x03\x04" + b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    def read_only(*a, **k):
        saves.append(None)
        if len(saves) == 2:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), k.get("dir"))
        return real_mkstemp(*a, **k)

    if fault == "disk full mid-write":
        monkeypatch.setattr(model.torch, "save", full_disk)
    else:
        monkeypatch.setattr(model.tempfile, "mkstemp", read_only)
    with pytest.raises(SystemExit) as e:
        train.main(["--phase", "teacher", "--out-dir", str(tmp_path), "--curriculum-steps", "0", "--steps", "10",
                    "--eval-interval", "0"] + TINY, SaveEvery3())
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    reason = "No space left on device" if fault == "disk full mid-write" else "Permission denied"
    assert err[-1].startswith("error: cannot save the checkpoint at step 6") and reason in err[-1], err
    assert "previous" in err[-1] and "kept" in err[-1]
    ckpt = load_checkpoint(str(tmp_path / "teacher.pt"))  # still the step-3 checkpoint, whole
    assert ckpt["step"] == 3 and not ckpt["done"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # no half-written temp file left


def test_a_failing_run_stops_its_twin_unless_interrupted(monkeypatch):
    class Twin:
        def __init__(self):
            self.terminated = self.waited = False

        def poll(self):
            return None

        def terminate(self):
            self.terminated = True

        def wait(self, timeout=None):
            self.waited = True

    args = train.resolve(train.build_parser().parse_args(["--phase", "2"] + TINY))
    for code, stopped in ((2, True), (130, False)):  # 130: Ctrl-C reached the twin too; it saves, then exits
        def failing(*a, code=code):
            raise SystemExit(code)

        twin = Twin()
        with pytest.raises(SystemExit):
            with config.one_line_errors(args, twin):
                failing()
        assert twin.terminated == stopped and twin.waited


def test_resume_drops_a_log_line_cut_by_a_kill(tmp_path):
    log = tmp_path / "run.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')
    config.truncate_log(str(log), 2)
    assert log.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n'


def test_same_seed_same_losses(tmp_path):
    for name in ("a", "b"):
        train.main(["--phase", "teacher", "--out-dir", str(tmp_path / name), "--steps", "6"] + TINY)
    logs = [open(tmp_path / n / "teacher.jsonl").read() for n in ("a", "b")]
    strip = lambda s: [{k: v for k, v in eval(l.replace("NaN", "None")).items() if k != "tok_s"}
                       for l in s.splitlines()]
    assert strip(logs[0]) == strip(logs[1])
