"""Train the teacher, the phase-1 student and the phase-2 student (logit distillation).

Paper idea: "Short Data, Long Context" (arXiv 2604.06070). A student that only ever
sees *short* documents, packed end to end into a *long* window, inherits a long-context
teacher's long-range retrieval when it learns from the teacher's logits (KL), and the
RoPE base should be small while the window is short and large once it is long:

  --phase teacher  the long-context teacher, on long documents (window L_long)
  --phase 1        the student from scratch: short documents in a short window, small base,
                   CE mixed with KD by --kd-weight
  --phase 2        the student from phase 1: the same short documents packed into the long
                   window, the base given by --rope-base (the paper's setting); on by
                   default, a CE-only baseline (--kd-weight 0) trains side by side

A phase whose prerequisites are missing trains them first (or exits with --no-auto).
Each phase ends with the retrieval probes of data.py at distances up to its window,
printed as a table and saved as JSON beside its checkpoint.

Main job:  python train.py --phase 2 --rope-base 500000
"""
import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data import DataError, DataSource, TaskSpec, file_windows, read_bin_documents, read_text_documents, to_device
from distill import kd_loss, load_teacher, teacher_logits
from evaluate import evaluate, format_table, matmul_peak_flops
from model import GPT, CheckpointError, GPTConfig, load_checkpoint, load_model, save_checkpoint
from rope import format_spectrum, rope_frequencies, spectrum_summary

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints")

# Defaults per preset; explicit flags override. `cpu` is the 2-core demonstration.
# A phase may start with a dense "curriculum" stage (windows of 32 tokens, each one short
# document with 6 records) that ends once training accuracy on the answers passes a target:
# tiny models need it to leave the retrieval plateau in minutes (../shared/RECIPE.md).
PRESETS = {
    "tiny": dict(d_model=32, n_layer=2, n_head=2, n_kv_head=2, d_ff=0, long_window=64, short_window=32,
                 max_doc_len=16, min_doc_len=8, long_pairs=4, batch_size=2, lr=2e-3, warmup=2,
                 curriculum_window=16, curriculum_pairs=2, curriculum_batch=4, curriculum_steps=3,
                 steps={"teacher": 4, "1": 4, "2": 4}, eval_windows=2, eval_distances=[4, 12, 40]),
    "cpu": dict(d_model=128, n_layer=2, n_head=4, n_kv_head=4, d_ff=0, long_window=1024, short_window=256,
                max_doc_len=128, min_doc_len=32, long_pairs=48, batch_size=4, lr=2e-3, warmup=20,
                curriculum_window=16, curriculum_pairs=3, curriculum_batch=256, curriculum_steps=3000,
                steps={"teacher": 600, "1": 200, "2": 1500}, eval_windows=16,
                eval_distances=[16, 32, 64, 128, 256, 512, 768, 900]),
    "gpu": dict(d_model=512, n_layer=8, n_head=8, n_kv_head=8, d_ff=1408, long_window=4096, short_window=1024,
                max_doc_len=512, min_doc_len=64, long_pairs=192, batch_size=16, lr=1e-3, warmup=100,
                curriculum_window=64, curriculum_pairs=12, curriculum_batch=256, curriculum_steps=5000,
                steps={"teacher": 3000, "1": 1000, "2": 3000}, eval_windows=32,
                eval_distances=[64, 256, 512, 1024, 2048, 3072, 4000]),
}
PHASE_LR = {"teacher": 1.0, "1": 1.0, "2": 0.5}  # phase 2 fine-tunes: half the preset's lr


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    a = p.add_argument
    a("--phase", required=True, choices=["teacher", "1", "2"], help="what to train (see the module doc)")
    a("--preset", default="cpu", choices=list(PRESETS), help="size defaults: tiny (tests), cpu (default), gpu")
    a("--out-dir", default="out", help="folder for checkpoints, logs and results")
    a("--run-name", default=None, help="name of this run's files (default: from phase, loss and base)")
    a("--teacher", default=None, help="teacher checkpoint (default: OUT/teacher.pt, else checkpoints/teacher.pt)")
    a("--init", default=None, help="phase-2 start checkpoint (default: OUT/phase1-b<--phase1-base>.pt, else shipped)")
    a("--phase1-base", type=float, default=10000.0, help="RoPE base of the phase-1 run that phase 2 starts from")
    a("--no-auto", action="store_true", help="exit with an error instead of training missing prerequisites")
    a("--resume", action="store_true", help="continue this run from its checkpoint")
    a("--overwrite", action="store_true", help="retrain even if this run already finished")
    a("--no-baseline", action="store_true", help="phase 2: do not train the CE-only baseline side by side")
    g = p.add_argument_group("RoPE")
    g.add_argument("--rope-base", type=float, default=None, help="RoPE base (default 10000; phase 2: 500000)")
    g.add_argument("--rope-scaling", default=None, help='HF-style rope_scaling JSON, e.g. \'{"rope_type":"yarn",...}\'')
    g = p.add_argument_group("data")
    g.add_argument("--window", type=int, default=None, help="training window (default: long for teacher/phase 2, "
                   "short for phase 1)")
    g.add_argument("--max-doc-len", type=int, default=None, help="longest short document, separator included")
    g.add_argument("--min-doc-len", type=int, default=None, help="shortest short document")
    g.add_argument("--reset-positions", action="store_true", help="restart position ids at each document")
    g.add_argument("--doc-mask", action="store_true", help="block-diagonal attention (no cross-document attention)")
    g.add_argument("--data", default=None, help="train on a real corpus instead: a UTF-8 text file/folder or a .bin")
    g.add_argument("--eot-id", type=int, default=50256, help=".bin data: end-of-text id that splits documents")
    g = p.add_argument_group("model (teacher and phase 1; phase 2 keeps phase 1's)")
    for name in ("d_model", "n_layer", "n_head", "n_kv_head", "d_ff"):
        g.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"{name} (0 d_ff = no MLP)")
    g = p.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=None, help="steps of the phase's main stage")
    g.add_argument("--batch-size", type=int, default=None, help="windows per step")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate")
    g.add_argument("--schedule", default="constant", choices=["constant", "cosine"], help="after warmup")
    g.add_argument("--warmup", type=int, default=None, help="linear warmup steps (each stage)")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (0 = off)")
    g.add_argument("--curriculum-steps", type=int, default=None, help="max steps of the dense warm-up stage "
                   "(teacher and phase 1; 0 = none)")
    g.add_argument("--curriculum-target", type=float, default=0.95, help="end the warm-up once answer accuracy "
                   "(running mean) reaches this")
    g = p.add_argument_group("distillation")
    g.add_argument("--kd-weight", type=float, default=0.5, help="loss = (1-w) CE + w KD; 0 = CE-only baseline")
    g.add_argument("--temperature", type=float, default=1.0, help="KD temperature T (loss scaled by T^2)")
    g.add_argument("--kd-loss", default="forward", choices=["forward", "reverse", "jsd"], help="divergence")
    g.add_argument("--jsd-beta", type=float, default=0.5, help="beta of the generalized JSD")
    g.add_argument("--kd-chunk", type=int, default=1024, help="tokens per float32 chunk in the KD loss")
    g = p.add_argument_group("system")
    g.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype "
                   "(auto: bf16 on CUDA, float32 on CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the student")
    g.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    g.add_argument("--seed", type=int, default=0, help="random seed (model init and data stream)")
    g.add_argument("--eval-interval", type=int, default=250, help="steps between quick retrieval checks")
    g.add_argument("--save-interval", type=int, default=100, help="steps between checkpoints")
    g.add_argument("--peak-flops", type=float, default=0, help="device peak FLOP/s for MFU (0 = measure)")
    return p


# ----------------------------------------------------------------------------- configuration


def fail(msg):
    """One clear line on stderr and a non-zero exit."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def resolve(args):
    """Fill preset defaults and check every value; returns args (namespace) completed."""
    pre = PRESETS[args.preset]
    phase = args.phase
    args.explicit = {k: getattr(args, k) for k in ("d_model", "n_layer", "n_head", "n_kv_head", "d_ff")}
    for k in ("d_model", "n_layer", "n_head", "n_kv_head", "d_ff", "max_doc_len", "min_doc_len", "batch_size",
              "warmup"):
        if getattr(args, k) is None:
            setattr(args, k, pre[k])
    args.long_window = pre["long_window"]
    if args.window is None:
        args.window = pre["short_window"] if phase == "1" else pre["long_window"]
    if args.rope_base is None:
        args.rope_base = 500000.0 if phase == "2" else 10000.0
    if args.steps is None:
        args.steps = pre["steps"][phase]
    if args.lr is None:
        args.lr = pre["lr"] * PHASE_LR[phase]
    if args.curriculum_steps is None:
        args.curriculum_steps = 0 if phase == "2" or args.data else pre["curriculum_steps"]
    if phase == "teacher":
        args.kd_weight = 0.0
    args.scaling = None
    if args.rope_scaling:
        try:
            args.scaling = json.loads(args.rope_scaling)
            rope_frequencies(args.d_model // args.n_head, args.rope_base, args.scaling, args.window)
        except (json.JSONDecodeError, ValueError, AttributeError) as e:
            fail(f"--rope-scaling: {e}")
    checks = [
        (math.isfinite(args.rope_base) and args.rope_base > 1, f"--rope-base must be a finite number > 1, got {args.rope_base}"),
        (args.steps > 0, f"--steps must be positive, got {args.steps}"),
        (args.batch_size > 0, f"--batch-size must be positive, got {args.batch_size}"),
        (math.isfinite(args.lr) and args.lr > 0, f"--lr must be positive, got {args.lr}"),
        (args.temperature > 0 and math.isfinite(args.temperature), f"--temperature must be > 0, got {args.temperature}"),
        (0 <= args.kd_weight <= 1, f"--kd-weight must lie in [0, 1], got {args.kd_weight}"),
        (0 < args.jsd_beta < 1, f"--jsd-beta must lie in (0, 1), got {args.jsd_beta}"),
        (args.window > 0 and args.curriculum_steps >= 0 and args.warmup >= 0, "windows and step counts must be >= 0"),
        (2 <= args.min_doc_len <= args.max_doc_len, f"need 2 <= --min-doc-len <= --max-doc-len, got "
                                                    f"{args.min_doc_len}, {args.max_doc_len}"),
        (phase == "teacher" or args.window >= args.max_doc_len, f"--window {args.window} is smaller than the "
                                                               f"document length {args.max_doc_len}"),
        (args.d_model > 0 and args.n_head > 0 and args.n_kv_head > 0 and args.d_model % args.n_head == 0
         and args.n_head % args.n_kv_head == 0, "--d-model must divide by --n-head, and --n-head by --n-kv-head"),
    ]
    for ok, msg in checks:
        if not ok:
            fail(msg)
    if args.run_name is None:
        if phase == "teacher":
            args.run_name = "teacher"
        elif phase == "1":
            args.run_name = f"phase1-b{args.rope_base:g}"
        else:
            loss = "kd" if args.kd_weight > 0 else "ce"
            args.run_name = f"phase2-{loss}-b{args.phase1_base:g}-b{args.rope_base:g}"
    return args


def pick_device(args):
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda asked for, but no CUDA device is available")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32,
             "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext())
    return device, autocast


# ----------------------------------------------------------------------------- prerequisites


def find_checkpoint(path_in_out, shipped_name):
    """The run in the output folder if it exists, else the shipped one, else None."""
    if os.path.isfile(path_in_out):
        return path_in_out
    shipped = os.path.join(SHIPPED, shipped_name)
    return shipped if os.path.isfile(shipped) else None


def ensure(args, what, path, shipped_name, phase_argv):
    """Return a checkpoint path for a prerequisite, training it first if it is missing."""
    if path is not None:
        if not os.path.isfile(path):
            fail(f"{what} checkpoint not found: {path}")
        return path
    own = os.path.join(args.out_dir, shipped_name)
    found = find_checkpoint(own, shipped_name)
    if found:
        return found
    if args.no_auto:
        fail(f"no {what} checkpoint at {own} (train it with: python train.py {' '.join(phase_argv)}, "
             f"or drop --no-auto)")
    print(f"[auto] no {what} checkpoint at {own}: training it first "
          f"(python train.py {' '.join(phase_argv)}); --no-auto stops instead", flush=True)
    sub = build_parser().parse_args(phase_argv)
    run_phase(resolve(sub))
    return own


def common_argv(args):
    argv = ["--preset", args.preset, "--out-dir", args.out_dir, "--seed", str(args.seed), "--device", args.device]
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
    """[(name, DataSource, steps, stop_at_accuracy)] for this phase; `corpus`: packed windows of a real file."""
    pre = PRESETS[args.preset]
    stages = []
    if args.curriculum_steps:
        src = DataSource(spec, "long", pre["curriculum_window"], pre["curriculum_batch"], args.seed * 100 + 1,
                         n_pairs=pre["curriculum_pairs"])
        stages.append(("curriculum", src, args.curriculum_steps, args.curriculum_target))
    if corpus is not None:
        src = DataSource(spec, "file", args.window, args.batch_size, args.seed * 100 + 2, windows=corpus)
    elif args.phase == "teacher":
        src = DataSource(spec, "long", args.window, args.batch_size, args.seed * 100 + 2, n_pairs=pre["long_pairs"])
    else:
        src = DataSource(spec, "packed", args.window, args.batch_size, args.seed * 100 + 2, args.max_doc_len,
                         args.min_doc_len, reset_positions=args.reset_positions)
    stages.append(("main", src, args.steps, None))
    return stages


def load_corpus(args):
    try:
        if args.data.endswith(".bin"):
            docs, sep = read_bin_documents(args.data, args.eot_id, args.vocab_size), args.eot_id
        else:
            docs, sep = read_text_documents(args.data), 0
        return file_windows(docs, args.window, args.max_doc_len, sep)
    except DataError as e:
        fail(str(e))


def train_step(model, teacher, opt, batch, args, autocast):
    """One optimizer step; returns (loss, ce, kl, answer accuracy) as floats."""
    x, y, pos, doc, ans = batch
    doc = doc if args.doc_mask else None
    with autocast:
        logits = model(x, pos, doc)  # (B, T, V)
    ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    kl = torch.tensor(float("nan"))
    loss = ce
    if teacher is not None and args.kd_weight > 0:
        with autocast:
            t_logits = teacher_logits(teacher, x, pos, doc)
        kd, kl = kd_loss(logits, t_logits, temperature=args.temperature, kind=args.kd_loss, beta=args.jsd_beta,
                         chunk_size=args.kd_chunk)
        loss = (1 - args.kd_weight) * ce + args.kd_weight * kd
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if args.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    opt.step()
    acc = (logits.argmax(-1)[ans] == y[ans]).float().mean().item() if ans.any() else float("nan")
    return loss.item(), ce.item(), kl.item(), acc


def make_optimizer(model, args, device):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def build_student(args, spec, device):
    """Fresh model (teacher, phase 1) or phase 1's weights with the new base (phase 2)."""
    if args.phase == "2":
        init = ensure(args, "phase-1", args.init, f"phase1-b{args.phase1_base:g}.pt",
                      ["--phase", "1", "--rope-base", f"{args.phase1_base:g}"] + common_argv(args))
        try:
            model, ckpt = load_model(init, device)
        except CheckpointError as e:
            fail(str(e))
        if not ckpt.get("done", True) or ckpt.get("phase") not in ("1", None):
            fail(f"--init {init} is not a finished phase-1 checkpoint")
        for name in ("d_model", "n_layer", "n_head", "n_kv_head", "d_ff"):
            if args.explicit.get(name) is not None and args.explicit[name] != getattr(model.config, name):
                fail(f"--init {init} has {name} {getattr(model.config, name)}, not the {args.explicit[name]} "
                     f"asked for: phase 2 keeps phase 1's architecture")
        cfg = dataclasses.replace(model.config, rope_base=args.rope_base, rope_scaling=args.scaling,
                                  max_seq_len=args.window)
        if cfg.vocab_size != spec.vocab_size and not args.data:
            fail(f"--init {init} has vocabulary {cfg.vocab_size}, the data has {spec.vocab_size}")
        student = GPT(cfg).to(device)
        student.load_state_dict(model.state_dict())  # same weights; only RoPE's base changes (ABF)
        return student
    torch.manual_seed(args.seed)
    cfg = GPTConfig(vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head, n_kv_head=args.n_kv_head,
                    d_model=args.d_model, d_ff=args.d_ff, rope_base=args.rope_base, rope_scaling=args.scaling,
                    max_seq_len=args.window)
    return GPT(cfg).to(device)


def checkpoint_dict(model, opt, args, state, done):
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "config": dataclasses.asdict(model.config),
            "step": state["step"], "stage": state["stage"], "stage_start": state["stage_start"],
            "acc_ema": state["acc_ema"], "rng": torch.get_rng_state(), "args": vars(args), "phase": args.phase,
            "done": done, "format": 1}


def run_phase(args):
    """Train one phase end to end; returns the results dict (also saved as OUT/<run>.json)."""
    device, autocast = pick_device(args)
    spec = TaskSpec()
    args.vocab_size = spec.vocab_size if not args.data else (257 if not args.data.endswith(".bin") else 65536)
    ckpt_path = os.path.join(args.out_dir, args.run_name + ".pt")
    results_path = os.path.join(args.out_dir, args.run_name + ".json")
    log_path = os.path.join(args.out_dir, args.run_name + ".jsonl")
    corpus = load_corpus(args) if args.data else None  # a bad data file fails before anything else
    previous = None
    if os.path.exists(ckpt_path):
        try:
            previous = load_checkpoint(ckpt_path)
        except CheckpointError as e:
            if args.resume or not args.overwrite:
                fail(str(e))
        if previous is not None and previous.get("done") and not args.overwrite and not args.resume:
            fail(f"{ckpt_path} is a finished run: pass --overwrite to retrain it, or choose another --run-name")
        if previous is not None and not previous.get("done") and not args.resume and not args.overwrite:
            fail(f"{ckpt_path} holds an unfinished run: pass --resume to continue it or --overwrite to restart")
    elif args.resume:
        fail(f"--resume: no checkpoint at {ckpt_path}")
    teacher = None
    if args.kd_weight > 0 or args.phase == "2":
        t_path = ensure(args, "teacher", args.teacher, "teacher.pt", ["--phase", "teacher"] + common_argv(args))
        try:
            teacher = load_teacher(t_path, device, args.vocab_size)
        except (CheckpointError, ValueError) as e:
            fail(str(e))
        print(f"teacher: {t_path} (base {teacher.config.rope_base:g}, frozen)")
    if args.resume and previous is not None and previous.get("done"):
        print(f"{ckpt_path} already finished; its results:")
        return report(args, teacher, device, autocast, spec, results_path, None)
    model = build_student(args, spec, device)
    opt = make_optimizer(model, args, device)
    state = {"step": 0, "stage": 0, "stage_start": 0, "acc_ema": 0.0}
    if args.resume:
        try:
            model.load_state_dict(previous["model"])
            opt.load_state_dict(previous["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            fail(f"--resume: {ckpt_path} does not match this run's model: {str(e).splitlines()[0][:200]}")
        state = {k: previous[k] for k in state}
        torch.set_rng_state(previous["rng"])
        truncate_log(log_path, state["step"])
        print(f"resuming {ckpt_path} at step {state['step']}")
    elif os.path.exists(log_path):
        os.remove(log_path)  # --overwrite (or a fresh run): the old log goes with the old run
    cfg = model.config
    print(f"== phase {args.phase}: {args.run_name} | window {args.window} | {model.num_params():,} params | "
          f"loss {'CE' if args.kd_weight == 0 else f'{1 - args.kd_weight:g} CE + {args.kd_weight:g} KD({args.kd_loss}, T={args.temperature:g})'} | {device}")
    print("  " + format_spectrum(spectrum_summary(cfg.head_dim, cfg.rope_base, args.window)))
    step_model = torch.compile(model) if args.compile else model
    trained_tokens, t_train = train_loop(step_model, model, teacher, opt, args, make_stages(args, spec, corpus),
                                         state, autocast, device, ckpt_path, log_path, spec)
    save_checkpoint(checkpoint_dict(model, opt, args, state, done=True), ckpt_path)
    speed = report_speed(model, args, device, trained_tokens, t_train)
    return report(args, teacher, device, autocast, spec, results_path, speed, model)


def train_loop(step_model, model, teacher, opt, args, stages, state, autocast, device, ckpt_path, log_path, spec):
    """All stages of the phase, resumable from `state`; returns (tokens trained, seconds)."""
    tokens, seconds = 0, 0.0
    os.makedirs(args.out_dir, exist_ok=True)
    with open(log_path, "a") as log:
        while state["stage"] < len(stages):
            name, src, steps, stop_at = stages[state["stage"]]
            local = state["step"] - state["stage_start"]
            bar = tqdm(total=steps, initial=local, desc=f"{args.run_name} {name}", dynamic_ncols=True)
            while local < steps:
                for group in opt.param_groups:
                    group["lr"] = lr_at(local, steps, args)
                batch = to_device(src.batch(local), device)
                t0 = time.perf_counter()
                try:
                    loss, ce, kl, acc = train_step(step_model, teacher, opt, batch, args, autocast)
                except KeyboardInterrupt:
                    save_checkpoint(checkpoint_dict(model, opt, args, state, done=False), ckpt_path)
                    print(f"\ninterrupted: saved a resumable checkpoint at step {state['step']} to {ckpt_path} "
                          f"(continue with --resume)", file=sys.stderr)
                    raise SystemExit(130)
                if not math.isfinite(loss):
                    fail(f"non-finite loss ({loss}) at step {state['step']}; the last good checkpoint "
                         f"{ckpt_path} is kept")
                dt = time.perf_counter() - t0
                n_tok = batch[0].numel()
                tokens, seconds = tokens + n_tok, seconds + dt
                state["step"] += 1
                local += 1
                if math.isfinite(acc):
                    state["acc_ema"] = 0.9 * state["acc_ema"] + 0.1 * acc
                rec = {"step": state["step"], "stage": name, "loss": loss, "ce": ce, "kl": kl, "acc": acc,
                       "lr": opt.param_groups[0]["lr"], "tok_s": n_tok / dt}
                log.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{loss:.3f}", kl=f"{kl:.3f}", acc=f"{state['acc_ema']:.2f}",
                                tok_s=f"{n_tok / dt:.0f}")
                bar.update(1)
                if stop_at is not None and state["acc_ema"] >= stop_at and local >= 50:
                    bar.write(f"  {name}: answer accuracy {state['acc_ema']:.2f} >= {stop_at} at step {local}; "
                              "next stage")
                    break
                if args.eval_interval and name == "main" and local % args.eval_interval == 0 and local < steps:
                    quick = evaluate(model, spec, args.window, quick_distances(args), args.max_doc_len, device,
                                     autocast, PRESETS[args.preset]["eval_windows"] // 2, copy=False)
                    bar.write(f"  step {local}: " + ", ".join(f"D={d}: {a:.2f}" for d, a in quick["kv"].items())
                              + f", in-doc {quick['in_doc']:.2f}")
                    log.write(json.dumps({"step": state["step"], "eval": quick}) + "\n")
                if state["step"] % args.save_interval == 0:
                    log.flush()
                    save_checkpoint(checkpoint_dict(model, opt, args, state, done=False), ckpt_path)
            bar.close()
            state["stage"] += 1
            state["stage_start"] = state["step"]
    return tokens, seconds


def truncate_log(log_path, step):
    """Drop log records past the checkpoint's step (written before a crash), so a resumed log is exact."""
    if os.path.exists(log_path):
        with open(log_path) as f:
            keep = [line for line in f if json.loads(line)["step"] <= step]
        with open(log_path, "w") as f:
            f.writelines(keep)


def quick_distances(args):
    ds = [d for d in PRESETS[args.preset]["eval_distances"] if d < args.window]
    return sorted({ds[1], ds[len(ds) // 2], ds[-2], ds[-1]}) if len(ds) >= 4 else ds


def report_speed(model, args, device, tokens, seconds):
    """tokens/s of the training steps and MFU (nanoGPT's FLOP count over the device peak)."""
    if not tokens:
        return None
    tok_s = tokens / seconds
    peak = args.peak_flops or matmul_peak_flops(device)
    mfu = model.flops_per_token(args.window) * tok_s / peak
    # the teacher's forward is not counted: this is the student's MFU
    print(f"speed: {tok_s:,.0f} tokens/s over {seconds:.0f} s of steps; student MFU {mfu:.1%} of "
          f"{peak / 1e9:,.0f} GFLOP/s")
    return {"tokens_per_s": tok_s, "train_seconds": seconds, "mfu": mfu, "peak_flops": peak}


def report(args, teacher, device, autocast, spec, results_path, speed, model=None):
    """Evaluate the run (and the teacher) on the probes; print the table; save JSON."""
    if model is None:
        model, _ = load_model(os.path.join(args.out_dir, args.run_name + ".pt"), device)
    dists = [d for d in PRESETS[args.preset]["eval_distances"] if d < args.window]
    n = PRESETS[args.preset]["eval_windows"]
    rows = {args.run_name: evaluate(model, spec, args.window, dists, args.max_doc_len, device, autocast, n)}
    if teacher is not None:
        rows["teacher"] = evaluate(teacher, spec, args.window, dists, args.max_doc_len, device, autocast, n)
    results = {"run": args.run_name, "phase": args.phase, "window": args.window, "rope_base": args.rope_base,
               "kd_weight": args.kd_weight, "seed": args.seed, "max_doc_len": args.max_doc_len,
               "results": rows, "speed": speed}
    os.makedirs(args.out_dir, exist_ok=True)
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)
    print(format_table(rows, args.max_doc_len))
    print(f"checkpoint: {os.path.join(args.out_dir, args.run_name + '.pt')}\nresults:    {results_path}")
    return results


def launch_baseline(args, argv):
    """Phase 2's CE-only twin as a side process (1 thread each on CPU), unless it already exists."""
    ce_name = args.run_name.replace("-kd-", "-ce-") if "-kd-" in args.run_name else args.run_name + "-ce"
    if os.path.isfile(os.path.join(args.out_dir, ce_name + ".json")) and not args.overwrite:
        print(f"baseline {ce_name} already trained: reusing it")
        return None, ce_name
    log = os.path.join(args.out_dir, ce_name + ".log")
    os.makedirs(args.out_dir, exist_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__)] + argv + ["--kd-weight", "0", "--no-baseline", "--no-auto",
                                                                "--run-name", ce_name]
    if args.device == "cpu" and not args.threads:
        cmd += ["--threads", "1"]
        torch.set_num_threads(1)
    print(f"baseline: training the CE-only twin {ce_name} side by side (log: {log})")
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT), ce_name


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = resolve(build_parser().parse_args(argv))
    t0 = time.time()
    baseline = None
    if args.phase == "2" and args.kd_weight > 0 and not args.no_baseline:
        pick_device(args)
        # prerequisites first, so the twin finds them; then both phase-2 runs side by side
        ensure(args, "teacher", args.teacher, "teacher.pt", ["--phase", "teacher"] + common_argv(args))
        ensure(args, "phase-1", args.init, f"phase1-b{args.phase1_base:g}.pt",
               ["--phase", "1", "--rope-base", f"{args.phase1_base:g}"] + common_argv(args))
        baseline = launch_baseline(args, argv)
    results = run_phase(args)
    if baseline is not None:
        proc, ce_name = baseline
        if proc is not None and proc.wait() != 0:
            fail(f"the CE baseline failed; see {os.path.join(args.out_dir, ce_name + '.log')}")
        with open(os.path.join(args.out_dir, ce_name + ".json")) as f:
            ce = json.load(f)
        rows = {"teacher": results["results"]["teacher"], "KD student": results["results"][args.run_name],
                "CE student": ce["results"][ce_name]}
        print(f"\nShort documents (<= {args.max_doc_len} tokens) packed into {args.window}-token windows; "
              f"phase-1 base {args.phase1_base:g} -> phase-2 base {args.rope_base:g}:")
        print(format_table(rows, args.max_doc_len))
    print(f"wall time: {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
