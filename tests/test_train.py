"""train.py end to end on the tiny preset: three phases, outputs, exact resume, faults, bad input."""
import copy
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

import evaluate as report
import runs
from scale import twin
import train
from data import DataSource, TaskSpec, to_device
import distill
from distill import freeze_teacher
from model import GPT, GPTConfig, load_checkpoint, load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--threads", "1", "--device", "cpu"]


def run(argv, capsys=None):
    train.main(argv + TINY)


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
    from scale import device
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    out = str(tmp_path)
    run(["--phase", "2", "--out-dir", out, "--no-baseline", "--peak-flops", "1e9"])
    dtypes = {name: json.load(open(os.path.join(out, name + ".json")))["speed"]["dtype"]
              for name in ("teacher", "phase1-b10000", "phase2-kd-b10000-b500000")}
    assert dtypes == {"teacher": "float32", "phase1-b10000": "float32", "phase2-kd-b10000-b500000": "bfloat16"}


def test_no_auto_refuses_missing_prerequisites(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runs, "SHIPPED", str(tmp_path / "none"))
    with pytest.raises(SystemExit) as e:
        run(["--phase", "2", "--out-dir", str(tmp_path), "--no-auto", "--no-baseline"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no teacher checkpoint" in err[0]
    assert os.listdir(tmp_path) == []


def test_killed_run_resumes_to_identical_losses(tmp_path):
    common = ["--phase", "teacher", "--curriculum-steps", "0", "--steps", "300", "--save-interval", "2",
              "--eval-interval", "0"] + TINY
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    subprocess.run([sys.executable, "train.py", "--out-dir", full] + common, cwd=ROOT, check=True,
                   capture_output=True)
    proc = subprocess.Popen([sys.executable, "train.py", "--out-dir", cut] + common, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(cut, "teacher.pt")
    while not os.path.exists(ckpt) and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(ckpt)["step"]
    assert 0 < killed_at < 300
    subprocess.run([sys.executable, "train.py", "--out-dir", cut, "--resume"] + common, cwd=ROOT, check=True,
                   capture_output=True)
    a, b = losses(os.path.join(full, "teacher.jsonl")), losses(os.path.join(cut, "teacher.jsonl"))
    assert len(a) == len(b) == 300 and a == b  # bit-exact on CPU
    assert torch.equal(load_checkpoint(ckpt)["model"]["tok_emb.weight"],
                       load_checkpoint(os.path.join(full, "teacher.pt"))["model"]["tok_emb.weight"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    real, calls = train.train_step, []

    def flaky(*a, **k):
        calls.append(1)
        loss, ce, kl, acc = real(*a, **k)
        return (float("nan") if len(calls) == 7 else loss), ce, kl, acc

    monkeypatch.setattr(train, "train_step", flaky)
    with pytest.raises(SystemExit):
        run(["--phase", "teacher", "--out-dir", str(tmp_path), "--curriculum-steps", "0", "--steps", "20",
             "--save-interval", "4"])
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
    argv = ["--phase", "teacher", "--curriculum-steps", "0", "--steps", "12", "--save-interval", "100",
            "--eval-interval", "0"]
    run(argv + ["--out-dir", str(tmp_path / "full")])
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
        run(argv + ["--out-dir", cut])
    assert e.value.code == 130 and signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    ckpt = load_checkpoint(os.path.join(cut, "teacher.pt"))
    assert ckpt["step"] == 5 and not ckpt["done"]
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    run(argv + ["--out-dir", cut, "--resume"])
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
             "--save-interval", "4", "--eval-interval", "0"])
    assert e.value.code == 130 and "interrupted twice" in capsys.readouterr().err
    assert load_checkpoint(str(tmp_path / "teacher.pt"))["step"] == 4  # the last save, not the half step


def test_the_acceptance_test_reads_the_first_stage_and_the_shortest_distance(tmp_path):
    log = tmp_path / "run.jsonl"  # 3 steps of the first stage, a probe line (no stage), 2 of the next
    log.write_text("".join(json.dumps(r) + "\n" for r in [{"step": 1, "stage": "curriculum-16"}, {"step": 2, "stage":
        "curriculum-16"}, {"step": 3, "stage": "curriculum-16"}, {"step": 3, "kv": {}}, {"step": 4, "stage":
        "curriculum-32"}, {"step": 5, "stage": "curriculum-32"}]))
    assert runs.stage_steps(str(log), "curriculum-16") == 3 and runs.stage_steps(str(log), "main") == 0
    assert runs.accepted(623, 0.98) and runs.accepted(903, 0.85)  # passed before its cap, D = 16 >= 0.85
    assert not runs.accepted(903, 0.84) and not runs.accepted(None, 0.99)  # None: the stage ran to its cap


def test_retries_train_the_next_student_while_the_test_fails(tmp_path, capsys, monkeypatch):
    """A tiny student never passes its first stage (3 steps, an early end needs 50): rejected, the next one is
    trained with --seed + 1000, every student is kept and listed, and no acceptance ends in exit code 1."""
    out = str(tmp_path / "o")
    with pytest.raises(SystemExit) as e:
        run(["--phase", "1", "--out-dir", out, "--seed", "5", "--retries", "1"])
    assert e.value.code == 1 and "no phase-1 student accepted in 2 (seeds 5, 1005)" in capsys.readouterr().err
    record = json.load(open(os.path.join(out, "phase1-b10000-s5.accept.json")))
    assert record["accepted_seed"] is None and [s["seed"] for s in record["students"]] == [5, 1005]
    assert all(s["stage"] == "curriculum-8" and s["stage_passed_at"] is None and s["distance"] == 4
               for s in record["students"])
    assert all(load_checkpoint(os.path.join(out, f"phase1-b10000-s{s}.pt"))["done"] for s in (5, 1005))
    for ext in (".pt", ".json", ".jsonl"):  # the second student as if the chain had stopped before it began
        os.remove(os.path.join(out, "phase1-b10000-s1005" + ext))
    calls = []  # now the test takes the second student it sees: no third one is trained, phase 2 is told its file
    monkeypatch.setattr(runs, "accepted", lambda step, kv: calls.append(kv) or len(calls) == 2)
    run(["--phase", "1", "--out-dir", out, "--seed", "5", "--retries", "3", "--resume"])  # --resume: trains s1005
    record = json.load(open(os.path.join(out, "phase1-b10000-s5.accept.json")))
    init = os.path.join(out, "phase1-b10000-s1005.pt")
    assert record["accepted_seed"] == 1005 and [s["accepted"] for s in record["students"]] == [False, True]
    assert record["phase2_init"] == init and load_checkpoint(init)["done"]
    assert not os.path.exists(os.path.join(out, "phase1-b10000-s2005.pt"))
    assert json.load(open(os.path.join(out, "phase1-b10000-s5.json")))["speed"]["train_seconds"] > 0  # kept
    assert (f"python train.py --phase 2 --preset tiny --phase1-seed 1005 --init {init} --out-dir {out}"
            in capsys.readouterr().out)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun: refused before anything is trained
    from config import build_parser, resolve
    argv = ["--phase", "1", "--retries", "1", "--out-dir", out] + TINY
    with pytest.raises(SystemExit):
        runs.check_inputs(resolve(build_parser().parse_args(argv)))
    assert "without torchrun" in capsys.readouterr().err


def test_curriculum_doubles_the_window_up_to_the_phase_window():
    args = train.resolve(train.build_parser().parse_args(["--phase", "1", "--window", "256"]))
    stages = train.make_stages(args, train.TaskSpec())
    assert [name for name, *_ in stages] == ["curriculum-16", "curriculum-32", "curriculum-64", "curriculum-128",
                                             "main"]
    for name, src, steps, stop in stages[:-1]:
        assert src.kind == "long" and src.window * src.batch_size == 4096 and stop == 0.95
        assert src.n_pairs == 3 * src.window // 16
    assert stages[-1][1].kind == "packed" and stages[-1][1].window == 256 and stages[-1][3] is None
    seeds = [src.seed for _, src, *_ in stages]
    assert len(set(seeds)) == len(seeds)  # every stage its own stream
    teacher = train.resolve(train.build_parser().parse_args(["--phase", "teacher"]))
    assert train.make_stages(teacher, train.TaskSpec())[0][1].seed != seeds[0]  # student is not the teacher's twin


def test_shipped_prerequisites_serve_only_the_cpu_preset(tmp_path):
    args = train.resolve(train.build_parser().parse_args(["--phase", "2", "--out-dir", str(tmp_path), "--no-auto"]))
    assert runs.ensure(args, "teacher", None, "teacher.pt", [], None) == os.path.join(runs.SHIPPED, "teacher.pt")
    assert runs.ensure(args, "phase-1", None, "phase1-b10000.pt", [], None).startswith(runs.SHIPPED)
    assert runs.train_prerequisites(args, None) == (os.path.join(runs.SHIPPED, "teacher.pt"),
                                                    os.path.join(runs.SHIPPED, "phase1-b10000.pt"))
    old = train.resolve(train.build_parser().parse_args(["--phase", "2", "--out-dir", str(tmp_path), "--no-auto",
                                                         "--phase1-window", "256"]))
    assert runs.phase1_path(old) == os.path.join(runs.SHIPPED, "phase1-b10000-w256.pt")
    assert old.run_name == "phase2-kd-b10000-b500000-w256"
    tiny = train.resolve(train.build_parser().parse_args(["--phase", "2", "--out-dir", str(tmp_path), "--no-auto",
                                                          "--preset", "tiny"]))
    with pytest.raises(SystemExit):  # a tiny run must not pick up the cpu-preset teacher
        runs.ensure(tiny, "teacher", None, "teacher.pt", [], None)


def test_default_phase1_is_short_window_and_its_documents_fit_it():
    p1 = train.resolve(train.build_parser().parse_args(["--phase", "1"]))
    assert (p1.window, p1.max_doc_len, p1.min_doc_len, p1.rope_base, p1.run_name) == (32, 32, 8, 1e4, "phase1-b10000")
    assert [name for name, *_ in train.make_stages(p1, train.TaskSpec())] == ["curriculum-16", "main"]
    p2 = train.resolve(train.build_parser().parse_args(["--phase", "2", "--phase1-seed", "1", "--seed", "2"]))
    assert (p2.window, p2.max_doc_len, p2.rope_base, p2.phase1_base) == (1024, 128, 5e5, 1e4)
    assert p2.run_name == "phase2-kd-b10000-b500000-p1-s2"


YARN = '{"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 256}'


def test_window_ramp_trains_the_main_stages_packed_documents_in_shorter_windows_first():
    args = train.resolve(train.build_parser().parse_args(["--phase", "2", "--ramp-windows", "128", "512",
                                                          "--ramp-steps", "7"]))
    stages = train.make_stages(args, train.TaskSpec())
    assert [name for name, *_ in stages] == ["ramp-128", "ramp-512", "main"]
    for _, src, steps, stop in stages:
        assert src.kind == "packed" and src.window * src.batch_size == 4 * 1024 and stop is None
        assert (src.max_doc_len, src.min_doc_len) == (128, 32)
    assert [steps for _, _, steps, _ in stages] == [7, 7, 1000]
    assert len({src.seed for _, src, *_ in stages}) == 3  # every stage its own stream
    plain = train.resolve(train.build_parser().parse_args(["--phase", "2"]))
    assert [name for name, *_ in train.make_stages(plain, train.TaskSpec())] == ["main"]  # the recipe: no ramp


@pytest.mark.parametrize("argv, msg", [(["--phase", "1", "--ramp-windows", "16"], "needs --phase 2"),
                                       (["--ramp-windows", "2048"], "must lie in [--max-doc-len 128, --window 1024)"),
                                       (["--ramp-windows", "256", "--ramp-steps", "0"], "--ramp-steps must be >= 1"),
                                       (["--queries", "0"], "--queries must lie in [1, 4]"),
                                       (["--queries", "2", "--data", "x.txt"], "--queries sets how the packer")])
def test_window_ramp_and_packer_nonsense_fails_in_one_line(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        train.resolve(train.build_parser().parse_args(["--phase", "2"] + argv))
    assert e.value.code == 2 and msg in capsys.readouterr().err


@pytest.mark.parametrize("flags,name,base", [
    ([], "phase2-kd-b10000-b500000", 5e5),
    (["--kd-loss", "reverse"], "phase2-kd-b10000-b500000-rkl", 5e5),
    (["--kd-loss", "jsd", "--jsd-beta", "0.25", "--temperature", "2"], "phase2-kd-b10000-b500000-jsd0.25-T2", 5e5),
    (["--doc-mask", "--reset-positions", "--seed", "1"], "phase2-kd-b10000-b500000-dm-rp-s1", 5e5),
    (["--rope-scaling", YARN], "phase2-kd-b10000-b10000-yarn4", 1e4),  # the scaling replaces the base change
    (["--rope-scaling", YARN, "--rope-base", "20000"], "phase2-kd-b10000-b20000-yarn4", 2e4),
    (["--kd-weight", "0", "--kd-loss", "reverse", "--temperature", "2"], "phase2-ce-b10000-b500000", 5e5),
    (["--ramp-windows", "128", "256", "--ramp-steps", "50"], "phase2-kd-b10000-b500000-ramp128.256x50", 5e5),
    (["--queries", "2", "--recurrence", "0.1"], "phase2-kd-b10000-b500000-rec0.1-q2", 5e5),
])
def test_run_names_tell_variants_apart(flags, name, base):
    args = train.resolve(train.build_parser().parse_args(["--phase", "2", *flags]))
    assert (args.run_name, args.rope_base) == (name, base)


def test_variant_twin_reuses_the_plain_ce_run(tmp_path):
    args = train.resolve(train.build_parser().parse_args(["--phase", "2", "--kd-loss", "reverse"]))
    assert twin.plan_twin(args, ["--phase", "2", "--kd-loss", "reverse"])[0] == "phase2-ce-b10000-b500000"
    named = train.resolve(train.build_parser().parse_args(["--phase", "2", "--run-name", "my-kd-run"]))
    assert twin.plan_twin(named, ["--phase", "2", "--run-name", "my-kd-run"])[0] == "my-ce-run"


def test_presets_ask_only_for_records_the_data_can_place():
    assert all(pre["long_pairs"] <= TaskSpec().n_keys for pre in train.PRESETS.values())  # unique keys per document
    teacher = train.resolve(train.build_parser().parse_args(["--phase", "teacher"]))
    line = report.records_placed(train.make_stages(teacher, TaskSpec()))  # said, not silent: the curriculum drops some
    assert "curriculum-16 3 -> 2.4" in line and "curriculum-128 24 -> 21.0" in line and "main 48 -> 48.0" in line
    assert report.records_placed(train.make_stages(train.resolve(train.build_parser().parse_args(["--phase", "2"])),
                                                  TaskSpec())) is None  # packed documents: nothing asked per window


def test_trains_on_a_real_text_file(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"paragraph {i}: " + "some words " * (i % 7 + 1) for i in range(300)))
    out = str(tmp_path / "out")
    run(["--phase", "teacher", "--out-dir", out, "--data", str(corpus), "--steps", "30"])
    res = json.load(open(os.path.join(out, "corpus-teacher.json")))["results"]["corpus-teacher"]  # named by its text
    assert 0 < res["corpus_ce"] < 5.0  # below uniform over 257 byte tokens (5.55 nats): it learned something
    assert load_checkpoint(os.path.join(out, "corpus-teacher.pt"))["config"]["vocab_size"] == 257


def test_distills_an_hf_folder_teacher_on_text_in_its_own_tokens(tmp_path):
    """--teacher an HF Llama folder, --tokenizer its BPE: the student gets the teacher's vocabulary."""
    from formats import hf
    from model import GPT, GPTConfig
    from test_tokenizer import make
    tok = make()
    teacher = GPT(GPTConfig(vocab_size=len(tok), n_layer=1, n_head=2, n_kv_head=2, d_model=16, d_ff=32))
    folder = str(tmp_path / "teacher-hf")
    hf.save_hf_folder(teacher, folder, tok.files())
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("the and then " * (i % 5 + 1) for i in range(200)))
    out = str(tmp_path / "out")
    run(["--phase", "1", "--out-dir", out, "--data", str(corpus), "--tokenizer", folder, "--teacher", folder,
         "--steps", "5"])
    name = "corpus-teacher-hf-phase1-b10000"  # the text's and the tokenizer's names in front
    res = json.load(open(os.path.join(out, name + ".json")))["results"]
    assert set(res) == {name, "teacher"} and res["teacher"]["corpus_ce"] > 0
    ckpt = load_checkpoint(os.path.join(out, name + ".pt"))
    assert ckpt["config"]["vocab_size"] == len(tok) and ckpt["args"]["kd_weight"] == 0.5


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


def test_kd_reaches_the_gradient():
    """With --kd-weight 1 the student learns from the teacher alone: two teachers give two students, and the KL to
    its teacher falls step by step."""
    cpu = torch.device("cpu")
    args = train.resolve(train.build_parser().parse_args(["--phase", "2", "--preset", "tiny", "--kd-weight", "1"]))
    batch = to_device(DataSource(TaskSpec(), "packed", 32, 2, seed=0, max_doc_len=16, min_doc_len=8).batch(0), cpu)
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

@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    run(["--phase", "teacher", "--out-dir", str(out), "--curriculum-steps", "0", "--steps", "3", "--eval-interval",
         "0"])
    return str(out / "teacher.pt")


def phase1(out, teacher, *flags, steps=4):
    """A tiny phase-1 run (KD 0.5 from the shared teacher) with extra flags; returns (log records, out folder)."""
    argv = ["--phase", "1", "--out-dir", str(out), "--teacher", teacher, "--curriculum-steps", "0", "--steps",
            str(steps), "--eval-interval", "0", "--peak-flops", "1e9", *flags]
    run(argv)
    name = train.resolve(train.build_parser().parse_args(argv + TINY)).run_name  # flags like --doc-mask name it
    recs = [r for r in map(json.loads, open(os.path.join(out, name + ".jsonl"))) if "loss" in r]
    assert len(recs) == steps and all(math.isfinite(r["loss"]) for r in recs)
    return recs, out


@pytest.fixture(scope="module")
def reference(tiny_teacher, tmp_path_factory):
    return phase1(tmp_path_factory.mktemp("ref"), tiny_teacher)[0]


def test_bf16_autocast_changes_the_numbers_only_slightly(tiny_teacher, tmp_path):
    f32, _ = phase1(tmp_path / "f32", tiny_teacher, "--dtype", "float32")
    bf16, _ = phase1(tmp_path / "bf16", tiny_teacher, "--dtype", "bfloat16")
    assert bf16[0]["loss"] != f32[0]["loss"]  # the same weights at step 1: autocast did run
    for a, b in zip(bf16, f32):
        assert a["loss"] == pytest.approx(b["loss"], rel=0.02) and a["kl"] == pytest.approx(b["kl"], abs=2e-3)


def tiny_kd_setup(windows):
    """Phase-2 flags with 0.5 CE + 0.5 KD, a packed batch of `windows` x 32 tokens, a tiny student and teacher."""
    cpu = torch.device("cpu")
    args = train.resolve(train.build_parser().parse_args(["--phase", "2", "--preset", "tiny", "--kd-weight", "0.5"]))
    batch = to_device(DataSource(TaskSpec(), "packed", 32, windows, seed=0, max_doc_len=16, min_doc_len=8).batch(0),
                      cpu)
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
    args = train.resolve(train.build_parser().parse_args(["--phase", "1", "--preset", "tiny", "--reset-positions",
                                                          "--doc-mask"]))
    positions = train.make_stages(args, TaskSpec())[-1][1].batch(0)["positions"]
    assert (positions[:, 1:] < positions[:, :-1]).any()  # positions restart at documents
    reset, _ = phase1(tmp_path / "reset", tiny_teacher, "--doc-mask", "--reset-positions")
    for a, b in zip(reset, masked):  # within a masked document RoPE sees only differences: the same run
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_kd_loss_kind_is_the_logged_divergence_and_half_the_loss(tiny_teacher, reference, tmp_path, kind):
    recs = reference if kind == "forward" else phase1(tmp_path, tiny_teacher, "--kd-loss", kind)[0]
    for r in recs:  # phase 1: 0.5 CE + 0.5 KD at temperature 1
        assert r["loss"] == pytest.approx(0.5 * r["ce"] + 0.5 * r["kl"], rel=1e-5)
        assert r["kl"] > 0
    if kind != "forward":
        assert recs[0]["kl"] != reference[0]["kl"]  # same weights and batch at step 1: another divergence
    if kind == "jsd":
        assert all(r["kl"] <= math.log(2) for r in recs)


def test_cosine_schedule(tiny_teacher, reference, tmp_path):
    recs, _ = phase1(tmp_path, tiny_teacher, "--schedule", "cosine", steps=6)
    lr, warmup = 2e-3, 2  # the tiny preset's
    expect = [lr * (i + 1) / warmup if i < warmup else lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (i - warmup) / 4)))
              for i in range(6)]
    assert [r["lr"] for r in recs] == pytest.approx(expect)
    assert [r["lr"] for r in reference][warmup:] == [lr] * (4 - warmup)  # constant by default


def test_yarn_rope_scaling(tiny_teacher, reference, tmp_path):
    scaling = {"rope_type": "yarn", "factor": 2, "original_max_position_embeddings": 16}
    recs, out = phase1(tmp_path, tiny_teacher, "--rope-scaling", json.dumps(scaling))
    model, ckpt = load_model(os.path.join(out, "phase1-b10000-yarn2.pt"))
    plain = GPT(GPTConfig(**dict(ckpt["config"], rope_scaling=None)))
    assert ckpt["config"]["rope_scaling"] == scaling and model.attention_factor > 1
    assert model.inv_freq[0] == plain.inv_freq[0] and model.inv_freq[-1] == pytest.approx(plain.inv_freq[-1] / 2)
    assert recs[0]["loss"] != reference[0]["loss"]


# ----------------------------------------------------------------------------- phase 2's arms


def arm_args(arm):
    return train.resolve(train.build_parser().parse_args(["--phase", "2", "--preset", "tiny", "--arm", arm]))


@pytest.fixture(scope="module")
def arm_setup():
    """A tiny student, a tiny teacher and a packed batch with far-back targets (the sixth tensor)."""
    cpu = torch.device("cpu")
    batch = to_device(DataSource(TaskSpec(), "packed", 256, 2, seed=0, max_doc_len=32, min_doc_len=8).batch(0), cpu,
                      far_back=True)
    cfg = GPTConfig(d_model=32, n_head=2, n_kv_head=2, max_seq_len=256)
    torch.manual_seed(0)
    student = GPT(cfg)
    torch.manual_seed(1)
    teacher = freeze_teacher(GPT(cfg), cpu)
    assert (batch[4] & batch[5]).any() and (batch[4] & ~batch[5]).any()  # some recurring answers, some fresh
    assert (batch[5] & ~batch[4]).any()  # and records of recurring keys
    return student, teacher, batch


def test_arm_flag_sets_the_loss_and_the_run_name():
    names = {arm: arm_args(arm) for arm in ("ce", "ce-masked", "ce-teacher-labels", "kd", "kd-masked",
                                              "kd-teacher-docmask")}
    assert len({a.run_name for a in names.values()}) == 6  # no run overwrites another
    assert names["kd"].run_name == "phase2-kd-b10000-b500000" and names["ce"].run_name == "phase2-ce-b10000-b500000"
    assert all((a.kd_weight == 0) == arm.startswith("ce") for arm, a in names.items())
    default = train.resolve(train.build_parser().parse_args(["--phase", "2", "--preset", "tiny"]))
    assert default.arm == "kd" and default.kd_weight == 0.9  # the main command keeps its meaning
    ce = train.resolve(train.build_parser().parse_args(["--phase", "2", "--preset", "tiny", "--kd-weight", "0"]))
    assert ce.arm == "ce"


@pytest.mark.parametrize("argv, msg", [(["--arm", "kd", "--kd-weight", "0"], "KD arm"),
                                       (["--arm", "ce-masked", "--kd-weight", "0.5"], "without the KD term"),
                                       (["--arm", "ce", "--phase", "1"], "needs --phase 2")])
def test_arm_contradictions_fail_in_one_line(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        train.resolve(train.build_parser().parse_args(["--phase", "2", "--preset", "tiny"] + argv))
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_ce_masked_loss_ignores_the_far_back_targets(arm_setup):
    student, teacher, batch = arm_setup
    x, y, pos, doc, ans, rec = batch
    args = arm_args("ce-masked")
    loss = train.training_loss(student, teacher, batch, args, nullcontext())[0]
    y2 = torch.where(rec, (y + 7) % 193, y)  # other labels at the far-back targets only (records and answers)
    assert not torch.equal(y2, y)
    assert train.training_loss(student, teacher, (x, y2, pos, doc, ans, rec), args, nullcontext())[0].item() == \
        pytest.approx(loss.item(), abs=1e-6)
    plain = train.training_loss(student, teacher, (x, y2, pos, doc, ans, rec), arm_args("ce"), nullcontext())[0]
    assert plain.item() != pytest.approx(train.training_loss(student, teacher, batch, arm_args("ce"), nullcontext())[0]
                                         .item(), abs=1e-4)  # the plain CE arm does see them


def test_kd_masked_kd_term_ignores_the_far_back_targets(arm_setup):
    student, teacher, batch = arm_setup
    x, y, pos, doc, ans, rec = batch
    args = arm_args("kd-masked")
    with torch.no_grad():
        logits = student(x, pos)
        t_logits = teacher(x, pos)
    kd_keep = train.kd_loss(logits, t_logits, mask=~rec)[0]
    ce = distill.masked_cross_entropy(logits, y)
    loss = train.training_loss(student, teacher, batch, args, nullcontext())[0]
    assert loss.item() == pytest.approx((0.1 * ce + 0.9 * kd_keep).item(), rel=1e-5)


def test_ce_teacher_labels_targets_are_the_teachers_argmax(arm_setup):
    student, teacher, batch = arm_setup
    x, y, pos, doc, ans, rec = batch
    with torch.no_grad():
        t_arg = teacher(x, pos).argmax(-1)
        expected = distill.masked_cross_entropy(student(x, pos), t_arg)
    got = train.training_loss(student, teacher, batch, arm_args("ce-teacher-labels"), nullcontext())[0]
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not torch.equal(t_arg, y)


def test_kd_teacher_docmask_teacher_sees_only_its_document(arm_setup):
    _, teacher, batch = arm_setup
    x, y, pos, doc, ans, rec = batch
    got = distill.arm_terms(teacher, batch, arm_args("kd-teacher-docmask"), nullcontext())[2]
    with torch.no_grad():
        assert torch.allclose(got, teacher(x, pos, doc), atol=1e-6)
        assert not torch.allclose(got, teacher(x, pos), atol=1e-3)  # the mask changes what it predicts
    plain = distill.arm_terms(teacher, batch, arm_args("kd"), nullcontext())[2]
    assert torch.allclose(plain, teacher(x, pos), atol=1e-6)
    assert distill.arm_terms(teacher, batch, arm_args("ce"), nullcontext())[2] is None


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


def test_mfu_counts_each_stage_at_its_own_window():
    """A curriculum stage of 16-token windows costs fewer FLOPs per token than the phase's window."""
    import evaluate as report
    args = train.resolve(train.build_parser().parse_args(["--phase", "teacher", "--peak-flops", "1e9"] + TINY))
    args.autocast_dtype = "float32"
    model = GPT(GPTConfig(vocab_size=193, d_model=32, n_layer=2, n_head=2, n_kv_head=2))
    short, long_ = model.flops_per_token(8), model.flops_per_token(args.window)
    assert short < long_
    speed = report.report_speed(model, args, torch.device("cpu"), 2000, 2.0, flops=1000 * short + 1000 * long_)
    assert speed["mfu"] == pytest.approx((1000 * short + 1000 * long_) / 2.0 / 1e9)


def accumulated_and_whole(student, teacher, batch, args, grad_accum=2):
    """(dist.accumulate's stats and gradients over grad_accum micro-batches, the one-batch loss and gradients)."""
    from scale import dist
    student.zero_grad(set_to_none=True)
    whole = train.training_loss(student, teacher, batch, args, nullcontext())
    whole[0].backward()
    g_whole = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    counts = distill.term_counts(batch, args)  # what train_step counts first (then summed across ranks)
    stats = dist.accumulate(student, batch, grad_accum,
                            lambda micro: train.training_loss(student, teacher, micro, args, nullcontext(), counts))
    g_acc = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    return stats, g_acc, whole, g_whole


def test_accumulated_micro_batches_give_the_batch_gradient():
    """dist.accumulate over K micro-batches (each term's sum over the global count) gives the gradient and the logged
    loss of one batch."""
    args, batch, student, teacher = tiny_kd_setup(4)
    stats, g_acc, whole, g_whole = accumulated_and_whole(student, teacher, batch, args)
    assert all(torch.allclose(a, g, atol=1e-6) for a, g in zip(g_acc, g_whole))
    assert stats[:3].tolist() == pytest.approx([whole[0].item(), whole[1].item(), whole[2].item()], abs=1e-6)
    assert stats[3:].tolist() == [whole[3].item(), whole[4].item()]  # answers counted, not averaged


@pytest.mark.parametrize("arm", ["ce-masked", "kd-masked", "kd-teacher-docmask"])
def test_a_masked_arms_loss_is_the_mean_over_the_kept_tokens_of_the_whole_batch(arm_setup, arm):
    """--grad-accum 2 on two windows that keep different numbers of tokens: the loss, CE, KL and gradients are
    those of the one batch (a mean of the micro-batches' means would weigh their kept tokens unequally)."""
    student, teacher, batch = arm_setup
    far = batch[5].clone()
    far[0, :128] = True  # the first window keeps far fewer tokens than the second
    batch = (*batch[:5], far)
    assert (~far).sum(1).tolist() == [(~batch[5][0, 128:]).sum().item(), (~batch[5][1]).sum().item()] != [256, 256]
    args = arm_args(arm)
    stats, g_acc, whole, g_whole = accumulated_and_whole(student, teacher, batch, args)
    assert all(torch.allclose(a, g, atol=1e-6) for a, g in zip(g_acc, g_whole))
    for got, want in zip(stats[:3].tolist(), whole[:3]):
        assert got == pytest.approx(want.item(), abs=1e-6) or (math.isnan(got) and math.isnan(want.item()))
    means = [train.training_loss(student, teacher, micro, args, nullcontext())[0] for micro in zip(*(t.chunk(2) for t
                                                                                                    in batch))]
    if arm != "kd-teacher-docmask":  # unmasked terms: equal windows, so the mean of means is the batch mean too
        assert abs(sum(means).item() / 2 - whole[0].item()) > 1e-5  # so the check above tells the two apart


def test_progress_in_a_log_file_is_a_few_lines_not_one_per_step(capsys):
    """Off a terminal the bar writes whole lines on a 30 s clock: 1,000 quick steps give a start and an end line."""
    bar = train.progress_bar(1000, 0, "run main")
    for _ in range(1000):
        bar.set_postfix(loss="1.0", refresh=False)
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err and 1 <= len(err.splitlines()) <= 3 and "1000/1000" in err.splitlines()[-1]


def test_large_logits_take_the_chunked_cross_entropy(monkeypatch):
    """With a chunk size (training_loss gives one for logits above CHUNK_ABOVE floats) the CE goes through chunks
    (no float32 copy of all logits): the same value."""
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 40, 30, requires_grad=True), torch.randint(0, 30, (2, 40))
    plain = distill.masked_cross_entropy(logits, targets, None)
    calls = []
    real = distill.chunked_cross_entropy
    monkeypatch.setattr(distill, "chunked_cross_entropy", lambda *a: calls.append(1) or real(*a))
    chunked = distill.masked_cross_entropy(logits, targets, None, chunk_size=16)
    assert calls and chunked.item() == pytest.approx(plain.item(), rel=1e-6)


def spy_on_the_kl(monkeypatch):
    """{"plain": calls of distill.plain_kd_loss, "chunked": calls of ChunkedDivergence.apply}, counted from now on."""
    calls = {"plain": 0, "chunked": 0}
    plain, chunked = distill.plain_kd_loss, distill.ChunkedDivergence.apply

    def count(name, fn):
        return lambda *a, **k: calls.__setitem__(name, calls[name] + 1) or fn(*a, **k)
    monkeypatch.setattr(distill, "plain_kd_loss", count("plain", plain))
    monkeypatch.setattr(distill.ChunkedDivergence, "apply", count("chunked", chunked))
    return calls


def test_a_default_step_runs_the_plain_kl_and_chunks_only_large_logits(monkeypatch):
    """The main command's step (4 windows x 1024 tokens x 193 = 0.8M logits) computes distill.plain_kd_loss and
    F.cross_entropy, never ChunkedDivergence; above CHUNK_ABOVE floats both terms go in chunks, to the same loss."""
    args = train.resolve(train.build_parser().parse_args(["--phase", "2"]))  # python train.py --phase 2 ...
    assert args.arm == "kd" and args.batch_size * args.window * args.vocab_size <= train.CHUNK_ABOVE
    _, batch, student, teacher = tiny_kd_setup(2)  # the same step on tiny shapes
    calls = spy_on_the_kl(monkeypatch)
    plain = train.training_loss(student, teacher, batch, args, nullcontext())
    assert calls == {"plain": 1, "chunked": 0}
    stepped = copy.deepcopy(student)
    train.train_step(stepped, teacher, train.make_optimizer(stepped, args, torch.device("cpu")), batch, args,
                     nullcontext())
    assert calls == {"plain": 2, "chunked": 0}
    monkeypatch.setattr(train, "CHUNK_ABOVE", 0)  # as for a real vocabulary on long windows
    chunked = train.training_loss(student, teacher, batch, args, nullcontext())
    assert calls == {"plain": 2, "chunked": 2}  # the CE and the KD term
    assert [c.item() for c in chunked[:3]] == pytest.approx([p.item() for p in plain[:3]], rel=1e-5)


def test_the_held_out_corpus_loss_is_measured_under_the_runs_document_mask(tmp_path):
    """A --doc-mask run's corpus loss attends within documents, as it trained; a plain run's across them."""
    import evaluate as report
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"paragraph {i}: " + "some words " * (i % 7 + 1) for i in range(300)))
    args = train.resolve(train.build_parser().parse_args(["--phase", "teacher", "--data", str(corpus),
                                                          "--doc-mask"] + TINY))
    held = runs.load_corpus(args)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=257, d_model=32, n_head=2, n_kv_head=2, max_seq_len=args.window))
    masked = report.corpus_loss(model, args, held, torch.device("cpu"), nullcontext())
    x, y, pos, doc, _ = to_device({k: v[:args.batch_size] for k, v in held[1].items()}, torch.device("cpu"))
    want = torch.nn.functional.cross_entropy(model(x, pos, doc).flatten(0, 1), y.flatten())
    args.doc_mask = False
    plain = report.corpus_loss(model, args, held, torch.device("cpu"), nullcontext())
    assert masked != pytest.approx(plain, abs=1e-6)
    if len(held[1]["tokens"]) <= args.batch_size:  # one batch: the value itself
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


def test_init_optimizer_starts_phase_2_from_phase_1s_moments_with_its_own_lr(tiny_teacher, tmp_path):
    _, out = phase1(tmp_path, tiny_teacher)
    init = os.path.join(out, "phase1-b10000.pt")
    argv = ["--phase", "2", "--init", init, "--out-dir", str(out), "--lr", "3e-4"] + TINY
    args = train.resolve(train.build_parser().parse_args(argv + ["--init-optimizer"]))
    assert args.run_name.endswith("-p1opt")  # its own files, beside the recipe's
    model = train.build_student(args, torch.device("cpu"))
    opt = train.make_optimizer(model, args, torch.device("cpu"))
    saved = load_checkpoint(init)["optimizer"]
    for i, p in enumerate(p for group in opt.param_groups for p in group["params"]):  # AdamW's numbering
        assert torch.equal(opt.state[p]["exp_avg_sq"], saved["state"][i]["exp_avg_sq"])
        assert opt.state[p]["exp_avg_sq"].abs().sum() > 0
    assert [g["lr"] for g in opt.param_groups] == [3e-4, 3e-4]  # this run's hyperparameters, not phase 1's
    fresh = train.make_optimizer(model, train.resolve(train.build_parser().parse_args(argv)), torch.device("cpu"))
    assert not fresh.state  # without the flag AdamW starts from zero


def test_init_optimizer_outside_phase_2_fails_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        run(["--phase", "1", "--init-optimizer"])
    assert e.value.code == 2 and "--init-optimizer" in capsys.readouterr().err.strip().splitlines()[-1]


def test_rope_jitter_draws_a_base_per_step_within_the_factor_and_puts_the_base_back():
    args = train.resolve(train.build_parser().parse_args(["--phase", "2", "--preset", "tiny", "--rope-jitter", "2"]))
    assert args.run_name.endswith("-jit2")
    model = GPT(GPTConfig(d_model=32, n_head=2, n_kv_head=2, max_seq_len=32, rope_base=args.rope_base))
    base = model.inv_freq.clone()
    bases = []
    for step in range(20):
        with train.jittered_base(model, args, step):
            ratio = model.inv_freq[1] / base[1]  # pair 1 turns at base**(-2/head_dim): ratio = (F**u)**(-2/hd)
            bases.append(args.rope_base * ratio.item() ** (-model.config.head_dim / 2))
            assert model.inv_freq[0] == base[0]  # pair 0 turns at 1 rad per token under every base
        assert torch.equal(model.inv_freq, base)  # the probes and the checkpoint see the base itself
    assert all(args.rope_base / 2 * 0.999 <= b <= args.rope_base * 2 * 1.001 for b in bases)
    assert min(bases) < args.rope_base / 1.5 and max(bases) > args.rope_base * 1.5  # spread over [b/F, bF]
    with train.jittered_base(model, args, 7):
        again = model.inv_freq.clone()
    with train.jittered_base(model, args, 7):
        assert torch.equal(model.inv_freq, again)  # (seed, step) decides: a resumed run draws the same base
    off = train.resolve(train.build_parser().parse_args(["--phase", "2", "--preset", "tiny"]))
    with train.jittered_base(model, off, 7):
        assert torch.equal(model.inv_freq, base)


@pytest.mark.parametrize("argv", [["--phase", "1", "--rope-jitter", "1.5"], ["--phase", "2", "--rope-jitter", "0.8"],
                                  ["--phase", "2", "--rope-jitter", "inf"]])
def test_rope_jitter_nonsense_fails_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run(argv)
    assert e.value.code == 2 and "--rope-jitter" in capsys.readouterr().err.strip().splitlines()[-1]
