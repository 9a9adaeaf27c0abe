"""What a run is: presets, command-line flags, the settings they resolve to, and the checks of every input.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) trains in phases: a teacher on long documents; a student
in phase 1 with a short window and a small RoPE base; phase 2 with the long window and a large base, on short
documents packed into it. Every knob of those phases is a flag here or a setting of a preset (tiny / cpu / gpu):

- `build_parser`: the flags of train.py, each with its help text. What is not a flag (warmup, weight decay, the
  learning-rate schedule, how often a run saves, ...) is a preset's setting; code outside the core (variants/,
  research/) changes those through train.Lab.configure, never through a flag of train.py.
- `resolve`: fills in the preset, checks every value and names the run; bad input ends in one `error:` line on
  stderr and exit code 2 (`fail`), before anything is read, written or trained.
- `check_inputs`: what needs files (the output folder, the data, this run's checkpoint against --resume and
  --overwrite, the teacher and phase-1 checkpoints that exist), also before anything is written.
- `RunLock`: one process per run and output folder.
- `pick_device`: the device and the autocast dtype a run trains in.
"""
import argparse
import dataclasses
import fcntl
import functools
import json
import math
import os
import re
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from data import DataError
from distill import load_teacher
from evaluate import SELECTION_SEED, make_task
from model import CheckpointError, GPTConfig, atomic_write, first_line, load_checkpoint, save_checkpoint

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints")

# Defaults per preset; explicit flags override. `cpu` is the 2-core demonstration.
# Teacher and phase 1 start with a dense curriculum: windows of 16 tokens holding one short
# document with 3 records, then 32, 64, 128 (records scale with the window), each stage ending
# once the running answer accuracy passes the preset's curriculum_target. Tiny models need the 16-token
# stage to leave the retrieval plateau in minutes (on 32-token windows a tiny model sits on it for
# thousands of steps), and the doublings to keep the circuit working at longer range (a jump from 16
# straight to 256 tokens breaks it).
PRESETS = {
    "tiny": dict(d_model=32, n_layer=2, n_head=2, n_kv_head=2, d_ff=0, long_window=64, short_window=32,
                 max_doc_len=16, min_doc_len=8, long_pairs=4, batch_size=2, lr=2e-3, warmup=2,
                 curriculum_windows=[8, 16], curriculum_tokens=32, curriculum_steps=3,
                 steps={"teacher": 4, "1": 4, "2": 4}, eval_windows=2, eval_distances=[4, 12, 40],
                 phase1_base=10000.0, save_interval=100, phase1_seeds=None, phase1={}),
    "cpu": dict(d_model=128, n_layer=2, n_head=4, n_kv_head=4, d_ff=0, long_window=1024, short_window=32,
                max_doc_len=128, min_doc_len=32, long_pairs=48, batch_size=4, lr=2e-3, warmup=20,
                curriculum_windows=[16, 32, 64, 128], curriculum_tokens=4096, curriculum_steps=3000,
                steps={"teacher": 600, "1": 200, "2": 1000}, eval_windows=16,
                eval_distances=[16, 32, 64, 128, 256, 512, 768, 900], phase1_base=10000.0, save_interval=100,
                phase1_seeds=list(range(100, 130)), phase1=dict(kd_weight=0.0, lr=1e-3, curriculum_steps=8000,
                                                                    steps=1000)),
    "gpu": dict(d_model=512, n_layer=8, n_head=8, n_kv_head=8, d_ff=1408, long_window=4096, short_window=1024,
                max_doc_len=512, min_doc_len=64, long_pairs=64, batch_size=16, lr=1e-3, warmup=100,
                curriculum_windows=[16, 32, 64, 128, 256], curriculum_tokens=16384, curriculum_steps=5000,
                steps={"teacher": 3000, "1": 1000, "2": 3000}, eval_windows=32,
                eval_distances=[64, 256, 512, 1024, 2048, 3072, 4000], phase1_base=10000.0, save_interval=100,
                phase1_seeds=None, phase1={}),
}
# long_pairs <= TaskSpec.n_keys (64): keys are unique in a teacher's long document (the gpu preset asked for 192 and
# silently got 64). Curriculum stages ask for 3 records per 16 tokens and place 80-87% of them (data.place_pairs).
# phase1: the phase-1 recipe of the synthetic task where it differs from the preset's (cpu: no KD term, half the
# learning rate, a 16-token stage of up to 8,000 steps, 1,000 steps: research/protocol.md's recipe).
# phase1_seeds: phase 1 of the synthetic task at the preset's size, without --seed, trains these students in order
# until one passes the acceptance test (ACCEPTANCE; None: no test, seed 0); the cpu preset's are the protocol's.
# Settings every preset shares (train.Lab.configure may change them for a run):
SETTINGS = dict(schedule="constant", weight_decay=0.1, grad_clip=1.0, curriculum_target=0.95, attention="sdpa",
                scaling=None)
PHASE_LR = {"teacher": 1.0, "1": 1.0, "2": 0.5}  # phase 2 fine-tunes: half the preset's lr
# Phase 2 leans on the teacher: with 0.5 the CE half (which rewards looking only inside the current short document)
# pulled a window-32 student's long-range retrieval back down after step ~750 (0.74-0.87 at D >= 512 after 1,500
# steps); with 0.9 it reached 0.98-1.00 by step 750 (research/notes/results.md). The paper gives no weight.
PHASE_KD = {"teacher": 0.0, "1": 0.5, "2": 0.9}
# Each phase draws its own init and data streams from --seed, so that the student is not a twin of the
# teacher (same init, same curriculum batches) when both use seed 0.
PHASE_SEED = {"teacher": 0, "1": 10, "2": 20}
# A phase-1 student's acceptance test, measured before any phase 2 and fixed before the screens that test it: its
# first curriculum stage (16 tokens in the cpu preset) passed before its cap, and retrieval at the shortest probed
# distance (D = 16 in the cpu preset) after phase 1 at least 0.85, read on the selection probe (probe seed 0,
# evaluate.SELECTION_SEED), never on the held-out ones that report.
ACCEPTANCE = {"stage_passed": True, "min_accuracy": 0.85, "probe_seed": SELECTION_SEED}
SIZES = ("d_model", "n_layer", "n_head", "n_kv_head", "d_ff")
SIZE_TAGS = {"d_model": "d", "n_layer": "l", "n_head": "h", "n_kv_head": "kv", "d_ff": "ff"}  # in run names: -d48-l3
# Phases that --dtype auto runs in bf16 on a CPU with native bf16. Phase 2 gave the same results in bf16 as in
# float32 (3 seeds, docs/performance.md, "bf16 on CPU"); the teacher and phase 1 stay float32: a phase-1 student
# trained in bf16 (same seed) came out one that phase 2 cannot extend, and the shipped checkpoints were trained in
# float32.
CPU_BF16_PHASES = ("2",)


def fail(msg):
    """One clear line on stderr and exit code 2 (under torchrun every rank fails alike: rank 0 says it)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


# ----------------------------------------------------------------------------- the flags


MODEL_HELP = {  # the model's sizes (default: the preset's)
    "d_model": "width of the residual stream (embedding size)",
    "n_layer": "number of transformer blocks",
    "n_head": "query heads per attention layer; the head dimension d_model / n_head must be even (RoPE)",
    "n_kv_head": "key/value heads (fewer than --n-head: grouped-query attention); must divide --n-head",
    "d_ff": "hidden size of the SwiGLU MLP in each block (0 = attention-only blocks)",
}


def build_parser():
    """train.py's flags, each with its help; `python train.py --help` lists them."""
    p = argparse.ArgumentParser(description="Train the teacher, the phase-1 student or the phase-2 student (logit "
                                "distillation on packed short documents).", allow_abbrev=False)
    a = p.add_argument
    a("--phase", required=True, choices=["teacher", "1", "2"], help="what to train (train.py's docstring)")
    a("--preset", default="cpu", choices=list(PRESETS), help="size defaults: tiny (tests), cpu (default), gpu")
    a("--out-dir", default="out", help="folder for checkpoints, logs and results")
    a("--run-name", default=None, help="name of this run's files (default: from phase, loss and bases)")
    a("--teacher", default=None, help="teacher checkpoint (default: OUT/teacher.pt, else checkpoints/teacher.pt)")
    a("--init", default=None, help="phase 2's start, a phase-1 checkpoint (default: OUT's, else the shipped one)")
    a("--phase1-seed", type=int, default=None, help="--seed of the phase-1 student phase 2 starts from (default: the "
      "one phase 1's acceptance test took, else seed 0)")
    a("--no-auto", action="store_true", help="exit with an error instead of training missing prerequisites")
    a("--resume", action="store_true", help="continue this run from its checkpoint")
    a("--overwrite", action="store_true", help="retrain even if this run already finished")
    a("--no-baseline", action="store_true", help="phase 2: do not train the CE-only twin side by side")
    a("--rope-base", type=float, default=None, help="RoPE base (default: teacher 10000, phase 1 10000, phase 2 500000)")
    g = p.add_argument_group("data").add_argument
    g("--window", type=int, default=None, help="training window (default: long for teacher/phase 2, short for phase 1)")
    g("--max-doc-len", type=int, default=None, help="longest short document, separator included")
    g("--recurrence", type=float, default=None, help="students: the fraction of records whose key comes from an "
      "earlier document of the window (default: keys drawn uniformly, about 0.45)")
    g("--reset-positions", action="store_true", help="restart position ids at each document (needs --doc-mask)")
    g("--doc-mask", action="store_true", help="block-diagonal attention (no cross-document attention)")
    g("--data", default=None, help="your own data: a UTF-8 text file or folder, or a task file (.py, docs/fork.md)")
    g = p.add_argument_group("model (teacher and phase 1; phase 2 keeps phase 1's)").add_argument
    for name, text in MODEL_HELP.items():
        g("--" + name.replace("_", "-"), type=int, default=None, help=text)
    g = p.add_argument_group("optimization").add_argument
    g("--steps", type=int, default=None, help="steps of the phase's main stage")
    g("--batch-size", type=int, default=None, help="windows per optimizer step, all ranks and micro-batches together")
    g("--grad-accum", type=int, default=1, help="micro-batches per optimizer step on each rank")
    g("--lr", type=float, default=None, help="peak learning rate")
    g("--curriculum-steps", type=int, default=None, help="steps cap of the first warm-up stage, 1/6 of it for each "
      "later one (teacher and phase 1; 0 = no curriculum)")
    g = p.add_argument_group("distillation").add_argument
    g("--kd-weight", type=float, default=None, help="loss = (1-w) CE + w KD; 0 = CE only (default: phase 1 0.5, "
      "the cpu preset's 0; phase 2 0.9)")
    g("--temperature", type=float, default=1.0, help="KD temperature T (loss scaled by T^2)")
    g = p.add_argument_group("system").add_argument
    g("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    g("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype (auto: bf16 on CUDA "
      "and for phase 2 on CPUs with native bf16 matmuls, float32 elsewhere)")
    g("--threads", type=int, default=0, help="CPU threads (0 = torch's default); per rank under torchrun")
    g("--seed", type=int, default=None, help="random seed (model init and data stream), 0 <= seed < 2**32 (default 0; "
      "phase 1 of a preset with an acceptance test: its students in order until one passes)")
    g("--eval-interval", type=int, default=None, help="steps between quick retrieval probes (0 = off; default 250, "
      "off with --data)")
    return p


# ----------------------------------------------------------------------------- the settings of a run


def resolve(args, lab=None):
    """Fill in the preset and the shared settings (where the lab's configure did not set them), check every value
    and name the run; returns args. `lab`: a train.Lab (None: the core's own run)."""
    if lab is not None:
        lab.configure(args)
    pre = PRESETS[args.preset]
    phase = args.phase
    args.explicit = {k: getattr(args, k) for k in SIZES}  # the sizes asked for: phase 2 checks its start against them
    for key in SIZES + ("warmup", "save_interval", "phase1_base", "long_window", "long_pairs", "eval_windows"):
        setdefault(args, key, pre[key])
    for key, value in SETTINGS.items():
        setdefault(args, key, value)
    setdefault(args, "phase1_window", pre["short_window"])
    setdefault(args, "window", pre["short_window"] if phase == "1" else pre["long_window"])
    if phase == "teacher" and args.data:  # a teacher reads whole documents
        setdefault(args, "max_doc_len", args.window + 1)
    setdefault(args, "max_doc_len", min(pre["max_doc_len"], args.window) if phase == "1" else pre["max_doc_len"])
    short = args.max_doc_len < pre["max_doc_len"]  # phase 1's documents fit its short window
    setdefault(args, "min_doc_len", max(2, min(pre["min_doc_len"], args.max_doc_len // 4)) if short
               else pre["min_doc_len"])
    setdefault(args, "batch_size", max(1, pre["batch_size"] * pre["long_window"] // max(1, args.window)))  # same tokens
    if phase == "1" and not args.data:  # the preset's phase-1 recipe of the synthetic task
        for key, value in pre["phase1"].items():
            setdefault(args, key, value)
    # phase 2 switches the base to 500,000, unless a RoPE scaling extends phase 1's base
    extended = args.phase1_base if args.scaling else 500000.0
    setdefault(args, "rope_base", {"teacher": 10000.0, "1": args.phase1_base, "2": extended}[phase])
    setdefault(args, "steps", pre["steps"][phase])
    setdefault(args, "lr", pre["lr"] * PHASE_LR[phase])
    setdefault(args, "curriculum_steps", 0 if phase == "2" or args.data else pre["curriculum_steps"])
    setdefault(args, "eval_interval", 0 if args.data else 250)
    args.kd_weight = PHASE_KD[phase] if args.kd_weight is None or phase == "teacher" else args.kd_weight
    recipe = not args.data and not size_suffix(args) and args.window == pre["short_window"] and args.curriculum_steps
    if not (phase == "1" and pre["phase1_seeds"] and recipe and args.rope_base == args.phase1_base):
        setdefault(args, "seed", 0)  # (else main walks the acceptance test's students: the preset's phase 1 only)
    args.eval_distances = [d for d in pre["eval_distances"] if d < args.window]
    task = lab.task(args) if lab is not None else make_task(args)
    args.data_name = task.name  # in front of every run name on this data ("" for the synthetic language)
    setdefault(args, "vocab_size", task.vocab_size)
    for ok, msg in checks(args):
        if not ok:
            fail(msg)
    if lab is not None:
        lab.check(args)
    args.settings_name = run_name(args, lab)  # what the settings call the run; --run-name may name it otherwise
    setdefault(args, "run_name", args.settings_name)
    return args


def setdefault(args, key, value):
    """args.key = value unless a flag or the lab already set it."""
    if getattr(args, key, None) is None:
        setattr(args, key, value)


def checks(args):
    """[(holds, what to say when it does not)]: each flag's own range, then the flags that only make sense
    together."""
    phase = args.phase
    finite = math.isfinite
    sizes = (args.d_model, args.n_layer, args.n_head, args.n_kv_head)
    return [
        (finite(args.rope_base) and args.rope_base > 1, f"--rope-base must be finite and > 1, got {args.rope_base}"),
        (args.phase1_seed is None or 0 <= args.phase1_seed < 2**32, "--phase1-seed must lie in [0, 2**32)"),
        (args.seed is None or 0 <= args.seed < 2**32, f"--seed must lie in [0, 2**32), got {args.seed}"),
        (args.steps > 0, f"--steps must be positive, got {args.steps}"),
        (args.batch_size > 0, f"--batch-size must be positive, got {args.batch_size}"),
        (args.grad_accum >= 1, f"--grad-accum must be >= 1 (micro-batches per step), got {args.grad_accum}"),
        (finite(args.lr) and args.lr > 0, f"--lr must be a finite number > 0, got {args.lr}"),
        (args.curriculum_steps >= 0, f"--curriculum-steps must be >= 0, got {args.curriculum_steps}"),
        (args.recurrence is None or 0 <= args.recurrence <= 1,
         f"--recurrence must lie in [0, 1], got {args.recurrence}"),
        (args.recurrence is None or (phase != "teacher" and not args.data),
         "--recurrence sets how the packer draws a student's synthetic keys: not with --phase teacher or --data"),
        (args.temperature > 0 and finite(args.temperature), f"--temperature must be > 0, got {args.temperature}"),
        (0 <= args.kd_weight <= 1, f"--kd-weight must lie in [0, 1], got {args.kd_weight}"),
        (args.threads >= 0, f"--threads must be >= 0 (0 = torch's default), got {args.threads}"),
        (args.eval_interval >= 0, f"--eval-interval must be >= 0 (0 = off), got {args.eval_interval}"),
        (args.run_name is None or (args.run_name not in ("", ".", "..") and os.path.basename(args.run_name)
                                   == args.run_name), f"--run-name must be a plain file name, got {args.run_name!r}"),
        (args.window >= 8, f"--window must be >= 8 tokens (a separator and a record-query pair), got {args.window}"),
        (2 <= args.min_doc_len <= args.max_doc_len,
         f"--max-doc-len {args.max_doc_len} must be at least the shortest document, {args.min_doc_len} tokens"),
        (phase == "teacher" or args.window >= args.max_doc_len,
         f"--window {args.window} is smaller than the document length {args.max_doc_len}"),
        (min(sizes) > 0 and args.d_ff >= 0, f"--d-model, --n-layer, --n-head, --n-kv-head must be positive and --d-ff "
                                            f">= 0, got {sizes} and {args.d_ff}"),
        (min(sizes) > 0 and args.d_model % args.n_head == 0 and args.n_head % args.n_kv_head == 0,
         f"--d-model {args.d_model} must divide by --n-head {args.n_head}, and that by --n-kv-head {args.n_kv_head}"),
        (min(sizes) > 0 and args.d_model // args.n_head % 2 == 0,
         f"the head dimension --d-model / --n-head = {args.d_model // max(1, args.n_head)} must be even for RoPE"),
        (not (args.resume and args.overwrite), "--resume continues a run and --overwrite restarts it: pass one"),
        (args.init is None or phase == "2", "--init is phase 2's starting point: it needs --phase 2"),
        (args.teacher is None or phase != "teacher", "--teacher: the teacher phase trains the teacher itself"),
        (not (args.data and args.eval_interval),
         "--eval-interval: the retrieval probes speak the synthetic language, not --data's; pass 0 or drop it"),
        (not (args.data and args.curriculum_steps),
         "--curriculum-steps: the curriculum is synthetic key-value data; with --data pass 0 or drop it"),
        (not (args.data and args.reset_positions), "--reset-positions applies to synthetic documents, not to --data"),
        (args.doc_mask or not args.reset_positions,  # else 43% of visible pairs have a negative distance
         "--reset-positions needs --doc-mask: restarted positions under cross-document attention give keys of an "
         "earlier document larger positions than the query (negative relative distances)"),
    ]


def curriculum_stages(args):
    """The curriculum before a phase's own data: [(name, window, batch size, records per window, steps)].

    Windows of the preset's curriculum shorter than the phase's, 3 records per 16 tokens and the same tokens per
    step at every window; the first stage runs up to --curriculum-steps, each later one a sixth of that (each
    ends early once the running answer accuracy passes the curriculum target). [] with --curriculum-steps 0.
    """
    pre = PRESETS[args.preset]
    windows = [w for w in pre["curriculum_windows"] if w < args.window] if args.curriculum_steps else []
    stages = []
    for i, w in enumerate(windows):
        steps = args.curriculum_steps if i == 0 else max(1, args.curriculum_steps // 6)
        stages.append((f"curriculum-{w}", w, max(1, pre["curriculum_tokens"] // w), max(1, 3 * w // 16), steps))
    return stages


def make_stages(args, task, lab):
    """[(name, DataSource, steps, stop_at_accuracy)]: the task's stages (the synthetic language's curriculum first,
    config.curriculum_stages), as the lab changes them."""
    stream_seed = functools.partial(phase_seed, args)  # stream_seed(k): the phase's k-th random stream
    return lab.stages(task.stages(args, stream_seed, curriculum_stages(args)), args, task)


def phase_seed(args, k=0):
    """The seed of a phase's k-th random stream (init, each stage's batches): every phase draws its own."""
    return args.seed * 100 + PHASE_SEED[args.phase] + k


# ----------------------------------------------------------------------------- run names


def phase1_name(base, seed=0, window=None, preset="cpu"):
    """File name (no extension) of the phase-1 run with this RoPE base, --seed and --window (if not the preset's)."""
    w = f"-w{window}" if window is not None and window != PRESETS[preset]["short_window"] else ""
    return f"phase1-b{base:g}{w}" + (f"-s{seed}" if seed else "")


def size_suffix(args) -> str:
    """The model sizes asked for that differ from the preset's, as in a run name: -d48-l3 ("" for the preset's)."""
    suffix = ""
    for key, tag in SIZE_TAGS.items():
        asked = args.explicit.get(key)
        if asked is not None and asked != PRESETS[args.preset][key]:
            suffix += f"-{tag}{asked}"
    return suffix


def run_name(args, lab=None):
    """The run's files' name: the data's, the phase, its bases, the phase-1 student it starts from, what it changes
    (-d48-l3: the model's sizes, -T2: --temperature, -dm: --doc-mask, -rp: --reset-positions, -rec0.1:
    --recurrence, then the lab's), its seed."""
    seed = f"-s{args.seed}" if args.seed else ""  # (None: phase 1's acceptance walk, named as its record)
    variant = size_suffix(args)
    variant += f"-T{args.temperature:g}" if args.kd_weight > 0 and args.temperature != 1 else ""
    variant += "-dm" if args.doc_mask else ""
    variant += "-rp" if args.reset_positions else ""
    variant += f"-rec{args.recurrence:g}" if args.recurrence is not None else ""
    variant += lab.suffix(args) if lab is not None else ""
    if args.phase == "teacher":
        return args.data_name + "teacher" + variant + seed
    if args.phase == "1":
        return args.data_name + phase1_name(args.rope_base, 0, args.window, args.preset) + variant + seed
    name = f"{args.data_name}phase2-{'kd' if args.kd_weight > 0 else 'ce'}-b{args.phase1_base:g}-b{args.rope_base:g}"
    if args.phase1_window != PRESETS[args.preset]["short_window"]:  # a phase-1 student of another window
        name += f"-w{args.phase1_window}"
    if args.phase1_seed:  # another phase-1 student
        name += f"-p{args.phase1_seed}"
    return name + variant + seed


def needs_teacher(args) -> bool:
    """A KD term, or phase 2 (whose report shows the teacher), needs the teacher."""
    return args.kd_weight > 0 or args.phase == "2"


def student_config(args, init_config=None):
    """The model config a run trains: from the flags (teacher, phase 1), or phase 1's config (init_config) with
    phase 2's base, scaling and window (the same weights under a new RoPE: model.switch_rope)."""
    if init_config is not None:
        return dataclasses.replace(init_config, rope_base=args.rope_base, rope_scaling=args.scaling,
                                   max_seq_len=args.window)
    return GPTConfig(vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head, n_kv_head=args.n_kv_head,
                     d_model=args.d_model, d_ff=args.d_ff, rope_base=args.rope_base, rope_scaling=args.scaling,
                     max_seq_len=args.window)


# ----------------------------------------------------------------------------- the device


def pick_device(args):
    """(torch.device, autocast context) of --device, --dtype and --threads; the dtype in use as args.autocast_dtype."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        fail(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {args.device} asked for, but no CUDA device is available")
    if args.device.startswith("cuda:") and int(args.device[5:]) >= torch.cuda.device_count():
        fail(f"--device {args.device}: there are only {torch.cuda.device_count()} CUDA devices")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = autocast_dtype(device, args.dtype, args.phase)
    args.autocast_dtype = str(dtype).removeprefix("torch.")  # float32 or bfloat16: the speed report reads it
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    return device, autocast


def cpu_has_native_bf16() -> bool:
    """True if this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles), where torch's bf16 matmuls beat
    float32 several times over; elsewhere bf16 is emulated and slower. Read from the CPU's feature flags, not
    timed, so that the choice (and with it every result) does not depend on the load of the machine."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch >= 2.2 (private, hence getattr)
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(device, flag="auto", phase="2") -> torch.dtype:
    """--dtype as a torch dtype. auto: bf16 on CUDA; on a CPU with native bf16 matmuls, bf16 for the phases in
    CPU_BF16_PHASES and float32 for the others; float32 on any other CPU.

    Under bf16 autocast the matmuls and attention run in bf16: RoPE's angles (rope.py), the loss, the KD
    softmax (distill.py), the weights and the AdamW state stay float32 (tests/test_train.py checks it).
    """
    if flag == "auto":
        native = device.type == "cuda" or (cpu_has_native_bf16() and phase in CPU_BF16_PHASES)
        return torch.bfloat16 if native else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[flag]


def launched_world_size() -> int:
    """Processes torchrun started for this run (1 without torchrun); readable before the process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that prints, logs, runs the probes and writes checkpoints."""
    return rank() == 0


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any (one all-reduce of one number under torchrun)."""
    if not torch.distributed.is_initialized():
        return flag
    nccl = torch.distributed.get_backend() == "nccl"
    t = torch.tensor([float(flag)], device=f"cuda:{torch.cuda.current_device()}" if nccl else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


# ----------------------------------------------------------------------------- the inputs of a run


def check_out_dir(path, flag):
    """Fail unless `path` is a folder, or can be created as one, that this user may write into; creates nothing."""
    here = os.path.abspath(path)
    while not os.path.lexists(here):
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        fail(f"{flag} {path}" + (f": {here}" if here != os.path.abspath(path) else "") + " exists and is not a folder")
    if not os.access(here, os.W_OK | os.X_OK):
        fail(f"{flag} {path}: {here} is not writable")


def run_path(args, ext):
    """OUT/<run name><ext>: the run's checkpoint (.pt), results (.json) and step log (.jsonl)."""
    return os.path.join(args.out_dir, args.run_name + ext)


def find_checkpoint(path_in_out, shipped_name, preset):
    """The run in the output folder if it exists, else the shipped one (trained with the cpu preset), else None."""
    if os.path.isfile(path_in_out):
        return path_in_out
    shipped = os.path.join(SHIPPED, shipped_name)
    return shipped if preset == "cpu" and os.path.isfile(shipped) else None


def teacher_file(args, lab):
    """File name of the teacher a run learns from (without --teacher): teacher.pt, or with --data the teacher of
    that data (its name in front: corpus-teacher.pt), which no shipped checkpoint is."""
    return args.data_name + "teacher" + lab.prerequisite("teacher").suffix(args) + ".pt"


def teacher_path(args, lab):
    """--teacher, else OUT/<teacher_file>, else the shipped teacher; None when none exists yet."""
    name = teacher_file(args, lab)
    return args.teacher or find_checkpoint(os.path.join(args.out_dir, name), name, args.preset)


def phase1_file(args, lab):
    """File name of the phase-1 run that phase 2 starts from (without --init): the one of the model sizes asked
    for (train_prerequisites trains it at them); with --data, that data's. As run_name names that run."""
    name = phase1_name(args.phase1_base, 0, args.phase1_window, args.preset) + size_suffix(args)
    seed = f"-s{args.phase1_seed}" if args.phase1_seed else ""
    return args.data_name + name + lab.prerequisite("1").suffix(args) + seed + ".pt"


def phase1_path(args, lab):
    """--init, else without --phase1-seed the student phase 1's acceptance test took (its record in OUT), else the
    one in OUT, else the shipped one; with --phase1-seed that seed's run in OUT. None when none exists yet."""
    if args.init is not None:
        return args.init
    name = phase1_file(args, lab)
    record = os.path.join(args.out_dir, name.removesuffix(".pt") + ".accept.json")
    if args.phase1_seed is None and os.path.isfile(record):
        with open(record) as f:
            return json.load(f)["phase2_init"]  # None while no student passed
    own = os.path.join(args.out_dir, name)
    if args.phase1_seed is not None:  # the student of that seed: the shipped one is the recipe's, not a seed's
        return own if os.path.isfile(own) else None
    return find_checkpoint(own, name, args.preset)


def check_inputs(args, lab):
    """Every check that needs no training, before a file is written or a process launched: the output folder, the
    data (the task reads its files), this run's checkpoint against --resume / --overwrite, the teacher and phase-1
    checkpoints that exist. Returns (the prepared task, this run's previous checkpoint or None)."""
    check_out_dir(args.out_dir, "--out-dir")
    task = lab.task(args)
    try:
        task.prepare(args)
    except (DataError, ValueError) as e:
        fail(str(e))
    check_batch_shapes(args, make_stages(args, task, lab))
    previous = previous_checkpoint(args)
    trained_as = ((previous or {}).get("args") or {}).get("settings_name", args.settings_name)  # older: unchecked
    if args.resume and trained_as != args.settings_name:  # a --run-name kept, other settings (a lab's too)
        fail(f"--resume: {run_path(args, '.pt')} was trained with the settings named {trained_as}, not "
             f"{args.settings_name}: pass its own flags, or choose another --run-name")
    cpu = torch.device("cpu")
    path = teacher_path(args, lab) if needs_teacher(args) else None
    if path is not None:
        try:
            load_teacher(path, cpu, args.vocab_size, lab.load)
        except CheckpointError as e:
            fail(str(e))
    init = None
    path = phase1_path(args, lab) if args.phase == "2" else None
    if path is not None:
        init = load_init(args, path, cpu, lab)
    if args.resume and previous is not None and (args.phase != "2" or init is not None):
        old = previous["config"]
        new = dataclasses.asdict(student_config(args, init.config if init else None))
        diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k, v) != v]
        if diff:
            fail(f"--resume: {run_path(args, '.pt')} was trained with other settings than this run asks for: "
                 f"{', '.join(diff)}")
    return task, previous


def previous_checkpoint(args):
    """This run's checkpoint, if it has one, checked against --resume and --overwrite."""
    path = run_path(args, ".pt")
    if not os.path.exists(path):
        if args.resume:
            fail(f"--resume: no checkpoint at {path}")
        return None
    try:
        previous = load_checkpoint(path)
    except CheckpointError as e:
        if args.resume or not args.overwrite:
            fail(f"{e} (--overwrite replaces it)")
        return None
    if previous.get("phase", args.phase) != args.phase:
        fail(f"{path} holds a phase-{previous['phase']} run, not phase {args.phase}: choose another --run-name")
    if previous.get("done") and not args.overwrite and not args.resume:
        fail(f"{path} is a finished run: pass --overwrite to retrain it, or choose another --run-name")
    if not previous.get("done") and not args.resume and not args.overwrite:
        fail(f"{path} holds an unfinished run: pass --resume to continue it or --overwrite to restart")
    return previous


def load_init(args, path, device, lab):
    """Phase 2's starting point: a finished phase-1 checkpoint with this run's vocabulary and asked-for sizes."""
    try:
        model, ckpt = lab.load(path, device)
    except CheckpointError as e:
        fail(str(e))
    phase = ckpt.get("phase", "1")  # checkpoints made outside train.py carry no phase
    if phase != "1":
        kind = "teacher" if phase == "teacher" else f"phase-{phase}"
        fail(f"--init {path} is a {kind} checkpoint, not a phase-1 student")
    if not ckpt.get("done", True):
        fail(f"--init {path} is an unfinished phase-1 run (step {ckpt['step']}): finish it first (--resume)")
    for name in SIZES:
        if args.explicit.get(name) is not None and args.explicit[name] != getattr(model.config, name):
            fail(f"--init {path} has {name} {getattr(model.config, name)}, not the {args.explicit[name]} "
                 f"asked for: phase 2 keeps phase 1's architecture")
    if model.config.vocab_size != args.vocab_size:
        fail(f"--init {path} has vocabulary {model.config.vocab_size}, but this run's data needs {args.vocab_size}")
    return model


@dataclass(frozen=True)
class BatchShape:
    """One optimizer step's windows: the global batch, split over ranks, then into micro-batches on each rank.

    Rank r takes rows [r * per_rank, (r + 1) * per_rank) of the global batch that one process would draw for the
    step, and feeds them as `grad_accum` micro-batches; so N ranks x K micro-batches see the same windows as 1
    process, whatever N and K.
    """
    global_batch: int  # windows per optimizer step, all ranks together (--batch-size)
    world: int = 1  # ranks
    grad_accum: int = 1  # micro-batches per rank and step (--grad-accum)

    def __post_init__(self):
        if self.global_batch % (self.world * self.grad_accum):
            raise ValueError(f"{self.global_batch} windows per step do not split into {self.world} ranks x "
                             f"{self.grad_accum} micro-batches (--grad-accum)")

    def rows(self, rank: int) -> slice:
        per_rank = self.global_batch // self.world
        return slice(rank * per_rank, (rank + 1) * per_rank)


def check_batch_shapes(args, stages):
    """Every stage's batch must split into ranks x micro-batches; one error line before anything is written."""
    for name, src, _, _ in stages:
        try:
            BatchShape(src.batch_size, launched_world_size(), args.grad_accum)
        except ValueError as e:
            fail(f"--batch-size {src.batch_size}: {e}" if name == "main" else
                 f"the {name} stage (the preset's batch of {src.batch_size}; --curriculum-steps 0 skips it): {e}")


class RunLock:
    """An exclusive lock on OUT/.<run>.lock from before the run's inputs are read until it ends: a second process
    asked to train the same run into the same folder refuses in one line instead of checking, then overwriting,
    the first one's checkpoint and log. The kernel drops the lock when the process ends, however it ends, so a
    killed run never leaves it stale. The lock file goes when the run ends, and the folder too if the lock made
    it and nothing else was written there (bad input writes nothing). Rank 0 alone holds it under torchrun."""

    def __init__(self, args):
        self.args = args
        self.path = os.path.join(args.out_dir, f".{args.run_name}.lock")
        self.file = None

    def __enter__(self):
        problem = self.take() if is_main() else None
        if any_rank(problem is not None):  # under torchrun every rank stops with rank 0
            if problem == "":  # already said in one line
                raise SystemExit(2)
            fail(problem or f"rank 0 could not take the lock of {self.args.run_name}")
        return self

    def take(self):
        """Take the lock (None), or say in one line why not ("" when check_out_dir already said it)."""
        folder = self.args.out_dir
        try:
            check_out_dir(folder, "--out-dir")
        except SystemExit:
            return ""
        self.made_folder = not os.path.isdir(folder)
        os.makedirs(folder, exist_ok=True)
        while self.file is None:  # a file its last holder removed while this one opened it is opened again
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                return (f"{self.args.run_name} is being trained in {folder} by {holder}: wait for it, or choose "
                        f"another --out-dir or --run-name")
            if same_file(f, self.path):
                self.file = f
            else:
                f.close()
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}\n")
        self.file.flush()
        return None

    def __exit__(self, *exc):
        if self.file is None:
            return
        if os.path.exists(self.path):
            os.remove(self.path)  # removed while still held: a process that opened it meanwhile opens it again
        self.file.close()  # closing releases the lock
        if self.made_folder and not os.listdir(self.args.out_dir):
            os.rmdir(self.args.out_dir)


def same_file(f, path) -> bool:
    """Whether the open file f is the file at `path` now (same inode)."""
    try:
        return os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------------------- the files a run writes


class RunError(Exception):
    """A run that cannot go on (a non-finite loss, a failed save); one_line_errors reports it in one line."""


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
            fail(f"{e.filename or args.out_dir}: {e.strerror or e}")
        raise


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
    if is_main():
        path = run_path(args, ".pt")
        try:
            save_checkpoint(checkpoint_dict(model, opt, args, state, done), path)
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
            kept = f"the previous {path} is kept" if os.path.exists(path) else "no checkpoint was written"
            why = f"{e.strerror or e} ({e.filename or path})" if isinstance(e, OSError) else first_line(e)
            problem = f"cannot save the checkpoint at step {state['step']}: {why}; {kept}"
    if any_rank(problem is not None):
        raise RunError(problem or f"rank 0 could not save the checkpoint at step {state['step']}")


def resume_state(args, previous, model, opt):
    """Where the run stands: a fresh start, or --resume's checkpoint loaded into model and optimizer."""
    state = {"step": 0, "stage": 0, "stage_start": 0, "acc_ema": 0.0}
    log_path = run_path(args, ".jsonl")
    if not args.resume:
        if is_main() and os.path.exists(log_path):
            os.remove(log_path)  # --overwrite (or a fresh run): the old log goes with the old run
        return state
    path = run_path(args, ".pt")  # its config was checked against this run's by check_inputs
    try:
        model.load_state_dict(previous["model"])
        opt.load_state_dict(previous["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        fail(f"--resume: {path} does not match this run's model: {first_line(e)}")
    torch.set_rng_state(previous["rng"])
    if is_main():
        truncate_log(log_path, previous["step"])
    print(f"resuming {path} at step {previous['step']}")
    return {k: previous[k] for k in state}


def record_step(state, clock, metrics, stage, n_tok, seconds, lr, bar, log):
    """After a step: stop on a non-finite loss, count the step (tokens, time), log it and show it."""
    loss, ce, kl, acc = metrics
    if not math.isfinite(loss):
        raise RunError(f"non-finite loss ({loss}) at step {state['step']}; the last good checkpoint is kept")
    clock["tokens"] += n_tok
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
    """Drop log records past the checkpoint's step (written before a crash), so a resumed log is exact. A kill may
    cut the last line short: it lies past the checkpoint (flushed before each save), so it goes too."""
    if os.path.exists(log_path):
        with open(log_path) as f:
            keep = [line for line in f if line.endswith("\n") and json.loads(line)["step"] <= step]
        atomic_write(log_path, lambda f: f.writelines(keep), mode="w")  # a kill leaves the old log or the new


def stage_steps(log_path, stage) -> int:
    """Steps a run spent in one stage, from its step log OUT/<run>.jsonl (one line per step; probe lines carry no
    stage). --resume truncates the log to the checkpoint, so the count is the checkpoint's."""
    with open(log_path) as f:
        return sum(json.loads(line).get("stage") == stage for line in f)
