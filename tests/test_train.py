"""train.py end to end on the tiny preset: three phases, outputs, exact resume, faults, bad input."""
import copy
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import pytest
import torch

import config
import evaluate as report
import train
import tiny
from config import build_parser, resolve
from data import DataSource, TaskSpec, synthetic_batch, to_device
import distill
from distill import freeze_teacher
from evaluate import KeyValueTask, TextTask
from model import GPT, GPTConfig, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--threads", "1", "--device", "cpu"]


class Saves(train.Lab):
    """The core's run, saving a checkpoint every `interval` steps (a setting that is no flag of train.py)."""

    def __init__(self, interval):
        self.interval = interval

    def configure(self, args):
        args.save_interval = self.interval


# `python -c SAVES_EVERY N [train.py flags]`: train.py's main with a checkpoint every N steps, as its own process
SAVES_EVERY = """
import sys
import train

class Saves(train.Lab):
    def configure(self, args):
        args.save_interval = int(sys.argv[1])

train.main(sys.argv[2:], Saves())
"""


def run(argv, lab=None):
    train.main(argv + TINY, lab)


def parse(argv, lab=None):
    """train.py's settings of a command line, resolved as train.main resolves them."""
    return resolve(build_parser().parse_args(argv), lab)


def stages_of(args):
    """The stages train.py trains a run through, on the synthetic language."""
    return train.make_stages(args, KeyValueTask(), train.Lab())


def made_with(src):
    """The settings of data.synthetic_batch that a synthetic stage draws its windows with (kind, window, ...)."""
    return src.make.keywords


def losses(path):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(path)) if "loss" in r]


def test_three_phases_end_to_end_with_side_by_side_baseline(tmp_path):
    out = str(tmp_path)
    run(["--phase", "2", "--out-dir", out])  # trains teacher and phase 1 first, then KD + CE twins
    for name in ("teacher", "phase1-b10000", "phase2-kd-b10000-b500000", "phase2-ce-b10000-b500000"):
        ckpt = load_checkpoint(os.path.join(out, name + ".pt"))
        assert ckpt["done"] and ckpt["step"] > 0
        res = json.load(open(os.path.join(out, name + ".json")))
        assert set(res["results"][name]) == {"kv", "in_doc", "in_doc_fresh", "in_doc_recurring"}
        assert res["probe_seeds"] == [1, 2, 3]  # reported on the held-out probe seeds
        assert res["commit"] == report.source_commit() and res["started"].endswith("+00:00")  # what ran, when
        assert len(losses(os.path.join(out, name + ".jsonl"))) == ckpt["step"]
    kd = load_checkpoint(os.path.join(out, "phase2-kd-b10000-b500000.pt"))
    assert kd["config"]["rope_base"] == 500000.0 and kd["config"]["max_seq_len"] == 64
    assert load_checkpoint(os.path.join(out, "phase1-b10000.pt"))["config"]["rope_base"] == 10000.0
    ce_log = list(map(json.loads, open(os.path.join(out, "phase2-ce-b10000-b500000.jsonl"))))
    assert all(r["kl"] != r["kl"] for r in ce_log if "kl" in r)  # CE-only: no teacher, KL is NaN
    kd_log = [r for r in map(json.loads, open(os.path.join(out, "phase2-kd-b10000-b500000.jsonl"))) if "kl" in r]
    assert all(r["kl"] >= 0 for r in kd_log)


def test_the_source_commit_is_the_checkouts_head_or_none_outside_git(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = report.source_commit()
    if head.returncode == 0:
        assert commit.removesuffix("+dirty") == head.stdout.strip()
    assert report.source_commit(str(tmp_path)) is None  # a folder outside any repository


def test_auto_dtype_trains_prerequisites_in_float32_and_phase_2_in_bf16_on_a_bf16_cpu(tmp_path, monkeypatch):
    """--dtype auto reaches the teacher and phase 1 trained on the way as the flag, resolved per phase."""
    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: True)
    out = str(tmp_path)
    run(["--phase", "2", "--out-dir", out, "--no-baseline"])
    dtypes = {name: json.load(open(os.path.join(out, name + ".json")))["speed"]["dtype"]
              for name in ("teacher", "phase1-b10000", "phase2-kd-b10000-b500000")}
    assert dtypes == {"teacher": "float32", "phase1-b10000": "float32", "phase2-kd-b10000-b500000": "bfloat16"}


def test_no_auto_refuses_missing_prerequisites(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(config, "SHIPPED", str(tmp_path / "none"))
    with pytest.raises(SystemExit) as e:
        run(["--phase", "2", "--out-dir", str(tmp_path), "--no-auto", "--no-baseline"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no teacher checkpoint" in err[0]
    assert os.listdir(tmp_path) == []


def test_killed_run_resumes_to_identical_losses(tmp_path):
    common = ["--phase", "teacher", "--curriculum-steps", "0", "--steps", "300", "--eval-interval", "0"] + TINY
    saves_every_2 = [sys.executable, "-c", SAVES_EVERY, "2"]  # train.py, a checkpoint every 2 steps
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    subprocess.run(saves_every_2 + ["--out-dir", full] + common, cwd=ROOT, check=True, capture_output=True)
    proc = subprocess.Popen(saves_every_2 + ["--out-dir", cut] + common, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = os.path.join(cut, "teacher.pt")
    while not os.path.exists(ckpt) and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(ckpt)["step"]
    assert 0 < killed_at < 300
    subprocess.run(saves_every_2 + ["--out-dir", cut, "--resume"] + common, cwd=ROOT, check=True,
                   capture_output=True)
    a, b = losses(os.path.join(full, "teacher.jsonl")), losses(os.path.join(cut, "teacher.jsonl"))
    assert len(a) == len(b) == 300 and a == b  # bit-exact on CPU
    assert torch.equal(load_checkpoint(ckpt)["model"]["tok_emb.weight"],
                       load_checkpoint(os.path.join(full, "teacher.pt"))["model"]["tok_emb.weight"])


def test_a_resumed_run_keeps_the_start_and_commit_of_its_first_start(tmp_path, monkeypatch):
    """A run's results record when it started and on which commit (what a protocol's runs are checked against):
    --resume keeps those of its first start, so a run started before a protocol cannot pass as one after it."""
    argv = ["--phase", "teacher", "--out-dir", str(tmp_path), "--curriculum-steps", "0", "--steps", "8"]
    tiny.nan_loss_at_step(monkeypatch, train, 5)
    with pytest.raises(SystemExit):
        run(argv, Saves(2))  # stopped after step 4's checkpoint
    monkeypatch.undo()
    path = str(tmp_path / "teacher.pt")
    ckpt = load_checkpoint(path)
    ckpt["args"].update(started="2026-01-01T00:00:00+00:00", commit="0" * 40)  # as if from another day and commit
    save_checkpoint(ckpt, path)
    run(argv + ["--resume"], Saves(2))
    with open(tmp_path / "teacher.json") as f:
        res = json.load(f)
    assert (res["started"], res["commit"]) == ("2026-01-01T00:00:00+00:00", "0" * 40)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    tiny.nan_loss_at_step(monkeypatch, train, 7)
    with pytest.raises(SystemExit):
        run(["--phase", "teacher", "--out-dir", str(tmp_path), "--curriculum-steps", "0", "--steps", "20"], Saves(4))
    assert "at step 6" in capsys.readouterr().err
    ckpt = load_checkpoint(str(tmp_path / "teacher.pt"))
    assert ckpt["step"] == 4 and not ckpt["done"]


def ctrl_c():
    """What a terminal does on Ctrl-C: SIGINT to this process."""
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def terminal():
    """SIGINT handled as in a foreground process (a background job, such as a CI run, starts with it ignored)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_ctrl_c_right_after_an_optimizer_step_resumes_bit_for_bit(tmp_path, monkeypatch, terminal):
    """SIGINT just after the optimizer updated the weights (before the step is counted): the checkpoint's step
    label matches its weights, and the resumed run ends with the losses and weights of an uninterrupted one."""
    argv = ["--phase", "teacher", "--curriculum-steps", "0", "--steps", "12", "--eval-interval", "0"]
    run(argv + ["--out-dir", str(tmp_path / "full")], Saves(100))
    real_step, steps = torch.optim.AdamW.step, []

    def step_then_ctrl_c(self, *a, **k):
        out = real_step(self, *a, **k)
        steps.append(1)
        if len(steps) == 5:
            ctrl_c()
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_ctrl_c)
    cut = str(tmp_path / "cut")
    with pytest.raises(SystemExit) as e:
        run(argv + ["--out-dir", cut], Saves(100))
    assert e.value.code == 130 and signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    ckpt = load_checkpoint(os.path.join(cut, "teacher.pt"))
    assert ckpt["step"] == 5 and not ckpt["done"]
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    run(argv + ["--out-dir", cut, "--resume"], Saves(100))
    full = str(tmp_path / "full")
    assert losses(os.path.join(cut, "teacher.jsonl")) == losses(os.path.join(full, "teacher.jsonl"))
    a, b = load_checkpoint(os.path.join(cut, "teacher.pt")), load_checkpoint(os.path.join(full, "teacher.pt"))
    assert a["done"] and all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


@pytest.mark.parametrize("where, calls, saved_at", [("train_step", 6, 6), ("to_device", 3, 2), ("quick_eval", 1, 4)])
def test_ctrl_c_anywhere_in_a_stage_saves_at_the_next_step_boundary(tmp_path, monkeypatch, where, calls, saved_at,
                                                                    terminal):
    """Ctrl-C inside a step (the 6th) lets it finish; while the 3rd batch is built (after step 2) or during a
    quick check (after step 4) no step starts: the run saves the last finished step under its own label, exits
    130, and --resume finishes it."""
    real, seen = getattr(train, where), []

    def interrupted(*a, **k):
        seen.append(1)
        if len(seen) == calls:
            ctrl_c()
        return real(*a, **k)

    monkeypatch.setattr(train, where, interrupted)
    argv = ["--phase", "teacher", "--out-dir", str(tmp_path), "--curriculum-steps", "0", "--steps", "8",
            "--eval-interval", "4"]
    with pytest.raises(SystemExit) as e:
        run(argv)
    ckpt = load_checkpoint(str(tmp_path / "teacher.pt"))
    assert e.value.code == 130 and ckpt["step"] == saved_at and not ckpt["done"]
    assert len(losses(str(tmp_path / "teacher.jsonl"))) == saved_at
    monkeypatch.setattr(train, where, real)
    run(argv + ["--resume"])
    assert load_checkpoint(str(tmp_path / "teacher.pt"))["done"]


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys, terminal):
    real, seen = train.train_step, []

    def twice(*a, **k):
        seen.append(1)
        if len(seen) == 7:
            ctrl_c()
            ctrl_c()  # raises KeyboardInterrupt here, mid-step
        return real(*a, **k)

    monkeypatch.setattr(train, "train_step", twice)
    with pytest.raises(SystemExit) as e:
        run(["--phase", "teacher", "--out-dir", str(tmp_path), "--curriculum-steps", "0", "--steps", "10",
             "--eval-interval", "0"], Saves(4))
    assert e.value.code == 130 and "interrupted twice" in capsys.readouterr().err
    assert load_checkpoint(str(tmp_path / "teacher.pt"))["step"] == 4  # the last save, not the half step


class Model:
    """What train.acceptance loads as a finished phase-1 student, when the probe is stubbed out."""

    def eval(self):
        return self


def test_the_acceptance_test_reads_the_first_stage_and_the_shortest_distance(tmp_path, monkeypatch):
    log = tmp_path / "run.jsonl"  # 3 steps of the first stage, a probe line (no stage), 2 of the next
    log.write_text("".join(json.dumps(r) + "\n" for r in [{"step": 1, "stage": "curriculum-16"}, {"step": 2, "stage":
        "curriculum-16"}, {"step": 3, "stage": "curriculum-16"}, {"step": 3, "kv": {}}, {"step": 4, "stage":
        "curriculum-32"}, {"step": 5, "stage": "curriculum-32"}]))
    assert config.stage_steps(str(log), "curriculum-16") == 3 and config.stage_steps(str(log), "main") == 0
    args = parse(["--phase", "1", "--out-dir", str(tmp_path)])  # cpu preset's recipe: curriculum-16 capped at 8000
    cap = config.curriculum_stages(args)[0][4]
    assert cap == 8000 and args.eval_distances[0] == 16
    probes = []

    def probe(model, spec, window, distances, *a, seed=None, **k):
        probes.append((distances, seed))
        return {"kv": {distances[0]: kv}}

    monkeypatch.setattr(train, "load_model", lambda path, *a, **k: (Model(), {}))
    monkeypatch.setattr(train, "evaluate", probe)

    def accepted(steps, accuracy):
        """The verdict on a run whose first stage took `steps` steps (its cap: it never passed) and whose probe at
        the shortest distance reads `accuracy`."""
        nonlocal kv
        kv = accuracy
        with open(config.run_path(args, ".jsonl"), "w") as f:
            f.writelines(json.dumps({"step": i + 1, "stage": "curriculum-16"}) + "\n" for i in range(steps))
        return train.acceptance(args)["accepted"]

    kv = None
    assert accepted(623, 0.98) and accepted(903, 0.85)  # passed before its cap, D = 16 >= 0.85
    assert not accepted(903, 0.84) and not accepted(cap, 0.99)  # cap: the stage ran to its cap
    assert all(p == ([16], 0) for p in probes)  # the shortest distance, on the selection probe (seed 0)


def test_phase1_walks_its_students_while_the_acceptance_test_fails(tmp_path, capsys, monkeypatch):
    """A tiny student never passes its first stage (3 steps, an early end needs 50): rejected, the preset's next
    student is trained, every student is kept and listed, and no acceptance ends in exit code 1."""
    monkeypatch.setitem(config.PRESETS["tiny"], "phase1_seeds", [5, 6])
    out = str(tmp_path / "o")
    with pytest.raises(SystemExit) as e:
        run(["--phase", "1", "--out-dir", out])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert e.value.code == 1 and len(errors) == 1 and "no phase-1 student accepted of seeds [5, 6]" in errors[0]
    record = json.load(open(os.path.join(out, "phase1-b10000.accept.json")))
    assert record["accepted_seed"] is None and [s["seed"] for s in record["students"]] == [5, 6]
    assert all(s["stage"] == "curriculum-8" and s["stage_passed_at"] is None and s["distance"] == 4
               for s in record["students"])
    assert all(load_checkpoint(os.path.join(out, f"phase1-b10000-s{s}.pt"))["done"] for s in (5, 6))
    for ext in (".pt", ".json", ".jsonl"):  # the second student as if the walk had stopped before it began
        os.remove(os.path.join(out, "phase1-b10000-s6" + ext))
    first = os.path.getmtime(os.path.join(out, "phase1-b10000-s5.pt"))
    monkeypatch.setitem(config.PRESETS["tiny"], "phase1_seeds", [5, 6, 7, 8])
    real, calls = train.acceptance, []

    def second_passes(args):  # now the test takes the second student it sees: no third one is trained
        calls.append(args.seed)
        verdict = real(args)
        return dict(verdict, accepted=len(calls) == 2, why="" if len(calls) == 2 else verdict["why"] or "rejected")

    monkeypatch.setattr(train, "acceptance", second_passes)
    run(["--phase", "1", "--out-dir", out, "--resume"])  # the walk again: s5 is read, s6 trained
    record = json.load(open(os.path.join(out, "phase1-b10000.accept.json")))
    init = os.path.join(out, "phase1-b10000-s6.pt")
    assert calls == [5, 6]
    assert record["accepted_seed"] == 6 and [s["accepted"] for s in record["students"]] == [False, True]
    assert record["phase2_init"] == init and load_checkpoint(init)["done"]
    assert not os.path.exists(os.path.join(out, "phase1-b10000-s7.pt"))
    assert json.load(open(os.path.join(out, "phase1-b10000-s5.json")))["speed"]["train_seconds"] > 0  # kept
    assert os.path.getmtime(os.path.join(out, "phase1-b10000-s5.pt")) == first  # not trained again
    assert "[acceptance] phase-1 student --seed 6: accepted" in capsys.readouterr().out
    phase2 = parse(["--phase", "2", "--out-dir", out] + TINY)  # phase 2 is told its file: the accepted student
    assert config.phase1_path(phase2, train.Lab()) == init


def test_phase1s_walk_over_its_students_is_refused_under_torchrun(tmp_path, capsys, monkeypatch):
    """The walk trains one student after another in one process: under torchrun it is refused in one line before
    anything is trained."""
    monkeypatch.setitem(config.PRESETS["tiny"], "phase1_seeds", [5, 6])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        run(["--phase", "1", "--out-dir", str(tmp_path / "o")])
    assert "without torchrun" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_curriculum_doubles_the_window_up_to_the_phase_window():
    args = parse(["--phase", "1", "--window", "256"])
    stages = stages_of(args)
    assert [name for name, *_ in stages] == ["curriculum-16", "curriculum-32", "curriculum-64", "curriculum-128",
                                             "main"]
    for name, src, steps, stop in stages[:-1]:
        assert made_with(src)["kind"] == "long" and src.window * src.batch_size == 4096 and stop == 0.95
        assert made_with(src)["n_pairs"] == 3 * src.window // 16
    assert made_with(stages[-1][1])["kind"] == "packed" and stages[-1][1].window == 256 and stages[-1][3] is None
    seeds = [src.seed for _, src, *_ in stages]
    assert len(set(seeds)) == len(seeds)  # every stage its own stream
    teacher = parse(["--phase", "teacher"])
    assert stages_of(teacher)[0][1].seed != seeds[0]  # student is not the teacher's twin


def test_shipped_prerequisites_serve_only_the_cpu_preset(tmp_path):
    lab = train.Lab()
    args = parse(["--phase", "2", "--out-dir", str(tmp_path), "--no-auto"])
    teacher = config.teacher_path(args, lab), config.teacher_file(args, lab)
    assert train.ensure(args, "teacher", *teacher, [], lab) == os.path.join(config.SHIPPED, "teacher.pt")
    phase1 = config.phase1_path(args, lab), config.phase1_file(args, lab)
    assert train.ensure(args, "phase-1", *phase1, [], lab).startswith(config.SHIPPED)
    train.train_prerequisites(args, lab)  # --no-auto: it would refuse to train what it did not find
    assert (config.teacher_path(args, lab), config.phase1_path(args, lab)) == (
        os.path.join(config.SHIPPED, "teacher.pt"), os.path.join(config.SHIPPED, "phase1-b10000.pt"))
    seeded = parse(["--phase", "2", "--out-dir", str(tmp_path), "--no-auto", "--phase1-seed", "0"])
    assert config.phase1_path(seeded, lab) is None  # a seed's student is trained, never taken for the shipped one
    tiny = parse(["--phase", "2", "--out-dir", str(tmp_path), "--no-auto", "--preset", "tiny"])
    with pytest.raises(SystemExit):  # a tiny run must not pick up the cpu-preset teacher
        train.ensure(tiny, "teacher", config.teacher_path(tiny, lab), config.teacher_file(tiny, lab), [], lab)


def test_default_phase1_is_short_window_and_its_documents_fit_it():
    p1 = parse(["--phase", "1", "--seed", "0"])  # (without --seed: the acceptance test's walk)
    assert (p1.window, p1.max_doc_len, p1.min_doc_len, p1.rope_base, p1.run_name) == (32, 32, 8, 1e4, "phase1-b10000")
    assert [name for name, *_ in stages_of(p1)] == ["curriculum-16", "main"]
    p2 = parse(["--phase", "2", "--phase1-seed", "1", "--seed", "2"])
    assert (p2.window, p2.max_doc_len, p2.rope_base, p2.phase1_base) == (1024, 128, 5e5, 1e4)
    assert p2.run_name == "phase2-kd-b10000-b500000-p1-s2"


@pytest.mark.parametrize("flags,name,base", [
    ([], "phase2-kd-b10000-b500000", 5e5),
    (["--temperature", "2"], "phase2-kd-b10000-b500000-T2", 5e5),
    (["--doc-mask", "--reset-positions", "--seed", "1"], "phase2-kd-b10000-b500000-dm-rp-s1", 5e5),
    (["--kd-weight", "0", "--temperature", "2"], "phase2-ce-b10000-b500000", 5e5),
    (["--recurrence", "0.1"], "phase2-kd-b10000-b500000-rec0.1", 5e5),
])
def test_run_names_tell_the_cores_variants_apart(flags, name, base):
    args = parse(["--phase", "2", *flags])
    assert (args.run_name, args.rope_base) == (name, base)


def test_the_twin_of_a_named_run_is_named_after_it(tmp_path):
    argv = ["--phase", "2", "--out-dir", str(tmp_path)]
    plain = parse(argv)
    assert train.plan_twin(plain, argv, train.Lab()).name == "phase2-ce-b10000-b500000"
    named = parse(argv + ["--run-name", "my-kd-run"])
    assert train.plan_twin(named, argv + ["--run-name", "my-kd-run"], train.Lab()).name == "my-ce-run"


def records_placed(stages):
    """One line: per long-document stage, records asked for per window and placed on average in its first batch
    (data.place_pairs drops a record that finds no free slot); None when no stage asks for records."""
    asked = {name: src.make.keywords.get("n_pairs") for name, src, *_ in stages}
    parts = [f"{name} {asked[name]} -> {src.batch(0)['answers'].sum(1).mean():.1f}" for name, src, *_ in stages
             if asked[name]]
    return "  records per window, asked -> placed: " + ", ".join(parts) if parts else None


def test_presets_ask_only_for_records_the_data_can_place():
    assert all(pre["long_pairs"] <= TaskSpec().n_keys for pre in config.PRESETS.values())  # unique keys per document
    teacher = parse(["--phase", "teacher"])
    line = records_placed(stages_of(teacher))  # the curriculum drops some
    assert "curriculum-16 3 -> 2.4" in line and "curriculum-128 24 -> 21.0" in line and "main 48 -> 48.0" in line
    assert records_placed(stages_of(parse(["--phase", "2"]))) is None  # packed documents: nothing asked per window


def test_trains_on_a_real_text_file(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"paragraph {i}: " + "some words " * (i % 7 + 1) for i in range(300)))
    out = str(tmp_path / "out")
    run(["--phase", "teacher", "--out-dir", out, "--data", str(corpus), "--steps", "30"])
    res = json.load(open(os.path.join(out, "corpus-teacher.json")))["results"]["corpus-teacher"]  # named by its text
    assert 0 < res["corpus_ce"] < 5.0  # below uniform over 257 byte tokens (5.55 nats): it learned something
    assert load_checkpoint(os.path.join(out, "corpus-teacher.pt"))["config"]["vocab_size"] == 257


def test_a_probe_distance_that_does_not_fit_the_window_is_not_measurable(tmp_path, capsys):
    """The tiny probes are at D = 4, 12, 40: in a 41-token window D=40 places no record (it needs 42), so it is
    reported as null / "-", never as an accuracy of 0.00; the quick checks during training too."""
    run(["--phase", "teacher", "--out-dir", str(tmp_path), "--window", "41", "--curriculum-steps", "0", "--steps",
         "4", "--eval-interval", "2"])
    saved = json.load(open(tmp_path / "teacher.json"))
    res = saved["results"]["teacher"]
    assert res["kv"]["40"] is None and res["kv"]["12"] is not None
    assert saved["floors"]["best"]["40"] is None and 0 < saved["floors"]["best"]["4"] < 1
    quick = [r["eval"] for r in map(json.loads, open(tmp_path / "teacher.jsonl")) if "eval" in r]
    assert quick and all(q["kv"]["40"] is None for q in quick)
    printed = capsys.readouterr().out
    assert "D=40: -" in printed and "| - |" in printed and "| floor | " in printed


def packed(windows, window, max_doc_len, min_doc_len, seed=0):
    """A source of packed short documents of the synthetic language."""
    make = functools.partial(synthetic_batch, TaskSpec(), kind="packed", batch_size=windows, window=window,
                             max_doc_len=max_doc_len, min_doc_len=min_doc_len)
    return DataSource(make, windows, seed, window)


def test_kd_reaches_the_gradient():
    """With --kd-weight 1 the student learns from the teacher alone: two teachers give two students, and the KL to
    its teacher falls step by step."""
    cpu = torch.device("cpu")
    args = parse(["--phase", "2", "--preset", "tiny", "--kd-weight", "1"])
    batch = to_device(packed(2, 32, max_doc_len=16, min_doc_len=8).batch(0), cpu)
    cfg = GPTConfig(d_model=32, n_head=2, n_kv_head=2, max_seq_len=32)
    students = []
    for teacher_seed in (1, 2):
        torch.manual_seed(0)
        student = GPT(cfg)
        torch.manual_seed(teacher_seed)
        teacher = freeze_teacher(GPT(cfg), cpu)
        opt = train.make_optimizer(student, args, torch.device("cpu"))
        kls = [train.train_step(student, teacher, opt, batch, args, nullcontext())[2] for _ in range(4)]
        assert kls[-1] < kls[0]
        students.append(student)
    assert not torch.equal(students[0].tok_emb.weight, students[1].tok_emb.weight)


# ----------------------------------------------------------------------------- flags, each on a tiny phase 1

tiny_teacher, phase1, reference = tiny.fixtures(run, lambda argv: parse(argv + TINY))  # tests/tiny.py


def test_bf16_autocast_changes_the_numbers_only_slightly(tiny_teacher, tmp_path):
    f32, _ = phase1(tmp_path / "f32", tiny_teacher, "--dtype", "float32")
    bf16, _ = phase1(tmp_path / "bf16", tiny_teacher, "--dtype", "bfloat16")
    assert bf16[0]["loss"] != f32[0]["loss"]  # the same weights at step 1: autocast did run
    for a, b in zip(bf16, f32):
        assert a["loss"] == pytest.approx(b["loss"], rel=0.02) and a["kl"] == pytest.approx(b["kl"], abs=2e-3)


def tiny_kd_setup(windows):
    """Phase-2 flags with 0.5 CE + 0.5 KD, a packed batch of `windows` x 32 tokens, a tiny student and teacher."""
    cpu = torch.device("cpu")
    args = parse(["--phase", "2", "--preset", "tiny", "--kd-weight", "0.5"])
    batch = to_device(packed(windows, 32, max_doc_len=16, min_doc_len=8).batch(0), cpu)
    cfg = GPTConfig(d_model=32, n_head=2, n_kv_head=2, max_seq_len=32)
    torch.manual_seed(0)
    return args, batch, GPT(cfg), freeze_teacher(GPT(cfg), cpu)


def test_a_bf16_step_keeps_loss_weights_and_optimizer_state_in_float32():
    """bf16 autocast runs the matmuls in bf16 (student and teacher logits come out bf16); the losses, the weights,
    the gradients and AdamW's moments stay float32."""
    args, batch, student, teacher = tiny_kd_setup(2)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    with bf16:
        assert student(batch[0], batch[2]).dtype == torch.bfloat16
        assert distill.teacher_logits(teacher, batch[0], batch[2]).dtype == torch.bfloat16
    opt = train.make_optimizer(student, args, torch.device("cpu"))
    loss, ce, kl, _ = train.train_step(student, teacher, opt, batch, args, bf16)
    assert loss == pytest.approx(0.5 * ce + 0.5 * kl, rel=1e-5)  # summed in float32
    assert student.inv_freq.dtype == torch.float32
    for p in student.parameters():
        state = opt.state[p]
        assert p.dtype == p.grad.dtype == state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32


def test_doc_mask_and_reset_positions(tiny_teacher, reference, tmp_path):
    masked, _ = phase1(tmp_path / "mask", tiny_teacher, "--doc-mask")
    assert masked[0]["loss"] != reference[0]["loss"]  # the mask reaches the forward pass
    args = parse(["--phase", "1", "--preset", "tiny", "--reset-positions", "--doc-mask"])
    positions = stages_of(args)[-1][1].batch(0)["positions"]
    assert (positions[:, 1:] < positions[:, :-1]).any()  # positions restart at documents
    reset, _ = phase1(tmp_path / "reset", tiny_teacher, "--doc-mask", "--reset-positions")
    for a, b in zip(reset, masked):  # within a masked document RoPE sees only differences: the same run
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)


def test_a_second_process_into_the_same_run_refuses_while_the_first_trains(tmp_path, capsys, hold_run_lock):
    """Two runs of one name into one folder would overwrite each other's checkpoint and log: the second refuses."""
    out = tmp_path / "out"
    holder = hold_run_lock(out, "teacher", 12345)  # what a running first process holds
    with pytest.raises(SystemExit) as e:
        run(["--phase", "teacher", "--out-dir", str(out), "--steps", "4", "--curriculum-steps", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "teacher is being trained" in err[0] and "pid 12345" in err[0]
    assert sorted(os.listdir(out)) == [".teacher.lock"]  # nothing written
    holder.close()  # the first process ends: the lock goes with it
    run(["--phase", "teacher", "--out-dir", str(out), "--steps", "4", "--curriculum-steps", "0"])
    assert load_checkpoint(str(out / "teacher.pt"))["done"]


def test_grad_accum_in_one_process_trains_like_one_batch(tmp_path):
    """--grad-accum K: K micro-batches of B/K windows, each loss divided by K, give the gradient of the batch."""
    argv = ["--phase", "teacher", "--curriculum-steps", "0", "--steps", "20", "--batch-size", "4",
            "--eval-interval", "0"]
    run(argv + ["--out-dir", str(tmp_path / "one")])
    run(argv + ["--out-dir", str(tmp_path / "acc"), "--grad-accum", "2"])
    a, b = (losses(str(tmp_path / d / "teacher.jsonl")) for d in ("one", "acc"))
    assert len(a) == len(b) == 20
    assert max(abs(x[1] - y[1]) for x, y in zip(a, b)) < 1e-5  # a mean of two halves vs a mean of four rows
    wa, wb = (load_checkpoint(str(tmp_path / d / "teacher.pt"))["model"] for d in ("one", "acc"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_flops_count_each_stage_at_its_own_window():
    """A curriculum stage of 16-token windows costs fewer FLOPs per token than the phase's window."""
    from scale.bench import flops_per_token
    args = parse(["--phase", "teacher"] + TINY)
    args.autocast_dtype = "float32"
    model = GPT(GPTConfig(vocab_size=193, d_model=32, n_layer=2, n_head=2, n_kv_head=2))
    short, long_ = flops_per_token(model, 8), flops_per_token(model, args.window)
    assert short < long_
    speed = report.report_speed(args, 2000, 2.0)
    assert speed["tokens_per_s"] == pytest.approx(1000.0) and speed["train_seconds"] == 2.0


def accumulated_and_whole(student, teacher, batch, args, grad_accum=2):
    """(train.accumulate's stats and gradients over grad_accum micro-batches, the one-batch loss and gradients)."""
    student.zero_grad(set_to_none=True)
    whole = train.training_loss(student, teacher, batch, args, nullcontext())
    whole[0].backward()
    g_whole = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    counts = train.term_counts(batch)  # what train_step counts first (then summed across ranks)
    stats = train.accumulate(student, batch, grad_accum,
                             lambda micro: train.training_loss(student, teacher, micro, args, nullcontext(), counts))
    g_acc = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    return stats, g_acc, whole, g_whole


def test_accumulated_micro_batches_give_the_batch_gradient():
    """train.accumulate over K micro-batches (each term's sum over the global count) gives the gradient and the
    logged loss of one batch."""
    args, batch, student, teacher = tiny_kd_setup(4)
    stats, g_acc, whole, g_whole = accumulated_and_whole(student, teacher, batch, args)
    assert all(torch.allclose(a, g, atol=1e-6) for a, g in zip(g_acc, g_whole))
    assert stats[:3].tolist() == pytest.approx([whole[0].item(), whole[1].item(), whole[2].item()], abs=1e-6)
    assert stats[3:].tolist() == [whole[3].item(), whole[4].item()]  # answers counted, not averaged


def test_progress_in_a_log_file_is_a_few_lines_not_one_per_step(capsys):
    """Off a terminal the bar writes whole lines on a 30 s clock: 1,000 quick steps give a start and an end line."""
    bar = train.progress_bar(1000, 0, "run main")
    for _ in range(1000):
        bar.set_postfix(loss="1.0", refresh=False)
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err and 1 <= len(err.splitlines()) <= 3 and "1000/1000" in err.splitlines()[-1]


def test_a_default_step_runs_the_plain_kl_and_cross_entropy(monkeypatch):
    """The main command's step computes distill.plain_kd_loss and F.cross_entropy as the paper writes them, once
    each per step (the chunked terms of variants/chunked.py are the lab's, for a real vocabulary)."""
    args = parse(["--phase", "2"])  # python train.py --phase 2 ...
    assert train.loss_name(args) == "0.1 CE + 0.9 KD(T=1)"  # the KD student
    _, batch, student, teacher = tiny_kd_setup(2)  # the same step on tiny shapes
    calls = {"kl": 0, "ce": 0}
    plain_kl = distill.plain_kd_loss
    plain_ce = torch.nn.functional.cross_entropy
    monkeypatch.setattr(distill, "plain_kd_loss", lambda *a: calls.__setitem__("kl", calls["kl"] + 1) or plain_kl(*a))
    monkeypatch.setattr(distill.F, "cross_entropy",
                        lambda *a, **k: calls.__setitem__("ce", calls["ce"] + 1) or plain_ce(*a, **k))
    train.training_loss(student, teacher, batch, args, nullcontext())
    stepped = copy.deepcopy(student)
    train.train_step(stepped, teacher, train.make_optimizer(stepped, args, torch.device("cpu")), batch, args,
                     nullcontext())
    assert calls == {"kl": 2, "ce": 2}


def test_the_held_out_corpus_loss_is_measured_under_the_runs_document_mask(tmp_path):
    """A --doc-mask run's corpus loss attends within documents, as it trained; a plain run's across them."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"paragraph {i}: " + "some words " * (i % 7 + 1) for i in range(300)))
    args = parse(["--phase", "teacher", "--data", str(corpus), "--doc-mask"] + TINY)
    task = TextTask(str(corpus))
    task.prepare(args)
    held = task.corpus.held_out
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=257, d_model=32, n_head=2, n_kv_head=2, max_seq_len=args.window))
    masked = task.evaluate(model, args, cpu, nullcontext(), report.HELDOUT_SEEDS)["corpus_ce"]
    x, y, pos, doc, _ = to_device({k: v[:args.batch_size] for k, v in held.items()}, cpu)
    want = torch.nn.functional.cross_entropy(model(x, pos, doc).flatten(0, 1), y.flatten())
    args.doc_mask = False
    plain = task.evaluate(model, args, cpu, nullcontext(), report.HELDOUT_SEEDS)["corpus_ce"]
    assert masked != pytest.approx(plain, abs=1e-6)
    if len(held["tokens"]) <= args.batch_size:  # one batch: the value itself
        assert masked == pytest.approx(want.item(), rel=1e-5)


def test_a_run_that_ignores_sigint_keeps_ignoring_it(tmp_path):
    """Started with SIGINT ignored (a background job), the loop installs no handler and training is not stopped."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with train.StopOnInterrupt() as c:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            ctrl_c()
            assert not c.requested()
    finally:
        signal.signal(signal.SIGINT, old)
