"""research/realtext.py: data, passkey prompts, the teacher cache (longctx/topk.py), scoring, students trained in
train.py's loop, and a tiny end-to-end run whose results.json has the schema of docs/realtext/results.json."""
import json
import os

import numpy as np
import pytest
import torch

from formats import hf
from longctx import topk
from data import Corpus
from evaluate import TextTask
from research import realtext
from model import GPT, GPTConfig
from formats.tokenizer import Tokenizer
from schema import assert_committed_schema
from test_tokenizer import make

WORDS = "the and then thee thou art a king of fools and the sea is calm tonight my lord".split()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny HF folder with the byte-level tokenizer of test_tokenizer.py."""
    tok = make(split_digits=True)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(tok), n_layer=1, n_head=2, n_kv_head=2, d_model=16, d_ff=32, max_seq_len=64))
    folder = str(tmp_path_factory.mktemp("teacher") / "hf")
    hf.save_hf_folder(model, folder, tok.files())
    return folder


@pytest.fixture(scope="module")
def plays_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("plays")
    rng = np.random.default_rng(0)
    for sub, name in [("tragedies", "hamlet"), ("tragedies", "macbeth"), ("comedies", "a"), ("comedies", "b")]:
        os.makedirs(root / sub, exist_ok=True)
        (root / sub / f"{name}.md").write_text(f"# {name}\n\n" + " ".join(rng.choice(WORDS, 600)) + "\n")
    return str(root)


def test_training_windows_pack_short_documents_behind_the_separator():
    tok = make()
    plays = {"x": np.arange(300) % 200 + 1, "y": np.arange(500) % 150 + 1}
    p = dict(realtext.PRESETS["tiny"], train_windows=5)
    w = realtext.training_windows(plays, tok, p, seed=0)
    assert w.shape == (5, 65)
    flat = w.flatten().numpy()
    cuts = np.flatnonzero(flat == tok.eos_id)
    assert len(cuts) > 10 and np.diff(cuts).max() <= p["max_doc_len"]  # every document is short


def test_passkey_prompt_states_the_key_then_asks_after_d_filler_tokens():
    tok = make(split_digits=True)
    for d, prompt, answer in realtext.passkey_prompts(tok, [10, 37], trials=2):
        text = tok.decode(prompt)
        key = tok.decode(answer).strip()
        assert len(key) == 5 and text.count(key) == 2 and text.endswith("The pass key is")
        needle_end = len(tok.encode(realtext.PASSKEY_INTRO + f"The pass key is {key}. Remember it. {key} is the pass key.\n"))
        question = len(tok.encode("\nWhat is the pass key? The pass key is"))
        assert len(prompt) - needle_end - question == d


class Oracle(torch.nn.Module):
    """Logits that put all mass on the true next token of `ids` (shifted by `miss` when asked to fail)."""

    def __init__(self, ids, vocab, miss=0):
        super().__init__()
        self.ids, self.vocab, self.miss = ids, vocab, miss

    def forward(self, x, position_ids=None, doc_ids=None):
        nxt = self.ids[0, 1:x.shape[1] + 1]
        return torch.nn.functional.one_hot((nxt + self.miss) % self.vocab, self.vocab).float()[None] * 50


def test_passkey_scoring_and_position_buckets():
    tok = make(split_digits=True)
    d, prompt, answer = realtext.passkey_prompts(tok, [12], trials=1)[0]
    ids = torch.tensor([prompt + answer])
    assert realtext.passkey_accuracy(Oracle(ids, len(tok)), [(d, prompt, answer)], "cpu") == {"12": 1.0}
    assert realtext.passkey_accuracy(Oracle(ids, len(tok), miss=1), [(d, prompt, answer)], "cpu") == {"12": 0.0}
    losses = torch.arange(600.0)[None].repeat(2, 1)
    b = realtext.bucket_losses(losses, realtext.BUCKETS)
    assert list(b) == ["0-127", "128-511", "512-599"] and b["0-127"] == 63.5 and b["512-599"] == 555.5


def test_teacher_cache_is_reused_only_for_the_same_key(tmp_path):
    torch.manual_seed(0)
    teacher = GPT(GPTConfig(vocab_size=30, n_layer=1, n_head=2, n_kv_head=2, d_model=16)).eval()
    windows = torch.randint(0, 30, (3, 17))
    path = str(tmp_path / "cache.safetensors")
    ids, logp = topk.cached_teacher_topk(teacher, windows, 4, path, "a", "cpu")
    assert ids.shape == logp.shape == (3, 16, 4)

    def broken(x):
        raise AssertionError("the cache should have been used")
    again = topk.cached_teacher_topk(broken, windows, 4, path, "a", "cpu")
    assert torch.equal(again[0], ids) and torch.equal(again[1], logp)
    with pytest.raises(AssertionError, match="cache should"):
        topk.cached_teacher_topk(broken, windows, 4, path, "b", "cpu")


def test_tiny_run_trains_both_students_and_reports_every_model(teacher_dir, plays_dir, tmp_path):
    out = str(tmp_path / "rt")
    results = realtext.main(["run", "--teacher", teacher_dir, "--plays", plays_dir, "--out", out, "--preset", "tiny",
                             "--device", "cpu"])
    assert list(results) == ["teacher", "KD student", "CE student"]
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["results"]["KD student"]["buckets"] != saved["results"]["CE student"]["buckets"]  # the loss differs
    assert set(saved["results"]["teacher"]["passkey"]) == {"8", "20"}
    assert 0 < saved["teacher_topk_coverage"] <= 1 and saved["machine"]["torch"] == torch.__version__
    assert [h["step"] for h in saved["train_log"]["KD student"]] == [0, 2]
    assert_committed_schema("research.realtext run", os.path.join(out, "results.json"))


@pytest.mark.parametrize("case", ["no_plays", "no_tokenizer", "not_a_model"])
def test_bad_input_is_one_error_line_and_exit_2(teacher_dir, plays_dir, tmp_path, capsys, case):
    bare = tmp_path / "bare"
    bare.mkdir()
    if case == "no_tokenizer":  # a model folder without vocab.json / merges.txt
        model, _ = hf.load_hf_folder(teacher_dir)
        hf.save_hf_folder(model, str(tmp_path / "notok"))
    teacher = {"no_plays": teacher_dir, "no_tokenizer": str(tmp_path / "notok"), "not_a_model": str(bare)}[case]
    plays = str(bare) if case == "no_plays" else plays_dir
    out = tmp_path / "rt"
    with pytest.raises(SystemExit) as e:
        realtext.main(["run", "--teacher", teacher, "--plays", plays, "--out", str(out), "--preset", "tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and not out.exists()


class NextTokenOracle(torch.nn.Module):
    """A 'teacher' that knows each window: its logits put most mass on the true next token."""

    def __init__(self, windows, vocab):
        super().__init__()
        self.windows, self.vocab = windows, vocab

    def forward(self, x):
        row = next(i for i, w in enumerate(self.windows) if torch.equal(w[:x.shape[1]], x[0]))
        nxt = self.windows[row, 1:x.shape[1] + 1]
        return torch.nn.functional.one_hot(nxt, self.vocab).float()[None] * 20 + torch.linspace(0, 1, self.vocab)


def test_the_teacher_cache_lines_up_token_for_token_with_the_text(tmp_path):
    """Position i of the cache is the teacher's prediction of token i + 1 of the window, the student's target there."""
    windows = torch.randint(0, 30, (3, 17), generator=torch.Generator().manual_seed(0))
    ids, logp = topk.cached_teacher_topk(NextTokenOracle(windows, 30), windows, 3, str(tmp_path / "c"), "k", "cpu")
    assert torch.equal(ids[..., 0], windows[:, 1:])  # top-1 = the next token, at every position
    assert (logp[..., 0] > -1e-6).all()


class BigramTeacher(torch.nn.Module):
    """Logits that depend on the current token only: next = (current + 1) mod V, with some spread."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, x):
        return torch.nn.functional.one_hot((x + 1) % self.vocab, self.vocab).float() * 6


def teacher_kl(student, teacher, windows):
    """Mean forward KL(teacher || student) over every position of the windows, aligned (no cache)."""
    from distill import forward_kl
    with torch.no_grad():
        x = windows[:, :-1]
        return forward_kl(student(x).flatten(0, 1).float(), teacher(x).flatten(0, 1)).mean().item()


def test_the_kd_student_moves_toward_the_teacher(teacher_dir, tmp_path):
    """KD alone (kd_weight 1) on the cached top-k, in train.py's loop: the student's full KL to the teacher ends
    below a third of its top-k KL at step 0 (which is never above the full one). A flipped KD sign or a cache
    shifted by one token (targets unpredictable from the text) does not."""
    from argparse import Namespace
    tok = Tokenizer.from_folder(teacher_dir)
    V, out = len(tok), str(tmp_path / "out")
    windows = torch.randint(0, V, (8, 33), generator=torch.Generator().manual_seed(1))
    teacher = BigramTeacher(V)
    key = topk.cache_key(teacher_dir, hf.load_hf_folder(teacher_dir)[0], torch.device("cpu"), 4, windows)
    os.makedirs(out)
    topk.cached_teacher_topk(teacher, windows, 4, topk.cache_path(out, 4, key), key, "cpu")  # the bigram's top-4
    p = dict(realtext.PRESETS["tiny"], steps=60, batch_size=4, lr=1e-2, warmup=1, window=32, d_model=32, d_ff=64)
    args = Namespace(seed=0, threads=1, device="cpu", preset="tiny", plays=str(tmp_path), teacher=teacher_dir, out=out)
    eos = tok.eos_id
    task = TextTask(args.plays, tok.encode, eos, V)
    task.corpus = Corpus(realtext.as_windows(windows, eos), realtext.as_windows(windows[:1], eos), windows[:1].numpy())
    student, history = realtext.train_student(args, p, task, 1.0, "KD student", V, 10000.0)
    after = teacher_kl(student, teacher, windows)
    kls = [kl for _, _, kl in history]
    assert after < kls[0] / 3, (kls[0], after)
    assert kls[-1] < kls[0] and min(kls) >= 0 and [s for s, _, _ in history] == [0, 25, 50, 59]
    assert len([f for f in os.listdir(out) if f.startswith("teacher-top4-")]) == 1  # train.py read the bigram's


def test_the_cache_key_names_the_device_the_dtype_and_the_teachers_files(teacher_dir):
    model, _ = hf.load_hf_folder(teacher_dir)
    w = torch.arange(130).reshape(2, 65)
    key = topk.cache_key(teacher_dir, model, "cpu", 4, w)
    assert key == topk.cache_key(teacher_dir, model, "cpu", 4, w.clone())
    assert key != topk.cache_key(teacher_dir, model, "cuda", 4, w)
    assert key != topk.cache_key(teacher_dir, model.to(torch.bfloat16), "cpu", 4, w)
    model.float()
    edited = w.clone()
    edited[1, 7] += 1  # one token of the text changed, every setting the same
    assert key != topk.cache_key(teacher_dir, model, "cpu", 4, edited)
    weights = os.path.join(teacher_dir, hf.WEIGHTS)
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # the same path, another file
    try:
        assert key != topk.cache_key(teacher_dir, model, "cpu", 4, w)
    finally:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_cache_is_written_atomically(tmp_path, monkeypatch):
    """A failure while writing leaves the previous cache as it was and no temporary file."""
    import safetensors.torch
    torch.manual_seed(0)
    teacher = GPT(GPTConfig(vocab_size=30, n_layer=1, n_head=2, n_kv_head=2, d_model=16)).eval()
    windows = torch.randint(0, 30, (2, 9))
    path = tmp_path / "cache.safetensors"
    topk.cached_teacher_topk(teacher, windows, 4, str(path), "a", "cpu")
    old = path.read_bytes()
    real_save = safetensors.torch.save_file

    def dies_halfway(tensors, p, metadata=None):
        real_save(tensors, p, metadata=metadata)
        open(p, "r+b").truncate(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        topk.cached_teacher_topk(teacher, windows, 4, str(path), "b", "cpu")
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["cache.safetensors"]


def test_check_with_gguf_runs_the_llama_cpp_layout_model_on_the_chosen_device(teacher_dir, monkeypatch):
    """A fake-device check (no GPU here): the GGUF model is moved with .to(--device) before it is scored."""
    moved = []

    class Spy(GPT):
        def to(self, *args, **kwargs):
            moved.append(args[0] if args else kwargs.get("device"))
            return super().to(*args, **kwargs)

    model, _ = hf.load_hf_folder(teacher_dir)
    spy = Spy(model.config)
    spy.load_state_dict(model.state_dict())
    monkeypatch.setattr(realtext, "load_gguf", lambda path, unpermute: (spy, None))
    out = realtext.main(["check", "--model", teacher_dir, "--gguf", "any.gguf", "--device", "cpu"])
    assert [str(d) for d in moved] == ["cpu"] and out["paragraph_loss_llama_cpp_layout"] > 0


def test_the_real_models_page_says_what_its_results_json_holds():
    """docs/real-models.md quotes the Shakespeare run: its tables and the teacher's top-k coverage must be the
    ones in docs/realtext/results.json, that run's own output."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(realtext.__file__)))
    page = open(os.path.join(root, "docs", "real-models.md"), encoding="utf-8").read()
    saved = json.load(open(os.path.join(root, "docs", "realtext", "results.json")))
    for name, r in saved["results"].items():
        label = "teacher (SmolLM2-135M)" if name == "teacher" else name
        assert f"| {label} | " + " | ".join(f"{v:.3f}" for v in r["buckets"].values()) + " |" in page, name
        assert f"| {label} | " + " | ".join(f"{v:.2f}" for v in r["passkey"].values()) + " |" in page, name
    assert f"{saved['teacher_topk_coverage']:.3f} of its probability mass" in page
    assert f"{saved['settings']['steps']} steps" in page and saved["settings"]["topk"] == 32


def test_edited_plays_recompute_the_teacher_cache(teacher_dir, plays_dir, tmp_path, monkeypatch):
    """A second run into the same folder on edited text (same teacher, settings and seed) computes the teacher's
    top-k again instead of reusing targets computed on the old text; on the same text it reuses them."""
    import shutil
    plays = str(tmp_path / "plays")
    shutil.copytree(plays_dir, plays)
    out = str(tmp_path / "rt")
    argv = ["run", "--teacher", teacher_dir, "--plays", plays, "--out", out, "--preset", "tiny", "--device", "cpu"]
    realtext.main(argv)
    calls = []
    real = topk.teacher_topk
    monkeypatch.setattr(topk, "teacher_topk", lambda logits, k: calls.append(1) or real(logits, k))
    realtext.main(argv)
    assert calls == []  # the same text: the cache is used
    with open(os.path.join(plays, "comedies", "a.md"), "a") as f:
        f.write("a new line of text at the end of the play\n")
    realtext.main(argv)
    assert calls  # edited text: the teacher ran again
