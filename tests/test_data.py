"""Data: the packer, the synthetic generator, batches and their prefetch, the probes, and real files."""
import functools
import time

import numpy as np
import pytest

from data import (SEP, Corpus, DataError, DataSource, TaskSpec, cut_documents, kv_probe, pack_documents, prefetch,
                  read_text_documents, synthetic_batch)
from evaluate import TextTask, repeated_tokens_window
from formats.text import read_bin_documents
from interp.probes import needle_probe, position_probe
from research.overlap import key_recurrence

SPEC = TaskSpec()


def test_packer_loses_and_duplicates_nothing():
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 100, n) for n in rng.integers(1, 30, 40)]
    out = pack_documents(docs, 32)
    stream = np.concatenate([np.concatenate([[SEP], d]) for d in docs])
    n = len(stream) // 32
    assert out["tokens"].shape == (n, 32)
    assert np.array_equal(out["tokens"].ravel(), stream[: n * 32])
    assert len(stream) - n * 32 < 32


def test_positions_continuous_or_reset_and_doc_ids_step_at_separators():
    docs = [np.arange(1, 6), np.arange(1, 4), np.arange(1, 9)]
    cont = pack_documents(docs, 8)
    assert (cont["positions"] == np.arange(8)).all()
    reset = pack_documents(docs, 8, reset_positions=True)
    assert reset["positions"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    assert reset["positions"][1].tolist() == [2, 3, 0, 1, 2, 3, 4, 5]
    for tok, doc in zip(cont["tokens"], cont["doc_ids"]):
        steps = np.flatnonzero(np.diff(doc)) + 1
        assert set(steps) == set(np.flatnonzero(tok == SEP)) - {0}


def test_short_documents_never_exceed_their_bound():
    batch = synthetic_batch(SPEC, np.random.default_rng(1), "packed", 8, 1024, max_doc_len=128, min_doc_len=32)
    for tok in batch["tokens"]:
        starts = np.flatnonzero(tok == SEP).tolist() + [len(tok)]
        assert starts[0] == 0
        assert max(np.diff(starts)) <= 128


def answers_are_retrievable(batch, same_doc=True):
    """Each answer is the value after an earlier occurrence of the same key in the same document."""
    for tok, doc, ans in zip(batch["tokens"], batch["doc_ids"], batch["answers"]):
        for a in np.flatnonzero(ans):
            key, value = tok[a - 1], tok[a]
            assert 1 <= key <= SPEC.n_keys and value in SPEC.values()
            earlier = [p for p in np.flatnonzero(tok[: a - 1] == key) if not same_doc or doc[p] == doc[a]]
            assert len(earlier) == 1 and tok[earlier[0] + 1] == value


@pytest.mark.parametrize("kind", ["long", "packed"])
def test_generator_answers_and_unique_keys(kind):
    batch = synthetic_batch(SPEC, np.random.default_rng(2), kind, 4, 512, max_doc_len=128, min_doc_len=32)
    assert batch["answers"].sum() > 20
    answers_are_retrievable(batch)
    for tok, doc in zip(batch["tokens"], batch["doc_ids"]):
        for d in np.unique(doc):
            keys = tok[(doc == d) & (tok >= 1) & (tok <= SPEC.n_keys)]
            assert all(c == 2 for c in np.unique(keys, return_counts=True)[1])  # each key: record + query


def keys_by_document(tok, doc):
    """[(document id, set of keys)] of one packed window, in order."""
    is_key = (tok >= 1) & (tok <= SPEC.n_keys)
    return [(d, set(tok[(doc == d) & is_key].tolist())) for d in np.unique(doc)]


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_recurrence_rate_zero_never_reuses_a_key_and_one_reuses_while_it_can(rate):
    batch = synthetic_batch(SPEC, np.random.default_rng(4), "packed", 4, 1024, recurrence=rate)
    answers_are_retrievable(batch)  # still well-formed retrieval data
    assert batch["answers"].sum() > 4 * 40
    for tok, doc in zip(batch["tokens"], batch["doc_ids"]):
        seen = set()
        for d, keys in keys_by_document(tok, doc):
            if rate == 0:
                assert not keys & seen  # no key of an earlier document
            elif seen:
                fresh = keys - seen  # taken only when the earlier documents had fewer keys than this one asks
                assert not fresh or len(seen) < 128 // SPEC.pair_every
            seen |= keys
    if rate == 0:
        assert not batch["far_back"].any()


def test_recurrence_rate_moves_the_measured_overlap_and_default_stays_uniform():
    rates = {r: key_recurrence(SPEC, synthetic_batch(SPEC, np.random.default_rng(5), "packed", 16, 1024,
                                                     recurrence=r)) for r in (0.1, 0.25, 0.45)}
    assert rates[0.1] < rates[0.25] < rates[0.45] and all(abs(v - r) < 0.06 for r, v in rates.items())
    default = key_recurrence(SPEC, synthetic_batch(SPEC, np.random.default_rng(5), "packed", 16, 1024))
    assert 0.40 < default < 0.50  # uniform keys: the rate the docs quote (about 45%)


def packed_source(window, batch_size, seed, max_doc_len=128, min_doc_len=32):
    """Batches of short documents packed into windows, as a pure function of (seed, step)."""
    make = functools.partial(synthetic_batch, SPEC, kind="packed", batch_size=batch_size, window=window,
                             max_doc_len=max_doc_len, min_doc_len=min_doc_len)
    return DataSource(make, batch_size, seed, window)


def test_seeds_reproduce_and_differ():
    a = packed_source(256, 2, seed=5).batch(3)
    b = packed_source(256, 2, seed=5).batch(3)
    c = packed_source(256, 2, seed=6).batch(3)
    assert np.array_equal(a["tokens"], b["tokens"]) and not np.array_equal(a["tokens"], c["tokens"])



@pytest.mark.parametrize("kind", ["packed", "file"])
def test_a_ranks_rows_are_its_share_of_the_one_global_batch(kind):
    """Rank r of N gets rows [r B/N, (r+1) B/N) of the batch one process draws (what keeps 1 process bit-exact)."""
    docs = [np.arange(1, 40) % 50 + 1 for _ in range(30)]
    if kind == "file":  # pre-packed windows of a text, drawn by TextTask.batch
        task = TextTask("corpus.txt")
        task.corpus = Corpus(pack_documents(cut_documents(docs, 16), 33, sep=0), None, None)
        src = DataSource(functools.partial(task.batch, "packed", 32, 4), 4, 3, 32)
    else:
        src = packed_source(32, 4, seed=3, max_doc_len=16, min_doc_len=8)
    whole = src.batch(7)
    halves = [src.batch(7, slice(0, 2)), src.batch(7, slice(2, 4))]
    for key, value in whole.items():
        assert value.shape[0] == 4 and np.array_equal(np.concatenate([h[key] for h in halves]), value)
    assert not np.array_equal(halves[0]["tokens"], halves[1]["tokens"])


def test_prefetch_yields_each_steps_batch_in_order_stops_early_and_raises_at_its_step():
    def make(step):
        if step == 6:
            raise ValueError("bad step 6")
        return step * 10

    assert list(prefetch(lambda s: s * 10, range(3, 6))) == [30, 40, 50]
    assert list(prefetch(make, [])) == []
    got = []
    with pytest.raises(ValueError, match="bad step 6"):
        for value in prefetch(make, range(4, 9)):
            got.append(value)
    assert got == [40, 50]  # the steps before the bad one arrive; the bad one raises when its turn comes
    built = []
    stream = prefetch(lambda s: built.append(s) or s, range(0, 100))
    assert next(stream) == 0
    stream.close()  # a stage that ends early: at most the batch in flight is built, not the rest
    time.sleep(0.05)
    assert built in ([0], [0, 1])


@pytest.mark.parametrize("distance", [5, 100, 900])
def test_kv_probe_record_exactly_d_before_query(distance):
    probe = kv_probe(SPEC, 1024, distance, n_windows=3, n_pairs=8)
    for tok, ans in zip(probe["tokens"], probe["answers"]):
        assert ans.sum() >= 1
        for a in np.flatnonzero(ans):
            q = a - 1
            assert tok[q - distance] == tok[q] and tok[q - distance + 1] == tok[a]
    answers_are_retrievable(probe)


def test_the_depth_probe_moves_the_queries_and_keeps_the_distance():
    from interp.probes import depth_probe
    shallow = depth_probe(SPEC, 1024, 64, 0.0, 2)
    deep = depth_probe(SPEC, 1024, 64, 1.0, 2)
    assert np.flatnonzero(deep["answers"]).mean() > np.flatnonzero(shallow["answers"]).mean() + 300
    for probe in (shallow, deep):
        for tok, ans in zip(probe["tokens"], probe["answers"]):
            for a in np.flatnonzero(ans):
                assert tok[a - 1 - 64] == tok[a - 1] and tok[a - 64] == tok[a]  # record 64 tokens before its query
    answers_are_retrievable(deep)


def test_repeated_tokens_window_repeats_its_period():
    rep = repeated_tokens_window(SPEC, 100, period=16, n_windows=2)
    assert rep["tokens"].shape == (2, 101) and (rep["tokens"][:, 16:] == rep["tokens"][:, :-16]).all()


def test_text_and_bin_files_round_trip(tmp_path):
    (tmp_path / "a.txt").write_text("héllo world\n\nsecond paragraph")
    docs = read_text_documents(str(tmp_path / "a.txt"))
    assert [bytes((d - 1).astype(np.uint8)).decode() for d in docs] == ["héllo world", "second paragraph"]
    ids = np.array([5, 6, 7, 99, 8, 9, 99, 10], dtype=np.uint16)
    ids.tofile(tmp_path / "t.bin")
    docs = read_bin_documents(str(tmp_path / "t.bin"), eot_id=99, vocab_size=100)
    assert [d.tolist() for d in docs] == [[5, 6, 7], [8, 9], [10]]
    win = pack_documents(cut_documents(docs, 3), 5, sep=99)
    assert win["tokens"].shape[1] == 5 and (win["tokens"][:, 0] == 99).all()


def test_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    np.array([1, 500], dtype=np.uint16).tofile(tmp_path / "oov.bin")
    for call, match in [(lambda: read_text_documents(str(tmp_path / "missing")), "not found"),
                        (lambda: read_text_documents(str(tmp_path / "empty.txt")), "no text"),
                        (lambda: read_text_documents(str(tmp_path / "bad.txt")), "UTF-8"),
                        (lambda: read_bin_documents(str(tmp_path / "odd.bin"), 0, 100), "uint16"),
                        (lambda: read_bin_documents(str(tmp_path / "oov.bin"), 0, 100), "outside the vocabulary")]:
        with pytest.raises(DataError, match=match):
            call()


def test_filler_follows_its_markov_chain():
    order = 1
    spec = TaskSpec()
    batch = synthetic_batch(spec, np.random.default_rng(3), "long", 2, 256, n_pairs=4)
    succ, f0 = spec.successors(), spec.filler_ids()[0]
    checked = 0
    for tok in batch["tokens"]:
        for t in range(1 + order, len(tok)):
            ctx = tok[t - order:t + 1]
            if (ctx >= f0).all():  # a run of filler: the last token must be a successor of its context
                assert ctx[-1] - f0 in succ[tuple(ctx[:-1] - f0)]
                checked += 1
    assert checked > 300


def far_back_by_hand(tokens, doc_ids):
    """The reference: the value at p (after its key at p - 1) is far-back when that key stood at some j in an earlier
    document, before another value."""
    out = np.zeros(tokens.shape, dtype=bool)
    for r in range(len(tokens)):
        for p in range(1, tokens.shape[1]):
            k = tokens[r, p - 1]
            if 1 <= k <= SPEC.n_keys:
                out[r, p] = any(tokens[r, j] == k and doc_ids[r, j] < doc_ids[r, p - 1]
                                and tokens[r, j + 1] != tokens[r, p] for j in range(p - 1))
    return out


def test_far_back_mask_marks_exactly_the_values_whose_key_an_earlier_document_valued_otherwise():
    batch = synthetic_batch(SPEC, np.random.default_rng(3), "packed", 4, 512, 64, 16)
    far, ans = batch["far_back"], batch["answers"]
    assert np.array_equal(far, far_back_by_hand(batch["tokens"], batch["doc_ids"]))
    assert np.isin(batch["tokens"][far], SPEC.values()).all()  # value targets only
    assert 0.2 < (far & ans).sum() / ans.sum() < 0.7  # the packed windows' recurring share is substantial
    assert 0.5 < (far & ~ans).sum() / (far & ans).sum() < 2  # and about as many records as answers


def hand_made_window():
    """One packed window of five documents: k1 recurs with its value, then with another; k2 recurs three times, each
    time valued otherwise than before; k3 recurs with its value. The values' positions in the comments."""
    k1, k2, k3, f = 1, 2, 3, 150
    v10, v11, v20, v21, v22, v30 = 75, 76, 85, 86, 87, 95
    docs = [np.array([k1, v10, f, k2, v20, f, k1, v10, k2, v20]),  # at 0: values at 2, 5, 8, 10
            np.array([k1, v10, f, k3, v30, f, k1, v10, k3, v30]),  # at 11: k1 with its value again: 13, 19; k3 16, 21
            np.array([k2, v21, f, k2, v21]),  # at 22: k2 with another value: record 24, answer 27
            np.array([k2, v22, k1, v11, f, k2, v22, k1, v11]),  # at 28: both recur with another value: 30 32 35 37
            np.array([k2, v21, k3, v30, f, k3, v30, k2, v21])]  # at 38: k2's v21 differs from v20, v22: 40, 47;
    return pack_documents(docs, 48)  # k3 with its value again: 42, 45


def test_far_back_mask_on_a_hand_made_window():
    """On hand_made_window: the values whose key an earlier document valued otherwise, records and answers; a key
    that recurs with its value (k1 in document 2, k3 in document 5) marks nothing. Every marked and kept position."""
    packed = hand_made_window()
    from data import far_back_targets
    far = far_back_targets(SPEC, packed["tokens"], packed["doc_ids"])
    assert far.shape == (1, 48) and packed["tokens"][0, [24, 30, 32, 40]].tolist() == [86, 87, 76, 86]
    assert np.flatnonzero(far[0]).tolist() == [24, 27, 30, 32, 35, 37, 40, 47]
    values = np.flatnonzero(np.isin(packed["tokens"][0], SPEC.values())).tolist()
    assert [p for p in values if not far[0, p]] == [2, 5, 8, 10, 13, 16, 19, 21, 42, 45]


def test_position_probe_puts_records_in_their_band_and_queries_exactly_d_later():
    b = position_probe(SPEC, 1024, 512, 256, band=64, n_windows=2, seed=1)
    for tok, ans in zip(b["tokens"], b["answers"]):
        qs = np.flatnonzero(ans) - 1  # query keys
        assert len(qs) >= 8
        assert all(tok[q - 512] == tok[q] for q in qs)  # the record's key, D before
        assert all(1 + 256 <= q - 512 < 1 + 256 + 64 for q in qs)  # behind the SEP, in the band
    assert not position_probe(SPEC, 1024, 900, 512, n_windows=1)["answers"].any()  # does not fit: no answer


def test_needle_probe_has_one_record_per_window_and_seeds_draw_other_windows():
    b = needle_probe(SPEC, 256, 100, n_windows=4, seed=1)
    assert (b["answers"].sum(1) == 1).all()
    is_value = np.isin(b["tokens"], SPEC.values())
    assert (is_value.sum(1) == 2).all()  # the record's value and the answer, nothing else
    assert not np.array_equal(b["tokens"], needle_probe(SPEC, 256, 100, n_windows=4, seed=2)["tokens"])


@pytest.mark.parametrize("queries", [1, 2, 3])
def test_each_record_is_asked_for_queries_times_in_its_document_with_its_own_value(queries):
    from data import short_document
    tokens, answers = short_document(TaskSpec(queries=queries), np.random.default_rng(queries), 120)
    keys = set(SPEC.keys().tolist())
    seen = {}
    for t in range(len(tokens) - 1):
        if int(tokens[t]) in keys:
            seen.setdefault(int(tokens[t]), []).append(t)
    assert len(seen) >= 4  # a document of 120 tokens holds several records
    n_asked = 0
    for key, where in seen.items():
        assert tokens[where[0] + 1] in SPEC.values() and not answers[where[0] + 1]  # the record: not a target
        assert 2 <= len(where) <= queries + 1  # a further query that finds no free slot is dropped
        n_asked += len(where) - 1
        for q in where[1:]:
            assert answers[q + 1] and tokens[q + 1] == tokens[where[0] + 1]  # every query: the record's value
    assert answers.sum() == n_asked and n_asked > len(seen) * (queries - 0.5)  # almost every query placed
