"""The long-context report of a run on real text: does a model use what lies far back in its window?

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) claims that a student trained on short documents
inherits a long-context teacher's use of far context. On real text that shows in two measurements, made for
every model of a run (the student, its CE twin, the teacher) on held-out text it never trained on:

- loss by distance: the mean next-token loss of the predictions made at positions 0-63, 64-127, 128-255, ...
  up to the window, on held-out text in order (longctx/corpus.py). A model that uses far context predicts
  better late in the window than early;
- passkey: a 5-digit key stated inside a window of held-out text, asked for at its end, D tokens later
  (teacher-forced: every token of the answer must be the argmax), at several distances D.
"""
import numpy as np
import torch
import torch.nn.functional as F

PASSKEY_TRIALS = 3  # keys per distance
LONG_WINDOWS = 4  # held-out windows the loss by distance reads (at most)


def bucket_edges(window):
    """[0, b, 2b, 4b, ..., window], b = 64 (smaller for windows under 512): the position buckets."""
    edges = [0, min(64, max(1, window // 8))]
    while edges[-1] * 2 < window:
        edges.append(edges[-1] * 2)
    return edges + [window] if edges[-1] < window else edges


@torch.no_grad()
def token_losses(model, ids, device, autocast, sep=None):
    """Next-token cross-entropy (n, T) at each position of ids (n, T + 1), one row at a time, in eval mode.
    sep: attend within documents only (the separator starts each), as a --doc-mask run trained."""
    was_training = model.training
    model.eval()
    out = []
    for row in torch.as_tensor(ids):
        x, y = row[None, :-1].to(device), row[1:].to(device)  # (1, T), (T,)
        doc = None if sep is None else torch.cumsum(x == sep, 1)  # (1, T)
        with autocast:
            logits = model(x, None, doc)[0].float()  # (T, V)
        out.append(F.cross_entropy(logits, y, reduction="none").cpu())
    model.train(was_training)
    return torch.stack(out)


def bucket_losses(losses, edges):
    """{"a-b": mean loss of the predictions made at positions a..b} (b inclusive), for the buckets that exist."""
    T = losses.shape[1]
    return {f"{a}-{min(b, T) - 1}": losses[:, a:min(b, T)].mean().item() for a, b in zip(edges, edges[1:]) if a < T}


def passkey_parts(encode, key):
    """(needle, question, answer) token ids of the passkey with this key: the answer follows the question's words
    as it followed them in the needle, so reading it off is retrieval, D tokens back."""
    return encode(f"The pass key is {key}. "), encode(" The pass key is"), encode(f" {key}")


def passkey_distances(encode, window):
    """Distances D (tokens between the needle and the question) asked for: the longest the window holds beside
    the needle, question and answer, half and an eighth of it (none when the window cannot hold them)."""
    longest = window - sum(map(len, passkey_parts(encode, 99999))) - 2  # 2: keys of other digits may differ
    return sorted({max(1, longest // 8), max(1, longest // 2), longest}) if longest >= 1 else []


def passkey_prompts(encode, filler, window, distances, trials=PASSKEY_TRIALS, seed=0):
    """[(D, prompt ids, answer ids)]: held-out text, the needle, D more tokens of text, the question; prompt and
    answer fill the window exactly. filler: the held-out text's ids (separators removed). A distance that does
    not fit gives no prompt."""
    rng = np.random.default_rng(seed)
    filler = np.resize(np.asarray(filler, dtype=np.int64), max(len(filler), 2 * window))  # repeated if short
    out = []
    for d in distances:
        for _ in range(trials):
            key = int(rng.integers(10000, 100000))
            needle, question, answer = passkey_parts(encode, key)
            before = window - len(needle) - d - len(question) - len(answer)  # text in front of the needle
            start = int(rng.integers(0, len(filler) - window + 1))
            if before < 0:
                continue
            text = filler[start:start + before + d].tolist()
            out.append((d, text[:before] + needle + text[before:] + question, answer))
    return out


@torch.no_grad()
def passkey_accuracy(model, prompts, device, autocast=None, distances=()):
    """{"D": share of prompts whose every answer token is the model's argmax}; None for a distance without one."""
    was_training = model.training
    model.eval()
    hits = {d: [] for d in distances}
    for d, prompt, answer in prompts:
        ids = torch.tensor(prompt + answer, device=device)[None]  # (1, len)
        if autocast is None:
            logits = model(ids[:, :-1])
        else:
            with autocast:
                logits = model(ids[:, :-1])
        hits.setdefault(d, []).append(logits[0, -len(answer):].argmax(-1).tolist() == answer)
    model.train(was_training)
    return {str(d): float(np.mean(h)) if h else None for d, h in hits.items()}  # str: as JSON keeps them


def long_context(models, corpus, window, device, autocast, doc_mask=False, seed=0):
    """{model name: {"buckets": {"a-b": loss}, "passkey": {D: accuracy or None}}} on corpus's held-out text
    (longctx.corpus.Corpus); the passkey needs text (corpus.encode), so a token file (.bin) gets none."""
    long = corpus.long[:LONG_WINDOWS]
    edges, stream = bucket_edges(window), corpus.long.reshape(-1)
    distances = passkey_distances(corpus.encode, window) if corpus.encode is not None else []
    prompts = (passkey_prompts(corpus.encode, stream[stream != corpus.sep], window, distances, seed=seed)
               if corpus.encode is not None else None)
    out = {}
    for name, m in models.items():
        buckets = bucket_losses(token_losses(m, long, device, autocast, corpus.sep if doc_mask else None), edges)
        out[name] = {"buckets": buckets, "passkey": None if prompts is None else
                     passkey_accuracy(m, prompts, device, autocast, distances)}
    return out


def format_long_context(rows, n_windows, window):
    """The two markdown tables of long_context's rows: loss by distance, then the passkey."""
    names = list(rows)
    buckets = list(rows[names[0]]["buckets"])
    lines = [f"Loss by distance (nats/token of the predictions at positions a-b; {n_windows or 'the'} held-out windows"
             f" of {window} tokens, the text in order):", "| model | " + " | ".join(buckets) + " |",
             "|" + " --- |" * (len(buckets) + 1)]
    lines += [f"| {n} | " + " | ".join(f"{rows[n]['buckets'][b]:.3f}" for b in buckets) + " |" for n in names]
    if rows[names[0]]["passkey"] is None:
        return "\n".join(lines + ["(no passkey test: a token file has no text to state a key in)"])
    ds = list(rows[names[0]]["passkey"])
    if not ds:
        return "\n".join(lines + [f"(no passkey test: a window of {window} tokens cannot hold the passkey's words)"])
    lines += [f"Passkey ({PASSKEY_TRIALS} keys per distance D in held-out text; every answer token must be the "
              f"argmax; -: the window cannot hold D):", "| model | " + " | ".join(f"D={d}" for d in ds) + " |",
              "|" + " --- |" * (len(ds) + 1)]
    lines += [f"| {n} | " + " | ".join("-" if rows[n]["passkey"][d] is None else f"{rows[n]['passkey'][d]:.2f}"
                                       for d in ds) + " |" for n in names]
    return "\n".join(lines)
