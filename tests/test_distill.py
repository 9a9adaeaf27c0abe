"""KD loss: zero iff equal, chunking (variants/chunked.py, which computes distill.py's loss in chunks and with other
divergences), temperature, masking, JSD endpoints, gradients; teacher loading."""
import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F

import distill
from distill import load_teacher, teacher_logits
from model import GPT, GPTConfig, save_checkpoint
from variants.chunked import kd_loss
from variants.divergences import divergence_fn


def logits(seed, shape=(2, 7, 33)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 3


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    s = logits(0)
    for kind in ("forward", "reverse", "jsd"):
        loss, div = kd_loss(s, s.clone(), div=divergence_fn(kind))
        assert abs(loss.item()) < 1e-6 and abs(div.item()) < 1e-6
        assert kd_loss(s, logits(1), div=divergence_fn(kind))[0].item() > 0.01
    # a constant shift of the logits is the same distribution
    assert abs(kd_loss(s, s + 5.0)[0].item()) < 1e-5
    assert kd_loss(s, logits(1))[0].item() == distill.kd_loss(s, logits(1))[0].item()  # unchunked: distill.py's


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_chunked_equals_unchunked_values_and_gradients(kind):
    t = logits(1)
    mask = torch.rand(2, 7, generator=torch.Generator().manual_seed(3)) > 0.3
    grads = []
    for chunk in (0, 3):
        s = logits(0).requires_grad_()
        loss, _ = kd_loss(s, t, mask, temperature=2.0, div=divergence_fn(kind), chunk_size=chunk)
        loss.backward()
        grads.append((loss.detach(), s.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-7)


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_plain_kd_loss_is_the_forward_kl_as_the_paper_writes_it_and_kd_loss_equals_it(T):
    """plain_kd_loss against the formula written out token by token; kd_loss chunked and unchunked against it."""
    from distill import plain_kd_loss
    s, t = logits(0).double(), logits(1).double()
    mask = torch.rand(2, 7, generator=torch.Generator().manual_seed(3)) > 0.3
    pt, ps = F.softmax(t / T, -1), F.softmax(s / T, -1)
    by_hand = [sum(pt[b, i, v] * (pt[b, i, v].log() - ps[b, i, v].log()) for v in range(33))
               for b in range(2) for i in range(7) if mask[b, i]]
    ref = T**2 * sum(by_hand) / len(by_hand)
    assert plain_kd_loss(s, t, mask, T).item() == pytest.approx(ref.item(), rel=1e-6)
    grads = []
    for chunk in (None, 0, 3):
        s32 = logits(0).requires_grad_()
        loss = plain_kd_loss(s32, logits(1), mask, T) if chunk is None else \
            kd_loss(s32, logits(1), mask, temperature=T, chunk_size=chunk)[0]
        loss.backward()
        grads.append((loss.item(), s32.grad))
    for value, grad in grads[1:]:
        assert value == pytest.approx(grads[0][0], rel=1e-6) and torch.allclose(grad, grads[0][1], atol=1e-7)


def reference_forward_kl(s, t, mask, T):
    """float64, plain autograd: T^2 * mean over unmasked tokens of KL(softmax(t/T) || softmax(s/T))."""
    lps, lpt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    kl = (lpt.exp() * (lpt - lps)).sum(-1)
    return T**2 * kl[mask].mean()


@pytest.mark.parametrize("T", [1.0, 0.5, 4.0])
def test_gradient_matches_float64_autograd_reference(T):
    t = logits(1)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    s32 = logits(0).requires_grad_()
    loss, div = kd_loss(s32, t, mask, temperature=T, chunk_size=4)
    loss.backward()
    s64 = logits(0).double().requires_grad_()
    ref = reference_forward_kl(s64, t.double(), mask, T)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert div.item() == pytest.approx(ref.item() / T**2, rel=1e-5)  # the logged KL is unscaled
    assert torch.allclose(s32.grad.double(), s64.grad, atol=1e-6)


def test_masking_ignores_masked_tokens():
    s, t = logits(0), logits(1)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, :3] = True
    t2 = t.clone()
    t2[1] = 0.0  # change only masked-out tokens
    assert kd_loss(s, t, mask)[0].item() == pytest.approx(kd_loss(s, t2, mask)[0].item())
    assert kd_loss(s, t, mask)[0].item() == pytest.approx(kd_loss(s[0, :3], t[0, :3])[0].item(), rel=1e-6)


@pytest.mark.parametrize("loss", [distill.kd_loss, functools.partial(kd_loss, chunk_size=4)], ids=["plain", "chunked"])
def test_an_all_masked_batch_gives_zero_loss_and_zero_gradient(loss):
    s = logits(0).requires_grad_(True)
    t = logits(1)
    mask = torch.zeros(2, 7, dtype=torch.bool)  # no position counts: e.g. a batch of the masked arm without a record
    value, divergence = loss(s, t, mask)
    value.backward()
    assert value.item() == 0.0
    assert divergence.item() == 0.0
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_jsd_endpoints_approach_forward_and_reverse_kl():
    s, t = logits(0) / 3, logits(1) / 3  # moderate logits: the O(beta^2) term stays small
    fwd, rev = kd_loss(s, t, div=divergence_fn("forward"))[0], kd_loss(s, t, div=divergence_fn("reverse"))[0]
    eps = 1e-4
    assert (kd_loss(s, t, div=divergence_fn("jsd", eps))[0] / eps).item() == pytest.approx(fwd.item(), rel=2e-3)
    assert (kd_loss(s, t, div=divergence_fn("jsd", 1 - eps))[0] / eps).item() == pytest.approx(rev.item(), rel=2e-3)


def test_temperature_softens_and_scales():
    s, t = logits(0), logits(1)
    d1 = kd_loss(s, t, temperature=1.0)[1]
    d4 = kd_loss(s, t, temperature=4.0)[1]
    assert d4 < d1  # softer distributions are closer
    assert kd_loss(s, t, temperature=4.0)[0].item() == pytest.approx(16 * d4.item(), rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, temperature=0.0)
    with pytest.raises(ValueError, match="vocabulary"):
        kd_loss(s, logits(1, (2, 7, 34)))


def test_teacher_is_frozen_and_vocab_checked(tmp_path):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=40, d_model=16, n_head=2, n_kv_head=2, n_layer=1, max_seq_len=16))
    path = str(tmp_path / "t.pt")
    save_checkpoint({"model": m.state_dict(), "config": dataclasses.asdict(m.config), "step": 1}, path)
    teacher = load_teacher(path, torch.device("cpu"), vocab_size=40)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randint(0, 40, (1, 8))
    out = teacher_logits(teacher, x)
    assert not out.requires_grad and not out.is_inference() and torch.allclose(out, m(x))
    with pytest.raises(ValueError, match="vocabulary 40 .* 41"):
        load_teacher(path, torch.device("cpu"), vocab_size=41)


def topk_case(seed=0, shape=(4, 9, 40)):
    """float64 student log-probs (requires grad) and teacher logits."""
    s = logits(seed, shape).double().requires_grad_()
    return s, logits(seed + 1, shape).double()


def test_topk_kl_with_every_token_is_the_full_forward_kl_in_value_and_gradient():
    from distill import forward_kl
    from longctx.topk import teacher_topk, topk_forward_kl
    s, t = topk_case()
    ids, logp = teacher_topk(t, k=t.shape[-1])
    assert logp.dtype == torch.float32  # the cache is float32; compare in float64 from here
    logp = F.log_softmax(t, -1).gather(-1, ids)
    top = topk_forward_kl(F.log_softmax(s, -1), ids, logp)
    full = forward_kl(s, t)
    assert torch.allclose(top, full, atol=1e-12, rtol=0)
    g_top, = torch.autograd.grad(top.sum(), s)
    g_full, = torch.autograd.grad(full.sum(), s)
    assert torch.allclose(g_top, g_full, atol=1e-12, rtol=0)


@pytest.mark.parametrize("k", [1, 3, 10, 39])
def test_topk_kl_is_the_kl_of_k_tokens_plus_one_rest_bucket_and_never_above_the_full_kl(k):
    from distill import forward_kl
    from longctx.topk import topk_forward_kl
    s, t = topk_case()
    lpt, lps = F.log_softmax(t, -1), F.log_softmax(s, -1)
    logp, ids = lpt.topk(k, -1)
    top = topk_forward_kl(lps, ids, logp)
    # the reference: both distributions written out on k + 1 outcomes, KL in the plain formula
    pt = torch.cat([logp.exp(), 1 - logp.exp().sum(-1, keepdim=True)], -1)  # (..., k + 1)
    ps = torch.cat([lps.exp().gather(-1, ids), 1 - lps.exp().gather(-1, ids).sum(-1, keepdim=True)], -1)
    ref = (pt * (pt.log() - ps.log())).sum(-1)
    assert torch.allclose(top, ref, atol=1e-12, rtol=0)
    full = forward_kl(s, t)
    assert (top >= 0).all() and (top <= full + 1e-12).all()  # data-processing inequality
    if k < 39:  # a rest bucket of one token loses nothing; of two or more, it does here
        assert (top < full - 1e-3).any()
    else:
        assert torch.allclose(top, full, atol=1e-12, rtol=0)


def test_topk_kl_is_zero_with_zero_gradient_when_the_student_is_the_teacher():
    from longctx.topk import topk_forward_kl
    _, t = topk_case()
    s = t.clone().requires_grad_()
    logp, ids = F.log_softmax(t, -1).topk(5, -1)
    kl = topk_forward_kl(F.log_softmax(s, -1), ids, logp)
    kl.sum().backward()
    assert kl.abs().max() < 1e-12 and s.grad.abs().max() < 1e-12
    # the loss without the rest bucket is not a divergence: negative, and pulls mass onto the k tokens
    no_bucket = (logp.exp() * (logp - F.log_softmax(t, -1).gather(-1, ids))).sum(-1)
    assert no_bucket.abs().max() < 1e-12  # its value is 0 here too, but its gradient is not:
    s2 = t.clone().requires_grad_()
    (logp.exp() * (logp - F.log_softmax(s2, -1).gather(-1, ids))).sum().backward()
    assert s2.grad.abs().max() > 1e-2


def test_minimising_the_topk_kl_recovers_the_teachers_coarse_distribution():
    """Gradient descent on the bucketed loss leaves the student with the teacher's mass on the k tokens
    (the biased loss would push it to 1)."""
    from longctx.topk import topk_forward_kl
    t = logits(5, (3, 30)).double()
    lpt = F.log_softmax(t, -1)
    logp, ids = lpt.topk(4, -1)
    s = torch.zeros_like(t, requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        topk_forward_kl(F.log_softmax(s, -1), ids, logp).sum().backward()
        opt.step()
    mass_s = F.softmax(s, -1).gather(-1, ids).sum(-1)
    assert torch.allclose(mass_s, logp.exp().sum(-1), atol=1e-3)


def test_topk_coverage_is_the_teachers_mass_on_its_k_tokens():
    from longctx.topk import teacher_topk, topk_coverage
    t = logits(1)
    ids, logp = teacher_topk(t, k=3)
    assert torch.equal(ids, t.topk(3, -1).indices)
    assert topk_coverage(logp) == pytest.approx(F.softmax(t, -1).topk(3, -1).values.sum(-1).mean().item(), rel=1e-6)
    assert topk_coverage(teacher_topk(t, k=t.shape[-1])[1]) == pytest.approx(1.0, abs=1e-6)


def test_kd_softmax_runs_in_float32_for_bf16_logits():
    """Under bf16 autocast the logits arrive in bf16; the divergence (its log-softmax) must see float32 chunks,
    and the gradient goes back in the student's dtype."""
    seen = []
    plain = distill.forward_kl

    def spy(s, t):
        seen.append((s.dtype, t.dtype))
        return plain(s, t)

    s, t = logits(0).bfloat16().requires_grad_(), logits(1).bfloat16()
    loss, _ = kd_loss(s, t, chunk_size=4, div=spy)
    loss.backward()
    assert seen and set(seen) == {(torch.float32, torch.float32)}
    assert loss.dtype == torch.float32 and s.grad.dtype == torch.bfloat16
    ref, _ = kd_loss(s.detach().float(), t.float())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)  # the same sum as float32 inputs


def test_a_hostile_hf_folder_teacher_is_refused_before_anything_is_allocated(tmp_path):
    """python -m variants --teacher / --init reach hf.load_hf_folder through here (its lab's reader,
    hf.load_pretrained): a config.json declaring absurd sizes is a CheckpointError (train.py prints it as one error
    line), not an allocation."""
    import json
    import os

    from formats import hf
    from model import CheckpointError
    m = GPT(GPTConfig(vocab_size=40, d_model=16, n_head=2, n_kv_head=2, n_layer=1, max_seq_len=16))
    folder = str(tmp_path / "t")
    hf.save_hf_folder(m, folder)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    for change, message in [({"num_hidden_layers": 1_000_000}, "num_hidden_layers must be"),
                            ({"vocab_size": 4_000_000}, "but the config implies")]:
        json.dump(dict(cfg, **change), open(os.path.join(folder, "config.json"), "w"))
        with pytest.raises(CheckpointError, match=message):
            load_teacher(folder, torch.device("cpu"), load=hf.load_pretrained)


@pytest.mark.parametrize("masked", [False, True])
def test_chunked_cross_entropy_equals_the_plain_one(masked):
    """Same value and gradient as F.cross_entropy on a float32 copy, from bf16 logits, with or without a mask."""
    from variants.chunked import chunked_cross_entropy
    torch.manual_seed(0)
    logits = torch.randn(3, 50, 97).bfloat16().requires_grad_()
    targets = torch.randint(0, 97, (3, 50))
    keep = torch.rand(3, 50) > 0.3 if masked else None
    got = chunked_cross_entropy(logits, targets, keep, chunk_size=16)
    (g_got,) = torch.autograd.grad(got, logits)
    per = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    want = per.mean() if keep is None else (per * keep.flatten()).sum() / keep.sum()
    (g_want,) = torch.autograd.grad(want, logits)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert g_got.dtype == torch.bfloat16 and torch.allclose(g_got.float(), g_want.float(), atol=1e-4)


@pytest.mark.parametrize("k, expected", [(1, 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)),
                                         (2, 0.5 * math.log(0.5 / 0.2) + 0.2 * math.log(0.2 / 0.5)),
                                         (3, 0.5 * math.log(0.5 / 0.2) + 0.2 * math.log(0.2 / 0.5))])
def test_topk_kl_on_a_hand_case_has_the_value_written_out(k, expected):
    """Teacher (0.5, 0.3, 0.2), student (0.2, 0.3, 0.5): k = 1 compares token 0 and the rest (0.5 vs 0.8); k = 2
    leaves one token as the rest, which is exact, so it is the full KL (the 0.3 terms are 0). Averaged over a
    (2, 3) batch of that position as the real-text loop averages it, the KD term keeps that scale (0.223, 0.275)."""
    from longctx.topk import teacher_topk, topk_forward_kl
    pt, ps = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    ids, logp = teacher_topk(pt.log().expand(2, 3, 3), k)  # (2, 3, k)
    kl = topk_forward_kl(ps.log().expand(2, 3, 3), ids, logp.double())  # (2, 3)
    assert kl.shape == (2, 3) and kl.mean().item() == pytest.approx(expected, abs=1e-7)
    assert round(expected, 4) == {1: 0.2231, 2: 0.2749, 3: 0.2749}[k]
