"""Run bookkeeping around train.py's loop: inputs checked first, prerequisites, checkpoints.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) trains in phases (a long-context
teacher, a short-window student, then the student extended with distillation), each phase
starting from the checkpoints of the one before. This file is what a phase needs around its
training loop, so that train.py can show the loop, the step and the loss alone:

- `check_inputs`: every check that needs no training (output folder, data, this run's checkpoint
  against --resume / --overwrite, the teacher and phase-1 checkpoints that exist), before
  anything is written; bad input ends in one `error:` line (config.fail), exit code 2.
- `train_prerequisites`: the teacher / phase-1 checkpoints a phase starts from: found in the output
  folder or in checkpoints/ (shipped), else trained first (or refused with --no-auto). With --data they
  are that text's (named by it: OUT/corpus-teacher.pt), trained on it, never the shipped ones.
- `phase1_verdict`, `accept_or_retrain`: phase 1's acceptance test (config.ACCEPTANCE) and, with --retries,
  the next student while it fails.
- `save_run`, `resume_state`, `record_step`, `truncate_log`: checkpoints, resume and the step log.
- `one_line_errors`: a failed run ends in one line and stops phase 2's CE-only twin (scale/twin.py).
"""
import dataclasses
import json
import math
import os
import sys
from contextlib import contextmanager

import torch

from scale import dist
from scale.lock import RunLock
from config import (ACCEPTANCE, RETRY_STRIDE, SHIPPED, build_parser, check_out_dir, curriculum_stages, data_prefix,
                    fail, phase1_name, resolve, stage_batch_sizes)
from formats.text import DataError, read_bin_documents, read_text_documents
from distill import load_teacher
from formats.hf import load_pretrained
from longctx.corpus import build_corpus, byte_ids
from model import CheckpointError, atomic_write, load_checkpoint, save_checkpoint, student_config
from formats.tokenizer import Tokenizer


class RunError(Exception):
    """A run that cannot go on (a non-finite loss, a failed save); one_line_errors reports it in one line."""


# ----------------------------------------------------------------------------- inputs


def check_inputs(args):
    """Every check that needs no training, before a file is written or a process launched.

    Returns (corpus or None, this run's previous checkpoint or None).
    """
    check_out_dir(args.out_dir, "--out-dir")
    if args.retries and dist.launched_world_size() > 1:
        fail("--retries trains one phase-1 student after another in one process: run it without torchrun")
    if args.attention == "flex" and not args.device.startswith("cuda"):
        fail("--attention flex trains on CUDA only (torch has no flex-attention backward on CPU); use --attention sdpa")
    if args.vocab_size is None:  # --data with --tokenizer: the tokenizer's vocabulary (config.resolve left it)
        args.vocab_size = len(load_tokenizer(args))
    corpus = load_corpus(args) if args.data else None
    for name, batch in stage_batch_sizes(args):  # each stage's batch over ranks x micro-batches
        try:
            dist.BatchShape(batch, dist.launched_world_size(), args.grad_accum)
        except ValueError as e:
            fail(f"--batch-size {batch}: {e}" if name == "main" else
                 f"the {name} stage (the preset's batch of {batch}; --curriculum-steps 0 skips it): {e}")
    ckpt_path = run_path(args, ".pt")
    previous = None
    if os.path.exists(ckpt_path):
        try:
            previous = load_checkpoint(ckpt_path)
        except CheckpointError as e:
            if args.resume or not args.overwrite:
                fail(f"{e} (--overwrite replaces it)")
        if previous is not None and previous.get("phase", args.phase) != args.phase:
            fail(f"{ckpt_path} holds a phase-{previous['phase']} run, not phase {args.phase}: choose another "
                 f"--run-name")
        if previous is not None and previous.get("done") and not args.overwrite and not args.resume:
            fail(f"{ckpt_path} is a finished run: pass --overwrite to retrain it, or choose another --run-name")
        if previous is not None and not previous.get("done") and not args.resume and not args.overwrite:
            fail(f"{ckpt_path} holds an unfinished run: pass --resume to continue it or --overwrite to restart")
    elif args.resume:
        fail(f"--resume: no checkpoint at {ckpt_path}")
    cpu = torch.device("cpu")
    if needs_teacher(args) and (path := teacher_path(args)) is not None:
        try:
            load_teacher(path, cpu, args.vocab_size)
        except CheckpointError as e:
            fail(str(e))
    if args.teacher_topk > args.vocab_size:
        fail(f"--teacher-topk {args.teacher_topk} is larger than the vocabulary of {args.vocab_size}")
    init = None
    if args.phase == "2" and (path := phase1_path(args)) is not None:
        init = load_init(args, path, cpu)
    if args.resume and previous is not None and (args.phase != "2" or init is not None):
        old, new = previous["config"], dataclasses.asdict(student_config(args, init.config if init else None))
        diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k, v) != v]
        if diff:
            fail(f"--resume: {ckpt_path} was trained with other settings than this run asks for: {', '.join(diff)}")
    return corpus, previous


def run_path(args, ext):
    """OUT/<run name><ext>: the run's checkpoint (.pt), results (.json) and step log (.jsonl)."""
    return os.path.join(args.out_dir, args.run_name + ext)


def load_corpus(args):
    """--data's documents as a longctx.corpus.Corpus: its end held out, the rest packed into training windows of
    whole documents (the teacher) or of shuffled short ones (the students)."""
    try:
        if args.data.endswith(".bin"):
            docs, sep, encode = read_bin_documents(args.data, args.eot_id, args.vocab_size), args.eot_id, None
        elif args.tokenizer:  # the teacher's tokens, documents behind its end-of-text token
            tok = load_tokenizer(args)
            docs, sep, encode = read_text_documents(args.data, encode=tok.encode), tok.eos_id, tok.encode
        else:
            docs, sep, encode = read_text_documents(args.data), 0, byte_ids
        return build_corpus(docs, sep, args.window, args.max_doc_len, None if args.phase == "teacher" else args.seed,
                            encode, held_window=args.long_window)
    except DataError as e:
        fail(str(e))


def load_tokenizer(args):
    try:
        return Tokenizer.from_folder(args.tokenizer)
    except ValueError as e:
        fail(f"--tokenizer: {e}")


def load_init(args, path, device):
    """Phase 2's starting point: a finished phase-1 checkpoint with this run's vocabulary and asked-for sizes."""
    try:
        model, ckpt = load_pretrained(path, device)
    except CheckpointError as e:
        fail(str(e))
    phase = ckpt.get("phase", "1")  # checkpoints made outside train.py carry no phase
    if phase != "1":
        fail(f"--init {path} is a {'teacher' if phase == 'teacher' else f'phase-{phase}'} checkpoint, not a "
             f"phase-1 student")
    if not ckpt.get("done", True):
        fail(f"--init {path} is an unfinished phase-1 run (step {ckpt['step']}): finish it first (--resume)")
    for name in ("d_model", "n_layer", "n_head", "n_kv_head", "d_ff"):
        if args.explicit.get(name) is not None and args.explicit[name] != getattr(model.config, name):
            fail(f"--init {path} has {name} {getattr(model.config, name)}, not the {args.explicit[name]} "
                 f"asked for: phase 2 keeps phase 1's architecture")
    if model.config.vocab_size != args.vocab_size:
        fail(f"--init {path} has vocabulary {model.config.vocab_size}, but this run's data needs {args.vocab_size} "
             f"(--vocab-size)")
    return model


# ----------------------------------------------------------------------------- prerequisites


def needs_teacher(args) -> bool:
    return args.kd_weight > 0 or args.phase == "2"


def find_checkpoint(path_in_out, shipped_name, preset):
    """The run in the output folder if it exists, else the shipped one (trained with the cpu preset), else None."""
    if os.path.isfile(path_in_out):
        return path_in_out
    shipped = os.path.join(SHIPPED, shipped_name)
    return shipped if preset == "cpu" and os.path.isfile(shipped) else None


def teacher_file(args):
    """File name of the teacher a run learns from (without --teacher): teacher.pt, or with --data the teacher
    of that text and vocabulary (config.data_prefix: corpus-teacher.pt), which no shipped checkpoint is."""
    return data_prefix(args) + "teacher.pt"


def teacher_path(args):
    """--teacher, else OUT/<teacher_file>, else the shipped teacher; None when none exists yet."""
    return args.teacher or find_checkpoint(os.path.join(args.out_dir, teacher_file(args)), teacher_file(args),
                                           args.preset)


def phase1_file(args):
    """File name of the phase-1 run that phase 2 starts from (without --init); with --data, that text's."""
    return data_prefix(args) + phase1_name(args.phase1_base, args.phase1_seed, args.phase1_window, args.preset) + ".pt"


def phase1_path(args):
    """--init, else the phase-1 run of --phase1-base / --phase1-seed / --phase1-window; None when none exists yet."""
    name = phase1_file(args)
    return args.init or find_checkpoint(os.path.join(args.out_dir, name), name, args.preset)


def common_argv(args):
    """The flags a prerequisite run shares with the run that needs it (its own seed stays 0)."""
    argv = ["--preset", args.preset, "--out-dir", args.out_dir, "--device", args.device, "--dtype", args.dtype]
    argv += ["--grad-accum", str(args.grad_accum)] if args.grad_accum > 1 else []
    argv += ["--backend", args.backend] if args.backend != "auto" else []
    argv += ["--threads", str(args.threads)] if args.threads else []
    return argv + data_argv(args)


def data_argv(args):
    """--data's flags, which a prerequisite shares: the same text in the same vocabulary."""
    if not args.data:
        return []
    argv = ["--data", args.data] + (["--tokenizer", args.tokenizer] if args.tokenizer else [])
    argv += ["--vocab-size", str(args.explicit_vocab)] if args.explicit_vocab else []
    return argv + (["--eot-id", str(args.eot_id)] if args.data.endswith(".bin") else [])


def train_prerequisites(args, train):
    """The teacher (for KD and phase 2) and the phase-1 student (for phase 2), each trained first with
    train(args, inputs) if it does not exist yet. Returns their paths (None where not needed)."""
    teacher = init = None
    if needs_teacher(args):
        teacher = ensure(args, "teacher", args.teacher, teacher_file(args), ["--phase", "teacher"] + common_argv(args),
                         train)
    if args.phase == "2":
        argv = ["--phase", "1", "--rope-base", f"{args.phase1_base:g}", "--seed", str(args.phase1_seed),
                "--window", str(args.phase1_window)]
        argv += ["--teacher", args.teacher] if args.teacher else []  # phase 1 learns from the same teacher
        argv += ["--teacher-topk", str(args.teacher_topk)] if args.teacher_topk else []
        init = ensure(args, "phase-1", args.init, phase1_file(args), argv + common_argv(args), train)
    return teacher, init


def ensure(args, what, path, shipped_name, phase_argv, train):
    """A checkpoint path for a prerequisite, training it first (with its own prerequisites) if it is missing."""
    if path is not None:
        if not os.path.exists(path):
            fail(f"{what} checkpoint not found: {path}")
        return path
    own = os.path.join(args.out_dir, shipped_name)
    found = find_checkpoint(own, shipped_name, args.preset)
    if found:
        return found
    if args.no_auto:
        fail(f"no {what} checkpoint at {own} (train it with: python train.py {' '.join(phase_argv)}, "
             f"or drop --no-auto)")
    print(f"[auto] no {what} checkpoint at {own}: training it first "
          f"(python train.py {' '.join(phase_argv)}); --no-auto stops instead", flush=True)
    sub = resolve(build_parser().parse_args(phase_argv))
    with RunLock(sub):  # before its inputs are read: a process that finishes it meanwhile is not trained over
        inputs = check_inputs(sub)
        train_prerequisites(sub, train)
        with one_line_errors(sub):
            train(sub, inputs)
    return own


# ----------------------------------------------------------------------------- phase 1's acceptance test


def stage_steps(log_path, stage) -> int:
    """Steps a run spent in one stage, from its step log OUT/<run>.jsonl (one line per step; probe lines carry no
    stage). --resume truncates the log to the checkpoint, so the count is the checkpoint's."""
    with open(log_path) as f:
        return sum(json.loads(line).get("stage") == stage for line in f)


def accepted(stage16_step, d16) -> bool:
    """config.ACCEPTANCE on what phase 1 showed: its first curriculum stage passed (a step; None: it ran to its cap
    or did not run) and retrieval at the shortest probed distance (D = 16 in the cpu preset) at least 0.85."""
    passed = stage16_step is not None or not ACCEPTANCE["stage16_passed"]
    return passed and d16 is not None and d16 >= ACCEPTANCE["d16_min"]


def phase1_verdict(args) -> dict:
    """The acceptance test on this finished phase-1 run, from its files: the step its first curriculum stage passed
    (None when it ran to its cap), retrieval at the shortest probed distance after phase 1, and the minutes of
    training its results record (the last process's, on --resume)."""
    name, _, _, _, cap = curriculum_stages(args)[0]
    steps = stage_steps(run_path(args, ".jsonl"), name)
    with open(run_path(args, ".json")) as f:
        run = json.load(f)
    kv = run["results"][run["run"]]["kv"]  # {distance: accuracy}, the end-of-phase-1 table's row
    d = min(kv, key=int)
    step = steps if 0 < steps < cap else None
    minutes = round(run["speed"]["train_seconds"] / 60, 1) if run["speed"] else None
    return {"seed": args.seed, "run": args.run_name, "stage": name, "stage_passed_at": step, "distance": int(d),
            "kv": kv[d], "accepted": accepted(step, kv[d]), "minutes": minutes}


def accept_or_retrain(args, argv, main):
    """--retries: test the phase-1 student just trained (phase1_verdict) and, while it fails, train the next one
    with --seed + 1000 k (k = 1 .. --retries) through main(argv). Every student stays in OUT under its own seed's
    name; OUT/<first run>.accept.json lists them all (rewritten after each verdict) and the accepted one, which
    phase 2 starts from (--init). No student accepted: one error line, exit code 1."""
    students, record_path, student = [], run_path(args, ".accept.json"), args  # student: the run just trained
    while True:
        students.append(phase1_verdict(student))
        last = students[-1]
        init = run_path(student, ".pt") if last["accepted"] else None
        record = {"acceptance": ACCEPTANCE, "retries": args.retries, "accepted_seed": last["seed"] if init else None,
                  "phase2_init": init, "students": students}
        atomic_write(record_path, lambda f: f.write(json.dumps(record, indent=1).encode()))
        if last["accepted"] or len(students) > args.retries:
            break
        seed = args.seed + RETRY_STRIDE * len(students)
        stage = ("not passed by its cap" if last["stage_passed_at"] is None
                 else f"passed at step {last['stage_passed_at']}")
        kv = "-" if last["kv"] is None else f"{last['kv']:.2f}"
        print(f"[retry] phase-1 student --seed {last['seed']} rejected ({last['stage']} {stage}, D={last['distance']}: "
              f"{kv}); training the next one: --seed {seed}", flush=True)
        sub = argv + ["--seed", str(seed), "--retries", "0"]
        student = resolve(build_parser().parse_args(sub))
        if args.resume and not os.path.exists(run_path(student, ".pt")):
            sub = [a for a in sub if a != "--resume"]  # --resume: this student has not begun yet
        main(sub)
    if init is None:  # not bad input (exit code 2): the recipe's test said no to every student
        print(f"error: no phase-1 student accepted in {len(students)} (seeds "
              f"{', '.join(str(s['seed']) for s in students)}); every one is kept in {args.out_dir}, listed in "
              f"{record_path}", file=sys.stderr)
        raise SystemExit(1)
    minutes = sum(s["minutes"] or 0 for s in students)
    preset = f" --preset {args.preset}" if args.preset != "cpu" else ""
    print(f"phase-1 student accepted: --seed {last['seed']} ({len(students)} trained, {minutes:.1f} min of training); "
          f"phase 2 from it: python train.py --phase 2{preset} --phase1-seed {last['seed']} --init {init} "
          f"--out-dir {args.out_dir}")
    return last["seed"]


# ----------------------------------------------------------------------------- checkpoints and the step log


def saved_speed(args):
    """The speed a finished run's results recorded (report_speed's dict), or None: what reporting it again keeps."""
    try:
        with open(run_path(args, ".json")) as f:
            return json.load(f).get("speed")
    except (OSError, ValueError):
        return None


def checkpoint_dict(model, opt, args, state, done):
    """A checkpoint is a plain dict: weights, optimizer, config, where the run stands, the RNG, the flags."""
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "config": dataclasses.asdict(model.config),
            "step": state["step"], "stage": state["stage"], "stage_start": state["stage_start"],
            "acc_ema": state["acc_ema"], "rng": torch.get_rng_state(), "args": vars(args), "phase": args.phase,
            "done": done, "format": 1}


def save_run(model, opt, args, state, done):
    """Save the run's checkpoint (rank 0 alone under torchrun); a full disk or unwritable folder keeps the
    previous file and ends in one line. Under torchrun every rank learns whether rank 0's save worked and stops
    with it: a rank left training would wait forever in a collective that rank 0 never joins."""
    problem = None
    if dist.is_main():
        ckpt_path = run_path(args, ".pt")
        try:
            save_checkpoint(checkpoint_dict(model, opt, args, state, done), ckpt_path)
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
            kept = f"the previous {ckpt_path} is kept" if os.path.exists(ckpt_path) else "no checkpoint was written"
            why = f"{e.strerror or e} ({e.filename or ckpt_path})" if isinstance(e, OSError) else \
                str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            problem = f"cannot save the checkpoint at step {state['step']}: {why}; {kept}"
    if dist.any_rank(problem is not None):
        raise RunError(problem or f"rank 0 could not save the checkpoint at step {state['step']}")


def resume_state(args, previous, model, opt):
    """Where the run stands: a fresh start, or --resume's checkpoint loaded into model and optimizer."""
    state = {"step": 0, "stage": 0, "stage_start": 0, "acc_ema": 0.0}
    log_path = run_path(args, ".jsonl")
    if not args.resume:
        if dist.is_main() and os.path.exists(log_path):
            os.remove(log_path)  # --overwrite (or a fresh run): the old log goes with the old run
        return state
    ckpt_path = run_path(args, ".pt")  # its config was checked against this run's by check_inputs
    try:
        model.load_state_dict(previous["model"])
        opt.load_state_dict(previous["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        fail(f"--resume: {ckpt_path} does not match this run's model: {str(e).splitlines()[0][:200]}")
    torch.set_rng_state(previous["rng"])
    if dist.is_main():
        truncate_log(log_path, previous["step"])
    print(f"resuming {ckpt_path} at step {previous['step']}")
    return {k: previous[k] for k in state}


def record_step(state, clock, metrics, stage, n_tok, flops_per_token, seconds, lr, bar, log):
    """After a step: stop on a non-finite loss, count the step (tokens, FLOPs, time), log it and show it."""
    loss, ce, kl, acc = metrics
    if not math.isfinite(loss):
        raise RunError(f"non-finite loss ({loss}) at step {state['step']}; the last good checkpoint is kept")
    clock["tokens"] += n_tok
    clock["flops"] += n_tok * flops_per_token  # the stage's own window: curriculum stages are shorter
    clock["seconds"] += seconds
    state["step"] += 1
    if math.isfinite(acc):
        state["acc_ema"] = 0.9 * state["acc_ema"] + 0.1 * acc
    rec = {"step": state["step"], "stage": stage, "loss": loss, "ce": ce, "kl": kl, "acc": acc, "lr": lr,
           "tok_s": n_tok / seconds}
    log.write(json.dumps(rec) + "\n")
    bar.set_postfix(loss=f"{loss:.3f}", kl=f"{kl:.3f}", acc=f"{state['acc_ema']:.2f}", tok_s=f"{n_tok / seconds:.0f}",
                    refresh=False)  # the bar redraws on its own clock (train.progress_bar), not every step
    bar.update(1)


def truncate_log(log_path, step):
    """Drop log records past the checkpoint's step (written before a crash), so a resumed log is exact."""
    if os.path.exists(log_path):
        with open(log_path) as f:
            keep = [line for line in f if line.endswith("\n") and json.loads(line)["step"] <= step]  # a kill may
            # cut the last line short: it lies past the checkpoint (flushed before each save), so it goes too
        atomic_write(log_path, lambda f: f.writelines(keep), mode="w")  # a kill leaves the old log or the new


# ----------------------------------------------------------------------------- phase 2's CE-only twin


@contextmanager
def one_line_errors(args, twin=None):
    """A RunError or a failed write (full disk, unwritable folder) ends in one error line, and a failing run
    stops its side-by-side twin process (on Ctrl-C the twin saves its own checkpoint first)."""
    try:
        yield
    except BaseException as e:
        if twin is not None and twin.poll() is None:
            if not (isinstance(e, KeyboardInterrupt) or getattr(e, "code", None) == 130):
                twin.terminate()
            twin.wait()
        if isinstance(e, RunError):
            fail(str(e))
        if isinstance(e, OSError):
            fail(f"cannot write {e.filename or args.out_dir}: {e.strerror or e}")
        raise
