"""Speed and memory of the training steps: what distillation costs over plain CE.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) trains the student with a
logit-KD loss against a frozen long-context teacher, so every step adds a teacher forward
and a vocabulary-wide KL. This script measures that price on one device:

1. tokens/s of a CE train step (forward, CE, backward, AdamW: train.train_step without a
   teacher), of a KD train step with a same-size teacher (kd_weight 0.5), and of the teacher
   forward alone (distill.teacher_logits); the KD/CE step-time ratio; the MFU of the CE step,
   flops_per_token(model, window) (causal attention: half the T x T scores) * tokens/s over the
   matmul peak of the dtype in use (scale.device.matmul_peak_flops: best of several sizes and runs);
2. the extra peak memory of distill.kd_loss (forward + backward, beyond its two (N, V)
   inputs) chunked vs unchunked (scale/loss_memory.py);
3. a window sweep: tokens/s and MFU of the CE step at each window, tokens per step constant;
4. data parallelism: tokens/s of the KD step on 1 and 2 CPU ranks side by side (torch.distributed,
   gloo, DDP as train.py under torchrun; one thread per rank, each rank on --batch windows), and
   the time train.py's prefetch thread hides: building one numpy batch (data.py).
5. with --targets instead: bf16 autocast against float32, each pair of steps timed side by
   side, for the default model, d256 and d512, with the project's targets marked PASS / MISS.

The steps run under train.py's --dtype (auto: bf16 autocast on CUDA and on CPUs with native
bf16 matmuls); on CUDA with flash attention pinned (an error if flash cannot run). Data: one
packed batch of the synthetic language (data.py), reused each step.

    python -m scale.bench --quick                          # smoke run, CPU, seconds
    python -m scale.bench --targets --compile              # bf16 vs float32 targets (a few minutes on 2 cores)
    python -m scale.bench --model large --json out/bench-large.json
    python -m scale.bench --model gpt2 --compile --sweep 1024 2048 4096 8192
    python -m scale.bench --cpu-ranks 1 2 4                # data-parallel scaling over 4 CPU ranks
"""
import argparse
import functools
import json
import os
import socket
import time
from contextlib import nullcontext

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from data import DataSource, TaskSpec, synthetic_batch, to_device
from distill import freeze_teacher, teacher_logits
from scale.device import PEAK_SIZES, matmul_peak_flops
from model import GPT, GPTConfig, atomic_write
from config import PRESETS, build_parser, check_out_dir, fail, pick_device, resolve as resolve_run
from scale.loss_memory import kd_memory, kd_peak_bytes, megabytes  # noqa: F401 (bench's names too)
from train import BatchShape, make_optimizer, stop_process_group, train_step, wrap

ARCH = ("d_model", "n_layer", "n_head", "n_kv_head", "d_ff")
MODELS = {  # architecture, window and batch per --model
    "cpu": dict({k: PRESETS["cpu"][k] for k in ARCH}, window=PRESETS["cpu"]["long_window"],
                batch=PRESETS["cpu"]["batch_size"]),
    "large": dict(d_model=512, n_layer=8, n_head=8, n_kv_head=8, d_ff=1408, window=2048, batch=16),
    "gpt2": dict(d_model=768, n_layer=12, n_head=12, n_kv_head=12, d_ff=2048, window=4096, batch=8),
}
QUICK = dict(batch=1, window=128, iters=2, warmup=1, sweep=[64, 128], kd_vocab=4000, kd_tokens=2048,
             peak_seconds=0.2, peak_sizes=[256, 512])
DEFAULTS = dict(iters=10, warmup=3, sweep=[512, 1024, 2048, 4096], kd_vocab=32000, kd_tokens=4096, peak_seconds=1.0,
                peak_sizes=None)


def build_parser_bench():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    a = p.add_argument
    a("--model", default="cpu", choices=list(MODELS), help="cpu: train.py's cpu preset (window 1024); large: "
      "d512 L8 H8 ff1408 (window 2048);\ngpt2: d768 L12 H12 ff2048 (window 4096)")
    a("--d-model", type=int, default=None, help="override the model width (heads of 32 dims; e.g. 256)")
    a("--n-layer", type=int, default=None, help="override the number of layers")
    a("--batch", type=int, default=None, help="windows per step (default: per model; --quick 1)")
    a("--window", type=int, default=None, help="tokens per window (default: per model; --quick 128)")
    a("--vocab", type=int, default=TaskSpec().vocab_size, help="vocabulary of student and teacher "
      "(default: the synthetic language's)")
    a("--iters", type=int, default=None, help="timed iterations per figure (default 10; --quick 2)")
    a("--warmup", type=int, default=None, help="untimed iterations first (default 3; --quick 1)")
    a("--sweep", type=int, nargs="+", default=None, help="windows of the sweep (default 512 1024 2048 4096)")
    a("--kd-vocab", type=int, default=None, help="vocabulary of the kd_loss memory test (default 32000)")
    a("--kd-tokens", type=int, default=None, help="tokens of the kd_loss memory test (default 4096)")
    a("--kd-chunk", type=int, default=256, help="tokens per chunk of the chunked kd_loss")
    a("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    a("--cpu-ranks", type=int, nargs="*", default=[1, 2], help="rank counts of the data-parallel figure, on CPU "
      "(gloo, one thread each; default 1 2; none = skip)")
    a("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype of the steps, as "
      "train.py's (auto: bf16 on CUDA and on CPUs with native bf16)")
    a("--targets", action="store_true", help="instead: the bf16-vs-float32 targets, each pair of steps timed\n"
      "side by side (default model, d256 L4, d512 L8 window 2048, default model on 32-token windows;\n"
      "with --compile also d256 compiled)")
    a("--compile", action="store_true", help="torch.compile the student")
    a("--quick", action="store_true", help="tiny sizes and iterations: a smoke run in seconds")
    a("--json", default=None, metavar="PATH", help="also write the figures to this JSON file")
    return p


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_token(model, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs per token: 6N for the weights plus the attention scores and their weighted sum.

    N counts the weights that take part in matmuls: all parameters except the input
    embedding table (which is a lookup) unless it is tied to the LM head.
    Attention: nanoGPT's estimate_mfu counts 12 * L * H * Q * T, the full T x T score matrix
    (causal=False); a causal kernel computes only the lower triangle, about half of it, so the
    default counts 6 * L * H * Q * T. With the full count MFU rises with the window past what the
    hardware can do (at window 1024 it is 3/4 of this model's FLOPs).
    """
    cfg = model.config
    n = model.num_params()
    if not cfg.tie_embeddings:
        n -= model.tok_emb.weight.numel()
    n -= sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    attention = 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len  # (Q K^T and A V, fwd + bwd) per token
    return 6 * n + (attention / 2 if causal else attention)


def time_step(fn, device, warmup, iters) -> float:
    """Seconds per call of fn(), timed over `iters` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def packed_source(batch_size, window):
    """The batches of packed short documents (data.synthetic_batch) of a benchmark: seed 0."""
    make = functools.partial(synthetic_batch, TaskSpec(), kind="packed", batch_size=batch_size, window=window)
    return DataSource(make, batch_size, 0, window)


def packed_batch(batch_size, window, device):
    """(x, y, positions, doc_ids, answers), each (B, L): one batch of packed short documents."""
    return to_device(packed_source(batch_size, window).batch(0), device)


def step_settings(device="cpu", dtype="auto", lr=PRESETS["cpu"]["lr"]):
    """train.py's phase-2 step settings (0.5 CE + 0.5 KD; chunking, clipping, weight decay as in the recipe) at the
    preset's full learning rate."""
    run = resolve_run(build_parser().parse_args(["--phase", "2", "--device", device, "--kd-weight", "0.5", "--dtype",
                                                 dtype, "--out-dir", os.devnull]))
    run.lr = lr
    return run


def train_throughput(student, step_student, teacher, opt, run, batch, autocast, cli, peak) -> dict:
    """tokens/s of the CE step, the KD step and the teacher forward; KD/CE ratio; MFU of CE."""
    n_tok = batch[0].numel()
    x, pos = batch[0], batch[2]

    def teacher_forward():
        with autocast:
            teacher_logits(teacher, x, pos)  # (B, L, V)

    ce_s = time_step(lambda: train_step(step_student, None, opt, batch, run, autocast), cli.dev, cli.warmup, cli.iters)
    kd_s = time_step(lambda: train_step(step_student, teacher, opt, batch, run, autocast), cli.dev, cli.warmup,
                     cli.iters)
    t_s = time_step(teacher_forward, cli.dev, cli.warmup, cli.iters)
    return {"ce_step_tokens_per_s": n_tok / ce_s, "kd_step_tokens_per_s": n_tok / kd_s,
            "teacher_forward_tokens_per_s": n_tok / t_s, "kd_over_ce_step_time": kd_s / ce_s,
            "ce_mfu": flops_per_token(student, cli.window) * n_tok / ce_s / peak}


def window_sweep(student, step_student, opt, run, autocast, cli, peak) -> dict:
    """{window: (tokens/s, MFU)} of the CE step, batch = tokens per step // window."""
    tokens = cli.batch * cli.window
    out = {}
    for window in cli.sweep:
        batch = packed_batch(max(1, tokens // window), window, cli.dev)
        sec = time_step(lambda: train_step(step_student, None, opt, batch, run, autocast), cli.dev, cli.warmup,
                        cli.iters)
        tok_s = batch[0].numel() / sec
        out[window] = {"batch": batch[0].shape[0], "tokens_per_s": tok_s,
                       "mfu": flops_per_token(student, window) * tok_s / peak}
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_worker(rank, world, port, cli, out):
    """One CPU rank of ranks_throughput: KD train steps (DDP when world > 1) on its rows of a global batch of
    world x cli.batch windows; rank 0 puts the tokens/s of all ranks together in `out`."""
    torch.set_num_threads(1)
    if world > 1:
        tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cpu = torch.device("cpu")
    run = step_settings()
    torch.manual_seed(0)
    student = GPT(cli.cfg)
    teacher = freeze_teacher(GPT(cli.cfg), cpu)
    opt = make_optimizer(student, run, cpu)
    model = wrap(student, cpu)  # DDP on 2+ ranks, as train.py under torchrun
    rows = BatchShape(world * cli.batch, world).rows(rank)
    batch = to_device(packed_source(world * cli.batch, cli.window).batch(0, rows), cpu)
    sec = time_step(lambda: train_step(model, teacher, opt, batch, run, nullcontext()), cpu, cli.warmup, cli.iters)
    if rank == 0:
        out.put(world * batch[0].numel() / sec)
    stop_process_group()


def ranks_throughput(cli) -> dict:
    """{ranks: tokens/s of the KD step, all ranks together} for each of cli.cpu_ranks, one after the other, each
    in fresh processes (gloo on 127.0.0.1, one thread per rank). Per-rank batch fixed: ideal scaling is linear."""
    ctx = mp.get_context("spawn")
    out = {}
    for world in cli.cpu_ranks:
        queue = ctx.SimpleQueue()
        mp.start_processes(rank_worker, args=(world, free_port(), cli, queue), nprocs=world, start_method="spawn")
        out[world] = queue.get()
    return out


def batch_build_seconds(cli) -> float:
    """Seconds to build one packed numpy batch (data.py) of the model's batch and window: what train.py's
    prefetch thread builds while a step trains, and what the step clock used to leave out."""
    src = packed_source(cli.batch, cli.window)
    t0 = time.perf_counter()
    for step in range(cli.iters):
        src.batch(step)
    return (time.perf_counter() - t0) / cli.iters


# The project's targets for bf16 autocast (what a native-bf16 CPU should give this code): (figure, model, threshold, direction). A ratio is float32 step time over
# bf16 step time (> 1: bf16 is faster); MFU is against the bf16 matmul peak, with the causal FLOP count.
TARGETS = [("bf16 speed-up, CE step, default model", "default", 1.3, ">="),
           ("bf16 speed-up, CE step, d256 L4", "d256", 1.8, ">="),
           ("bf16 MFU, CE step, d512 L8 (window 2048)", "d512", 0.5, ">="),
           ("KD / CE step time in bf16 (teacher in bf16), default model", "default", 1.45, "<=")]
TARGET_MODELS = {  # architecture, window and batch of each model the targets name
    "default": MODELS["cpu"],  # d128 L2 H4, attention only, window 1024, batch 4
    "d256": dict(MODELS["cpu"], d_model=256, n_layer=4, n_head=8, n_kv_head=8),
    "d512": dict(MODELS["large"], batch=1),  # d512 L8 H8 ff1408, window 2048
    "short": dict(MODELS["cpu"], window=32, batch=128),  # phase 1's windows (no target: bf16 must not slow it)
}


def interleaved_seconds(fns: dict, device, warmup, rounds) -> dict:
    """{name: best seconds per call of fns[name]()}: the calls alternate within each round, so that load from
    other processes falls on all of them alike; the best of the rounds is the least disturbed one."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], time_step(fn, device, 0, 1))
    return best


def dtype_targets(cli, run) -> dict:
    """bf16 autocast vs float32 CE steps of each TARGET_MODELS model, side by side; MFU against each dtype's
    matmul peak; the bf16 KD/CE ratio of the default model (and, with --compile, compiled vs eager bf16 at d256).
    Prints the targets with PASS / MISS and returns every figure."""
    dev, threads = cli.dev, torch.get_num_threads()
    bf16 = torch.autocast(dev.type, dtype=torch.bfloat16)
    peaks = {d: matmul_peak_flops(dev, getattr(torch, d), cli.peak_sizes, seconds=cli.peak_seconds)
             for d in ("float32", "bfloat16")}
    print(f"device {dev}, {threads} threads | matmul peak (best of square sizes "
          f"{cli.peak_sizes or PEAK_SIZES[dev.type]}): float32 {peaks['float32'] / 1e9:,.0f} GFLOP/s, "
          f"bfloat16 {peaks['bfloat16'] / 1e9:,.0f} GFLOP/s | best of {cli.iters} interleaved rounds after "
          f"{cli.warmup} warm-up")
    models = {}
    for name, spec in TARGET_MODELS.items():
        cfg = GPTConfig(vocab_size=cli.vocab, max_seq_len=spec["window"], **{k: spec[k] for k in ARCH})
        batch_size, window = (1, 128) if cli.quick else (spec["batch"], spec["window"])
        batch = packed_batch(batch_size, window, dev)
        torch.manual_seed(0)
        student = GPT(cfg).to(dev)
        opt = make_optimizer(student, run, dev)
        fns = {"float32": lambda: train_step(student, None, opt, batch, run, nullcontext()),
               "bfloat16": lambda: train_step(student, None, opt, batch, run, bf16)}
        if name == "default":
            teacher = freeze_teacher(GPT(cfg).to(dev), dev)
            fns["bfloat16 KD"] = lambda: train_step(student, teacher, opt, batch, run, bf16)
        if name == "d256" and cli.compile:
            compiled = torch.compile(student)
            fns["bfloat16 compiled"] = lambda: train_step(compiled, None, opt, batch, run, bf16)
        sec = interleaved_seconds(fns, dev, cli.warmup, cli.iters)
        n_tok, flops = batch[0].numel(), flops_per_token(student, window)
        r = {"config": vars(cfg), "batch": batch_size, "window": window, "params": student.num_params(),
             "tokens_per_s": {k: n_tok / v for k, v in sec.items()},
             "mfu": {k: flops * n_tok / v / peaks[k.split()[0]] for k, v in sec.items()},
             "bf16_speedup": sec["float32"] / sec["bfloat16"]}
        if "bfloat16 KD" in sec:
            r["kd_over_ce_bf16"] = sec["bfloat16 KD"] / sec["bfloat16"]
        if "bfloat16 compiled" in sec:
            r["compile_speedup_bf16"] = sec["bfloat16"] / sec["bfloat16 compiled"]
        models[name] = r
        print(f"{name:>8} (d{cfg.d_model} L{cfg.n_layer}, batch {batch_size} x {window}): "
              + " | ".join(f"{k} {v:,.0f} tokens/s (MFU {r['mfu'][k]:.1%})" for k, v in r["tokens_per_s"].items())
              + f" | bf16 speed-up {r['bf16_speedup']:.2f}x"
              + (f" | compiled/eager {r['compile_speedup_bf16']:.2f}x" if "compile_speedup_bf16" in r else ""))
    figure = {"default": [models["default"]["bf16_speedup"], None, None, models["default"]["kd_over_ce_bf16"]],
              "d256": [None, models["d256"]["bf16_speedup"], None, None],
              "d512": [None, None, models["d512"]["mfu"]["bfloat16"], None]}
    table = []
    for i, (what, model, threshold, op) in enumerate(TARGETS):
        value = figure[model][i]
        ok = value >= threshold if op == ">=" else value <= threshold
        table.append({"target": what, "value": value, "threshold": f"{op} {threshold}", "pass": ok})
        shown = f"{value:.1%}" if "MFU" in what else f"{value:.2f}x"
        print(f"  {'PASS' if ok else 'MISS'}  {what}: {shown} (target {op} "
              f"{f'{threshold:.0%}' if 'MFU' in what else f'{threshold}x'})")
    results = {"device": str(dev), "threads": threads, "iters": cli.iters, "quick": cli.quick, "flops": "causal",
               "peak_flops_per_s": peaks, "models": models, "targets": table}
    write_json(cli, results)
    return results


def resolve(cli):
    """Fill per-model and --quick defaults into the CLI namespace (explicit flags win)."""
    spec = dict(MODELS[cli.model])
    if cli.d_model is not None:
        spec.update(d_model=cli.d_model, n_head=max(1, cli.d_model // 32), n_kv_head=max(1, cli.d_model // 32))
    if cli.n_layer is not None:
        spec.update(n_layer=cli.n_layer)
    for k, v in (QUICK if cli.quick else {}).items():
        setattr(cli, k, v if getattr(cli, k, None) is None else getattr(cli, k))
    for k, v in dict(DEFAULTS, batch=spec["batch"], window=spec["window"]).items():
        if getattr(cli, k, None) is None:
            setattr(cli, k, v)
    check_flags(cli, spec)
    cli.cfg = GPTConfig(vocab_size=cli.vocab, max_seq_len=cli.window, **{k: spec[k] for k in ARCH})
    return cli


def check_flags(cli, spec):
    """Every flag's range, and the model the sizes make, before anything runs or is written."""
    sizes = {"--d-model": spec["d_model"], "--n-layer": spec["n_layer"], "--batch": cli.batch, "--iters": cli.iters,
             "--kd-vocab": cli.kd_vocab, "--kd-tokens": cli.kd_tokens}
    for flag, v in sizes.items():
        if v < 1:
            fail(f"{flag} must be >= 1, got {v}")
    if spec["d_model"] // spec["n_head"] % 2 or spec["d_model"] % spec["n_head"]:
        fail(f"--d-model {spec['d_model']} must split into heads of an even size ({spec['n_head']} heads here)")
    if cli.window < 8 or min(cli.sweep) < 8:
        fail(f"--window and --sweep windows must be >= 8 tokens, got {cli.window} and {cli.sweep}")
    if any(n < 1 for n in cli.cpu_ranks):
        fail(f"--cpu-ranks must all be >= 1, got {cli.cpu_ranks}")
    if cli.warmup < 0 or cli.kd_chunk < 0:
        fail(f"--warmup and --kd-chunk must be >= 0, got {cli.warmup} and {cli.kd_chunk}")
    if cli.vocab < TaskSpec().vocab_size:
        fail(f"--vocab must be >= {TaskSpec().vocab_size}, the synthetic language's")
    if cli.json is not None:
        if os.path.isdir(cli.json):
            fail(f"--json {cli.json} is a folder, not a file name")
        check_out_dir(os.path.dirname(cli.json) or ".", "--json's folder")


def main(argv=None):
    cli = resolve(build_parser_bench().parse_args(argv))
    run = step_settings(cli.device, cli.dtype, PRESETS["gpu" if cli.model != "cpu" else "cpu"]["lr"])
    cli.dev, autocast = pick_device(run)  # run.autocast_dtype: what --dtype resolved to (phase 2's steps)
    cuda = cli.dev.type == "cuda"
    if cli.targets:
        return dtype_targets(cli, run)
    torch.manual_seed(0)
    student = GPT(cli.cfg).to(cli.dev)
    step_student = torch.compile(student) if cli.compile else student
    teacher = freeze_teacher(GPT(cli.cfg).to(cli.dev), cli.dev)
    opt = make_optimizer(student, run, cli.dev)
    dtype = run.autocast_dtype
    peak = matmul_peak_flops(cli.dev, getattr(torch, dtype), cli.peak_sizes, seconds=cli.peak_seconds)
    print(f"device {cli.dev} ({dtype}{' autocast' if dtype != 'float32' else ''}"
          f"{', flash attention' if cuda else ''}, {torch.get_num_threads()} threads) | model {cli.model}: "
          f"{student.num_params():,} params, d{cli.cfg.d_model} L{cli.cfg.n_layer} H{cli.cfg.n_head} "
          f"ff{cli.cfg.d_ff} V{cli.vocab} | batch {cli.batch} x window {cli.window} | {cli.iters} iters after "
          f"{cli.warmup} warm-up{' | compiled' if cli.compile else ''}")
    print(f"matmul peak ({dtype}, best of square sizes {cli.peak_sizes or PEAK_SIZES[cli.dev.type]}): "
          f"{peak / 1e12:.3f} TFLOP/s")
    flash = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION) if cuda else nullcontext()
    with flash:
        speed = train_throughput(student, step_student, teacher, opt, run, packed_batch(cli.batch, cli.window, cli.dev),
                                 autocast, cli, peak)
        print(f"CE step:         {speed['ce_step_tokens_per_s']:>12,.0f} tokens/s | MFU {speed['ce_mfu']:.1%}")
        print(f"KD step:         {speed['kd_step_tokens_per_s']:>12,.0f} tokens/s | KD/CE step time "
              f"{speed['kd_over_ce_step_time']:.2f}x")
        print(f"teacher forward: {speed['teacher_forward_tokens_per_s']:>12,.0f} tokens/s")
        sweep = window_sweep(student, step_student, opt, run, autocast, cli, peak)
    print(f"window sweep (CE step, ~{cli.batch * cli.window:,} tokens/step):")
    for window, r in sweep.items():
        print(f"  window {window:>6} x batch {r['batch']:>4}: {r['tokens_per_s']:>12,.0f} tokens/s | "
              f"MFU {r['mfu']:.1%}")
    del student, step_student, teacher, opt
    build, kd_step = batch_build_seconds(cli), cli.batch * cli.window / speed["kd_step_tokens_per_s"]
    print(f"batch build (numpy, {cli.batch} x {cli.window} packed): {build * 1e3:.1f} ms = {build / kd_step:.0%} of a "
          f"KD step (train.py builds it in a background thread while the step before trains)")
    ranks = ranks_throughput(cli) if cli.cpu_ranks else {}
    if ranks:
        base = ranks.get(1, next(iter(ranks.values())))
        print(f"data parallel on CPU (KD step, gloo, 1 thread per rank, {cli.batch} x {cli.window} per rank): "
              + " | ".join(f"{n} rank{'s' * (n > 1)} {t:,.0f} tokens/s ({t / base:.2f}x)" for n, t in ranks.items()))
    memory = kd_memory(cli)
    ratio = memory["unchunked_over_chunked"]
    print(f"kd_loss peak memory (V={cli.kd_vocab:,}, N={cli.kd_tokens:,}, fwd+bwd, beyond inputs; "
          f"{'max_memory_allocated' if cuda else 'peak RSS of a fresh process'}): chunked ({cli.kd_chunk} tokens) "
          f"{megabytes(memory['chunked_peak_mb'])} | unchunked {megabytes(memory['unchunked_peak_mb'])} | "
          f"ratio {'-' if ratio is None else f'{ratio:.1f}x'}")
    results = {"device": str(cli.dev), "model": cli.model, "config": vars(cli.cfg), "batch": cli.batch,
               "window": cli.window, "compile": cli.compile, "iters": cli.iters, "dtype": run.autocast_dtype,
               "threads": torch.get_num_threads(), "peak_flops_per_s": peak, "flops": "causal",
               **speed, "window_sweep": sweep, "batch_build_seconds": build, "cpu_ranks_tokens_per_s": ranks,
               "kd_memory": memory}
    write_json(cli, results)
    return results


def write_json(cli, results):
    if cli.json:
        atomic_write(cli.json, lambda f: json.dump(results, f, indent=1), mode="w")  # makes the folder too
        print(f"wrote {cli.json}")


if __name__ == "__main__":
    main()
