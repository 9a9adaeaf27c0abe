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
                   side by side

A phase whose prerequisites are missing trains them first (or exits with --no-auto).
Each phase ends with the retrieval probes of data.py at distances up to its window,
printed as a table and saved as JSON beside its checkpoint.

Main job:  python train.py --phase 2 --rope-base 500000
"""
import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from config import PRESETS, SHIPPED, build_parser, check_out_dir, fail, phase1_name, phase_seed, pick_device, resolve
from data import DataError, DataSource, TaskSpec, file_windows, read_bin_documents, read_text_documents, to_device
from distill import kd_loss, load_teacher, teacher_logits
from evaluate import evaluate, format_accuracy, format_table, heuristic_floors, matmul_peak_flops
from hf import load_pretrained
from model import GPT, CheckpointError, GPTConfig, load_checkpoint, load_model, save_checkpoint
from rope import format_spectrum, spectrum_summary
from tokenizer import Tokenizer

START = "step 0"  # results key of a phase-2 student before its first step (phase 1 + the base switch)

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
    windows = [w for w in pre["curriculum_windows"] if w < args.window] if args.curriculum_steps else []
    for i, w in enumerate(windows):  # 3 records per 16 tokens; same tokens per step at every window
        src = DataSource(spec, "long", w, max(1, pre["curriculum_tokens"] // w), phase_seed(args, 1 if i == 0 else 2 + i),
                         n_pairs=max(1, 3 * w // 16))
        steps = args.curriculum_steps if i == 0 else max(1, args.curriculum_steps // 6)
        stages.append((f"curriculum-{w}", src, steps, args.curriculum_target))
    if corpus is not None:
        src = DataSource(spec, "file", args.window, args.batch_size, phase_seed(args, 2), windows=corpus)
    elif args.phase == "teacher":
        src = DataSource(spec, "long", args.window, args.batch_size, phase_seed(args, 2), n_pairs=pre["long_pairs"])
    else:
        src = DataSource(spec, "packed", args.window, args.batch_size, phase_seed(args, 2), args.max_doc_len,
                         args.min_doc_len, reset_positions=args.reset_positions)
    stages.append(("main", src, args.steps, None))
    return stages


def load_corpus(args):
    try:
        if args.data.endswith(".bin"):
            docs, sep = read_bin_documents(args.data, args.eot_id, args.vocab_size), args.eot_id
        elif args.tokenizer:  # the teacher's tokens, documents behind its end-of-text token
            tok = load_tokenizer(args)
            docs, sep = read_text_documents(args.data, encode=tok.encode), tok.eos_id
        else:
            docs, sep = read_text_documents(args.data), 0
        return file_windows(docs, args.window, args.max_doc_len, sep)
    except DataError as e:
        fail(str(e))


def load_tokenizer(args):
    try:
        return Tokenizer.from_folder(args.tokenizer)
    except ValueError as e:
        fail(f"--tokenizer: {e}")


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
    acc = (logits.detach()[ans].argmax(-1) == y[ans]).float().mean().item() if ans.any() else float("nan")  # answers only
    return loss.item(), ce.item(), kl.item(), acc


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
        cfg = dataclasses.replace(model.config, rope_base=args.rope_base, rope_scaling=args.scaling,
                                  max_seq_len=args.window)
        student = GPT(cfg).to(device)
        student.load_state_dict(model.state_dict())  # same weights; only RoPE's base changes (ABF)
        return student
    torch.manual_seed(phase_seed(args))
    cfg = GPTConfig(vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head, n_kv_head=args.n_kv_head,
                    d_model=args.d_model, d_ff=args.d_ff, rope_base=args.rope_base, rope_scaling=args.scaling,
                    max_seq_len=args.window)
    return GPT(cfg).to(device)


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
    if args.vocab_size is None:  # --data with --tokenizer: the tokenizer's vocabulary (config.resolve left it)
        args.vocab_size = len(load_tokenizer(args))
    corpus = load_corpus(args) if args.data else None
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
    """Save the run's checkpoint; a full disk or unwritable folder keeps the previous file and ends in one line."""
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
        print(f"teacher: {t_path} (base {teacher.config.rope_base:g}, frozen)")
    if args.resume and previous is not None and previous.get("done"):
        print(f"{ckpt_path} already finished; its results:")
        return report(args, teacher, device, autocast, spec, results_path, None, corpus=corpus)
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
    save_run(model, opt, args, state, ckpt_path, done=True)
    speed = report_speed(model, args, device, trained_tokens, t_train)
    return report(args, teacher, device, autocast, spec, results_path, speed, model, corpus)


def train_loop(step_model, model, teacher, opt, args, stages, state, autocast, device, ckpt_path, log_path, spec):
    """All stages of the phase, resumable from `state`; returns (tokens trained, seconds)."""
    tokens, seconds = 0, 0.0
    os.makedirs(args.out_dir, exist_ok=True)
    with open(log_path, "a") as log:
        while state["stage"] < len(stages):
            name, src, steps, stop_at = stages[state["stage"]]
            local = state["step"] - state["stage_start"]
            bar = tqdm(total=steps, initial=local, desc=f"{args.run_name} {name}", dynamic_ncols=True)
            try:
                if args.eval_interval and name == "main" and local == 0 and args.phase == "2":
                    quick_eval(model, args, spec, device, autocast, 0, state["step"], bar, log)  # the starting point
                while local < steps:
                    for group in opt.param_groups:
                        group["lr"] = lr_at(local, steps, args)
                    batch = to_device(src.batch(local), device)
                    t0 = time.perf_counter()
                    loss, ce, kl, acc = train_step(step_model, teacher, opt, batch, args, autocast)
                    if not math.isfinite(loss):
                        raise RunError(f"non-finite loss ({loss}) at step {state['step']}; the last good checkpoint "
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
                        quick_eval(model, args, spec, device, autocast, local, state["step"], bar, log)
                    if state["step"] % args.save_interval == 0:
                        log.flush()
                        save_run(model, opt, args, state, ckpt_path, done=False)
            except KeyboardInterrupt:  # anywhere in the stage: a step, building a batch, a quick check, a save
                save_run(model, opt, args, state, ckpt_path, done=False)
                print(f"\ninterrupted: saved a resumable checkpoint at step {state['step']} to {ckpt_path} "
                      f"(continue with --resume)", file=sys.stderr)
                raise SystemExit(130)
            finally:  # also on Ctrl-C / NaN exits: no stray progress bar
                bar.close()
            state["stage"] += 1
            state["stage_start"] = state["step"]
            state["acc_ema"] = 0.0
    return tokens, seconds


def quick_eval(model, args, spec, device, autocast, local, step, bar, log):
    """A few probe distances on half the probe windows, printed under the progress bar and logged."""
    quick = evaluate(model, spec, args.window, quick_distances(args), args.max_doc_len, device, autocast,
                     PRESETS[args.preset]["eval_windows"] // 2)
    bar.write(f"  step {local}: " + ", ".join(f"D={d}: {format_accuracy(a)}" for d, a in quick["kv"].items())
              + f", in-doc {format_accuracy(quick['in_doc'])}")
    log.write(json.dumps({"step": step, "eval": quick}) + "\n")


def truncate_log(log_path, step):
    """Drop log records past the checkpoint's step (written before a crash), so a resumed log is exact."""
    if os.path.exists(log_path):
        with open(log_path) as f:
            keep = [line for line in f if line.endswith("\n") and json.loads(line)["step"] <= step]  # a kill may
            # cut the last line short: it lies past the checkpoint (flushed before each save), so it goes too
        with open(log_path, "w") as f:
            f.writelines(keep)


def quick_distances(args):
    ds = [d for d in PRESETS[args.preset]["eval_distances"] if d < args.window]
    return sorted({ds[1], ds[len(ds) // 2], ds[-2], ds[-1]}) if len(ds) >= 4 else ds


def report_speed(model, args, device, tokens, seconds):
    """tokens/s of the training steps and MFU: the causal FLOP count over the matmul peak of the dtype in use."""
    if not tokens:
        return None
    tok_s = tokens / seconds
    dtype = args.autocast_dtype  # float32 or bfloat16: what pick_device resolved --dtype to
    peak = args.peak_flops or matmul_peak_flops(device, getattr(torch, dtype))
    mfu = model.flops_per_token(args.window) * tok_s / peak
    # the teacher's forward is not counted: this is the student's MFU
    print(f"speed: {tok_s:,.0f} tokens/s over {seconds:.0f} s of steps ({dtype}); student MFU {mfu:.1%} of "
          f"{peak / 1e9:,.0f} GFLOP/s ({dtype} matmul peak, {torch.get_num_threads()} threads)")
    return {"tokens_per_s": tok_s, "train_seconds": seconds, "mfu": mfu, "peak_flops": peak, "dtype": dtype}


def report(args, teacher, device, autocast, spec, results_path, speed, model=None, corpus=None):
    """Evaluate the run (and the teacher) on the probes; print the table; save JSON."""
    if model is None:
        model, _ = load_model(os.path.join(args.out_dir, args.run_name + ".pt"), device)
    dists = [d for d in PRESETS[args.preset]["eval_distances"] if d < args.window]
    n = PRESETS[args.preset]["eval_windows"]
    models = {args.run_name: model, **({"teacher": teacher} if teacher is not None else {})}
    if args.phase == "2":  # the starting point: phase 1's weights with the new base, before any phase-2 step
        models[START] = build_student(args, spec, device)
    if args.data:  # the retrieval probes speak the synthetic language: report the corpus loss instead
        rows = {name: {"corpus_ce": corpus_loss(m, args, corpus, device, autocast)} for name, m in models.items()}
    else:
        rows = {name: evaluate(m, spec, args.window, dists, args.max_doc_len, device, autocast, n)
                for name, m in models.items()}
    floors = None if args.data else heuristic_floors(spec, args.window, dists, n)  # what no retrieval scores
    results = {"run": args.run_name, "phase": args.phase, "window": args.window, "rope_base": args.rope_base,
               "kd_weight": args.kd_weight, "seed": args.seed, "max_doc_len": args.max_doc_len,
               "results": rows, "floors": floors, "speed": speed}
    os.makedirs(args.out_dir, exist_ok=True)
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)
    if args.data:
        print("\n".join(f"{name}: cross-entropy {r['corpus_ce']:.3f} nats/token on 8 corpus batches"
                        for name, r in rows.items()))
    else:
        print(format_table(rows, args.max_doc_len, floors["best"]))
    print(f"checkpoint: {os.path.join(args.out_dir, args.run_name + '.pt')}\nresults:    {results_path}")
    return results


@torch.no_grad()
def corpus_loss(model, args, corpus, device, autocast, n_batches=8):
    """Mean next-token cross-entropy on batches of the real corpus drawn with another seed."""
    src = DataSource(None, "file", args.window, args.batch_size, phase_seed(args, 9), windows=corpus)
    total = 0.0
    for i in range(n_batches):
        x, y, pos, _, _ = to_device(src.batch(i), device)
        with autocast:
            total += F.cross_entropy(model(x, pos).float().flatten(0, 1), y.flatten()).item()
    return total / n_batches


def baseline_args(args, argv):
    """Phase 2's CE-only twin: (its name, its argv, its resolved args), args None when its results exist."""
    ce_name = args.run_name.replace("-kd-", "-ce-") if "-kd-" in args.run_name else args.run_name + "-ce"
    if os.path.isfile(os.path.join(args.out_dir, ce_name + ".json")) and not args.overwrite:
        return ce_name, None, None
    ce_argv = argv + ["--kd-weight", "0", "--no-baseline", "--no-auto", "--run-name", ce_name]
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
    t0 = time.time()
    baseline = inputs = None
    if args.phase == "2" and args.kd_weight > 0 and not args.no_baseline:
        pick_device(args)
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
        with open(os.path.join(args.out_dir, ce_name + ".json")) as f:
            ce = json.load(f)
        rows = {"teacher": results["results"]["teacher"], START: results["results"][START],
                "KD student": results["results"][args.run_name], "CE student": ce["results"][ce_name]}
        print(f"\nShort documents (<= {args.max_doc_len} tokens) packed into {args.window}-token windows; "
              f"phase-1 base {args.phase1_base:g} -> phase-2 base {args.rope_base:g}:")
        print(format_table(rows, args.max_doc_len, results["floors"]["best"]))
    print(f"wall time: {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
