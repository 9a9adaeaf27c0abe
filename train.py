"""Train the teacher, the phase-1 student and the phase-2 student (logit distillation).

Paper idea: "Short Data, Long Context" (arXiv 2604.06070). A student that only ever
sees *short* documents, packed end to end into a *long* window, inherits a long-context
teacher's long-range retrieval when it learns from the teacher's logits (KL), and the
RoPE base should be small while the window is short and large once it is long:

  --phase teacher  the long-context teacher, on long documents (window L_long)
  --phase 1        the student from scratch: short documents in a short window, small base,
                   CE mixed with KD by --kd-weight (0.5)
  --phase 2        the student from phase 1: the same short documents packed into the long
                   window, the base given by --rope-base (the paper's setting), 0.1 CE + 0.9 KD
                   (--kd-weight 0.9); on by default, a CE-only baseline (--kd-weight 0) trains
                   side by side. --arm picks another objective (baselines and ablations: CE
                   without the recurring answers, CE on the teacher's argmax, KD without the
                   recurring answers, KD from a teacher under the document mask; config.ARMS)

A phase whose prerequisites are missing trains them first (or exits with --no-auto).
Each phase ends with the retrieval probes of data.py at distances up to its window,
printed as a table and saved as JSON beside its checkpoint (report.py).

Under torchrun the same script trains data-parallel (dist.py): every rank trains its rows of
each step's global batch (--batch-size) in --grad-accum micro-batches, with a replica of the
frozen teacher; rank 0 alone prints, logs, probes and saves.

Main job:  python train.py --phase 2 --rope-base 500000
           torchrun --nproc_per_node 2 train.py --phase 2 --rope-base 500000 --threads 1
"""
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import dist
from config import (MASKED_ARMS, PRESETS, SHIPPED, build_parser, check_out_dir, fail, phase1_name, phase_seed,
                    pick_device, resolve)
from data import (DataError, DataSource, TaskSpec, file_windows, hold_out, prefetch, read_bin_documents,
                  read_text_documents,
                  to_device)
from distill import kd_loss, load_teacher, teacher_logits
from hf import load_pretrained
from model import GPT, CheckpointError, GPTConfig, load_checkpoint, load_model, save_checkpoint, switch_rope
from report import START, print_side_by_side, quick_eval, report, report_speed
from rope import format_spectrum, spectrum_summary
from tokenizer import Tokenizer

# ----------------------------------------------------------------------------- prerequisites


def find_checkpoint(path_in_out, shipped_name, preset):
    """The run in the output folder if it exists, else the shipped one (trained with the cpu preset), else None."""
    if os.path.isfile(path_in_out):
        return path_in_out
    shipped = os.path.join(SHIPPED, shipped_name)
    return shipped if preset == "cpu" and os.path.isfile(shipped) else None


def ensure(args, what, path, shipped_name, phase_argv):
    """Return a checkpoint path for a prerequisite, training it first if it is missing."""
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
    sub = build_parser().parse_args(phase_argv)
    run_checked(resolve(sub))
    return own


def ensure_phase1(args):
    """Phase 2's starting point: --init, else the phase-1 run of --phase1-base and --phase1-seed."""
    argv = ["--phase", "1", "--rope-base", f"{args.phase1_base:g}", "--seed", str(args.phase1_seed),
            "--window", str(args.phase1_window)]
    return ensure(args, "phase-1", args.init, phase1_file(args), argv + common_argv(args))


def phase1_file(args):
    """File name of the phase-1 run that phase 2 starts from (without --init)."""
    return phase1_name(args.phase1_base, args.phase1_seed, args.phase1_window, args.preset) + ".pt"


def common_argv(args):
    argv = ["--preset", args.preset, "--out-dir", args.out_dir, "--device", args.device,  # shared: seed 0
            "--dtype", args.dtype]
    argv += ["--grad-accum", str(args.grad_accum)] if args.grad_accum > 1 else []
    argv += ["--backend", args.backend] if args.backend != "auto" else []
    return argv + (["--threads", str(args.threads)] if args.threads else [])


# ----------------------------------------------------------------------------- training


def lr_at(step, steps, args):
    """Linear warmup, then constant or cosine to 10% (per stage)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if args.schedule == "cosine":
        frac = (step - args.warmup) / max(1, steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
    return args.lr


def make_stages(args, spec, corpus=None):
    """[(name, DataSource, steps, stop_at_accuracy)] for this phase; `corpus`: a real file's packed windows
    (training, held out), from load_corpus."""
    pre = PRESETS[args.preset]
    stages = []
    windows = [w for w in pre["curriculum_windows"] if w < args.window] if args.curriculum_steps else []
    for i, w in enumerate(windows):  # 3 records per 16 tokens; same tokens per step at every window
        src = DataSource(spec, "long", w, max(1, pre["curriculum_tokens"] // w), phase_seed(args, 1 if i == 0 else 2 + i),
                         n_pairs=max(1, 3 * w // 16))
        steps = args.curriculum_steps if i == 0 else max(1, args.curriculum_steps // 6)
        stages.append((f"curriculum-{w}", src, steps, args.curriculum_target))
    if corpus is not None:
        src = DataSource(spec, "file", args.window, args.batch_size, phase_seed(args, 2), windows=corpus[0])
    elif args.phase == "teacher":
        src = DataSource(spec, "long", args.window, args.batch_size, phase_seed(args, 2), n_pairs=pre["long_pairs"])
    else:
        src = DataSource(spec, "packed", args.window, args.batch_size, phase_seed(args, 2), args.max_doc_len,
                         args.min_doc_len, reset_positions=args.reset_positions)
    stages.append(("main", src, args.steps, None))
    return stages


def records_placed(stages) -> str:
    """One line: per synthetic stage, records asked for per window and placed on average in its first batch
    (data.place_pairs drops a record that finds no free slot: 12-20% in the dense curriculum windows)."""
    parts = []
    for name, src, *_ in stages:
        if src.kind == "long" and src.n_pairs:
            placed = src.batch(0)["answers"].sum(1).mean()
            parts.append(f"{name} {src.n_pairs} -> {placed:.1f}")
    return "  records per window, asked -> placed: " + ", ".join(parts) if parts else None


def load_corpus(args):
    try:
        if args.data.endswith(".bin"):
            docs, sep = read_bin_documents(args.data, args.eot_id, args.vocab_size), args.eot_id
        elif args.tokenizer:  # the teacher's tokens, documents behind its end-of-text token
            tok = load_tokenizer(args)
            docs, sep = read_text_documents(args.data, encode=tok.encode), tok.eos_id
        else:
            docs, sep = read_text_documents(args.data), 0
        return hold_out(file_windows(docs, args.window, args.max_doc_len, sep))  # (train, held-out) windows
    except DataError as e:
        fail(str(e))


def load_tokenizer(args):
    try:
        return Tokenizer.from_folder(args.tokenizer)
    except ValueError as e:
        fail(f"--tokenizer: {e}")


def train_step(model, teacher, opt, batch, args, autocast):
    """One optimizer step on this rank's rows of the batch, in --grad-accum micro-batches.

    Returns (loss, ce, kl, answer accuracy) of the whole global batch, as floats, the same on every rank.
    """
    k = args.grad_accum
    stats = 0  # summed over the micro-batches: loss / K, ce / K, kl / K, correct answers, answers
    opt.zero_grad(set_to_none=True)
    for i, micro in enumerate(dist.micro_batches(batch, k)):  # K x (x, y, pos, doc, ans), (B / ranks / K, T) each
        with dist.sync_unless(model, accumulating=i < k - 1):  # DDP all-reduces the gradients on the last only
            loss, ce, kl, correct, answers = micro_loss(model, teacher, micro, args, autocast)
            (loss / k).backward()
        stats = stats + torch.stack([loss.detach() / k, ce.detach() / k, kl.to(loss.device) / k, correct, answers])
    if args.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    opt.step()
    stats = dist.sum_across_ranks(stats)  # the losses are then averaged over ranks, the answers counted
    loss, ce, kl = (stats[:3] / dist.world_size()).tolist()
    return loss, ce, kl, (stats[3] / stats[4]).item()  # 0 / 0 = NaN: no answer in the batch


def micro_loss(model, teacher, batch, args, autocast):
    """Loss of one micro-batch: CE, or (1 - w) CE + w KD against the teacher's logits, as phase 2's --arm says.

    batch: (x, y, pos, doc, ans) or, for the masked arms, (x, y, pos, doc, ans, recurring), each (b, T).
    Returns (loss, ce, kl, correct answers, answers) as 0-dim tensors; kl is NaN without a KD term.
    """
    x, y, pos, doc, ans, *recurring = batch  # (b, T) each
    arm = getattr(args, "arm", None)
    with autocast:
        logits = model(x, pos, doc if args.doc_mask else None)  # (b, T, V)
    t_logits = arm_teacher_logits(teacher, x, pos, doc, args, autocast)  # (b, T, V) or None
    keep = ~recurring[0] if arm in MASKED_ARMS else None  # (b, T): False = left out of the arm's masked term
    targets = t_logits.argmax(-1) if arm == "ce-teacher-labels" else y  # hard-label distillation: teacher's argmax
    ce = masked_cross_entropy(logits, targets, keep if arm == "ce-masked" else None)
    kl = torch.tensor(float("nan"))
    loss = ce
    if t_logits is not None and args.kd_weight > 0:
        kd, kl = kd_loss(logits, t_logits, mask=keep if arm == "kd-masked" else None, temperature=args.temperature,
                         kind=args.kd_loss, beta=args.jsd_beta, chunk_size=args.kd_chunk)
        loss = (1 - args.kd_weight) * ce + args.kd_weight * kd
    correct = (logits.detach()[ans].argmax(-1) == y[ans]).float().sum()  # argmax of the answer rows only
    return loss, ce, kl, correct, ans.sum().float()


def arm_teacher_logits(teacher, x, pos, doc, args, autocast):
    """The teacher's logits (b, T, V) that the arm learns from, or None when it uses none.

    Under the run's --doc-mask, or under the document mask for --arm kd-teacher-docmask (the teacher cannot see
    other documents, so any long-range signal it passes on is not retrieval from an earlier document).
    """
    arm = getattr(args, "arm", None)
    if teacher is None or not (args.kd_weight > 0 or arm == "ce-teacher-labels"):
        return None
    with autocast:
        return teacher_logits(teacher, x, pos, doc if args.doc_mask or arm == "kd-teacher-docmask" else None)


def masked_cross_entropy(logits, targets, keep=None):
    """Mean next-token cross-entropy over the positions `keep` (b, T) marks (all when None)."""
    if keep is None:
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (b T,)
    keep = keep.flatten().float()
    return (per_token * keep).sum() / keep.sum().clamp(min=1)


def make_optimizer(model, args, device):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def build_student(args, spec, device):
    """Fresh model (teacher, phase 1) or phase 1's weights with the new base (phase 2)."""
    if args.phase == "2":
        init = ensure_phase1(args)
        model = load_init(args, init, device)
        student = switch_rope(model, args.rope_base, args.scaling, args.window)  # same weights, new base (ABF)
    else:
        torch.manual_seed(phase_seed(args))
        cfg = GPTConfig(vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head, n_kv_head=args.n_kv_head,
                        d_model=args.d_model, d_ff=args.d_ff, rope_base=args.rope_base, rope_scaling=args.scaling,
                        max_seq_len=args.window)
        student = GPT(cfg).to(device)
    student.attention = args.attention  # the kernel (--attention flex: --doc-mask as a flex block mask)
    return student


def checkpoint_dict(model, opt, args, state, done):
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "config": dataclasses.asdict(model.config),
            "step": state["step"], "stage": state["stage"], "stage_start": state["stage_start"],
            "acc_ema": state["acc_ema"], "rng": torch.get_rng_state(), "args": vars(args), "phase": args.phase,
            "done": done, "format": 1}


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


def check_inputs(args):
    """Every check that needs no training, before a file is written or a process launched.

    The output folder, the data, this run's checkpoint against --resume / --overwrite, and the
    teacher and phase-1 checkpoints that already exist. Returns (corpus or None, this run's
    previous checkpoint or None).
    """
    check_out_dir(args.out_dir, "--out-dir")
    if args.attention == "flex" and not args.device.startswith("cuda"):
        fail("--attention flex trains on CUDA only (torch has no flex-attention backward on CPU); use --attention sdpa")
    if args.vocab_size is None:  # --data with --tokenizer: the tokenizer's vocabulary (config.resolve left it)
        args.vocab_size = len(load_tokenizer(args))
    corpus = load_corpus(args) if args.data else None
    for name, src, _, _ in make_stages(args, TaskSpec(), corpus):  # each stage's batch over ranks x micro-batches
        try:
            dist.BatchShape(src.batch_size, dist.launched_world_size(), args.grad_accum)
        except ValueError as e:
            fail(f"--batch-size {src.batch_size}: {e}" if name == "main" else
                 f"the {name} stage (the preset's batch of {src.batch_size}; --curriculum-steps 0 skips it): {e}")
    ckpt_path = os.path.join(args.out_dir, args.run_name + ".pt")
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
    if args.kd_weight > 0 or args.phase == "2":
        teacher = args.teacher or find_checkpoint(os.path.join(args.out_dir, "teacher.pt"), "teacher.pt", args.preset)
        if teacher is not None:
            try:
                load_teacher(teacher, cpu, args.vocab_size)
            except CheckpointError as e:
                fail(str(e))
    if args.phase == "2":
        name = phase1_file(args)
        init = args.init or find_checkpoint(os.path.join(args.out_dir, name), name, args.preset)
        if init is not None:
            load_init(args, init, cpu)
    return corpus, previous


class RunError(Exception):
    """A run that cannot go on (a non-finite loss, a failed save); run_checked reports it once the bar has closed."""


def save_run(model, opt, args, state, ckpt_path, done):
    """Save the run's checkpoint (rank 0 alone under torchrun); a full disk or unwritable folder keeps the
    previous file and ends in one line."""
    if not dist.is_main():
        return
    try:
        save_checkpoint(checkpoint_dict(model, opt, args, state, done), ckpt_path)
    except OSError as e:
        kept = f"the previous {ckpt_path} is kept" if os.path.exists(ckpt_path) else "no checkpoint was written"
        raise RunError(f"cannot save the checkpoint at step {state['step']}: {e.strerror or e} "
                       f"({e.filename or ckpt_path}); {kept}") from None


def run_phase(args, inputs=None):
    """Train one phase end to end; returns the results dict (also saved as OUT/<run>.json).

    `inputs`: what check_inputs(args) returned, when the caller has already run it.
    """
    device, autocast = pick_device(args)
    spec = TaskSpec()
    corpus, previous = inputs or check_inputs(args)  # bad input fails here, before anything is written
    ckpt_path = os.path.join(args.out_dir, args.run_name + ".pt")
    results_path = os.path.join(args.out_dir, args.run_name + ".json")
    log_path = os.path.join(args.out_dir, args.run_name + ".jsonl")
    teacher = None
    if args.kd_weight > 0 or args.phase == "2":
        t_path = ensure(args, "teacher", args.teacher, "teacher.pt", ["--phase", "teacher"] + common_argv(args))
        try:
            teacher = load_teacher(t_path, device, args.vocab_size)
        except CheckpointError as e:
            fail(str(e))
        teacher.attention = args.attention
        print(f"teacher: {t_path} (base {teacher.config.rope_base:g}, frozen)")
    if args.resume and previous is not None and previous.get("done"):
        print(f"{ckpt_path} already finished; its results:")
        return on_main(final_report, args, teacher, device, autocast, spec, results_path, None, corpus=corpus)
    model = build_student(args, spec, device)
    opt = make_optimizer(model, args, device)
    state = {"step": 0, "stage": 0, "stage_start": 0, "acc_ema": 0.0}
    if args.resume:
        old, new = previous["config"], dataclasses.asdict(model.config)
        diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k, v) != v]
        if diff:
            fail(f"--resume: {ckpt_path} was trained with other settings than this run asks for: {', '.join(diff)}")
        try:
            model.load_state_dict(previous["model"])
            opt.load_state_dict(previous["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            fail(f"--resume: {ckpt_path} does not match this run's model: {str(e).splitlines()[0][:200]}")
        state = {k: previous[k] for k in state}
        torch.set_rng_state(previous["rng"])
        if dist.is_main():
            truncate_log(log_path, state["step"])
        print(f"resuming {ckpt_path} at step {state['step']}")
    elif dist.is_main() and os.path.exists(log_path):
        os.remove(log_path)  # --overwrite (or a fresh run): the old log goes with the old run
    cfg = model.config
    print(f"== phase {args.phase}: {args.run_name} | window {args.window} | {model.num_params():,} params | "
          f"loss {'CE' if args.kd_weight == 0 else f'{1 - args.kd_weight:g} CE + {args.kd_weight:g} KD({args.kd_loss}, T={args.temperature:g})'}"
          + (f" (--arm {args.arm})" if args.phase == "2" else "") + f" | {device}")
    print("  " + format_spectrum(spectrum_summary(cfg.head_dim, cfg.rope_base, args.window)))
    stages = make_stages(args, spec, corpus)
    placed = records_placed(stages)
    if placed:
        print(placed)
    step_model = dist.wrap(torch.compile(model) if args.compile else model, device)  # DDP under torchrun
    trained_tokens, t_train = train_loop(step_model, model, teacher, opt, args, stages,
                                         state, autocast, device, ckpt_path, log_path, spec)
    spread = dist.weight_spread(model)  # DDP keeps the ranks' weights equal: 0.0
    save_run(model, opt, args, state, ckpt_path, done=True)
    speed = report_speed(model, args, device, trained_tokens, t_train, spread) if dist.is_main() else None
    return on_main(final_report, args, teacher, device, autocast, spec, results_path, speed, model, corpus)


def final_report(args, teacher, device, autocast, spec, results_path, speed, model=None, corpus=None):
    """report.report on the run (from its checkpoint if not given), its teacher and phase 2's starting point."""
    if model is None:
        model, _ = load_model(os.path.join(args.out_dir, args.run_name + ".pt"), device)
    models = {args.run_name: model, **({"teacher": teacher} if teacher is not None else {})}
    if args.phase == "2":  # the starting point: phase 1's weights with the new base, before any phase-2 step
        models[START] = build_student(args, spec, device)
    return report(args, models, device, autocast, spec, results_path, speed, corpus)


def on_main(fn, *a, **k):
    """fn(*a, **k) on rank 0 (None on the others), then every rank waits for it: what rank 0 writes last
    (checkpoint, results) is on disk before any rank goes on, e.g. to a phase that reads it."""
    out = fn(*a, **k) if dist.is_main() else None
    dist.barrier()
    return out


def train_loop(step_model, model, teacher, opt, args, stages, state, autocast, device, ckpt_path, log_path, spec):
    """All stages of the phase, resumable from `state`; returns (tokens trained, seconds of the steps).

    A step's seconds run from asking for its batch to its metrics, so a batch that is not ready
    counts; quick checks and saves do not. Under torchrun every rank trains the same steps and
    rank 0 alone logs, probes and saves.
    """
    clock = {"tokens": 0, "seconds": 0.0}
    main = dist.is_main()
    if main:
        os.makedirs(args.out_dir, exist_ok=True)

    def stop_here():  # Ctrl-C was pressed: the weights are those of state["step"], so save them under that label
        save_run(model, opt, args, state, ckpt_path, done=False)
        if main:
            print(f"\ninterrupted: saved a resumable checkpoint at step {state['step']} to {ckpt_path} "
                  f"(continue with --resume)", file=sys.stderr)
        raise SystemExit(130)

    with open(log_path if main else os.devnull, "a") as log, StopOnInterrupt() as ctrl_c:
        while state["stage"] < len(stages):
            name, src, steps, stop_at = stages[state["stage"]]
            local = state["step"] - state["stage_start"]
            bar = progress_bar(steps, local, f"{args.run_name} {name}", disable=not main)
            try:
                if main and args.eval_interval and name == "main" and local == 0 and args.phase == "2":
                    quick_eval(model, args, spec, device, autocast, 0, state["step"], bar, log)  # the starting point
                t0 = time.perf_counter()
                for local, batch in stage_batches(src, local, steps, args, device):
                    if ctrl_c.requested():  # between steps: nothing of the next step has touched the weights
                        stop_here()
                    for group in opt.param_groups:
                        group["lr"] = lr_at(local, steps, args)
                    metrics = train_step(step_model, teacher, opt, batch, args, autocast)
                    record_step(state, name, metrics, src.batch_size * src.window, time.perf_counter() - t0, clock,
                                opt, bar, log, ckpt_path)
                    steps_done = local + 1
                    if stop_at is not None and state["acc_ema"] >= stop_at and steps_done >= 50:
                        bar.write(f"  {name}: answer accuracy {state['acc_ema']:.2f} >= {stop_at} at step "
                                  f"{steps_done}; next stage")
                        break
                    if main and args.eval_interval and name == "main" and steps_done % args.eval_interval == 0 \
                            and steps_done < steps:
                        quick_eval(model, args, spec, device, autocast, steps_done, state["step"], bar, log)
                    if state["step"] % args.save_interval == 0:
                        log.flush()
                        save_run(model, opt, args, state, ckpt_path, done=False)
                    t0 = time.perf_counter()
                if ctrl_c.requested():
                    stop_here()
            except KeyboardInterrupt:  # a second Ctrl-C: stop now; the weights may be mid-step, so save nothing
                if main:
                    print(f"\ninterrupted twice: stopped at once; the last saved checkpoint {ckpt_path} is kept "
                          f"(continue with --resume)", file=sys.stderr)
                raise SystemExit(130)
            finally:  # also on Ctrl-C / NaN exits: no stray progress bar
                bar.close()
            state["stage"] += 1
            state["stage_start"] = state["step"]
            state["acc_ema"] = 0.0
    return clock["tokens"], clock["seconds"]


def progress_bar(total, initial, desc, disable=False):
    """A tqdm bar: redrawn in place on a terminal; in a file or a pipe one line every 30 s, not one per step."""
    on_terminal = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=on_terminal, disable=disable,
                mininterval=0.1 if on_terminal else 30.0, ncols=None if on_terminal else 100)


class StopOnInterrupt:
    """Ctrl-C (SIGINT) while the loop runs sets a flag that the loop checks between steps, so the checkpoint it
    then saves holds the weights of the step it is labelled with (an exception raised mid-step could leave
    the optimizer's update half done, or done but not yet counted). A second Ctrl-C raises KeyboardInterrupt
    at once. Under torchrun the ranks agree: any rank's flag stops all of them at the same step."""

    def __enter__(self):
        self.flag, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def requested(self) -> bool:
        return dist.any_rank(self.flag)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def stage_batches(src, start, steps, args, device):
    """(step, this rank's batch on the device) for steps start..steps-1 of a stage, each built one step ahead.

    dist.BatchShape decides the rows: rank r of N takes rows [r B/N, (r+1) B/N) of the step's global batch.
    """
    shape = dist.BatchShape(src.batch_size, dist.world_size(), args.grad_accum)
    rows = shape.rows(dist.rank())
    arrays = prefetch(lambda step: src.batch(step, rows), range(start, steps))  # numpy, in a background thread
    recurring = getattr(args, "arm", None) in MASKED_ARMS  # the masked arms' sixth tensor
    for step, batch in zip(range(start, steps), arrays):
        yield step, to_device(batch, device, recurring)


def record_step(state, name, metrics, n_tok, seconds, clock, opt, bar, log, ckpt_path):
    """After a step: stop on a non-finite loss, count the step, log it (rank 0) and show it on the bar."""
    loss, ce, kl, acc = metrics
    if not math.isfinite(loss):
        raise RunError(f"non-finite loss ({loss}) at step {state['step']}; the last good checkpoint "
                       f"{ckpt_path} is kept")
    clock["tokens"] += n_tok
    clock["seconds"] += seconds
    state["step"] += 1
    if math.isfinite(acc):
        state["acc_ema"] = 0.9 * state["acc_ema"] + 0.1 * acc
    rec = {"step": state["step"], "stage": name, "loss": loss, "ce": ce, "kl": kl, "acc": acc,
           "lr": opt.param_groups[0]["lr"], "tok_s": n_tok / seconds}
    log.write(json.dumps(rec) + "\n")
    bar.set_postfix(loss=f"{loss:.3f}", kl=f"{kl:.3f}", acc=f"{state['acc_ema']:.2f}", tok_s=f"{n_tok / seconds:.0f}",
                    refresh=False)  # the bar redraws on its own clock (progress_bar), not every step
    bar.update(1)


def truncate_log(log_path, step):
    """Drop log records past the checkpoint's step (written before a crash), so a resumed log is exact."""
    if os.path.exists(log_path):
        with open(log_path) as f:
            keep = [line for line in f if line.endswith("\n") and json.loads(line)["step"] <= step]  # a kill may
            # cut the last line short: it lies past the checkpoint (flushed before each save), so it goes too
        with open(log_path, "w") as f:
            f.writelines(keep)


def baseline_args(args, argv):
    """Phase 2's CE-only twin: (its name, its argv, its resolved args), args None when its results exist."""
    ce_argv = argv + ["--kd-weight", "0", "--arm", "ce", "--no-baseline", "--no-auto"]
    # its own default name (a CE run has no divergence or temperature to name), or --run-name's with kd -> ce
    named = any(a == "--run-name" or a.startswith("--run-name=") for a in argv)
    ce_name = (resolve(build_parser().parse_args(ce_argv)).run_name if not named else
               args.run_name.replace("-kd-", "-ce-") if "-kd-" in args.run_name else args.run_name + "-ce")
    if os.path.isfile(os.path.join(args.out_dir, ce_name + ".json")) and not args.overwrite:
        return ce_name, None, None
    ce_argv += ["--run-name", ce_name]
    if args.device == "cpu" and not args.threads:
        ce_argv += ["--threads", "1"]
    return ce_name, ce_argv, resolve(build_parser().parse_args(ce_argv))


def launch_baseline(args, ce_name, ce_argv):
    """Phase 2's CE-only twin as a side process (1 thread each on CPU), unless it already exists."""
    if ce_argv is None:
        print(f"baseline {ce_name} already trained: reusing it")
        return None, ce_name
    log = os.path.join(args.out_dir, ce_name + ".log")
    os.makedirs(args.out_dir, exist_ok=True)
    if args.device == "cpu" and not args.threads:
        torch.set_num_threads(1)
    print(f"baseline: training the CE-only twin {ce_name} side by side (log: {log})")
    return subprocess.Popen([sys.executable, os.path.abspath(__file__)] + ce_argv, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT), ce_name


def run_checked(args, inputs=None, twin=None):
    """run_phase, ending a RunError or a failed write (full disk, unwritable folder) in one error line, and
    stopping the side-by-side twin process when this run fails (on Ctrl-C it saves its own checkpoint first)."""
    try:
        return run_phase(args, inputs)
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = resolve(build_parser().parse_args(argv))
    pick_device(args)
    dist.start(args)  # under torchrun: join this run's process group; nothing without it
    try:
        train_phase(args, argv)
    finally:
        dist.stop()


def train_phase(args, argv):
    """The phase asked for; phase 2 with KD also trains its CE-only twin side by side (one process group per
    run: under torchrun the twin is its own torchrun job, and the table compares it once its results exist)."""
    t0 = time.time()
    baseline = inputs = None
    twin = args.phase == "2" and args.arm == "kd" and not args.no_baseline  # the other arms train alone
    if twin and dist.world_size() == 1:
        ce_name, ce_argv, ce_args = baseline_args(args, argv)
        inputs = check_inputs(args)  # both runs' inputs, before anything is written or launched
        if ce_args is not None:
            check_inputs(ce_args)
        # prerequisites first, so the twin finds them; then both phase-2 runs side by side
        ensure(args, "teacher", args.teacher, "teacher.pt", ["--phase", "teacher"] + common_argv(args))
        ensure_phase1(args)
        baseline = launch_baseline(args, ce_name, ce_argv)
    results = run_checked(args, inputs, baseline[0] if baseline else None)
    if baseline is not None:
        proc, ce_name = baseline
        if proc is not None and proc.wait() != 0:
            fail(f"the CE baseline failed; see {os.path.join(args.out_dir, ce_name + '.log')}")
        print_side_by_side(args, results, ce_name)
    elif twin and dist.is_main():
        ce_name, ce_argv, _ = baseline_args(args, argv)
        if ce_argv is None:
            print_side_by_side(args, results, ce_name)
        else:
            print(f"\nthe CE-only twin {ce_name} is not trained under torchrun; train it as its own job, then run "
                  f"this one again (--resume) for the side-by-side table:\n  torchrun --nproc_per_node "
                  f"{dist.world_size()} train.py {' '.join(ce_argv)}")
    print(f"wall time: {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
