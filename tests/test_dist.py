"""train.py under torchrun (DDP, gloo on CPU, one thread per rank).

2 ranks x b windows train like 1 process x 2b and like 1 process with --grad-accum 2; the ranks
end with the same weights; a 2-rank run killed with SIGKILL resumes to the same losses; a failed save on rank 0,
or a run lock rank 0 cannot take, stops both ranks at once (the last checkpoint kept); the batch
split, the metric reduction and the weight check each on their own; bad shapes fail in one line.
"""
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

import config
import train
from model import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--threads", "1", "--device", "cpu"]
STEPS = 60
# phase 1 of the tiny preset: 0.5 CE + 0.5 KD against a teacher replicated on each rank; global batch 4
PHASE1 = ["--phase", "1", "--curriculum-steps", "0", "--steps", str(STEPS), "--batch-size", "4", "--eval-interval",
          "0"] + TINY
RUN = "phase1-b10000"
RUNNER = """
import contextlib
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {root!r} + "/tests")
import torch.distributed as tdist
import train
from test_dist import weight_spread


class SaveOften(train.Lab):  # a checkpoint every 2 steps: a kill finds one to resume from
    def configure(self, args):
        args.save_interval = 2

    @contextlib.contextmanager
    def step(self, model, opt, args, step):
        yield
        if step + 1 == args.steps and tdist.is_initialized():  # after the last step: do the ranks agree?
            print(f"weight spread across ranks: {{weight_spread(model)}}", flush=True)


train.main(sys.argv[1:], SaveOften())
"""


def weight_spread(model) -> float:
    """max |w_rank - w_other rank| over every weight: 0.0 when the ranks hold the same model (as DDP must keep)."""
    spread = 0.0
    for p in model.parameters():
        hi = p.detach().clone()
        lo = p.detach().clone()
        tdist.all_reduce(hi, tdist.ReduceOp.MAX)
        tdist.all_reduce(lo, tdist.ReduceOp.MIN)
        spread = max(spread, (hi - lo).abs().max().item())
    return spread


class SaveOften(train.Lab):
    """A checkpoint every 2 steps, as the torchrun runs (RUNNER) save."""

    def configure(self, args):
        args.save_interval = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out, *flags):
    """A 2-rank torchrun job of train.py (gloo on 127.0.0.1; a checkpoint every 2 steps), started in the background;
    its output in out.log."""
    os.makedirs(out, exist_ok=True)
    runner = os.path.join(out, "runner.py")
    with open(runner, "w") as f:
        f.write(RUNNER.format(root=ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), runner, "--out-dir", str(out), *flags]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=open(os.path.join(out, "out.log"), "w"), stderr=subprocess.STDOUT)


def finish(proc, out):
    assert proc.wait(timeout=300) == 0, open(os.path.join(out, "out.log")).read()[-3000:]


def losses(out):
    return [r["loss"] for r in map(json.loads, open(os.path.join(out, RUN + ".jsonl"))) if "loss" in r]


def weights(out):
    return load_checkpoint(os.path.join(out, RUN + ".pt"))["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny teacher, then the same phase-1 run four ways: 2 ranks x 2 windows (torchrun), 1 process x 4,
    1 process x 2 micro-batches of 2, and 1 process x 2 windows (another global batch)."""
    root = tmp_path_factory.mktemp("dist")
    train.main(["--phase", "teacher", "--out-dir", str(root / "t"), "--curriculum-steps", "0", "--steps", "3",
                "--eval-interval", "0"] + TINY)
    argv = PHASE1 + ["--teacher", str(root / "t" / "teacher.pt")]
    proc = torchrun(root / "ranks2", *argv)  # the single-process runs below train meanwhile
    train.main(argv + ["--out-dir", str(root / "one")], SaveOften())
    train.main(argv + ["--out-dir", str(root / "accum"), "--grad-accum", "2"], SaveOften())
    train.main(argv + ["--out-dir", str(root / "half"), "--batch-size", "2", "--steps", "5"], SaveOften())
    finish(proc, root / "ranks2")
    return root, argv


def test_two_ranks_train_like_one_process_with_the_same_global_batch(runs):
    root, _ = runs
    two = losses(root / "ranks2")
    assert len(two) == STEPS
    for other in ("one", "accum"):
        assert np.abs(np.subtract(two, losses(root / other))).max() <= 1e-5
        w2, w1 = weights(root / "ranks2"), weights(root / other)
        assert max((w2[k] - w1[k]).abs().max().item() for k in w2) <= 1e-5
    assert abs(two[0] - losses(root / "half")[0]) > 1e-3  # rank 0's rows alone are another batch: it tells


def test_the_ranks_end_with_identical_weights(runs):
    speed = json.load(open(root_file(runs, "ranks2", RUN + ".json")))["speed"]
    assert speed["ranks"] == 2
    log = open(root_file(runs, "ranks2", "out.log")).read()
    assert log.count("== phase 1") == 1 and "per rank, 2 ranks" in log  # rank 0 alone prints
    assert log.count("weight spread across ranks: 0.0") == 1  # every weight equal on both ranks after the last step


def root_file(runs, *parts):
    return os.path.join(runs[0], *parts)


def children(pid):
    """The processes whose parent is `pid` (Linux /proc): torchrun's ranks."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # after "(name)": state, ppid
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid:
            found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's ranks in /proc (Linux)")
def test_a_killed_two_rank_run_resumes_to_identical_losses(runs):
    root, argv = runs
    out = root / "killed"
    proc = torchrun(out, *argv)
    ckpt = out / (RUN + ".pt")
    while not ckpt.exists() and proc.poll() is None:
        time.sleep(0.005)
    ranks = children(proc.pid)
    for pid in [proc.pid] + ranks:  # torchrun and both ranks at once, as when the machine dies
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert len(ranks) == 2 and proc.returncode == -signal.SIGKILL
    killed = load_checkpoint(str(ckpt))
    assert 0 < killed["step"] < STEPS and not killed["done"]
    finish(torchrun(out, *argv, "--resume"), out)
    assert losses(out) == losses(root / "ranks2")  # bit-exact, as for one process
    assert all(torch.equal(v, weights(root / "ranks2")[k]) for k, v in weights(out).items())


# ----------------------------------------------------------------------------- the pieces


def test_batch_shape_gives_each_rank_its_rows_of_the_global_batch():
    shape = train.BatchShape(global_batch=12, world=3, grad_accum=2)
    rows = [np.arange(12)[shape.rows(r)] for r in range(3)]
    assert [len(r) for r in rows] == [4, 4, 4]
    assert np.array_equal(np.concatenate(rows), np.arange(12))  # every window once, in order
    x = torch.arange(8).reshape(4, 2)  # one rank's rows: 4 windows of 2 tokens, in 2 micro-batches of 2 windows
    seen = []
    train.accumulate(torch.nn.Linear(1, 1), (x, -x), 2, lambda micro: seen.append(micro) or loss_of(micro))
    assert len(seen) == 2 and torch.equal(seen[1][0], x[2:]) and torch.equal(seen[1][1], -x[2:])
    for bad in (dict(global_batch=6, world=4), dict(global_batch=6, world=2, grad_accum=2)):
        with pytest.raises(ValueError, match="do not split"):
            train.BatchShape(**bad)


def loss_of(micro):
    """A loss with a gradient and the statistics train.accumulate sums (loss, ce, kl, correct, answers)."""
    w = torch.ones((), requires_grad=True)
    return w * micro[0].float().sum(), w.detach(), torch.tensor(float("nan")), torch.tensor(0.0), torch.tensor(1.0)


def check_collectives(rank, port):
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        assert train.sum_across_ranks(torch.tensor([1.0, rank])).tolist() == [2.0, 1.0]
        model = torch.nn.Linear(3, 2)
        torch.nn.init.constant_(model.weight, 1.0)
        torch.nn.init.constant_(model.bias, 0.5)
        assert weight_spread(model) == 0.0
        with torch.no_grad():
            model.bias[1] += 0.25 * rank  # rank 1 drifts on one weight
        assert weight_spread(model) == 0.25
    finally:
        tdist.destroy_process_group()


def test_metrics_and_weight_check_across_two_processes():
    mp.start_processes(check_collectives, args=(free_port(),), nprocs=2, start_method="fork")


def check_masked_arms_across_ranks(rank, port):
    """On 2 ranks x 2 micro-batches of one window each: train_step's loss, CE, KL and gradients are those of the one
    4-window batch computed in this process, for masked arms whose windows keep different numbers of tokens."""
    from data import TaskSpec, synthetic_batch, to_device
    from distill import freeze_teacher
    from model import GPT, GPTConfig
    from variants import train as variants
    from variants.arms import ArmLoss
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        cpu = torch.device("cpu")
        arrays = synthetic_batch(TaskSpec(), np.random.default_rng([0, 0]), "packed", 4, 64, 16, 8)
        far = torch.from_numpy(arrays["far_back"][:, 1:]).clone()
        far[0, :40] = True  # rank 0's first micro-batch keeps far fewer tokens than the others
        batch = (*to_device(arrays, cpu), far)
        cfg = GPTConfig(d_model=32, n_head=2, n_kv_head=2, max_seq_len=64)
        torch.manual_seed(1)
        teacher = freeze_teacher(GPT(cfg), cpu)
        for arm in ("ce-masked", "kd-masked"):
            opts, rest = variants.parse(["--phase", "2", "--preset", "tiny", "--arm", arm, "--grad-accum", "2",
                                         "--grad-clip", "0"])
            lab = variants.Variants(opts)
            args = config.resolve(config.build_parser().parse_args(rest), lab)
            torch.manual_seed(0)
            student = GPT(cfg)
            whole = ArmLoss(arm)(student, teacher, batch, args, nullcontext())  # one process, one batch
            whole[0].backward()
            g_whole = [p.grad.clone() for p in student.parameters()]
            student.zero_grad(set_to_none=True)
            rows = tuple(t[train.BatchShape(4, 2, 2).rows(rank)] for t in batch)
            opt = torch.optim.SGD(student.parameters(), lr=0.0)  # the gradients stay to be read
            loss, ce, kl, _ = train.train_step(train.wrap(student, cpu), teacher, opt, rows, args, nullcontext(), lab)
            want = [whole[0].item(), whole[1].item(), whole[2].item()]
            assert [loss, ce] == pytest.approx(want[:2], abs=1e-6), (arm, loss, ce, want)
            assert kl == pytest.approx(want[2], abs=1e-6) or (math.isnan(kl) and math.isnan(want[2]))
            assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(student.parameters(), g_whole)), arm
    finally:
        tdist.destroy_process_group()


def test_a_masked_arms_loss_over_ranks_and_micro_batches_is_the_one_batch_loss():
    mp.start_processes(check_masked_arms_across_ranks, args=(free_port(),), nprocs=2, start_method="fork")


def check_topk_kd_across_ranks(rank, port, out_dir):
    """On 2 ranks x 2 micro-batches of one window each: train_step's loss, CE, KL and gradients with a cached
    teacher's top-k KD term are those of the one 4-window batch computed in this process, with every position counted
    (--teacher-topk) and for a masked arm whose windows keep different numbers of tokens."""
    from test_longctx import step_gradients, topk_arm_lab, topk_setup, topk_text_lab, uneven_far_back
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        student, teacher, batch = topk_setup(os.path.join(out_dir, str(rank)))  # each rank's own cache file
        masked = uneven_far_back(batch)
        for args_lab, windows in ((topk_text_lab, batch), (lambda *f: topk_arm_lab("kd-masked", *f), masked)):
            one, lab = args_lab()
            whole = lab.loss(student, teacher, windows, one, nullcontext())  # one process, one batch
            whole[0].backward()
            g_whole = [p.grad.clone() for p in student.parameters()]
            accum, lab = args_lab("--grad-accum", "2")
            rows = tuple(t[train.BatchShape(4, 2, 2).rows(rank)] for t in windows)
            got, g_got = step_gradients(train.wrap(student, torch.device("cpu")), teacher, rows, accum, lab)
            assert got == pytest.approx([w.item() for w in whole[:3]], rel=1e-5), (got, whole)
            assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g_got, g_whole))
    finally:
        tdist.destroy_process_group()


def test_top_k_kd_over_ranks_and_micro_batches_is_the_one_batch_loss(tmp_path):
    for rank in ("0", "1"):
        os.makedirs(tmp_path / rank)
    mp.start_processes(check_topk_kd_across_ranks, args=(free_port(), str(tmp_path)), nprocs=2, start_method="fork")


def check_one_topk_cache_for_every_rank(rank, port, out_dir):
    """Each rank on its own device index (cpu:RANK, as cuda:LOCAL_RANK under torchrun): rank 0 runs the teacher on
    the training windows and writes the cache; rank 1 reads it and never runs the teacher."""
    from longctx.topk import topk_teacher
    from model import GPT, GPTConfig
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        teacher = GPT(GPTConfig(vocab_size=40, n_layer=1, n_head=2, n_kv_head=2, d_model=16, max_seq_len=32)).eval()
        forwards = []
        teacher.register_forward_hook(lambda module, inputs, output: forwards.append(1))
        windows = torch.randint(1, 40, (3, 17), generator=torch.Generator().manual_seed(0))
        path = os.path.join(out_dir, "teacher.pt")
        cached = topk_teacher(teacher, path, windows, 4, out_dir, torch.device(f"cpu:{rank}"))
        ran = torch.tensor([float(len(forwards))])
        every = [torch.zeros(1), torch.zeros(1)]
        tdist.all_gather(every, ran)
        assert [t.item() for t in every] == [3.0, 0.0], every  # one forward per window, on rank 0 alone
        assert len([f for f in os.listdir(out_dir) if f.startswith("teacher-top4-")]) == 1
        assert cached.ids.shape == (3, 16, 4)
    finally:
        tdist.destroy_process_group()


def test_every_rank_reads_the_one_top_k_cache_rank_0_wrote(tmp_path):
    mp.start_processes(check_one_topk_cache_for_every_rank, args=(free_port(), str(tmp_path)), nprocs=2,
                       start_method="fork")


def test_bad_batch_shapes_fail_in_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun --nproc_per_node 2, but
    monkeypatch.setattr(train, "start_process_group", lambda args: None)  # without joining a process group
    cases = [(["--phase", "teacher", "--batch-size", "3"], "--batch-size 3: 3 windows per step do not split into "
              "2 ranks x 1 micro-batches"),
             (["--phase", "1", "--grad-accum", "2"], "the curriculum-16 stage"),
             (["--phase", "teacher", "--batch-size", "8", "--grad-accum", "3"], "2 ranks x 3 micro-batches")]
    for argv, match in cases:
        with pytest.raises(SystemExit) as e:
            train.main(argv + ["--out-dir", str(tmp_path / "out")] + TINY)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "out").exists()


def test_under_torchrun_phase_2_does_not_launch_its_twin_but_says_how(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "world_size", lambda: 2)
    monkeypatch.setattr(train.subprocess, "Popen", lambda *a, **k: pytest.fail("the CE twin was launched"))
    monkeypatch.setattr(train, "train", lambda args, task, previous, lab: {"results": {}})
    monkeypatch.setattr(train, "train_prerequisites", lambda args, lab: None)
    argv = ["--phase", "2", "--out-dir", str(tmp_path)] + TINY
    train.main(argv)
    hint = capsys.readouterr().out
    assert "torchrun --nproc_per_node 2 train.py --phase 2" in hint
    assert "--kd-weight 0 --no-baseline --no-auto --run-name phase2-ce-b10000-b500000" in hint


@pytest.mark.parametrize("attempt", range(int(os.environ.get("TORCHRUN_REPEATS", "1"))))
def test_every_rank_leaves_the_process_group_and_exits_0(tmp_path, attempt):
    """A rank used to abort at exit ("terminate called without an active exception", exit -6) when it tore down
    its gloo connections while its peer still used them, most often on a loaded machine. stop_process_group frees the
    DDP wrapper, meets at a barrier, destroys the group and waits for every rank before returning.
    TORCHRUN_REPEATS=20 runs it 20 times in a row (20 of 20 exited 0 with both cores loaded, 2026-11-29)."""
    out = tmp_path / "out"
    proc = torchrun(out, "--phase", "1", "--curriculum-steps", "0", "--steps", "4", "--batch-size", "4",
                    "--eval-interval", "0", *TINY)
    finish(proc, str(out))
    log = open(os.path.join(out, "out.log")).read()
    assert "terminate called" not in log and "exitcode" not in log


FULL_DISK = '''
import errno
import sys
sys.path.insert(0, {root!r})
import config
import train
real = config.save_checkpoint
saves = []


def save_until_the_disk_is_full(obj, path):  # rank 0 alone saves: its first save works, the next finds the disk full
    saves.append(path)
    if len(saves) > 1:
        raise OSError(errno.ENOSPC, "No space left on device", path)
    real(obj, path)


class SaveOften(train.Lab):
    def configure(self, args):
        args.save_interval = 2


config.save_checkpoint = save_until_the_disk_is_full
train.main(sys.argv[1:], SaveOften())
'''


def bounded_torchrun(cmd, seconds=120):
    """(exit code, output) of a torchrun command that must end within `seconds` (killed and failed if not)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = proc.communicate(timeout=seconds)[0]
    except subprocess.TimeoutExpired:  # hung: the ranks (torchrun detaches each) go first, then torchrun
        for pid in children(proc.pid) + [proc.pid]:
            os.kill(pid, signal.SIGKILL)
        pytest.fail(f"still running after {seconds} s: {proc.communicate()[0][-3000:]}")
    return proc.returncode, log


def every_rank_failed(log):
    """Whether torchrun reports both ranks failed, one with exit 2 and the other with exit 2 too or, when it was
    still leaving as torchrun saw the first one end, with torchrun's SIGTERM (-15)."""
    codes = dict(re.findall(r"rank +: (\d).*\n +exitcode +: (-?\d+)", log))
    return set(codes) == {"0", "1"} and set(codes.values()) <= {"2", "-15"} and "2" in codes.values()


def test_a_run_lock_held_elsewhere_stops_every_rank_under_torchrun(tmp_path):
    """Rank 0 alone takes the run lock; when another process holds it, both ranks stop with exit 2 at once
    (rank 1 does not go on into the collectives of a run rank 0 has left)."""
    import fcntl
    out = tmp_path / "out"
    out.mkdir()
    holder = open(out / ".teacher.lock", "a+")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.write("pid 4242\n")
    holder.flush()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "train.py", "--out-dir", str(out), "--phase", "teacher",
           "--curriculum-steps", "0", "--steps", "4", "--batch-size", "4", "--eval-interval", "0", *TINY]
    code, log = bounded_torchrun(cmd)
    holder.close()
    assert code != 0 and every_rank_failed(log), log[-3000:]
    assert log.count("error: teacher is being trained") == 1 and sorted(os.listdir(out)) == [".teacher.lock"]


def test_a_failed_save_under_torchrun_stops_every_rank_and_keeps_the_last_checkpoint(tmp_path):
    """Rank 0's save fails at step 4 (disk full): both ranks stop with exit 2 within seconds, not at the
    collective timeout, and the checkpoint of step 2 is intact."""
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK.format(root=ROOT))
    out = tmp_path / "out"
    os.makedirs(out)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), "--out-dir", str(out), "--phase", "teacher",
           "--curriculum-steps", "0", "--steps", "40", "--batch-size", "4", "--eval-interval", "0", *TINY]
    code, log = bounded_torchrun(cmd)
    assert code != 0 and every_rank_failed(log), log[-3000:]
    assert "error: cannot save the checkpoint at step 4: No space left on device" in log, log[-3000:]
    kept = load_checkpoint(str(out / "teacher.pt"))
    assert kept["step"] == 2 and not kept["done"]
