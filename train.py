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
                   recurring answers, KD from a teacher under the document mask; distill.ARMS)

How to read it: `main` -> `train` (the loop) -> `train_step` -> `training_loss`. Everything a run
needs around them (input checks, prerequisites, checkpoints, the CE twin) is in runs.py, the
printed tables in evaluate.py, and data parallelism under torchrun in scale/dist.py, which wraps the
step without changing it.

Main job:  python train.py --phase 2 --rope-base 500000
           torchrun --nproc_per_node 2 train.py --phase 2 --rope-base 500000 --threads 1
"""
import contextlib
import math
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone

import torch
from tqdm import tqdm

import runs
from scale import dist, lock, twin
from config import (PRESETS, build_parser, curriculum_stages, fail, phase_seed, pick_device, ramp_stages,
                    resolve)
from data import DataSource, TaskSpec, prefetch, to_device
from distill import MASKED_ARMS, arm_terms, kd_loss, load_teacher, masked_cross_entropy, term_counts
from formats.checkpoint import load_checkpoint
from model import GPT, CheckpointError, load_model, student_config, switch_rope
from longctx.topk import topk_teacher
from evaluate import START, print_side_by_side, source_commit, quick_eval, records_placed, report, report_speed
from rope import format_spectrum, rope_frequencies, spectrum_summary


def main(argv=None):
    """Check every input, train what this phase starts from if it is missing, then train the phase (with
    --retries, phase 1's students until one passes the acceptance test). Returns the run's results."""
    argv = sys.argv[1:] if argv is None else argv
    args = resolve(build_parser().parse_args(argv))
    pick_device(args)
    t0 = time.time()
    with dist.process_group(args):  # under torchrun: this rank's process group; nothing in a single process
        plan = twin.plan_twin(args, argv) if twin.wants_twin(args) else None  # phase 2: the CE-only twin
        with lock.RunLock(args):  # one process per run and output folder, before anything is read or trained
            inputs = runs.check_inputs(args)  # bad input ends here in one line, before anything is written
            if plan is not None and plan[2] is not None and dist.world_size() == 1:
                runs.check_inputs(plan[2])  # the twin's inputs too, before it is launched
            runs.train_prerequisites(args, train)  # the teacher / phase-1 checkpoints, trained first if missing
            proc = twin.start_twin(args, plan)  # side by side, in another process
            with runs.one_line_errors(args, proc):
                results = train(args, inputs)
            twin.finish_twin(args, plan, proc, results, print_side_by_side)
    print(f"wall time: {(time.time() - t0) / 60:.1f} min")
    if args.retries:  # phase 1's acceptance test: the next student while this one fails (runs.accept_or_retrain)
        runs.accept_or_retrain(args, argv, main)
    return results


def train(args, inputs):
    """Train one phase end to end: build the models, run every stage's steps, save, report.

    inputs: (corpus or None, this run's previous checkpoint or None), from runs.check_inputs. Returns the
    results dict (also saved as OUT/<run>.json). Under torchrun every rank trains the same steps on its rows
    of each batch; rank 0 alone logs, probes and saves.
    """
    device, autocast = pick_device(args)
    args.started = datetime.now(timezone.utc).isoformat(timespec="seconds")  # saved with the results
    args.commit = source_commit()
    spec = TaskSpec()
    corpus, previous = inputs
    teacher = frozen_teacher(args, device) if runs.needs_teacher(args) else None
    if args.resume and previous is not None and previous.get("done"):
        print(f"{runs.run_path(args, '.pt')} already finished; its results:")  # with the speed its training measured
        return on_main(final_report, args, teacher, device, autocast, spec, runs.saved_speed(args), corpus=corpus)
    kd_teacher = cached_teacher(args, teacher, corpus, device)  # the teacher the loss reads
    model = build_student(args, device)
    opt = make_optimizer(model, args, device)
    state = runs.resume_state(args, previous, model, opt)  # {step, stage, stage_start, acc_ema}
    print(f"== phase {args.phase}: {args.run_name} | window {args.window} | {model.num_params():,} params | "
          f"loss {loss_name(args)} | {device}")
    print("  " + format_spectrum(spectrum_summary(model.config.head_dim, model.config.rope_base, args.window)))
    stages = make_stages(args, spec, corpus)
    if placed := records_placed(stages):
        print(placed)
    step_model = dist.wrap(torch.compile(model) if args.compile else model, device)  # DDP under torchrun
    clock = {"tokens": 0, "flops": 0.0, "seconds": 0.0}
    main_rank = dist.is_main()
    quick = main_rank and args.eval_interval  # the quick probes while it trains
    if main_rank:
        os.makedirs(args.out_dir, exist_ok=True)
    with open(runs.run_path(args, ".jsonl") if main_rank else os.devnull, "a") as log, \
            StopOnInterrupt() as ctrl_c:
        while state["stage"] < len(stages):  # the curriculum's stages, then the phase's own data ("main")
            name, src, steps, stop_at = stages[state["stage"]]
            local = state["step"] - state["stage_start"]  # steps already done in this stage (on --resume)
            bar = progress_bar(steps, local, f"{args.run_name} {name}", disable=not main_rank)
            try:
                if quick and args.phase == "2" and (state["step"] == 0 or (name == "main" and local == 0)):
                    quick_eval(model, args, spec, device, autocast, 0, state["step"], bar, log)  # step 0; main's start
                t0 = time.perf_counter()
                for local, batch in stage_batches(src, local, steps, args, device):
                    if ctrl_c.requested():  # between steps: nothing of this step has touched the weights yet
                        stop_after_ctrl_c(model, opt, args, state)
                    for group in opt.param_groups:
                        group["lr"] = lr_at(local, steps, args)
                    with jittered_base(model, args, state["step"]):
                        metrics = train_step(step_model, kd_teacher, opt, batch, args, autocast)
                    runs.record_step(state, clock, metrics, name, src.batch_size * src.window,
                                     model.flops_per_token(src.window), time.perf_counter() - t0,
                                     opt.param_groups[0]["lr"], bar, log)
                    done = local + 1
                    if stop_at is not None and state["acc_ema"] >= stop_at and done >= 50:
                        bar.write(f"  {name}: answer accuracy {state['acc_ema']:.2f} >= {stop_at} at step {done}; "
                                  f"next stage")
                        break
                    if quick and name == "main" and done % args.eval_interval == 0 and done < steps:
                        quick_eval(model, args, spec, device, autocast, done, state["step"], bar, log)
                    if state["step"] % args.save_interval == 0:
                        log.flush()
                        runs.save_run(model, opt, args, state, done=False)
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
    spread = dist.weight_spread(model)  # DDP keeps the ranks' weights equal: 0.0
    runs.save_run(model, opt, args, state, done=True)
    speed = (report_speed(model, args, device, clock["tokens"], clock["seconds"], spread, clock["flops"])
             if main_rank else None)
    return on_main(final_report, args, teacher, device, autocast, spec, speed, model, corpus)


# ----------------------------------------------------------------------------- the step and the loss


def train_step(model, teacher, opt, batch, args, autocast):
    """One optimizer step: the loss on the batch, its gradient, the update.

    batch: (x, y, pos, doc, ans[, far_back]), each (B, T). Returns (loss, ce, kl, answer accuracy) as floats.
    Under torchrun or with --grad-accum the positions each loss term counts are first counted over the whole global
    batch; dist.accumulate then adds up every micro-batch's sums divided by those counts (DDP sums the gradients of
    the ranks), so the values are those of the whole global batch, the same on every rank.
    """
    opt.zero_grad(set_to_none=True)
    if dist.world_size() == 1 and args.grad_accum == 1:  # one process, one batch
        loss, ce, kl, correct, answers = training_loss(model, teacher, batch, args, autocast)
        loss.backward()
        stats = torch.stack([loss.detach(), ce.detach(), kl.to(loss.device), correct, answers])
    else:
        counts = dist.sum_across_ranks(term_counts(batch, args))  # (2,): the CE's and the KD term's, global batch
        stats = dist.accumulate(model, batch, args.grad_accum,
                                lambda micro: training_loss(model, teacher, micro, args, autocast, counts))
    if args.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    opt.step()
    loss, ce, kl = stats[:3].tolist()
    return loss, ce, kl, (stats[3] / stats[4]).item()  # 0 / 0 = NaN: no answer in the batch


def training_loss(model, teacher, batch, args, autocast, counts=None):
    """(1 - w) CE + w T^2 KL(teacher || student) (--kd-weight w), on what --arm says (arm_terms); CE alone at w = 0.

    batch: (x, y, pos, doc, ans[, far_back]), each (b, T). counts: how many positions the CE and the KD term count
    in the whole global batch (term_counts), when this batch is a part of it; each term is then its sum over its
    positions here divided by its count. Returns (loss, ce, kl, correct answers, answers) as 0-dim tensors; kl is
    NaN without a KD term.
    """
    x, y, pos, doc, ans = batch[:5]  # (b, T) each
    with autocast:
        logits = model(x, pos, doc if args.doc_mask else None)  # (b, T, V)
    targets, ce_keep, t_logits, kd_keep = arm_terms(teacher, batch, args, autocast)
    ce_total, kd_total = (None, None) if counts is None else counts
    chunk = args.kd_chunk if logits.numel() > CHUNK_ABOVE else 0  # 0: plain autograd, as distill.py writes it
    ce = masked_cross_entropy(logits, targets, ce_keep, ce_total, chunk)
    loss, kl = ce, torch.tensor(float("nan"))
    if t_logits is not None:  # the paper's loss: (1 - w) CE + w T^2 KL(p_t || p_s)
        kd, kl = kd_loss(logits, t_logits, kd_keep, args.temperature, args.kd_loss, args.jsd_beta, chunk, kd_total)
        loss = (1 - args.kd_weight) * ce + args.kd_weight * kd
    correct = (logits.detach()[ans].argmax(-1) == y[ans]).float().sum()  # argmax of the answer rows only
    return loss, ce, kl, correct, ans.sum().float()


# Logits (256 MB in float32) above which the CE and the KD term go in chunks of --kd-chunk tokens; the default
# phase-2 step's are 0.8M (4 x 1024 x 193), so it runs distill.py's plain KL and F.cross_entropy.
CHUNK_ABOVE = 2**26


def loss_name(args) -> str:
    if args.kd_weight == 0:
        name = "CE"
    else:
        name = f"{1 - args.kd_weight:g} CE + {args.kd_weight:g} KD({args.kd_loss}, T={args.temperature:g})"
    return name + (f" (--arm {args.arm})" if args.phase == "2" else "")


# ----------------------------------------------------------------------------- models, optimizer, data


def build_student(args, device):
    """Fresh model (teacher, phase 1) or phase 1's weights with the new base (phase 2)."""
    if args.phase == "2":
        model = runs.load_init(args, runs.phase1_path(args), device)
        student = switch_rope(model, args.rope_base, args.scaling, args.window)  # same weights, new base (ABF)
    else:
        torch.manual_seed(phase_seed(args))
        student = GPT(student_config(args)).to(device)
    student.attention = args.attention  # the kernel (--attention flex: --doc-mask as a flex block mask)
    return student


def frozen_teacher(args, device):
    path = runs.teacher_path(args)
    try:
        teacher = load_teacher(path, device, args.vocab_size)
    except CheckpointError as e:
        fail(str(e))
    teacher.attention = args.attention
    print(f"teacher: {path} (base {teacher.config.rope_base:g}, frozen)")
    return teacher


def cached_teacher(args, teacher, corpus, device):
    """--teacher-topk K: the teacher's top-K on the training windows, computed once (longctx/topk.py) and answered
    from the cache at every step; else the live teacher itself."""
    if not (args.teacher_topk and teacher is not None and args.kd_weight > 0):
        return teacher
    return topk_teacher(teacher, runs.teacher_path(args), corpus.train["tokens"], args.teacher_topk, args.out_dir,
                        device)


def make_optimizer(model, args, device):
    """AdamW; no weight decay on norms (1-D parameters)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    if args.init_optimizer:  # a resumed run's own moments replace these (runs.resume_state)
        load_moments(opt, runs.phase1_path(args), device)
    return opt


def load_moments(opt, path, device):
    """--init-optimizer: AdamW's first and second moments (and step counts) from the phase-1 checkpoint that phase 2
    starts from; the hyperparameters stay this run's. Same model, same parameter order, so the states line up."""
    try:
        saved = load_checkpoint(path, map_location=device).get("optimizer")
    except CheckpointError as e:
        fail(str(e))
    if not saved:
        fail(f"--init-optimizer: {path} holds no optimizer state (a phase-1 checkpoint of train.py does)")
    try:
        opt.load_state_dict({"state": saved["state"], "param_groups": [
            {**group, "params": old["params"]} for group, old in zip(opt.state_dict()["param_groups"],
                                                                    saved["param_groups"])]})
    except (ValueError, KeyError) as e:
        fail(f"--init-optimizer: {path}'s optimizer does not match this model: {str(e).splitlines()[0][:200]}")


@contextlib.contextmanager
def jittered_base(model, args, step):
    """--rope-jitter F: for this step the student's RoPE base is b F**u, u ~ U[-1, 1] drawn from (--seed, step), so a
    resumed run draws the same bases; the inv_freq buffer is rewritten in place (a compiled or DDP model keeps
    reading the same tensor) and put back after the step, so the probes and the checkpoint see the base b."""
    if not args.rope_jitter:
        yield
        return
    u = torch.rand((), generator=torch.Generator().manual_seed(args.seed * 1_000_003 + step)).item() * 2 - 1
    cfg, kept = model.config, model.inv_freq.clone()
    model.inv_freq.copy_(rope_frequencies(cfg.head_dim, cfg.rope_base * args.rope_jitter ** u)[0])
    try:
        yield
    finally:
        model.inv_freq.copy_(kept)


def lr_at(step, steps, args):
    """Linear warmup, then constant or cosine to 10% (per stage)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if args.schedule == "cosine":
        frac = (step - args.warmup) / max(1, steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
    return args.lr


def make_stages(args, spec, corpus=None):
    """[(name, DataSource, steps, stop_at_accuracy)]: the curriculum's stages (config.curriculum_stages), then
    the phase's own data; `corpus`: a real file's packed (training, held-out) windows, from runs.load_corpus."""
    stages = []
    for i, (name, window, batch, n_pairs, steps) in enumerate(curriculum_stages(args)):  # long documents
        src = DataSource(spec, "long", window, batch, phase_seed(args, 1 if i == 0 else 2 + i), n_pairs=n_pairs)
        stages.append((name, src, steps, args.curriculum_target))
    for j, (name, window, batch, steps) in enumerate(ramp_stages(args)):  # phase 2: shorter packed windows first
        src = DataSource(spec, "packed", window, batch, phase_seed(args, 30 + j), args.max_doc_len, args.min_doc_len,
                         reset_positions=args.reset_positions, recurrence=args.recurrence,
                         queries=args.queries)
        stages.append((name, src, steps, None))
    if corpus is not None:
        src = DataSource(spec, "file", args.window, args.batch_size, phase_seed(args, 2), windows=corpus[0])
    elif args.phase == "teacher":
        src = DataSource(spec, "long", args.window, args.batch_size, phase_seed(args, 2),
                         n_pairs=PRESETS[args.preset]["long_pairs"])
    else:  # the students: short documents packed into the window
        src = DataSource(spec, "packed", args.window, args.batch_size, phase_seed(args, 2), args.max_doc_len,
                         args.min_doc_len, reset_positions=args.reset_positions, recurrence=args.recurrence,
                         queries=args.queries)
    stages.append(("main", src, args.steps, None))
    return stages


def stage_batches(src, start, steps, args, device):
    """(step, this rank's batch on the device) for steps start..steps-1 of a stage, each built one step ahead.

    dist.BatchShape decides the rows: rank r of N takes rows [r B/N, (r+1) B/N) of the step's global batch.
    """
    shape = dist.BatchShape(src.batch_size, dist.world_size(), args.grad_accum)
    rows = shape.rows(dist.rank())
    arrays = prefetch(lambda step: src.batch(step, rows), range(start, steps))  # numpy, in a background thread
    far_back = getattr(args, "arm", None) in MASKED_ARMS  # the masked arms' sixth tensor
    for step, batch in zip(range(start, steps), arrays):
        yield step, to_device(batch, device, far_back)


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
        self.flag, self.previous = False, None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a background job ignores Ctrl-C: so do we
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


def stop_after_ctrl_c(model, opt, args, state):
    """Ctrl-C was pressed: the weights are those of state["step"], so they are saved under that label."""
    runs.save_run(model, opt, args, state, done=False)
    if dist.is_main():
        print(f"\ninterrupted: saved a resumable checkpoint at step {state['step']} to {runs.run_path(args, '.pt')} "
              f"(continue with --resume)", file=sys.stderr)
    raise SystemExit(130)


def final_report(args, teacher, device, autocast, spec, speed, model=None, corpus=None):
    """report.report on the run (from its checkpoint if not given), its teacher and phase 2's starting point."""
    if model is None:
        model, _ = load_model(runs.run_path(args, ".pt"), device)
    models = {args.run_name: model, **({"teacher": teacher} if teacher is not None else {})}
    if args.phase == "2":  # the starting point: phase 1's weights with the new base, before any phase-2 step
        models[START] = build_student(args, device)
    return report(args, models, device, autocast, spec, runs.run_path(args, ".json"), speed, corpus)


def on_main(fn, *a, **k):
    """fn(*a, **k) on rank 0 (None on the others), then every rank waits for it: what rank 0 writes last
    (checkpoint, results) is on disk before any rank goes on, e.g. to a phase that reads it."""
    out = fn(*a, **k) if dist.is_main() else None
    dist.barrier()
    return out


if __name__ == "__main__":
    main()
