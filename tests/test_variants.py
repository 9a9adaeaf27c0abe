"""python -m variants (variants/train.py) on the tiny preset: phase 2's arms and their losses, other divergences,
RoPE scaling and jitter, the window ramp, extra queries, other schedules, phase 1's optimizer moments, a real
teacher in its own tokens, and the run names and twins of these variants."""
import functools
import inspect
import json
import math
import os
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import config
import data
import distill
import evaluate
import train
import tiny
import variants.arms
import variants.train as vt
from config import build_parser, resolve
from data import DataSource, TaskSpec, far_back_targets, synthetic_batch, to_device
from distill import freeze_teacher
from model import GPT, GPTConfig, load_checkpoint, load_model
from variants.arms import ArmLoss, far_back_mask

TINY = ["--preset", "tiny", "--threads", "1", "--device", "cpu"]


def run(argv):
    vt.main(argv + TINY)


def lab_args(argv):
    """(train.py's resolved settings, the Variants lab) of a `python -m variants` command line."""
    opts, rest = vt.parse(argv)
    lab = vt.Variants(opts)
    return resolve(build_parser().parse_args(rest), lab), lab


def parse(argv):
    return lab_args(argv)[0]


def test_shipped_prerequisites_of_another_phase1_window(tmp_path):
    """--phase1-window 256: phase 2 starts from the shipped phase-1 student of that window, and says so."""
    other, lab = lab_args(["--phase", "2", "--out-dir", str(tmp_path), "--no-auto", "--phase1-window", "256"])
    assert config.phase1_path(other, lab) == os.path.join(config.SHIPPED, "phase1-b10000-w256.pt")
    assert other.run_name == "phase2-kd-b10000-b500000-w256"


YARN = '{"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 256}'


def spy_on_batches(monkeypatch):
    """made_with(src): the settings of data.synthetic_batch (kind, window, max_doc_len, ...) that a stage's source
    draws its windows with, read from a call of it."""
    real = data.synthetic_batch
    signature = inspect.signature(real)
    calls = []

    def spy(*a, **k):
        bound = signature.bind(*a, **k)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        return real(*a, **k)
    monkeypatch.setattr(evaluate, "synthetic_batch", spy)
    monkeypatch.setattr(vt, "synthetic_batch", spy)

    def made_with(src):
        calls.clear()
        src.batch(0)
        return calls[-1]
    return made_with


def test_window_ramp_trains_the_main_stages_packed_documents_in_shorter_windows_first(monkeypatch):
    made_with = spy_on_batches(monkeypatch)
    args, lab = lab_args(["--phase", "2", "--ramp-windows", "128", "512", "--ramp-steps", "7"])
    stages = train.make_stages(args, lab.task(args), lab)
    assert [name for name, *_ in stages] == ["ramp-128", "ramp-512", "main"]
    for _, src, steps, stop in stages:
        made = made_with(src)
        assert made["kind"] == "packed" and src.window * src.batch_size == 4 * 1024 and stop is None
        assert made["window"] == src.window and made["batch_size"] == src.batch_size
        assert (made["max_doc_len"], made["min_doc_len"]) == (128, 32)
    assert [steps for _, _, steps, _ in stages] == [7, 7, 1000]
    assert len({src.seed for _, src, *_ in stages}) == 3  # every stage its own stream
    plain, lab = lab_args(["--phase", "2"])
    assert [name for name, *_ in train.make_stages(plain, lab.task(plain), lab)] == ["main"]  # the recipe: no ramp


@pytest.mark.parametrize("argv, msg", [(["--phase", "1", "--ramp-windows", "16"], "needs --phase 2"),
                                       (["--ramp-windows", "2048"], "must lie in [--max-doc-len 128, --window 1024)"),
                                       (["--ramp-windows", "256", "--ramp-steps", "0"], "--ramp-steps must be >= 1"),
                                       (["--queries", "0"], "--queries must lie in [1, 4]"),
                                       (["--queries", "2", "--data", "x.txt"], "--queries sets how the packer")])
def test_window_ramp_and_packer_nonsense_fails_in_one_line(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        parse(["--phase", "2"] + argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


@pytest.mark.parametrize("flags,name,base", [
    ([], "phase2-kd-b10000-b500000", 5e5),
    (["--kd-loss", "reverse"], "phase2-kd-b10000-b500000-rkl", 5e5),
    (["--kd-loss", "jsd", "--jsd-beta", "0.25", "--temperature", "2"], "phase2-kd-b10000-b500000-T2-jsd0.25", 5e5),
    (["--doc-mask", "--reset-positions", "--seed", "1"], "phase2-kd-b10000-b500000-dm-rp-s1", 5e5),
    (["--rope-scaling", YARN], "phase2-kd-b10000-b10000-yarn4", 1e4),  # the scaling replaces the base change
    (["--rope-scaling", YARN, "--rope-base", "20000"], "phase2-kd-b10000-b20000-yarn4", 2e4),
    (["--kd-weight", "0", "--kd-loss", "reverse", "--temperature", "2"], "phase2-ce-b10000-b500000", 5e5),
    (["--ramp-windows", "128", "256", "--ramp-steps", "50"], "phase2-kd-b10000-b500000-ramp128.256x50", 5e5),
    (["--queries", "2", "--recurrence", "0.1"], "phase2-kd-b10000-b500000-rec0.1-q2", 5e5),
])
def test_run_names_tell_variants_apart(flags, name, base):
    args = parse(["--phase", "2", *flags])
    assert (args.run_name, args.rope_base) == (name, base)


def stage_hashes(argv):
    """{stage name: the first 16 hex digits of sha256 over its first two batches' tokens, positions, document ids and
    answers} of a python -m variants command line."""
    import hashlib
    args, lab = lab_args(argv + ["--preset", "tiny", "--device", "cpu"])
    out = {}
    for name, src, _, _ in train.make_stages(args, lab.task(args), lab):
        h = hashlib.sha256()
        for step in range(2):
            batch = src.batch(step)
            for key in ("tokens", "positions", "doc_ids", "answers"):
                a = np.ascontiguousarray(batch[key])
                h.update(f"{key} {a.shape} {a.dtype}".encode() + a.tobytes())
        out[name] = h.hexdigest()[:16]
    return out


# The hashes of the packer's batches before --queries existed (computed on that code, train.make_stages, tiny preset)
BEFORE_QUERIES = {"1": {"curriculum-8": "20f916229e507781", "curriculum-16": "6590c9cb1b82e368",
                        "main": "2e4712c924d89d03"},
                  "2": {"main": "7d6919e3a2a9adfd"}}


@pytest.mark.parametrize("phase", ["1", "2"])
def test_queries_1_draws_the_batches_the_packer_drew_before_the_flag(phase):
    """--queries 1 (TaskSpec(queries=1)) and no --queries draw, stage by stage, the very batches of the code before
    the flag existed; --queries 2 draws other short documents."""
    assert stage_hashes(["--phase", phase, "--queries", "1"]) == BEFORE_QUERIES[phase]
    assert stage_hashes(["--phase", phase]) == BEFORE_QUERIES[phase]
    assert stage_hashes(["--phase", phase, "--queries", "2"])["main"] != BEFORE_QUERIES[phase]["main"]


def test_variant_twin_reuses_the_plain_ce_run(tmp_path):
    argv = ["--phase", "2", "--kd-loss", "reverse", "--out-dir", str(tmp_path)]
    opts, rest = vt.parse(argv)
    lab = vt.Variants(opts)
    twin = train.plan_twin(resolve(build_parser().parse_args(rest), lab), rest, lab)
    assert twin.name == "phase2-ce-b10000-b500000"
    assert twin.command[1:5] == ["-m", "variants", "--kd-loss", "reverse"]  # with the variant's flags
    argv = ["--phase", "2", "--run-name", "my-kd-run", "--out-dir", str(tmp_path)]
    opts, rest = vt.parse(argv)
    lab = vt.Variants(opts)
    assert train.plan_twin(resolve(build_parser().parse_args(rest), lab), rest, lab).name == "my-ce-run"


def test_distills_an_hf_folder_teacher_on_text_in_its_own_tokens(tmp_path):
    """--teacher an HF Llama folder, --tokenizer its BPE: the student gets the teacher's vocabulary."""
    from formats import hf
    from test_tokenizer import make
    tok = make()
    teacher = GPT(GPTConfig(vocab_size=len(tok), n_layer=1, n_head=2, n_kv_head=2, d_model=16, d_ff=32))
    folder = str(tmp_path / "teacher-hf")
    hf.save_hf_folder(teacher, folder, tok.files())
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("the and then " * (i % 5 + 1) for i in range(200)))
    out = str(tmp_path / "out")
    run(["--phase", "1", "--out-dir", out, "--data", str(corpus), "--tokenizer", folder, "--teacher", folder,
         "--steps", "5"])
    name = "corpus-teacher-hf-phase1-b10000"  # the text's and the tokenizer's names in front
    res = json.load(open(os.path.join(out, name + ".json")))["results"]
    assert set(res) == {name, "teacher"} and res["teacher"]["corpus_ce"] > 0
    ckpt = load_checkpoint(os.path.join(out, name + ".pt"))
    assert ckpt["config"]["vocab_size"] == len(tok) and ckpt["args"]["kd_weight"] == 0.5


def test_save_interval_sets_how_often_a_run_saves(tmp_path, capsys, monkeypatch):
    """--save-interval 3: a run stopped by a non-finite loss at step 7 keeps the checkpoint of step 6."""
    tiny.nan_loss_at_step(monkeypatch, train, 7)
    with pytest.raises(SystemExit):
        run(["--phase", "teacher", "--out-dir", str(tmp_path), "--curriculum-steps", "0", "--steps", "20",
             "--save-interval", "3"])
    assert "at step 6" in capsys.readouterr().err
    ckpt = load_checkpoint(str(tmp_path / "teacher.pt"))
    assert ckpt["step"] == 6 and not ckpt["done"]
    assert parse(["--phase", "teacher", "--save-interval", "3"]).save_interval == 3
    with pytest.raises(SystemExit) as e:
        parse(["--phase", "teacher", "--save-interval", "0"])
    assert e.value.code == 2 and "--save-interval must be >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- flags, each on a tiny phase 1

tiny_teacher, phase1, reference = tiny.fixtures(run, lambda argv: parse(argv + TINY))  # tests/tiny.py


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_kd_loss_kind_is_the_logged_divergence_and_half_the_loss(tiny_teacher, reference, tmp_path, kind):
    recs = reference if kind == "forward" else phase1(tmp_path, tiny_teacher, "--kd-loss", kind)[0]
    for r in recs:  # phase 1: 0.5 CE + 0.5 KD at temperature 1
        assert r["loss"] == pytest.approx(0.5 * r["ce"] + 0.5 * r["kl"], rel=1e-5)
        assert r["kl"] > 0
    if kind != "forward":
        assert recs[0]["kl"] != reference[0]["kl"]  # same weights and batch at step 1: another divergence
    if kind == "jsd":
        assert all(r["kl"] <= math.log(2) for r in recs)


def test_cosine_schedule(tiny_teacher, reference, tmp_path):
    recs, _ = phase1(tmp_path, tiny_teacher, "--schedule", "cosine", steps=6)
    lr, warmup = 2e-3, 2  # the tiny preset's
    expect = [lr * (i + 1) / warmup if i < warmup else lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (i - warmup) / 4)))
              for i in range(6)]
    assert [r["lr"] for r in recs] == pytest.approx(expect)
    assert [r["lr"] for r in reference][warmup:] == [lr] * (4 - warmup)  # constant by default


def test_yarn_rope_scaling(tiny_teacher, reference, tmp_path):
    scaling = {"rope_type": "yarn", "factor": 2, "original_max_position_embeddings": 16}
    recs, out = phase1(tmp_path, tiny_teacher, "--rope-scaling", json.dumps(scaling))
    model, ckpt = load_model(os.path.join(out, "phase1-b10000-yarn2.pt"))
    plain = GPT(GPTConfig(**dict(ckpt["config"], rope_scaling=None)))
    assert ckpt["config"]["rope_scaling"] == scaling and model.attention_factor > 1
    assert model.inv_freq[0] == plain.inv_freq[0] and model.inv_freq[-1] == pytest.approx(plain.inv_freq[-1] / 2)
    assert recs[0]["loss"] != reference[0]["loss"]


def test_init_optimizer_starts_phase_2_from_phase_1s_moments_with_its_own_lr(tiny_teacher, tmp_path):
    _, out = phase1(tmp_path, tiny_teacher)
    init = os.path.join(out, "phase1-b10000.pt")
    argv = ["--phase", "2", "--init", init, "--out-dir", str(out), "--lr", "3e-4"] + TINY
    args, lab = lab_args(argv + ["--init-optimizer"])
    assert args.run_name.endswith("-p1opt")  # its own files, beside the recipe's
    cpu = torch.device("cpu")
    model = train.build_student(args, cpu, lab)
    opt = train.make_optimizer(model, args, cpu)
    with lab.step(model, opt, args, 0):  # around the first step of a fresh run
        pass
    saved = load_checkpoint(init)["optimizer"]
    for i, p in enumerate(p for group in opt.param_groups for p in group["params"]):  # AdamW's numbering
        assert torch.equal(opt.state[p]["exp_avg_sq"], saved["state"][i]["exp_avg_sq"])
        assert opt.state[p]["exp_avg_sq"].abs().sum() > 0
    assert [g["lr"] for g in opt.param_groups] == [3e-4, 3e-4]  # this run's hyperparameters, not phase 1's
    plain, plain_lab = lab_args(argv)
    fresh = train.make_optimizer(model, plain, cpu)
    with plain_lab.step(model, fresh, plain, 0):
        pass
    assert not fresh.state  # without the flag AdamW starts from zero


def test_init_optimizer_outside_phase_2_fails_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        run(["--phase", "1", "--init-optimizer"])
    assert e.value.code == 2 and "--init-optimizer" in capsys.readouterr().err.strip().splitlines()[-1]


def test_rope_jitter_draws_a_base_per_step_within_the_factor_and_puts_the_base_back():
    args, lab = lab_args(["--phase", "2", "--preset", "tiny", "--rope-jitter", "2"])
    assert args.run_name.endswith("-jit2")
    model = GPT(GPTConfig(d_model=32, n_head=2, n_kv_head=2, max_seq_len=32, rope_base=args.rope_base))
    base = model.inv_freq.clone()
    bases = []
    for step in range(20):
        with lab.step(model, None, args, step):
            ratio = model.inv_freq[1] / base[1]  # pair 1 turns at base**(-2/head_dim): ratio = (F**u)**(-2/hd)
            bases.append(args.rope_base * ratio.item() ** (-model.config.head_dim / 2))
            assert model.inv_freq[0] == base[0]  # pair 0 turns at 1 rad per token under every base
        assert torch.equal(model.inv_freq, base)  # the probes and the checkpoint see the base itself
    assert all(args.rope_base / 2 * 0.999 <= b <= args.rope_base * 2 * 1.001 for b in bases)
    assert min(bases) < args.rope_base / 1.5 and max(bases) > args.rope_base * 1.5  # spread over [b/F, bF]
    with lab.step(model, None, args, 7):
        again = model.inv_freq.clone()
    with lab.step(model, None, args, 7):
        assert torch.equal(model.inv_freq, again)  # (seed, step) decides: a resumed run draws the same base
    off_args, off = lab_args(["--phase", "2", "--preset", "tiny"])
    with off.step(model, None, off_args, 7):
        assert torch.equal(model.inv_freq, base)


@pytest.mark.parametrize("argv", [["--phase", "1", "--rope-jitter", "1.5"], ["--phase", "2", "--rope-jitter", "0.8"],
                                  ["--phase", "2", "--rope-jitter", "inf"]])
def test_rope_jitter_nonsense_fails_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run(argv)
    assert e.value.code == 2 and "--rope-jitter" in capsys.readouterr().err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- phase 2's arms


def arm_args(arm):
    return parse(["--phase", "2", "--preset", "tiny", "--arm", arm])


def packed_batch(windows, window, max_doc_len, min_doc_len, seed=0, recurrence=None):
    """numpy windows of packed short documents of the synthetic language (with their "far_back" targets)."""
    make = functools.partial(synthetic_batch, TaskSpec(), kind="packed", batch_size=windows, window=window,
                             max_doc_len=max_doc_len, min_doc_len=min_doc_len, recurrence=recurrence)
    return DataSource(make, windows, seed, window).batch(0)


@pytest.fixture(scope="module")
def arm_setup():
    """A tiny student, a tiny teacher and a packed batch with far-back targets (the sixth tensor)."""
    cpu = torch.device("cpu")
    windows = packed_batch(2, 256, max_doc_len=32, min_doc_len=8)
    batch = (*to_device(windows, cpu), torch.from_numpy(windows["far_back"][:, 1:]))
    cfg = GPTConfig(d_model=32, n_head=2, n_kv_head=2, max_seq_len=256)
    torch.manual_seed(0)
    student = GPT(cfg)
    torch.manual_seed(1)
    teacher = freeze_teacher(GPT(cfg), cpu)
    assert (batch[4] & batch[5]).any() and (batch[4] & ~batch[5]).any()  # some recurring answers, some fresh
    assert (batch[5] & ~batch[4]).any()  # and records of recurring keys
    return student, teacher, batch


def readable_by_hand(tokens, doc_ids):
    """The reference, aligned with tokens: the value at p (after its key at p - 1) can be read from an earlier
    document when that key stood at some j in one, followed by a value (whichever)."""
    spec = TaskSpec()
    out = np.zeros(tokens.shape, dtype=bool)
    for r in range(len(tokens)):
        for p in range(1, tokens.shape[1]):
            k = tokens[r, p - 1]
            if 1 <= k <= spec.n_keys and tokens[r, p] in spec.values():
                out[r, p] = any(tokens[r, j] == k and doc_ids[r, j] < doc_ids[r, p - 1]
                                and tokens[r, j + 1] in spec.values() for j in range(p - 1))
    return out


def test_the_far_back_mask_of_a_window_is_every_value_an_earlier_document_gave_its_key():
    """far_back_mask on a batch's tensors (aligned with y) marks every value target whose key stood in an earlier
    document (readable_by_hand): the data's far-back targets (data.far_back_targets: valued otherwise there) and the
    same-value recurrences; an arm's loss on a batch without the sixth tensor reads that mask."""
    cpu = torch.device("cpu")
    same_value = 0
    for seed, recurrence in [(0, None), (1, None), (3, 0.8)]:
        windows = packed_batch(4, 256, max_doc_len=32, min_doc_len=8, seed=seed, recurrence=recurrence)
        x, y, pos, doc, ans = to_device(windows, cpu)
        want = readable_by_hand(windows["tokens"], windows["doc_ids"])[:, 1:]
        conflicts = far_back_targets(TaskSpec(), windows["tokens"], windows["doc_ids"])[:, 1:]
        assert conflicts.any() and not want.all()
        assert torch.equal(far_back_mask(x, y, doc), torch.from_numpy(want))
        assert not (conflicts & ~want).any()
        same_value += (want & ~conflicts).sum()
    assert same_value > 0  # seed 3 (recurrence 0.8) holds a key that recurs with its earlier value
    student, args = GPT(GPTConfig(d_model=32, n_head=2, n_kv_head=2, max_seq_len=256)), arm_args("ce-masked")
    given = (x, y, pos, doc, ans, torch.from_numpy(want))
    assert ArmLoss("ce-masked")(student, None, (x, y, pos, doc, ans), args, nullcontext())[0].item() == \
        ArmLoss("ce-masked")(student, None, given, args, nullcontext())[0].item()


def test_the_far_back_mask_on_a_hand_made_window_leaves_out_the_same_value_recurrences_too():
    """tests/test_data.py's hand-made window: besides the values whose key an earlier document valued otherwise (24,
    27, 30, 32, 35, 37, 40, 47), k1's record and answer in document 2 (13, 19) and k3's in document 5 (42, 45), whose
    earlier document gave the same value: there the label is this document's own draw, and a teacher that answers
    it confidently reads the earlier document. Kept: the first documents' own values."""
    from test_data import hand_made_window
    packed = hand_made_window()
    x, y, pos, doc, ans = to_device(packed, torch.device("cpu"))
    masked = np.flatnonzero(far_back_mask(x, y, doc)[0].numpy()) + 1  # y[t] is token t + 1
    assert masked.tolist() == [13, 19, 24, 27, 30, 32, 35, 37, 40, 42, 45, 47]
    values = np.flatnonzero(np.isin(packed["tokens"][0], TaskSpec().values())).tolist()
    assert [p for p in values if p not in masked] == [2, 5, 8, 10, 16, 21]


def test_arm_flag_sets_the_loss_and_the_run_name():
    names = {arm: lab_args(["--phase", "2", "--preset", "tiny", "--arm", arm]) for arm in
             ("ce", "ce-masked", "ce-teacher-labels", "kd", "kd-masked", "kd-teacher-docmask")}
    assert len({a.run_name for a, _ in names.values()}) == 6  # no run overwrites another
    assert names["kd"][0].run_name == "phase2-kd-b10000-b500000"
    assert names["ce"][0].run_name == "phase2-ce-b10000-b500000"
    assert all((a.kd_weight == 0) == arm.startswith("ce") for arm, (a, _) in names.items())
    assert all(lab.arm == arm for arm, (_, lab) in names.items())
    default, lab = lab_args(["--phase", "2", "--preset", "tiny"])
    assert lab.arm == "kd" and default.kd_weight == 0.9  # the main command keeps its meaning
    ce, lab = lab_args(["--phase", "2", "--preset", "tiny", "--kd-weight", "0"])
    assert lab.arm == "ce"


@pytest.mark.parametrize("argv, msg", [(["--arm", "kd", "--kd-weight", "0"], "KD arm"),
                                       (["--arm", "ce-masked", "--kd-weight", "0.5"], "without the KD term"),
                                       (["--arm", "ce", "--phase", "1"], "needs --phase 2")])
def test_arm_contradictions_fail_in_one_line(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        parse(["--phase", "2", "--preset", "tiny"] + argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_ce_masked_loss_ignores_the_far_back_targets(arm_setup):
    student, teacher, batch = arm_setup
    x, y, pos, doc, ans, rec = batch
    args, masked, plain_ce = arm_args("ce-masked"), ArmLoss("ce-masked"), ArmLoss("ce")
    loss = masked(student, teacher, batch, args, nullcontext())[0]
    y2 = torch.where(rec, (y + 7) % 193, y)  # other labels at the far-back targets only (records and answers)
    assert not torch.equal(y2, y)
    assert masked(student, teacher, (x, y2, pos, doc, ans, rec), args, nullcontext())[0].item() == \
        pytest.approx(loss.item(), abs=1e-6)
    plain = plain_ce(student, teacher, (x, y2, pos, doc, ans, rec), arm_args("ce"), nullcontext())[0]
    assert plain.item() != pytest.approx(plain_ce(student, teacher, batch, arm_args("ce"), nullcontext())[0]
                                         .item(), abs=1e-4)  # the plain CE arm does see them


def perturbed(teacher, where, scale=5.0):
    """The teacher with Gaussian noise (seeded) added to its logits at the positions `where` (b, T) marks."""
    def forward(x, position_ids=None, doc_ids=None):
        logits = teacher(x, position_ids, doc_ids)  # (b, T, V)
        noise = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0)) * scale
        return logits + noise * where[..., None]
    return forward


def test_kd_masked_kd_term_ignores_the_far_back_targets(arm_setup):
    """The teacher's logits changed at every far-back target (the mask from the batch's own tokens) leave kd-masked's
    loss where it was; changed at one kept position, they move it; and the kd arm, which keeps the far-back targets,
    moves with them."""
    student, teacher, batch = arm_setup
    x, y, pos, doc, ans = batch[:5]  # no sixth tensor: the arm reads far_back_mask of these tokens
    far = far_back_mask(x, y, doc)
    one_kept = torch.zeros_like(far)
    one_kept[(~far).nonzero()[0].unbind()] = True
    assert far.any()
    losses = {}
    for arm in ("kd-masked", "kd"):
        args = arm_args(arm)
        losses[arm] = [ArmLoss(arm)(student, t, batch[:5], args, nullcontext())[0].item()
                       for t in (teacher, perturbed(teacher, far), perturbed(teacher, one_kept))]
    base, at_far, at_kept = losses["kd-masked"]
    assert at_far == pytest.approx(base, abs=1e-7) and abs(at_kept - base) > 1e-5
    assert abs(losses["kd"][1] - losses["kd"][0]) > 1e-3


def test_ce_teacher_labels_targets_are_the_teachers_argmax(arm_setup):
    student, teacher, batch = arm_setup
    x, y, pos, doc, ans, rec = batch
    with torch.no_grad():
        t_arg = teacher(x, pos).argmax(-1)
        expected = distill.cross_entropy(student(x, pos), t_arg)
    got = ArmLoss("ce-teacher-labels")(student, teacher, batch, arm_args("ce-teacher-labels"), nullcontext())[0]
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not torch.equal(t_arg, y)


def teacher_seen(monkeypatch, arm, student, teacher, batch):
    """The teacher's logits an arm's loss reads on a batch (None: it runs no teacher)."""
    real, seen = variants.arms.teacher_logits, []
    monkeypatch.setattr(variants.arms, "teacher_logits", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    ArmLoss(arm)(student, teacher, batch, arm_args(arm), nullcontext())
    monkeypatch.setattr(variants.arms, "teacher_logits", real)
    assert len(seen) <= 1
    return seen[0] if seen else None


def test_kd_teacher_docmask_teacher_sees_only_its_document(arm_setup, monkeypatch):
    student, teacher, batch = arm_setup
    x, y, pos, doc, ans, rec = batch
    got = teacher_seen(monkeypatch, "kd-teacher-docmask", student, teacher, batch)
    with torch.no_grad():
        assert torch.allclose(got, teacher(x, pos, doc), atol=1e-6)
        assert not torch.allclose(got, teacher(x, pos), atol=1e-3)  # the mask changes what it predicts
    plain = teacher_seen(monkeypatch, "kd", student, teacher, batch)
    assert torch.allclose(plain, teacher(x, pos), atol=1e-6)
    assert teacher_seen(monkeypatch, "ce", student, teacher, batch) is None


def accumulated_and_whole(student, teacher, batch, args, loss, grad_accum=2):
    """(train.accumulate's stats and gradients over grad_accum micro-batches, the one-batch loss and gradients) of
    an arm's loss."""
    student.zero_grad(set_to_none=True)
    whole = loss(student, teacher, batch, args, nullcontext())
    whole[0].backward()
    g_whole = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    counts = loss.counts(batch, args)  # what train_step counts first (then summed across ranks)
    stats = train.accumulate(student, batch, grad_accum,
                             lambda micro: loss(student, teacher, micro, args, nullcontext(), counts))
    g_acc = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)
    return stats, g_acc, whole, g_whole


@pytest.mark.parametrize("arm", ["ce-masked", "kd-masked", "kd-teacher-docmask"])
def test_a_masked_arms_loss_is_the_mean_over_the_kept_tokens_of_the_whole_batch(arm_setup, arm):
    """--grad-accum 2 on two windows that keep different numbers of tokens: the loss, CE, KL and gradients are
    those of the one batch (a mean of the micro-batches' means would weigh their kept tokens unequally)."""
    student, teacher, batch = arm_setup
    far = batch[5].clone()
    far[0, :128] = True  # the first window keeps far fewer tokens than the second
    batch = (*batch[:5], far)
    assert (~far).sum(1).tolist() == [(~batch[5][0, 128:]).sum().item(), (~batch[5][1]).sum().item()] != [256, 256]
    args, loss = arm_args(arm), ArmLoss(arm)
    stats, g_acc, whole, g_whole = accumulated_and_whole(student, teacher, batch, args, loss)
    assert all(torch.allclose(a, g, atol=1e-6) for a, g in zip(g_acc, g_whole))
    for got, want in zip(stats[:3].tolist(), whole[:3]):
        assert got == pytest.approx(want.item(), abs=1e-6) or (math.isnan(got) and math.isnan(want.item()))
    means = [loss(student, teacher, micro, args, nullcontext())[0] for micro in zip(*(t.chunk(2) for t in batch))]
    if arm != "kd-teacher-docmask":  # unmasked terms: equal windows, so the mean of means is the batch mean too
        assert abs(sum(means).item() / 2 - whole[0].item()) > 1e-5  # so the check above tells the two apart


# ----------------------------------------------------------------------------- the losses in chunks


def test_large_logits_take_the_chunked_cross_entropy(monkeypatch):
    """With a chunk size the CE goes through chunks (no float32 copy of all logits): the same value."""
    from variants import chunked
    torch.manual_seed(0)
    logits = torch.randn(2, 40, 30, requires_grad=True)
    targets = torch.randint(0, 30, (2, 40))
    plain = distill.cross_entropy(logits, targets, None)
    calls = []
    real = chunked.chunked_cross_entropy
    monkeypatch.setattr(chunked, "chunked_cross_entropy", lambda *a: calls.append(1) or real(*a))
    got = chunked.cross_entropy(logits, targets, None, chunk_size=16)
    assert calls and got.item() == pytest.approx(plain.item(), rel=1e-6)


def test_variants_chunk_only_large_logits_to_the_same_loss(monkeypatch):
    """python -m variants' step below CHUNK_ABOVE floats computes distill.plain_kd_loss and F.cross_entropy, never
    ChunkedDivergence; above it both terms go in chunks, to the same loss."""
    from variants import chunked
    args, lab = lab_args(["--phase", "2", "--preset", "tiny", "--kd-weight", "0.5"])
    batch = to_device(synthetic_batch(TaskSpec(), np.random.default_rng([0, 0]), "packed", 2, 32, 16, 8),
                      torch.device("cpu"))
    cfg = GPTConfig(d_model=32, n_head=2, n_kv_head=2, max_seq_len=32)
    torch.manual_seed(0)
    student = GPT(cfg)
    teacher = freeze_teacher(GPT(cfg), torch.device("cpu"))
    calls = {"plain": 0, "chunked": 0}
    plain_kl = distill.plain_kd_loss
    apply = chunked.ChunkedDivergence.apply

    def count(name, fn):
        return lambda *a, **k: calls.__setitem__(name, calls[name] + 1) or fn(*a, **k)
    monkeypatch.setattr(distill, "plain_kd_loss", count("plain", plain_kl))
    monkeypatch.setattr(chunked.ChunkedDivergence, "apply", count("chunked", apply))
    plain = lab.loss(student, teacher, batch, args, nullcontext())
    assert calls == {"plain": 1, "chunked": 0}
    monkeypatch.setattr(chunked, "CHUNK_ABOVE", 0)  # as for a real vocabulary on long windows
    got = lab.loss(student, teacher, batch, args, nullcontext())
    assert calls == {"plain": 1, "chunked": 2}  # the CE and the KD term
    assert [c.item() for c in got[:3]] == pytest.approx([p.item() for p in plain[:3]], rel=1e-5)


def test_resume_under_an_explicit_run_name_refuses_other_settings(tiny_teacher, tmp_path, capsys):
    """--run-name keeps the file name whatever the settings: --resume then checks the settings' own name (a lab's
    suffix too, such as -rkl here or -top32), so a run is never continued under another loss."""
    phase1(tmp_path, tiny_teacher, "--run-name", "mine", "--kd-loss", "reverse", steps=2)
    before = (tmp_path / "mine.pt").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        phase1(tmp_path, tiny_teacher, "--run-name", "mine", "--resume", steps=2)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--resume:" in err and "-rkl, not" in err
    assert (tmp_path / "mine.pt").read_bytes() == before  # nothing written
    phase1(tmp_path, tiny_teacher, "--run-name", "mine", "--kd-loss", "reverse", "--resume", steps=2)  # its own
