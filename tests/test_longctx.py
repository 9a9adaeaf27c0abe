"""longctx/: your own text end to end (data-named prerequisites, held-out text, the loss by distance and the
passkey) and a real teacher cached as its top-k inside train.py's loop (python -m variants --teacher-topk)."""
import json
import os
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import config
import train
from data import build_corpus
from evaluate import make_task, token_losses
from longctx import report as lr, topk as lt
from longctx.topk import TopK, topk_forward_kl
from model import GPT, GPTConfig, load_model
from variants import train as variants

TINY = ["--preset", "tiny", "--threads", "1", "--device", "cpu"]
WORDS = "the river flows slowly through the old town past the market square and the church".split()


def byte_ids(text):
    """Text as --data reads it without a tokenizer: each UTF-8 byte + 1 (0 is the separator; data.py)."""
    return (np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) + 1).tolist()


def write_corpus(path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    path.write_text("\n\n".join(" ".join(rng.choice(WORDS, rng.integers(20, 60))) for _ in range(n)))
    return str(path)


def test_the_held_out_text_is_the_end_of_the_text_and_never_trained_on():
    docs = [np.arange(1, 41) + 100 * i for i in range(30)]  # 30 documents of 40 distinct tokens
    c = build_corpus(docs, 0, window=16, max_doc_len=8, shuffle_seed=0, fraction=0.1)
    train_ids, held_ids = set(c.train["tokens"].ravel()) - {0}, set(c.held_out["tokens"].ravel()) - {0}
    assert not train_ids & held_ids and not (set(c.long.ravel()) - {0}) & train_ids
    assert min(held_ids) > max(train_ids)  # the end of the text, as one cut
    stream = c.long.ravel()
    text = stream[stream != 0]
    assert (np.diff(text) == 1).sum() >= len(text) - 2 * len(docs)  # in order: consecutive ids run on
    cuts = np.flatnonzero(c.train["tokens"].ravel() == 0)
    assert np.diff(cuts).max() <= 8  # the students' documents: at most max_doc_len tokens with the separator


def test_students_get_shuffled_short_documents_and_the_teacher_whole_ones(tmp_path):
    data = write_corpus(tmp_path / "corpus.txt")
    first = {}
    for phase in ("teacher", "1"):
        args = config.resolve(config.build_parser().parse_args(["--phase", phase, "--data", data] + TINY))
        task = make_task(args)
        task.prepare(args)
        c = task.corpus
        first[phase] = c.train["tokens"][0]
        docs = np.diff(np.flatnonzero(c.train["tokens"].ravel() == 0))
        assert docs.max() <= args.max_doc_len
    text = open(data).read().split("\n\n")[0].encode()
    assert bytes((first["teacher"][1:] - 1).astype(np.uint8)).startswith(text[:40])  # the teacher's first window: the text in order
    assert not bytes((first["1"][first["1"] > 0] - 1).astype(np.uint8)).startswith(text[:40])  # shuffled chunks


def test_the_losses_average_each_bucket():
    b = lr.bucket_losses(torch.arange(64.0)[None].repeat(3, 1), [0, 8, 16, 32, 64])
    assert b == {"0-7": 3.5, "8-15": 11.5, "16-31": 23.5, "32-63": 47.5}


class Oracle(torch.nn.Module):
    """Logits that put all mass on the true next token of the prompt + answer (shifted by `miss`)."""

    def __init__(self, prompts, vocab, miss=0):
        super().__init__()
        self.rows, self.vocab, self.miss = [torch.tensor(p + a) for _, p, a in prompts], vocab, miss

    def forward(self, x, position_ids=None, doc_ids=None):
        row = next(r for r in self.rows if len(r) == x.shape[1] + 1 and torch.equal(r[:-1], x[0]))
        return F.one_hot((row[1:] + self.miss) % self.vocab, self.vocab).float()[None] * 50


def test_passkey_prompts_fill_the_window_and_are_scored_on_every_answer_token():
    filler = np.arange(1, 500) % 200 + 1
    window = 128
    ds = lr.passkey_distances(byte_ids, window)
    prompts = lr.passkey_prompts(byte_ids, filler, window, ds, trials=2)
    assert len(prompts) == 2 * len(ds) and ds[-1] > 60
    for d, prompt, answer in prompts:
        text = bytes((np.array(prompt) - 1).astype(np.uint8))
        key = bytes((np.array(answer) - 1).astype(np.uint8)).strip()
        needle = text.index(b"The pass key is " + key)
        assert len(prompt) + len(answer) == window and text.endswith(b" The pass key is")
        assert len(prompt) - len(byte_ids(" The pass key is")) - (needle + len(f"The pass key is {key.decode()}. ")) == d
    assert lr.passkey_accuracy(Oracle(prompts, 300), prompts, "cpu", distances=ds) == {str(d): 1.0 for d in ds}
    assert lr.passkey_accuracy(Oracle(prompts, 300, miss=1), prompts, "cpu", distances=ds) == {str(d): 0.0 for d in ds}
    assert lr.passkey_distances(byte_ids, 40) == []  # the window cannot hold the passkey's words


def tiny_teacher(vocab=40):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, n_layer=1, n_head=2, n_kv_head=2, d_model=16, max_seq_len=64)).eval()


def test_the_cached_teacher_answers_each_row_by_its_tokens(tmp_path):
    windows = torch.randint(1, 40, (5, 17), generator=torch.Generator().manual_seed(0))
    teacher = tiny_teacher()
    ids, logp = lt.cached_teacher_topk(teacher, windows, 4, str(tmp_path / "c"), "k", "cpu")
    cached = lt.CachedTopK(windows.numpy(), ids, logp)
    top = cached(windows[[3, 0], :-1])
    assert isinstance(top, TopK) and torch.equal(top.ids, ids[[3, 0]]) and torch.equal(top.logp, logp[[3, 0]])
    with pytest.raises(RuntimeError, match="no cache"):
        cached(windows[:1, :-1] + 1)


def old_realtext_loss(model, x, y, top_ids, top_logp, kd_weight):
    """The loss of research/realtext.py's own loop before it trained through train.py (kept here verbatim)."""
    logp = F.log_softmax(model(x).float(), -1)  # (B, T, V)
    ce = F.nll_loss(logp.flatten(0, 1), y.flatten())
    kl = topk_forward_kl(logp, top_ids, top_logp).mean()
    return ce if kd_weight == 0 else (1 - kd_weight) * ce + kd_weight * kl


@pytest.mark.parametrize("kd_weight", [0.5, 1.0])
def test_train_loops_top_k_kd_equals_the_old_realtext_loss(tmp_path, kd_weight):
    """The same student, batch and cached top-k: train.py's training_loss with --teacher-topk (the loss hook of
    python -m variants) gives the old real-text loop's loss and gradient."""
    windows = torch.randint(1, 40, (4, 33), generator=torch.Generator().manual_seed(1))
    ids, logp = lt.cached_teacher_topk(tiny_teacher(), windows, 5, str(tmp_path / "c"), "k", "cpu")
    opts, rest = variants.parse(
        ["--phase", "1", "--data", "x.bin", "--eot-id", "0", "--teacher-topk", "5", "--kd-weight", f"{kd_weight:g}", "--window", "32",
         "--vocab-size", "40"] + TINY)
    lab = variants.Variants(opts)
    args = config.resolve(config.build_parser().parse_args(rest), lab)
    torch.manual_seed(1)  # not the teacher's init
    student = GPT(GPTConfig(vocab_size=40, n_layer=1, n_head=2, n_kv_head=2, d_model=16, max_seq_len=32))
    idx = torch.tensor([2, 0])
    x, y = windows[idx, :-1], windows[idx, 1:]
    pos, doc = torch.arange(32).expand(2, 32), torch.zeros(2, 32, dtype=torch.long)
    batch = (x, y, pos, doc, torch.zeros_like(y, dtype=torch.bool))
    new = lab.loss(student, lt.CachedTopK(windows.numpy(), ids, logp), batch, args, nullcontext())[0]
    new_grad = torch.autograd.grad(new, list(student.parameters()))
    old = old_realtext_loss(student, x, y, ids[idx], logp[idx], kd_weight)
    old_grad = torch.autograd.grad(old, list(student.parameters()))
    assert new.item() == pytest.approx(old.item(), rel=1e-6) and new.item() > 0
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(new_grad, old_grad))


def topk_setup(out_dir, windows=4, length=32):
    """(student, the cached top-5 teacher of a tiny teacher, a batch (x, y, pos, doc, ans) of `windows` training
    windows of `length` tokens at a vocabulary of 40)."""
    tokens = torch.randint(1, 40, (windows, length + 1), generator=torch.Generator().manual_seed(1))
    ids, logp = lt.cached_teacher_topk(tiny_teacher(), tokens, 5, os.path.join(out_dir, "c"), "k", "cpu")
    torch.manual_seed(1)  # not the teacher's init
    student = GPT(GPTConfig(vocab_size=40, n_layer=1, n_head=2, n_kv_head=2, d_model=16, max_seq_len=length))
    pos = torch.arange(length).expand(windows, length)
    doc = torch.zeros(windows, length, dtype=torch.long)
    batch = (tokens[:, :-1], tokens[:, 1:], pos, doc, torch.zeros(windows, length, dtype=torch.bool))
    return student, lt.CachedTopK(tokens.numpy(), ids, logp), batch


def topk_text_lab(*flags):
    """(resolved args, lab) of python -m variants --teacher-topk 5 on a .bin text, phase 1 (0.5 CE + 0.5 KD)."""
    opts, rest = variants.parse(["--phase", "1", "--data", "x.bin", "--eot-id", "0", "--teacher-topk", "5", "--window",
                                 "32", "--vocab-size", "40", "--grad-clip", "0", *flags] + TINY)
    lab = variants.Variants(opts)
    return config.resolve(config.build_parser().parse_args(rest), lab), lab


def topk_arm_lab(arm, *flags):
    """(resolved args, lab) of phase 2's `arm` whose KD term is the cached teacher's top-k, as python -m variants
    --teacher-topk builds it. No run combines the two (--teacher-topk needs --data, which the masked arms refuse):
    the loss itself, on windows that keep different numbers of tokens, is what is tested."""
    opts, rest = variants.parse(["--phase", "2", "--arm", arm, "--grad-clip", "0", *flags] + TINY)
    args = config.resolve(config.build_parser().parse_args(rest), variants.Variants(opts))
    opts.teacher_topk = 5
    lab = variants.Variants(opts)
    lab.configure(args)
    return args, lab


def step_gradients(student, teacher, batch, args, lab):
    """((loss, ce, kl) of one train.train_step, the student's gradients after it), the weights left as they were."""
    student.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(student.parameters(), lr=0.0)  # the gradients stay to be read
    loss, ce, kl, _ = train.train_step(student, teacher, opt, batch, args, nullcontext(), lab)
    grads = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    return (loss, ce, kl), grads


def uneven_far_back(batch):
    """The batch with a far-back mask (its sixth tensor) under which each window keeps another number of tokens."""
    far = torch.zeros(batch[1].shape, dtype=torch.bool)
    for row, masked in enumerate((24, 3, 11, 0)[:len(far)]):
        far[row, :masked] = True
    return (*batch[:5], far)


@pytest.mark.parametrize("grad_accum", [2, 4])
def test_top_k_kd_over_micro_batches_is_the_whole_batch_loss(tmp_path, grad_accum):
    """--grad-accum 2 and 4 with --teacher-topk: the loss, CE, KL and gradients of the one batch; also for a masked
    arm's top-k KD term on windows that keep different numbers of tokens (each micro-batch's sum over the global
    count, not its own mean)."""
    student, teacher, batch = topk_setup(str(tmp_path))
    masked = uneven_far_back(batch)
    for args_lab, windows in ((topk_text_lab, batch), (lambda *f: topk_arm_lab("kd-masked", *f), masked)):
        one, lab = args_lab()
        whole, g_whole = step_gradients(student, teacher, windows, one, lab)
        accum, lab = args_lab("--grad-accum", str(grad_accum))
        got, g_got = step_gradients(student, teacher, windows, accum, lab)
        assert got == pytest.approx(whole, rel=1e-5) and whole[2] > 0, (got, whole)
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g_got, g_whole))


def hf_teacher(tmp_path):
    from formats import hf
    from test_tokenizer import make
    tok = make()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(tok), n_layer=1, n_head=2, n_kv_head=2, d_model=16, d_ff=32))
    folder = str(tmp_path / "hf")
    hf.save_hf_folder(model, folder, tok.files())
    return folder


def test_teacher_topk_caches_the_teacher_once_per_text(tmp_path, monkeypatch):
    """python -m variants --teacher-topk: the cache is written, read by the next run on the same text, and recomputed
    on edited text; the top-k KL it trains on is logged and >= 0."""
    folder = hf_teacher(tmp_path)
    data = tmp_path / "corpus.txt"
    data.write_text("\n\n".join("the and then " * (i % 5 + 1) for i in range(200)))
    out = str(tmp_path / "out")
    argv = ["--phase", "1", "--out-dir", out, "--data", str(data), "--tokenizer", folder, "--teacher", folder,
            "--teacher-topk", "4", "--steps", "3", "--overwrite"] + TINY
    calls = []
    real = lt.teacher_topk
    monkeypatch.setattr(lt, "teacher_topk", lambda logits, k: calls.append(1) or real(logits, k))
    variants.main(argv)
    caches = [f for f in os.listdir(out) if f.startswith("teacher-top4-")]
    assert len(caches) == 1 and calls
    log = [json.loads(line) for line in open(os.path.join(out, "corpus-hf-phase1-b10000-top4.jsonl"))]
    assert all(r["kl"] >= 0 for r in log if "kl" in r)
    calls.clear()
    variants.main(argv)
    assert not calls  # the same text: read from the cache
    data.write_text(data.read_text() + "\n\nthe end")
    variants.main(argv)
    assert calls and len([f for f in os.listdir(out) if f.startswith("teacher-top4-")]) == 2  # edited: again


@pytest.mark.parametrize("flags, phrase", [
    (["--teacher-topk", "-1"], "--teacher-topk must be >= 0"),
    (["--teacher-topk", "4", "--data", ""], "needs --data"),
    (["--teacher-topk", "4", "--temperature", "2"], "temperature 1"),
    (["--teacher-topk", "4", "--kd-loss", "reverse"], "--kd-loss forward"),
    (["--teacher-topk", "300"], "larger than the vocabulary of 257"),
])
def test_bad_teacher_topk_is_one_error_line_and_writes_nothing(tmp_path, capsys, flags, phrase):
    data = write_corpus(tmp_path / "corpus.txt")
    argv = ["--phase", "1", "--data", data, "--out-dir", str(tmp_path / "out")] + TINY + flags
    with pytest.raises(SystemExit) as e:
        variants.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and phrase in err[0], err
    assert not (tmp_path / "out").exists()


def test_own_text_end_to_end_from_a_fresh_clone(tmp_path, capsys):
    """python train.py --phase 2 --data corpus.txt: a teacher and a phase-1 student of that text are trained first,
    named by it (never the shipped ones, whose vocabulary is the synthetic language's), and the run ends with the
    held-out report of the KD student, its CE twin and the teacher; on the run's held-out text each of them has a
    loss by distance and a passkey score (longctx/report.py), which research/realtext.py's tables print."""
    data = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "out"
    train.main(["--phase", "2", "--data", data, "--out-dir", str(out)] + TINY)
    files = sorted(os.listdir(out))
    assert {"corpus-teacher.pt", "corpus-phase1-b10000.pt", "corpus-phase2-kd-b10000-b500000.pt",
            "corpus-phase2-ce-b10000-b500000.pt"} <= set(files)
    assert not [f for f in files if f.startswith(("teacher", "phase"))]  # nothing that could be taken for shipped
    printed = capsys.readouterr()
    assert "[auto] no teacher checkpoint at" in printed.out and "corpus-teacher.pt" in printed.out
    assert "corpus-teacher main" in printed.err  # its progress bar
    kd = json.load(open(out / "corpus-phase2-kd-b10000-b500000.json"))["results"]
    ce = json.load(open(out / "corpus-phase2-ce-b10000-b500000.json"))["results"]
    rows = {**kd, **ce}
    assert {"corpus-phase2-kd-b10000-b500000", "corpus-phase2-ce-b10000-b500000", "teacher"} <= set(rows)
    assert all(r["corpus_ce"] > 0 for r in rows.values()) and "cross-entropy" in printed.out
    args = config.resolve(config.build_parser().parse_args(["--phase", "2", "--data", data, "--out-dir", str(out)]
                                                           + TINY))
    task = make_task(args)
    task.prepare(args)
    long = task.corpus.long  # the held-out text in order
    stream = long.ravel()
    distances = lr.passkey_distances(byte_ids, args.window)
    prompts = lr.passkey_prompts(byte_ids, stream[stream != task.sep], args.window, distances, seed=args.seed)
    edges = [0, 8, 16, 32, 64]  # doubling up to the window
    long_rows = {}
    for label, name in (("KD student", "corpus-phase2-kd-b10000-b500000"),
                        ("CE student", "corpus-phase2-ce-b10000-b500000"), ("teacher", "corpus-teacher")):
        model, _ = load_model(str(out / f"{name}.pt"), "cpu")
        losses = token_losses(model, long[:lr.LONG_WINDOWS], "cpu", nullcontext())
        long_rows[label] = {"buckets": lr.bucket_losses(losses, edges),
                            "passkey": lr.passkey_accuracy(model, prompts, "cpu", distances=distances)}
    for name, r in long_rows.items():
        assert list(r["buckets"]) == ["0-7", "8-15", "16-31", "32-63"] and all(v > 0 for v in r["buckets"].values())
        assert r["passkey"] and all(v is None or 0 <= v <= 1 for v in r["passkey"].values()), name
    from research import realtext
    realtext.print_tables(long_rows, {"window": args.window, "passkey_distances": distances,
                                      "passkey_trials": lr.PASSKEY_TRIALS}, len(long[:lr.LONG_WINDOWS]), {})
    printed = capsys.readouterr()
    assert "loss (nats) by position" in printed.out and "| CE student |" in printed.out and "Passkey" in printed.out


def test_own_text_never_finds_the_shipped_checkpoints(tmp_path, capsys):
    """The default preset finds the shipped teacher and phase-1 student for the synthetic language; with --data it
    looks for that text's own (out/corpus-teacher.pt), so a run on text no longer stops on the shipped teacher's
    vocabulary of 193 against the text's 257."""
    data = write_corpus(tmp_path / "corpus.txt")
    out = str(tmp_path / "out")
    lab = train.Lab()
    synthetic = config.resolve(config.build_parser().parse_args(["--phase", "2", "--out-dir", out]), lab)
    assert config.teacher_path(synthetic, lab) == os.path.join(config.SHIPPED, "teacher.pt")
    text = config.resolve(config.build_parser().parse_args(["--phase", "2", "--out-dir", out, "--data", data]), lab)
    assert config.teacher_path(text, lab) is None and config.phase1_path(text, lab) is None
    with pytest.raises(SystemExit) as e:
        train.main(["--phase", "2", "--out-dir", out, "--data", data, "--no-auto", "--threads", "1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: no teacher checkpoint at") and "corpus-teacher.pt" in err


def test_a_passkey_is_missing_where_the_window_cannot_hold_it():
    """No distance for a window of 32 tokens (it cannot hold the passkey's words); a distance asked for that no
    prompt fits scores None, beside the one that does."""
    assert lr.passkey_distances(byte_ids, 32) == []
    filler = np.arange(1, 500) % 200 + 1
    prompts = lr.passkey_prompts(byte_ids, filler, 64, [8, 60], trials=2)  # 60: more than the window holds
    assert {d for d, _, _ in prompts} == {8}
    assert lr.passkey_accuracy(Oracle(prompts, 300), prompts, "cpu", distances=[8, 60]) == {"8": 1.0, "60": None}


def test_a_retrained_checkpoint_teacher_gets_another_cache_key(tmp_path):
    """A .pt teacher (not a folder) is known by its file's size and time too: retrained in place, a new key."""
    path = tmp_path / "corpus-teacher.pt"
    path.write_bytes(b"x" * 10)
    teacher, w = tiny_teacher(), torch.arange(34).reshape(2, 17)
    key = lt.cache_key(str(path), teacher, "cpu", 4, w)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert lt.cache_key(str(path), teacher, "cpu", 4, w) != key


def test_the_cache_key_keeps_the_device_type_and_dtype_but_not_the_ranks_device_index(tmp_path):
    """cuda:0 and cuda:1 (two ranks of one job) name one cache; another device type, dtype, teacher, k or windows
    names another."""
    path = tmp_path / "corpus-teacher.pt"
    path.write_bytes(b"x" * 10)
    teacher, w = tiny_teacher(), torch.arange(34).reshape(2, 17)
    key = lt.cache_key(str(path), teacher, torch.device("cuda:0"), 4, w)
    assert lt.cache_key(str(path), teacher, torch.device("cuda:1"), 4, w) == key
    assert lt.cache_key(str(path), teacher, "cuda", 4, w) == key
    other = tmp_path / "other-teacher.pt"
    other.write_bytes(b"x" * 10)
    others = [lt.cache_key(str(path), teacher, torch.device("cpu"), 4, w),
              lt.cache_key(str(path), tiny_teacher().to(torch.bfloat16), torch.device("cuda:0"), 4, w),
              lt.cache_key(str(other), teacher, torch.device("cuda:0"), 4, w),
              lt.cache_key(str(path), teacher, torch.device("cuda:0"), 5, w),
              lt.cache_key(str(path), teacher, torch.device("cuda:0"), 4, w + 1)]
    assert len({key, *others}) == 6


def test_the_top_k_loss_in_chunks_is_the_same_value_and_gradient():
    """topk_kd_loss in chunks of 7 tokens (ChunkedDivergence: one chunk of float32 log-probabilities at a time) gives
    the unchunked loss and gradient, with a mask and with a global count, in float32 and from bf16 logits."""
    torch.manual_seed(0)
    V, k = 50, 6
    teacher = torch.randn(3, 20, V) * 3
    top = TopK(*reversed(torch.topk(F.log_softmax(teacher, -1), k, dim=-1)))
    mask = torch.rand(3, 20) < 0.7
    for dtype in (torch.float32, torch.bfloat16):
        for kept, total in ((None, None), (mask, None), (mask, 100.0)):
            student = (torch.randn(3, 20, V) * 2).to(dtype).requires_grad_()
            plain = lt.topk_kd_loss(student, top, kept, 1.0, total)[0]
            (g_plain,) = torch.autograd.grad(plain, student)
            chunked = lt.topk_kd_loss(student, top, kept, 1.0, total, chunk_size=7)[0]
            (g_chunked,) = torch.autograd.grad(chunked, student)
            assert chunked.item() == pytest.approx(plain.item(), rel=1e-6) and plain.item() > 0
            assert g_chunked.dtype == dtype and torch.allclose(g_chunked.float(), g_plain.float(), rtol=1e-5,
                                                               atol=1e-7)


def test_the_top_k_term_goes_in_chunks_above_the_size_the_chunked_losses_use(tmp_path, monkeypatch):
    """python -m variants --teacher-topk: below variants.chunked.CHUNK_ABOVE floats of logits the top-k KD term runs
    whole; above it, like the CE, in chunks of --kd-chunk tokens, to the same loss."""
    from variants import chunked
    student, teacher, batch = topk_setup(str(tmp_path))
    args, lab = topk_text_lab()
    calls = []
    apply = chunked.ChunkedDivergence.apply
    monkeypatch.setattr(chunked.ChunkedDivergence, "apply", lambda *a: calls.append(a[3]) or apply(*a))
    whole = lab.loss(student, teacher, batch, args, nullcontext())
    assert calls == []
    monkeypatch.setattr(chunked, "CHUNK_ABOVE", 0)  # as for a real vocabulary on long windows
    got = lab.loss(student, teacher, batch, args, nullcontext())
    assert len(calls) == 2 and calls[1] is lt.topk_divergence  # the CE, then the top-k KD term
    assert [c.item() for c in got[:3]] == pytest.approx([w.item() for w in whole[:3]], rel=1e-6)


def test_top_k_runs_and_the_phase_1_students_they_start_from_are_named_apart(tmp_path, capsys):
    """--teacher-topk K adds -topK to a KD run's name and to the phase-1 student phase 2 starts from, so neither is
    taken for a full-logit run's; the CE twin of a top-k KD student starts from the same top-k phase-1 student, named
    apart from a full-logit run's twin; --resume of a full-logit run does not continue a top-k checkpoint."""
    data = write_corpus(tmp_path / "corpus.txt")
    out = str(tmp_path / "out")

    def resolved(*flags):
        opts, rest = variants.parse(["--data", data, "--out-dir", out, *flags] + TINY)
        lab = variants.Variants(opts)
        return config.resolve(config.build_parser().parse_args(rest), lab), lab, rest
    names = {}
    for topk in ([], ["--teacher-topk", "4"]):
        phase1, _, _ = resolved("--phase", "1", *topk)
        kd, lab, rest = resolved("--phase", "2", *topk)
        twin = train.plan_twin(kd, rest, lab)
        names[bool(topk)] = {"phase 1": phase1.run_name, "kd": kd.run_name, "kd from": config.phase1_file(kd, lab),
                             "twin": twin.name, "twin from": config.phase1_file(twin.args, lab.twin()[0])}
    assert names[False] == {"phase 1": "corpus-phase1-b10000", "kd": "corpus-phase2-kd-b10000-b500000",
                            "kd from": "corpus-phase1-b10000.pt", "twin": "corpus-phase2-ce-b10000-b500000",
                            "twin from": "corpus-phase1-b10000.pt"}
    assert names[True] == {"phase 1": "corpus-phase1-b10000-top4", "kd": "corpus-phase2-kd-b10000-b500000-top4",
                           "kd from": "corpus-phase1-b10000-top4.pt", "twin": "corpus-phase2-ce-b10000-b500000-top4",
                           "twin from": "corpus-phase1-b10000-top4.pt"}
    assert resolved("--phase", "1", "--teacher-topk", "4", "--kd-weight", "0")[0].run_name == "corpus-phase1-b10000"
    os.makedirs(out)
    open(os.path.join(out, names[True]["kd"] + ".pt"), "wb").close()  # a top-k run's checkpoint
    with pytest.raises(SystemExit):
        config.previous_checkpoint(resolved("--phase", "2", "--resume")[0])
    assert "--resume: no checkpoint at" in capsys.readouterr().err
