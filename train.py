"""Train the teacher, the phase-1 student and the phase-2 student (logit distillation on packed short documents).

Paper idea: "Short Data, Long Context" (arXiv 2604.06070). A student that only ever sees *short* documents, packed
end to end into a *long* window, inherits a long-context teacher's long-range retrieval when it learns from the
teacher's logits (KL), and the RoPE base should be small while the window is short and large once it is long:

  --phase teacher  the long-context teacher, on long documents (the preset's long window)
  --phase 1        the student from scratch: short documents in a short window, small base (the cpu preset: CE)
  --phase 2        the student from phase 1: the same short documents packed into the long window, the base given
                   by --rope-base (the paper's setting), 0.1 CE + 0.9 KD; its CE-only twin trains side by side in
                   a second process (--no-baseline: not) and the two are printed next to each other

How to read it, top to bottom: `main` (inputs, prerequisites, the twin) -> `train` (the loop) -> `train_step` ->
`training_loss` (the paper's loss, distill.py). Below them: the models, the data stages, the prerequisites and
phase 1's acceptance test, and data parallelism under torchrun, which wraps the step without changing it.

Code outside the core (variants/, research/, longctx/) changes a run through the hook points of `Lab`, never
through a flag of this file.

Main job:  python train.py --phase 2 --rope-base 500000
           torchrun --nproc_per_node 2 train.py --phase 2 --rope-base 500000 --threads 1
"""
import gc
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from config import (ACCEPTANCE, PRESETS, SIZES, BatchShape, RunLock, any_rank, build_parser, check_inputs,
                    curriculum_stages, fail, is_main, launched_world_size, load_init, make_stages, needs_teacher,
                    one_line_errors, phase1_file, phase1_path, phase_seed, pick_device, rank, record_step, resolve,
                    resume_state, run_path, save_run, stage_steps, student_config, teacher_file, teacher_path,
                    world_size)
from data import prefetch, to_device
from distill import cross_entropy, kd_loss, load_teacher, teacher_logits
from evaluate import (START, KeyValueTask, evaluate, format_accuracy, make_task, print_side_by_side, report,
                      report_speed, source_commit)
from model import GPT, CheckpointError, load_model, switch_rope, write_json
from rope import critical_dimension, spectrum_utilization

TRAIN_PY = os.path.abspath(__file__)
MIN_STAGE_STEPS = 50  # a curriculum stage ends on its running accuracy only after this many steps (the EMA warms up)


def main(argv=None, lab=None, prerequisite=False):
    """Check every input, train what this phase starts from if missing, then the phase (phase 2: with its CE-only twin
    side by side; phase 1 of a preset with an acceptance test, without --seed: students until one passes).
    prerequisite: another run asked for this one; a checkpoint of it found under the lock is used as it is."""
    argv = sys.argv[1:] if argv is None else list(argv)
    lab = lab or Lab()
    args = resolve(build_parser().parse_args(argv), lab)
    if args.seed is None:  # phase 1 of a preset with an acceptance test: its students until one passes
        first_accepted(args, argv, lab)
        return None
    pick_device(args)
    t0 = time.time()
    started = start_process_group(args)  # under torchrun: this rank's process group (not in a nested main)
    try:
        with RunLock(args):  # one process per run and output folder, before anything is read or trained
            if prerequisite and os.path.isfile(run_path(args, ".pt")):  # another process made it since the look
                return None
            task, previous = check_inputs(args, lab)  # bad input ends here in one line, before anything is written
            twin = plan_twin(args, argv, lab)  # phase 2's CE-only twin (its inputs checked too)
            train_prerequisites(args, lab)  # the teacher / phase-1 checkpoints, trained first if missing
            proc = start_twin(args, twin)
            with one_line_errors(args, proc):
                results = train(args, task, previous, lab)
            finish_twin(args, twin, proc, results, task)
    finally:
        if started:
            stop_process_group()
    print(f"wall time: {(time.time() - t0) / 60:.1f} min")
    return results


def train(args, task, previous, lab):
    """Train one phase end to end: build the models, run every stage's steps, save, report (OUT/<run>.json; returned).
    task: prepared by config.check_inputs; previous: this run's checkpoint or None. Under torchrun every rank trains
    the same steps on its rows of each batch; rank 0 alone logs, probes and saves."""
    device, autocast = pick_device(args)
    first = (previous or {}).get("args") or {} if args.resume else {}  # a resumed run keeps its first start's
    args.started = first.get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    args.commit = first.get("commit") or source_commit()  # both saved with the results
    teacher = frozen_teacher(args, device, lab) if needs_teacher(args) else None
    if args.resume and previous is not None and previous.get("done"):
        print(f"{run_path(args, '.pt')} already finished; its results:")
        return on_main(final_report, args, task, teacher, device, autocast, None, lab)
    kd_teacher = lab.teacher(teacher, args, task, device)  # what the loss reads
    model = build_student(args, device, lab)
    opt = make_optimizer(model, args, device)
    state = resume_state(args, previous, model, opt)  # {step, stage, stage_start, acc_ema}
    print(f"== phase {args.phase}: {args.run_name} | window {args.window} | {model.num_params():,} params | "
          f"loss {loss_name(args)} | {device}")
    spectrum = (model.config.head_dim, model.config.rope_base, args.window)  # what the phase trains in (rope.py)
    print(f"  RoPE base {spectrum[1]:g}, window {args.window}, head_dim {spectrum[0]}: critical dim "
          f"{critical_dimension(*spectrum)}, utilization {spectrum_utilization(*spectrum):.2f}")
    stages = make_stages(args, task, lab)
    step_model = wrap(model, device)  # DDP under torchrun
    clock = {"tokens": 0, "seconds": 0.0}
    main_rank = is_main()
    quick = main_rank and args.eval_interval  # the quick probes while it trains
    if main_rank:
        os.makedirs(args.out_dir, exist_ok=True)
    log_path = run_path(args, ".jsonl") if main_rank else os.devnull
    with open(log_path, "a") as log, StopOnInterrupt() as ctrl_c:
        while state["stage"] < len(stages):  # the curriculum's stages, then the phase's own data ("main")
            name, src, steps, stop_at = stages[state["stage"]]
            local = state["step"] - state["stage_start"]  # steps already done in this stage (on --resume)
            bar = progress_bar(steps, local, f"{args.run_name} {name}", disable=not main_rank)
            try:
                if quick and args.phase == "2" and (state["step"] == 0 or (name == "main" and local == 0)):
                    quick_eval(model, task, args, device, autocast, 0, state["step"], bar, log)  # step 0
                t0 = time.perf_counter()
                for local, batch in stage_batches(src, local, steps, args, device):
                    if ctrl_c.requested():  # between steps: nothing of this step has touched the weights yet
                        stop_after_ctrl_c(model, opt, args, state)
                    for group in opt.param_groups:
                        group["lr"] = lr_at(local, steps, args)
                    with lab.step(model, opt, args, state["step"]):
                        metrics = train_step(step_model, kd_teacher, opt, batch, args, autocast, lab)
                    record_step(state, clock, metrics, name, src.batch_size * src.window, time.perf_counter() - t0,
                                opt.param_groups[0]["lr"], bar, log)
                    done = local + 1
                    if stop_at is not None and state["acc_ema"] >= stop_at and done >= MIN_STAGE_STEPS:
                        bar.write(f"  {name}: answer accuracy {state['acc_ema']:.2f} >= {stop_at} at step {done}; "
                                  f"next stage")
                        break
                    if quick and name == "main" and done % args.eval_interval == 0 and done < steps:
                        quick_eval(model, task, args, device, autocast, done, state["step"], bar, log)
                    if state["step"] % args.save_interval == 0:
                        log.flush()
                        save_run(model, opt, args, state, done=False)
                    t0 = time.perf_counter()
                state.update(stage=state["stage"] + 1, stage_start=state["step"], acc_ema=0.0)  # the stage is over
                if ctrl_c.requested():  # (early or not): the checkpoint resumes at the next stage's first step
                    stop_after_ctrl_c(model, opt, args, state)
            except KeyboardInterrupt:  # a second Ctrl-C: stop now; the weights may be mid-step, so save nothing
                print(f"\ninterrupted twice: stopped at once; the last saved checkpoint of {args.run_name} is kept "
                      f"(continue with --resume)", file=sys.stderr)
                raise SystemExit(130)
            finally:  # also on Ctrl-C / NaN exits: no stray progress bar
                bar.close()
    save_run(model, opt, args, state, done=True)
    speed = report_speed(args, clock["tokens"], clock["seconds"], world_size()) if main_rank else None
    return on_main(final_report, args, task, teacher, device, autocast, speed, lab, model)


# ----------------------------------------------------------------------------- the step and the loss


def train_step(model, teacher, opt, batch, args, autocast, lab=None):
    """One optimizer step: the loss on the batch (x, y, pos, doc, ans), each (B, T), its gradient, the update; returns
    (loss, ce, kl, answer accuracy). Under torchrun or with --grad-accum each loss term's positions are counted over
    the global batch first, and accumulate adds every micro-batch's sums divided by those counts: the global batch's
    values, the same on every rank."""
    lab = lab or Lab()
    opt.zero_grad(set_to_none=True)
    if world_size() == 1 and args.grad_accum == 1:  # one process, one batch
        loss, ce, kl, correct, answers = lab.loss(model, teacher, batch, args, autocast)
        loss.backward()
        stats = torch.stack([loss.detach(), ce.detach(), kl.to(loss.device), correct, answers])
    else:
        counts = sum_across_ranks(lab.counts(batch, args))  # (2,): the CE's and the KD term's, global batch
        stats = accumulate(model, batch, args.grad_accum,
                           lambda micro: lab.loss(model, teacher, micro, args, autocast, counts))
    if args.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    opt.step()
    loss, ce, kl = stats[:3].tolist()
    return loss, ce, kl, (stats[3] / stats[4]).item()  # 0 / 0 = NaN: no answer in the batch


def training_loss(model, teacher, batch, args, autocast, counts=None, kd=kd_loss, ce=cross_entropy):
    """(1 - w) CE + w T^2 KL(teacher || student) (--kd-weight w, --temperature T), or CE alone at w = 0; returns
    (loss, ce, kl, correct answers, answers), 0-dim tensors, kl NaN without a KD term. counts: the positions each term
    counts in the global batch (term_counts) when this batch is part of one. kd, ce: the two terms (distill.py's)."""
    x, y, pos, doc, ans = batch  # (b, T) each
    with autocast:
        logits = model(x, pos, doc if args.doc_mask else None)  # (b, T, V)
    ce_total = None if counts is None else counts[0]
    kd_total = None if counts is None else counts[1]
    ce_term = ce(logits, y, None, ce_total)
    loss = ce_term
    kl = torch.tensor(float("nan"))
    if teacher is not None and args.kd_weight > 0:  # the paper's loss: (1 - w) CE + w T^2 KL(p_t || p_s)
        with autocast:
            t_logits = teacher_logits(teacher, x, pos, doc if args.doc_mask else None)
        kd_term, kl = kd(logits, t_logits, None, args.temperature, kd_total)
        loss = (1 - args.kd_weight) * ce_term + args.kd_weight * kd_term
    correct = (logits.detach()[ans].argmax(-1) == y[ans]).float().sum()  # argmax of the answer rows only
    return loss, ce_term, kl, correct, ans.sum().float()


def term_counts(batch):
    """(2,) float: how many positions the CE and the KD term count in this batch: every one."""
    n = float(batch[1].numel())
    return torch.tensor([n, n], device=batch[1].device)


class Lab:
    """The hook points through which code outside the core changes a run (minGPT's callbacks, torchtune's recipes):
    a lab entry point (variants/, research/, longctx/) subclasses this, parses its own flags and calls
    main(argv, lab) with train.py's flags. Each method's default is the core's own behaviour."""

    def configure(self, args):
        """Set settings that are no flag of train.py (config.SETTINGS, warmup, save_interval, phase1_base, ...),
        before config.resolve fills in the preset's and checks them."""

    def check(self, args):
        """The lab's own checks on the resolved settings (config.fail: one error line), before the run is named."""

    def suffix(self, args) -> str:
        """What the run's name adds for this lab, after the core's own parts (config.run_name)."""
        return ""

    def task(self, args):
        """The task the run trains on and is judged by (evaluate.make_task: --data's)."""
        return make_task(args)

    def load(self, path, device):
        """(model, checkpoint dict) of a --teacher or --init path: this project's checkpoints (model.load_model)."""
        return load_model(path, device)

    def teacher(self, teacher, args, task, device):
        """What the loss reads as the teacher: the frozen teacher itself (a lab may answer from a cache)."""
        return teacher

    def stages(self, stages, args, task):
        """[(name, data.DataSource, steps, stop at running accuracy or None)]: the phase's stages, the task's."""
        return stages

    def loss(self, model, teacher, batch, args, autocast, counts=None):
        """(loss, ce, kl, correct answers, answers) of one batch: training_loss."""
        return training_loss(model, teacher, batch, args, autocast, counts)

    def counts(self, batch, args):
        """(2,): how many positions the CE and the KD term count in a batch (training_loss's, all of them)."""
        return term_counts(batch)

    def step(self, model, opt, args, step):
        """A context manager around one optimizer step (step: the steps done before it); nothing by default."""
        return nullcontext()

    def prerequisite(self, phase):
        """The Lab of a prerequisite this run trains first (the teacher, phase 1): the core's own."""
        return Lab()

    def twin(self):
        """(the Lab of phase 2's CE-only twin, the command that trains it; train.py's flags follow it)."""
        return Lab(), [sys.executable, TRAIN_PY]


def loss_name(args) -> str:
    if args.kd_weight == 0:
        return "CE"
    return f"{1 - args.kd_weight:g} CE + {args.kd_weight:g} KD(T={args.temperature:g})"


# ----------------------------------------------------------------------------- models, optimizer, data


def build_student(args, device, lab):
    """Fresh model (teacher, phase 1) or phase 1's weights with the new base (phase 2)."""
    if args.phase == "2":
        model = load_init(args, phase1_path(args, lab), device, lab)
        student = switch_rope(model, args.rope_base, args.scaling, args.window)  # same weights, new base (ABF)
    else:
        torch.manual_seed(phase_seed(args))
        student = GPT(student_config(args)).to(device)
    student.attention = args.attention  # the kernel ("flex": the document mask as a flex block mask, on CUDA)
    return student


def frozen_teacher(args, device, lab):
    path = teacher_path(args, lab)
    try:
        teacher = load_teacher(path, device, args.vocab_size, lab.load)
    except CheckpointError as e:
        fail(str(e))
    teacher.attention = args.attention
    print(f"teacher: {path} (base {teacher.config.rope_base:g}, frozen)")
    return teacher


def make_optimizer(model, args, device):
    """AdamW; no weight decay on norms (1-D parameters)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def lr_at(step, steps, args):
    """Linear warmup, then constant or cosine to 10% (per stage; cosine: Loshchilov & Hutter 2017, SGDR)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if args.schedule == "cosine":
        frac = (step - args.warmup) / max(1, steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
    return args.lr


def stage_batches(src, start, steps, args, device):
    """(step, this rank's batch on the device) for steps start..steps-1 of a stage, each built one step ahead.

    BatchShape decides the rows: rank r of N takes rows [r B/N, (r+1) B/N) of the step's global batch.
    """
    shape = BatchShape(src.batch_size, world_size(), args.grad_accum)
    rows = shape.rows(rank())
    arrays = prefetch(lambda step: src.batch(step, rows), range(start, steps))  # numpy, in a background thread
    for step, batch in zip(range(start, steps), arrays):
        yield step, to_device(batch, device)


def quick_eval(model, task, args, device, autocast, local, step, bar, log):
    """The task's quick probes (the synthetic language's: a few distances on the selection probe), printed under
    the progress bar and logged."""
    quick = task.quick(model, args, device, autocast)
    if quick is not None:
        row, line = quick
        bar.write(f"  step {local}: {line}")
        log.write(json.dumps({"step": step, "eval": row}) + "\n")


def final_report(args, task, teacher, device, autocast, speed, lab, model=None):
    """evaluate.report on the run (from its checkpoint if not given), its teacher and phase 2's starting point."""
    if model is None:
        model, _ = load_model(run_path(args, ".pt"), device)
    models = {args.run_name: model}
    if teacher is not None:
        models["teacher"] = teacher
    if args.phase == "2":  # the starting point: phase 1's weights with the new base, before any phase-2 step
        models[START] = build_student(args, device, lab)
    return report(args, task, models, device, autocast, run_path(args, ".json"), speed)


def on_main(fn, *a, **k):
    """fn(*a, **k) on rank 0 (None on the others), then every rank waits for it: what rank 0 writes last
    (checkpoint, results) is on disk before any rank goes on, e.g. to a phase that reads it."""
    out = fn(*a, **k) if is_main() else None
    barrier()
    return out


# ----------------------------------------------------------------------------- around the loop


def progress_bar(total, initial, desc, disable=False):
    """A tqdm bar: redrawn in place on a terminal; in a file or a pipe one line every 30 s, not one per step."""
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, disable=disable)
    return tqdm(total=total, initial=initial, desc=desc, disable=disable, mininterval=30.0, maxinterval=60.0,
                file=Lines(sys.stderr))  # maxinterval: tqdm's monitor would otherwise redraw every 10 s


class Lines:
    """A stream for tqdm in a log file: each redraw on a line of its own instead of behind a carriage return."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = text.replace("\r", "")
        if text.strip():
            self.stream.write(text if text.endswith("\n") else text + "\n")

    def flush(self):
        self.stream.flush()


class StopOnInterrupt:
    """Ctrl-C (SIGINT) while the loop runs sets a flag that the loop checks between steps, so the checkpoint it
    then saves holds the weights of the step it is labelled with (an exception raised mid-step could leave
    the optimizer's update half done, or done but not yet counted). A second Ctrl-C raises KeyboardInterrupt
    at once. Under torchrun the ranks agree: any rank's flag stops all of them at the same step."""

    def __enter__(self):
        self.flag = False
        self.previous = None
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a background job ignores Ctrl-C: so do we
        if threading.current_thread() is threading.main_thread() and not ignored:
            self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def requested(self) -> bool:
        return any_rank(self.flag)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def stop_after_ctrl_c(model, opt, args, state):
    """Ctrl-C was pressed: the weights are those of state["step"], so they are saved under that label."""
    save_run(model, opt, args, state, done=False)
    if is_main():
        print(f"\ninterrupted: saved a resumable checkpoint at step {state['step']} to {run_path(args, '.pt')} "
              f"(continue with --resume)", file=sys.stderr)
    raise SystemExit(130)


# ----------------------------------------------------------------------------- prerequisites


def common_argv(args):
    """The flags a prerequisite run shares with the run that needs it (its own seed stays 0)."""
    argv = ["--preset", args.preset, "--out-dir", args.out_dir, "--device", args.device, "--dtype", args.dtype]
    argv += ["--grad-accum", str(args.grad_accum)] if args.grad_accum > 1 else []
    argv += ["--threads", str(args.threads)] if args.threads else []
    return argv + (["--data", args.data] if args.data else [])


def train_prerequisites(args, lab):
    """The teacher (for KD and phase 2) and the phase-1 student (for phase 2), each trained first if it does not
    exist yet (config.teacher_path and config.phase1_path then find them)."""
    if needs_teacher(args):
        argv = ["--phase", "teacher"] + common_argv(args)
        ensure(args, "teacher", teacher_path(args, lab), teacher_file(args, lab), argv, lab.prerequisite("teacher"))
    if args.phase == "2":
        argv = ["--phase", "1", "--rope-base", f"{args.phase1_base:g}", "--window", str(args.phase1_window)]
        argv += ["--seed", str(args.phase1_seed)] if args.phase1_seed is not None else []  # else the recipe's test
        argv += ["--teacher", args.teacher] if args.teacher else []  # phase 1 learns from the same teacher
        for key in SIZES:  # the student's sizes, asked for phase 2, are phase 1's (the teacher keeps its own)
            if args.explicit[key] is not None:
                argv += ["--" + key.replace("_", "-"), str(args.explicit[key])]
        ensure(args, "phase-1", phase1_path(args, lab), phase1_file(args, lab), argv + common_argv(args),
               lab.prerequisite("1"))


def ensure(args, what, found, file_name, phase_argv, lab):
    """A prerequisite's checkpoint `found` (its --teacher / --init, or the one in OUT or shipped) exists; else it is
    trained first with main(phase_argv) (with its own prerequisites and lock; --no-auto: refused)."""
    if found is not None:
        if not os.path.exists(found):
            fail(f"{what} checkpoint not found: {found}")
        return found
    own = os.path.join(args.out_dir, file_name)
    command = f"python train.py {' '.join(phase_argv)}"
    if args.no_auto:
        fail(f"no {what} checkpoint at {own} (train it with: {command}, or drop --no-auto)")
    print(f"[auto] no {what} checkpoint at {own}: training it first ({command}); --no-auto stops instead", flush=True)
    main(phase_argv, lab, prerequisite=True)
    return None


# ----------------------------------------------------------------------------- phase 1's acceptance test


def first_accepted(args, argv, lab):
    """Phase 1 without --seed on a preset with an acceptance test: its students (config.PRESETS' phase1_seeds) in
    order, each trained (or, finished before, read) and tested (acceptance), until one passes. OUT/<run>.accept.json
    lists every verdict (rewritten after each) and the accepted student, which phase 2 then starts from. Returns
    its checkpoint's path; none accepted: one error line, exit code 1."""
    if launched_world_size() > 1:
        fail("phase 1 without --seed trains its students one after another in one process (its acceptance test): "
             "run it without torchrun, or pass --seed")
    record_path = run_path(args, ".accept.json")
    record = {"acceptance": ACCEPTANCE, "seeds": PRESETS[args.preset]["phase1_seeds"], "students": [],
              "accepted_seed": None, "phase2_init": None}
    for seed in record["seeds"]:
        student_argv = [a for a in argv if a != "--resume"] + ["--seed", str(seed)]
        student = resolve(build_parser().parse_args(student_argv), lab)
        if args.overwrite or not os.path.isfile(run_path(student, ".json")):  # not trained yet, or asked to again
            stopped = os.path.isfile(run_path(student, ".pt")) and not args.overwrite  # --resume continues it
            main(student_argv + (["--resume"] if stopped else []), lab)
        verdict = acceptance(student)
        record["students"].append(verdict)
        if verdict["accepted"]:
            record.update(accepted_seed=seed, phase2_init=run_path(student, ".pt"))
        write_json(record_path, record)
        print(f"[acceptance] phase-1 student --seed {seed}: {verdict['why'] or 'accepted'}", flush=True)
        if verdict["accepted"]:
            return record["phase2_init"]
    print(f"error: no phase-1 student accepted of seeds {record['seeds']}; every one is kept in {args.out_dir}, "
          f"listed in {record_path}", file=sys.stderr)
    raise SystemExit(1)


def acceptance(args) -> dict:
    """config.ACCEPTANCE on a finished phase-1 run, from its files: the step its first curriculum stage passed (None
    when it ran to its cap) and retrieval at the shortest probed distance on the selection probe."""
    name, _, _, _, cap = curriculum_stages(args)[0]
    steps = stage_steps(run_path(args, ".jsonl"), name)
    passed_at = steps if 0 < steps < cap else None
    model, _ = load_model(run_path(args, ".pt"))
    d = args.eval_distances[0]
    probe_seed = ACCEPTANCE["probe_seed"]
    probe = evaluate(model.eval(), KeyValueTask().spec, args.window, [d], args.max_doc_len, torch.device("cpu"),
                     nullcontext(), args.eval_windows, seed=probe_seed)
    acc = probe["kv"][d]
    why = []
    if passed_at is None and ACCEPTANCE["stage_passed"]:
        why.append(f"{name} not passed by its cap of {cap} steps")
    if acc is None or acc < ACCEPTANCE["min_accuracy"]:
        why.append(f"D={d} {format_accuracy(acc)} < {ACCEPTANCE['min_accuracy']} (probe seed {probe_seed})")
    return {"seed": args.seed, "run": args.run_name, "stage": name, "stage_passed_at": passed_at, "distance": d,
            "kv": acc, "probe_seed": probe_seed, "accepted": not why, "why": "; ".join(why)}


# ----------------------------------------------------------------------------- phase 2's CE-only twin


@dataclass
class Twin:
    """Phase 2's CE-only twin: its run name and, unless its results exist, its command and resolved flags."""
    name: str
    command: list | None = None
    args: object = None


def plan_twin(args, argv, lab):
    """The twin of a phase-2 KD run (None for any other run), its inputs checked before anything is trained."""
    if args.phase != "2" or args.kd_weight == 0 or args.no_baseline:
        return None
    ce_argv = argv + ["--kd-weight", "0", "--no-baseline", "--no-auto"]
    ce_lab, command = lab.twin()
    named = any(a == "--run-name" or a.startswith("--run-name=") for a in argv)
    if not named:  # its own default name (a CE run has no temperature to name)
        ce_name = resolve(build_parser().parse_args(ce_argv), ce_lab).run_name
    else:  # --run-name's, with kd -> ce
        ce_name = args.run_name.replace("-kd-", "-ce-") if "-kd-" in args.run_name else args.run_name + "-ce"
    if os.path.isfile(os.path.join(args.out_dir, ce_name + ".json")) and not args.overwrite:
        return Twin(ce_name)
    ce_argv += ["--run-name", ce_name]
    if args.device == "cpu" and not args.threads:
        ce_argv += ["--threads", "1"]
    ce_args = resolve(build_parser().parse_args(ce_argv), ce_lab)
    if launched_world_size() == 1:
        check_inputs(ce_args, ce_lab)
    return Twin(ce_name, command + ce_argv, ce_args)


def start_twin(args, twin):
    """The twin as a side process (1 thread each on CPU), unless it already exists; None without a twin.
    Under torchrun a twin would be a second job inside this one's process group, so it is only planned."""
    if twin is None or world_size() > 1:
        return None
    if twin.command is None:
        print(f"baseline {twin.name} already trained: reusing it")
        return None
    log = os.path.join(args.out_dir, twin.name + ".log")
    os.makedirs(args.out_dir, exist_ok=True)
    if args.device == "cpu" and not args.threads:
        torch.set_num_threads(1)
    print(f"baseline: training the CE-only twin {twin.name} side by side (log: {log})")
    return subprocess.Popen(twin.command, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def finish_twin(args, twin, proc, results, task):
    """Wait for the twin, then print the KD-vs-CE table (under torchrun: the twin's command, if not yet run)."""
    if twin is None or not is_main():
        return
    if proc is not None and proc.wait() != 0:
        fail(f"the CE baseline failed; see {os.path.join(args.out_dir, twin.name + '.log')}")
    if proc is None and twin.command is not None:  # under torchrun
        command = " ".join("train.py" if c == TRAIN_PY else c for c in twin.command[1:])
        print(f"\nthe CE-only twin {twin.name} is not trained under torchrun; train it as its own job, then run "
              f"this one again (--resume) for the side-by-side table:\n  torchrun --nproc_per_node "
              f"{world_size()} {command}")
        return
    print_side_by_side(args, results, twin.name, task)


# ----------------------------------------------------------------------------- data parallelism (torchrun)


def start_process_group(args):
    """Join torchrun's process group (one per run) and give this rank its device; False without torchrun or when
    the group exists already (a prerequisite trained inside the run).

    args.device (already resolved by config.pick_device) becomes cuda:LOCAL_RANK on CUDA: nccl there, gloo on CPU.
    The other ranks' stdout goes to /dev/null, so that each line is printed once; stderr stays.
    """
    if launched_world_size() == 1 or tdist.is_initialized():
        return False
    cuda = args.device.startswith("cuda")
    if cuda:
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(args.device)
    tdist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device(args.device) if cuda else None)
    if not is_main():
        sys.stdout = open(os.devnull, "w")
    return True


def stop_process_group():
    """Leave the process group, every rank together, while the interpreter is fully alive.

    A rank that tore down its gloo connections while its peer still had work in flight on them (the DDP
    reducer's last all-reduce, the peer's final barrier) could abort at exit ("terminate called without an
    active exception", exit -6), and torchrun then reports the run failed. So: free what still holds the
    group (the DDP wrapper), meet at a barrier, destroy the group, and meet once more through the store, so that
    no rank closes its sockets while another is still destroying its group.
    """
    if not tdist.is_initialized():
        return
    gc.collect()  # the DDP wrapper and its reducer, which hold the group
    tdist.barrier()
    try:
        store = tdist.distributed_c10d._get_default_store()
    except (RuntimeError, AttributeError, ValueError):
        store = None
    tdist.destroy_process_group()
    if store is None:
        return
    try:  # the store may be gone already if the rank that hosts it left first: then there is no one to wait for
        store.add("left", 1)
        deadline = time.monotonic() + 60
        while store.add("left", 0) < launched_world_size() and time.monotonic() < deadline:
            time.sleep(0.01)
    except (RuntimeError, OSError):
        pass


def accumulate(model, batch, grad_accum, loss_fn):
    """Forward and backward of loss_fn over this rank's rows in grad_accum micro-batches, DDP's gradient all-reduce
    on the last micro-batch only. The step's optimizer update follows.

    loss_fn(micro) -> (loss, ce, kl, correct answers, answers), 0-dim tensors, each loss term a sum over the
    micro-batch's positions divided by the number of such positions in the whole global batch, so that the
    micro-batches' losses of all ranks add up to the global batch's loss. DDP averages the ranks' gradients: each
    rank's backward of world_size x its losses makes that average their sum. Returns [loss, ce, kl, correct,
    answers] of the global batch, the same on every rank.
    """
    stats = 0
    micro_batches = list(zip(*(t.chunk(grad_accum) for t in batch)))  # K x (x, y, ...), (B / ranks / K, T) each
    for i, micro in enumerate(micro_batches):
        accumulating = i < grad_accum - 1
        sync = model.no_sync() if accumulating and isinstance(model, DistributedDataParallel) else nullcontext()
        with sync:
            loss, ce, kl, correct, answers = loss_fn(micro)
            (loss * world_size()).backward()
        stats = stats + torch.stack([loss.detach(), ce.detach(), kl.to(loss.device), correct, answers])
    return sum_across_ranks(stats)


def wrap(model, device):
    """The student in DDP under torchrun (the model itself otherwise).

    DDP broadcasts rank 0's weights and buffers once, then averages gradients across ranks during backward.
    forward_sync_buffers=False: no broadcast before each forward; the only buffer is RoPE's inv_freq, which every
    rank computes alike (a lab that rewrites it between steps must do so alike on every rank).
    """
    if world_size() == 1:
        return model
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over all ranks, the same on every rank (gloo and nccl: a ring or tree all-reduce)."""
    if world_size() > 1:
        t = t.clone()
        tdist.all_reduce(t)
    return t


def barrier():
    """Wait until every rank gets here (e.g. rank 0 has written the checkpoint the others will read)."""
    if world_size() > 1:
        tdist.barrier()


if __name__ == "__main__":
    main()
