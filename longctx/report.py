"""A passkey test on real text: does a model find what was said far back in its window?

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) claims that a student trained on short documents inherits
a long-context teacher's use of far context. On real text, beside the loss by distance (evaluate.TextTask), that
shows in a passkey: a 5-digit key stated inside a window of held-out text, asked for at its end, D tokens later
(teacher-forced: every token of the answer must be the argmax), at several distances D, and the loss by position
bucket (research/realtext.py).
"""
import numpy as np
import torch

PASSKEY_TRIALS = 3  # keys per distance
LONG_WINDOWS = 4  # held-out windows the loss by distance reads (at most)


def bucket_losses(losses, edges):
    """{"a-b": mean loss of the predictions made at positions a..b} (b inclusive), for the buckets that exist: does a
    model predict better late in the window than early, i.e. does it use far context?"""
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
