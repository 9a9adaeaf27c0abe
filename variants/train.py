"""python -m variants [its flags] [train.py's flags]: a run of train.py with what the recipe does not do.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distils a long-context teacher into a student trained on
packed short documents. The research around it asks what else could matter: which part of the teacher's signal
carries the long range (the arms), other divergences, another RoPE, another schedule, a real teacher on real text.
Each is a flag here, and each reaches train.py's run through its hook points (`Variants` is a train.Lab):

- the objective: --arm (variants/arms.py), --kd-loss / --jsd-beta (variants/divergences.py);
- RoPE: --rope-scaling (a Hugging Face rope_scaling dict; the scaling replaces phase 2's base change), --rope-jitter
  (each phase-2 step sees the base times F**u, u ~ U[-1, 1]);
- the schedule: --warmup, --schedule, --weight-decay, --grad-clip, --curriculum-target, --save-interval,
  --ramp-windows / --ramp-steps (phase 2's packed documents in shorter windows first), --init-optimizer (phase 2
  starts AdamW from phase 1's moments);
- the data: --queries (each record asked for N times in its document), --min-doc-len, --phase1-window /
  --phase1-base (phase 2 from another phase-1 student);
- the system: --attention flex (the document mask as a flex block mask, CUDA), --kd-chunk;
- real models (longctx/, formats/): a Hugging Face Llama folder as --teacher or --init, --tokenizer (text in a real
  teacher's BPE), `.bin` token files (--eot-id), --vocab-size, --teacher-topk (the teacher cached as its top-k).

A run named by these flags carries their suffix (-masked, -rkl, -jit1.25, ...); phase 2's CE-only twin runs with the
same flags (but the arm) through this entry point.

  python -m variants --arm kd-masked --phase 2 --rope-base 500000 --threads 1
"""
import argparse
import contextlib
import json
import math
import sys

import torch

import train
from config import fail, phase_seed
from data import DataSource, TaskSpec, synthetic_batch
from evaluate import KeyValueTask, make_task
from model import CheckpointError, first_line, load_checkpoint
from rope import rope_frequencies, scaling_type
import variants.rope_scaling  # noqa: F401 (--rope-scaling's variants registered in rope.SCALINGS)
from variants.arms import ARMS, CE_ARMS, ArmLoss
from variants.chunked import terms
from variants.divergences import divergence_fn

SETTINGS = ("warmup", "schedule", "weight_decay", "grad_clip", "curriculum_target", "save_interval",
            "attention", "min_doc_len", "phase1_window", "phase1_base", "vocab_size")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m variants", description="train.py with what the recipe does not do; "
                                "every flag not listed here is train.py's (python train.py --help).",
                                allow_abbrev=False)
    g = p.add_argument_group("objective")
    g.add_argument("--arm", default=None, choices=list(ARMS), help="phase 2's objective: " + "; ".join(
        f"{k}: {arm.what}" for k, arm in ARMS.items()) + ". Default: kd, or ce with --kd-weight 0. Only kd trains its "
        "CE twin side by side; every other arm trains alone, with its own run-name suffix")
    g.add_argument("--kd-loss", default="forward", choices=["forward", "reverse", "jsd"], help="the KD term's "
                   "divergence (default: forward, the paper's)")
    g.add_argument("--jsd-beta", type=float, default=0.5, help="beta of the generalized JSD (default 0.5)")
    g = p.add_argument_group("RoPE")
    g.add_argument("--rope-scaling", default=None, help='HF-style rope_scaling JSON, e.g. \'{"rope_type":"yarn",...}\'; '
                   "in phase 2 it replaces the base change (the base stays phase 1's unless --rope-base is given)")
    g.add_argument("--rope-jitter", type=float, default=0.0, help="phase 2: each step the student sees the base "
                   "times F**u, u uniform in [-1, 1] (F > 1; the teacher and every probe keep the base; default 0: off)")
    g = p.add_argument_group("schedule")
    g.add_argument("--warmup", type=int, default=None, help="linear warmup steps of each stage (default: the preset's)")
    g.add_argument("--schedule", default=None, choices=["constant", "cosine"], help="after warmup (default constant)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0.1)")
    g.add_argument("--grad-clip", type=float, default=None, help="gradient norm clip (0 = off; default 1)")
    g.add_argument("--curriculum-target", type=float, default=None, help="end a curriculum stage once the running "
                   "answer accuracy reaches this (default 0.95)")
    g.add_argument("--save-interval", type=int, default=None, help="steps between checkpoints (default: the preset's)")
    g.add_argument("--ramp-windows", type=int, nargs="+", default=None, help="phase 2: before the main stage, train "
                   "on the same packed short documents in these shorter windows, in order (e.g. 128 256 512), each "
                   "for --ramp-steps steps with the main stage's tokens per step")
    g.add_argument("--ramp-steps", type=int, default=150, help="steps per --ramp-windows window (default 150)")
    g.add_argument("--init-optimizer", action="store_true", help="phase 2: start AdamW from the phase-1 checkpoint's "
                   "moments too, not from zero (this run's lr, betas and weight decay)")
    g = p.add_argument_group("data")
    g.add_argument("--queries", type=int, default=1, help="students: how often each record of a short document is "
                   "asked for in it (default 1)")
    g.add_argument("--min-doc-len", type=int, default=None, help="shortest short document (default: the preset's)")
    g.add_argument("--phase1-window", type=int, default=None, help="--window of the phase-1 run that phase 2 starts "
                   "from (default: the preset's short window, 32 for cpu)")
    g.add_argument("--phase1-base", type=float, default=None, help="RoPE base of the phase-1 run that phase 2 starts "
                   "from (default 10000)")
    g = p.add_argument_group("system")
    g.add_argument("--attention", default=None, choices=["sdpa", "flex"], help="--doc-mask's kernel: sdpa with a "
                   "dense (B, 1, T, T) mask (no flash), or flex attention with a block mask (CUDA only)")
    g.add_argument("--kd-chunk", type=int, default=None, help="tokens per float32 chunk of the losses over large "
                   "logits (0 = all at once; default 256)")
    g = p.add_argument_group("real models (longctx/, formats/)")
    g.add_argument("--tokenizer", default=None, help="--data text: tokenize with this folder's byte-level BPE "
                   "(vocab.json, merges.txt; e.g. the teacher's from formats/hf.py convert-gguf) instead of bytes")
    g.add_argument("--eot-id", type=int, default=50256, help=".bin data: end-of-text id that splits documents")
    g.add_argument("--vocab-size", type=int, default=None, help="model vocabulary (default: the data's: 193 for the "
                   "synthetic language, 257 for text, the tokenizer's, 50304 for .bin)")
    g.add_argument("--teacher-topk", type=int, default=0, help="--data: run the teacher once on the training windows "
                   "and keep its K most likely next tokens (cached in OUT); KD is then the KL over those K plus one "
                   "bucket for the rest (0 = the live teacher's full logits)")
    return p


FLAGS = {a.dest: a for a in build_parser()._actions if a.option_strings and a.dest != "help"}


def flags_of(opts, drop=()):
    """The flags that give `opts` again (those off their defaults), without the ones in `drop`."""
    argv = []
    for dest, action in FLAGS.items():
        value = getattr(opts, dest)
        if dest in drop or value == action.default:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(action.option_strings[0])
        elif isinstance(value, list):
            argv += [action.option_strings[0], *map(str, value)]
        else:
            argv += [action.option_strings[0], str(value)]
    return argv


class Variants(train.Lab):
    """The hook points of train.Lab, as this entry point's flags (`opts`) ask."""

    def __init__(self, opts):
        self.opts = opts
        self.scaling = json.loads(opts.rope_scaling) if opts.rope_scaling else None
        div = divergence_fn(opts.kd_loss, opts.jsd_beta) if 0 < opts.jsd_beta < 1 else None
        chunk = 256 if opts.kd_chunk is None else opts.kd_chunk
        self.kd, self.ce = terms(chunk, div)  # chunked above CHUNK_ABOVE
        if opts.teacher_topk:
            from longctx.topk import topk_term
            self.kd = topk_term(chunk)
        self.arm = None

    # ------------------------------------------------------------------ what the run is

    def configure(self, args):
        o = self.opts
        for key in SETTINGS:
            if getattr(o, key, None) is not None:
                setattr(args, key, getattr(o, key))
        if o.rope_scaling:
            if not isinstance(self.scaling, dict):
                fail(f"--rope-scaling: expected a JSON object like '{{\"rope_type\": \"yarn\", ...}}', got "
                     f"{o.rope_scaling}")
            args.scaling = self.scaling
        if o.attention == "flex":
            import variants.flex  # noqa: F401 (registers the kernel model.KERNELS["flex"])
        self.arm = self.resolve_arm(args)
        if self.arm != "kd":  # only the KD student trains its CE twin side by side
            args.no_baseline = args.no_baseline or self.arm not in (None, "kd", "ce")

    def resolve_arm(self, args):
        """Phase 2's --arm, filled from --kd-weight when not given (0: ce, else kd); a CE arm sets --kd-weight 0."""
        arm = self.opts.arm
        if args.phase != "2":
            if arm is not None:
                fail(f"--arm {arm} is a phase-2 objective: it needs --phase 2")
            return None
        if arm is None:
            return "ce" if args.kd_weight == 0 else "kd"
        if arm in CE_ARMS:
            if args.kd_weight not in (None, 0):
                fail(f"--arm {arm} trains without the KD term: drop --kd-weight {args.kd_weight:g}")
            args.kd_weight = 0.0
        elif args.kd_weight == 0:
            fail(f"--arm {arm} is a KD arm: --kd-weight 0 leaves no KD term (use --arm ce)")
        if arm in ("ce-masked", "kd-masked") and args.data:
            fail(f"--arm {arm} masks the synthetic language's far-back targets; --data has none")
        return arm

    def check(self, args):
        o = self.opts
        phase = args.phase
        finite = math.isfinite
        checks = [
            (o.warmup is None or o.warmup >= 0, f"--warmup must be >= 0, got {o.warmup}"),
            (o.weight_decay is None or (finite(o.weight_decay) and o.weight_decay >= 0),
             f"--weight-decay must be >= 0, got {o.weight_decay}"),
            (o.grad_clip is None or (finite(o.grad_clip) and o.grad_clip >= 0),
             f"--grad-clip must be >= 0 (0 = off), got {o.grad_clip}"),
            (o.curriculum_target is None or 0 < o.curriculum_target <= 1,
             f"--curriculum-target must lie in (0, 1], got {o.curriculum_target}"),
            (o.save_interval is None or o.save_interval >= 1, f"--save-interval must be >= 1, got {o.save_interval}"),
            (o.kd_chunk is None or o.kd_chunk >= 0, f"--kd-chunk must be >= 0 (0 = all at once), got {o.kd_chunk}"),
            (0 < o.jsd_beta < 1, f"--jsd-beta must lie in (0, 1), got {o.jsd_beta}"),
            (o.phase1_window is None or o.phase1_window >= 8, f"--phase1-window must be >= 8 tokens, got "
             f"{o.phase1_window}"),
            (o.phase1_base is None or (finite(o.phase1_base) and o.phase1_base > 1),
             f"--phase1-base must be a finite number > 1, got {o.phase1_base}"),
            (not o.ramp_windows or (phase == "2" and not args.data),
             "--ramp-windows is phase 2's ramp over packed synthetic documents: it needs --phase 2 and no --data"),
            (not o.ramp_windows or all(args.max_doc_len <= w < args.window for w in o.ramp_windows),
             f"--ramp-windows must lie in [--max-doc-len {args.max_doc_len}, --window {args.window}), "
             f"got {o.ramp_windows}"),
            (o.ramp_steps >= 1, f"--ramp-steps must be >= 1, got {o.ramp_steps}"),
            (1 <= o.queries <= 4, f"--queries must lie in [1, 4], got {o.queries}"),
            (o.queries == 1 or (phase != "teacher" and not args.data),
             "--queries sets how the packer asks for a student's synthetic records: not with --phase teacher or "
             "--data"),
            (not o.rope_jitter or (phase == "2" and self.scaling is None and 1 < o.rope_jitter < math.inf),
             f"--rope-jitter {o.rope_jitter:g}: a factor > 1 on phase 2's base (not with --rope-scaling)"),
            (not o.init_optimizer or phase == "2", "--init-optimizer: phase 2 starts from phase 1's moments: --phase 2"),
            (args.doc_mask or args.attention == "sdpa", "--attention flex is a kernel for --doc-mask: pass --doc-mask "
             "(without it, causal attention already takes the flash path)"),
            (args.attention != "flex" or (args.device != "cpu" and torch.cuda.is_available()),
             "--attention flex trains on CUDA only (torch has no flex-attention backward on CPU); use --attention sdpa"),
            (o.teacher_topk >= 0, f"--teacher-topk must be >= 0 (0 = the live teacher), got {o.teacher_topk}"),
            (not o.teacher_topk or (args.data and phase != "teacher"),
             "--teacher-topk caches a teacher on --data's training windows: it needs --data and --phase 1 or 2"),
            (not o.teacher_topk or (o.kd_loss == "forward" and args.temperature == 1 and not args.doc_mask
                                    and self.arm not in ("ce-teacher-labels", "kd-teacher-docmask")),
             "--teacher-topk keeps the teacher's causal top-k at temperature 1: it needs --kd-loss forward, "
             "--temperature 1, no --doc-mask, and an --arm that reads no full logits"),
            (not o.teacher_topk or o.teacher_topk <= args.vocab_size,
             f"--teacher-topk {o.teacher_topk} is larger than the vocabulary of {args.vocab_size}"),
            (not o.tokenizer or (args.data and not args.data.endswith((".bin", ".py"))),
             "--tokenizer reads --data text in a real teacher's tokens: it needs --data with a text file or folder"),
            (o.vocab_size is None or o.tokenizer or (args.data or "").endswith(".bin")
             or o.vocab_size >= make_task(args).vocab_size, f"--vocab-size {o.vocab_size} is too small: the data's "
             f"token ids go up to {make_task(args).vocab_size - 1}"),
        ]
        for ok, msg in checks:
            if not ok:
                fail(msg)
        if self.scaling:
            check_scaling(args)

    def suffix(self, args):
        """-yarn4 (--rope-scaling), -rkl / -jsd0.5 (--kd-loss, with distillation only), -q2 (--queries), -ramp128.256x50
        (--ramp-windows), the arm's (-masked, -tlabels, -tdocmask), -p1opt (--init-optimizer), -jit1.25 (--rope-jitter),
        -top32 (--teacher-topk: a run with a KD term, and every phase-2 run, the CE twin too, since its phase-1 student
        learned from the top-k)."""
        o = self.opts
        s = ""
        rope_type = scaling_type(self.scaling)
        if rope_type is not None:
            factor = self.scaling.get("factor")
            s += f"-{rope_type}" + (f"{float(factor):g}" if factor is not None else "")
        if args.kd_weight > 0:
            s += {"forward": "", "reverse": "-rkl", "jsd": f"-jsd{o.jsd_beta:g}"}[o.kd_loss]
        s += f"-q{o.queries}" if o.queries != 1 else ""
        if o.ramp_windows:
            s += "-ramp" + ".".join(str(w) for w in o.ramp_windows) + f"x{o.ramp_steps}"
        s += ARMS[self.arm].suffix if self.arm else ""
        s += "-p1opt" if o.init_optimizer else ""
        s += f"-jit{o.rope_jitter:g}" if o.rope_jitter else ""
        s += f"-top{o.teacher_topk}" if o.teacher_topk and (args.kd_weight > 0 or args.phase == "2") else ""
        return s

    def task(self, args):
        o = self.opts
        if o.queries != 1 and not args.data:
            return KeyValueTask(TaskSpec(queries=o.queries))
        if args.data and (o.tokenizer or args.data.endswith(".bin")):
            from longctx.text import real_text_task
            return real_text_task(args, o.tokenizer, o.eot_id, o.vocab_size)
        return make_task(args)

    def load(self, path, device):
        from formats.hf import load_pretrained  # a checkpoint of this project or a Hugging Face Llama folder
        return load_pretrained(path, device)

    # ------------------------------------------------------------------ what the run learns from

    def teacher(self, teacher, args, task, device):
        if not (self.opts.teacher_topk and teacher is not None and args.kd_weight > 0):
            return teacher
        from longctx.topk import topk_teacher
        return topk_teacher(teacher, train.teacher_path(args, self), task.corpus.train["tokens"],
                            self.opts.teacher_topk, args.out_dir, device)

    def stages(self, stages, args, task):
        """--ramp-windows: the main stage's packed short documents in shorter windows first, each its own stream."""
        ramp = []
        for j, window in enumerate(self.opts.ramp_windows or []):
            batch = max(1, args.batch_size * args.window // window)
            make = lambda rng, w=window, b=batch: synthetic_batch(task.spec, rng, "packed", b, w, args.max_doc_len,
                                                                  args.min_doc_len, None, args.reset_positions,
                                                                  args.recurrence)
            ramp.append((f"ramp-{window}", DataSource(make, batch, phase_seed(args, 30 + j), window), self.opts.ramp_steps,
                         None))
        return stages[:-1] + ramp + stages[-1:]

    def loss(self, model, teacher, batch, args, autocast, counts=None):
        if self.arm not in (None, "kd", "ce"):
            return ArmLoss(self.arm, self.kd, self.ce)(model, teacher, batch, args, autocast, counts)
        return train.training_loss(model, teacher, batch, args, autocast, counts, self.kd, self.ce)

    def counts(self, batch, args):
        if self.arm not in (None, "kd", "ce"):
            return ArmLoss(self.arm, self.kd, self.ce).counts(batch, args)
        return train.term_counts(batch)

    # ------------------------------------------------------------------ around the step and beside the run

    @contextlib.contextmanager
    def step(self, model, opt, args, step):
        """--init-optimizer: before the first step of a fresh run, AdamW's moments from phase 1's checkpoint.
        --rope-jitter F: for this step the student's RoPE base is b F**u, u ~ U[-1, 1] drawn from (--seed, step), so
        a resumed run draws the same bases; the inv_freq buffer is rewritten in place (a compiled or DDP model keeps
        reading the same tensor) and put back after the step, so the probes and the checkpoint see the base b."""
        if self.opts.init_optimizer and step == 0 and not args.resume:
            load_moments(opt, train.phase1_path(args, self), model.inv_freq.device)
        if not self.opts.rope_jitter:
            yield
            return
        u = torch.rand((), generator=torch.Generator().manual_seed(args.seed * 1_000_003 + step)).item() * 2 - 1
        cfg = model.config
        kept = model.inv_freq.clone()
        model.inv_freq.copy_(rope_frequencies(cfg.head_dim, cfg.rope_base * self.opts.rope_jitter ** u)[0])
        try:
            yield
        finally:
            model.inv_freq.copy_(kept)

    def prerequisite(self, phase):
        """The teacher and phase 1 this run trains first read the same data in the same tokens; phase 1 learns
        from the same cached teacher."""
        keep = ("tokenizer", "eot_id", "vocab_size") + (("teacher_topk",) if phase == "1" else ())
        opts = build_parser().parse_args([])
        for key in keep:
            setattr(opts, key, getattr(self.opts, key))
        return Variants(opts) if flags_of(opts) else train.Lab()

    def twin(self):
        """The CE twin runs with the same flags but the arm (a CE run has no KD term to vary)."""
        argv = flags_of(self.opts, drop=("arm",))
        if not argv:
            return train.Lab(), [sys.executable, train.TRAIN_PY]
        opts = build_parser().parse_args(argv)
        return Variants(opts), [sys.executable, "-m", "variants"] + argv


def check_scaling(args):
    """--rope-scaling must give finite positive frequencies for this run's heads and window."""
    try:
        inv_freq, factor = rope_frequencies(args.d_model // args.n_head, args.rope_base, args.scaling, args.window)
    except KeyError as e:
        fail(f"--rope-scaling: missing key {e}")
    except (ValueError, TypeError, AttributeError, ArithmeticError) as e:
        fail(f"--rope-scaling: {e}")
    if not (torch.isfinite(inv_freq).all() and (inv_freq > 0).all() and math.isfinite(factor) and factor > 0):
        fail(f"--rope-scaling {args.scaling} gives RoPE frequencies that are not finite and positive")


def load_moments(opt, path, device):
    """--init-optimizer: AdamW's first and second moments (and step counts) from the phase-1 checkpoint that phase 2
    starts from; the hyperparameters stay this run's. Same model, same parameter order, so the states line up."""
    try:
        saved = load_checkpoint(path, map_location=device).get("optimizer")
    except CheckpointError as e:
        fail(str(e))
    if not saved:
        fail(f"--init-optimizer: {path} holds no optimizer state (a phase-1 checkpoint of train.py does)")
    groups = [{**group, "params": old["params"]} for group, old in zip(opt.state_dict()["param_groups"],
                                                                       saved["param_groups"])]
    try:
        opt.load_state_dict({"state": saved["state"], "param_groups": groups})
    except (ValueError, KeyError) as e:
        fail(f"--init-optimizer: {path}'s optimizer does not match this model: {first_line(e)}")


def parse(argv):
    """(this entry point's options, train.py's flags) of a command line."""
    opts, rest = build_parser().parse_known_args(argv)
    return opts, rest


def main(argv=None):
    """Train as train.main does, with this entry point's flags through the hooks; returns the run's results."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()
        return None
    opts, rest = parse(argv)
    return train.main(rest, Variants(opts))


if __name__ == "__main__":
    main()
