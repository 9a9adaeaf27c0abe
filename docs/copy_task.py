"""An example task file: a task of your own in one file, which train.py takes with --data (docs/fork.md).

    python train.py --phase 2 --data docs/copy_task.py --preset tiny

The task: every document is a random string of letters, a marker, and the same string again, so each letter of the
second copy can be read from the first one, n + 1 tokens back for a string of n letters. The teacher ("long") reads
one string that fills its window; the students ("packed") read short strings packed end to end into theirs. The
probes score the second copy of short strings (what the students trained on) and of one string that fills the
window (what only the teacher trained on): the distillation question of the paper in another language.

A task is an evaluate.Task with a name, a vocabulary size and three methods: batch, probes, floors. Nothing else
in the project changes.
"""
import numpy as np

from data import pack_documents
from evaluate import Task

MARKER = 1  # between the two copies; 0 is the separator in front of every document (data.SEP)
LETTERS = 32  # tokens 2 .. 33
SHORT = (3, 7)  # the students' strings: 3 to 7 letters


def copy_document(rng, n):
    """(tokens, answers) of one document body: n letters, the marker, the n letters again (the answers)."""
    letters = rng.integers(2, 2 + LETTERS, n)
    tokens = np.concatenate([letters, [MARKER], letters])
    answers = np.zeros(len(tokens), dtype=bool)
    answers[n + 1:] = True
    return tokens, answers


def copy_windows(rng, window, n_windows, lengths):
    """n_windows windows of window + 1 tokens, each packed from documents whose string lengths lengths(rng) draws,
    its last document cut at the window's end (a cut keeps every answer's first copy inside the window)."""
    rows = []
    for _ in range(n_windows):
        docs = []
        answers = []
        while sum(len(d) + 1 for d in docs) < window + 1:  # each document with its separator
            tokens, ans = copy_document(rng, lengths(rng))
            docs.append(tokens)
            answers.append(ans)
        rows.append(pack_documents(docs, window + 1, answers=answers))  # its first window: this one
    return {key: np.concatenate([row[key][:1] for row in rows]) for key in rows[0]}


class CopyTask(Task):
    name = "copy-"  # in front of its runs' names
    vocab_size = 2 + LETTERS

    def batch(self, kind, window, batch_size, rng):
        if kind == "long":  # one string that fills the window
            return copy_windows(rng, window, batch_size, lambda r: window // 2 - 1)
        return copy_windows(rng, window, batch_size, lambda r: int(r.integers(SHORT[0], SHORT[1] + 1)))

    def probes(self, window, seed):
        rng = np.random.default_rng([seed, 7])
        return {"short copy": copy_windows(rng, window, 8, lambda r: SHORT[1]),
                "long copy": copy_windows(rng, window, 8, lambda r: window // 2 - 1)}

    def floors(self, window, seed):
        return {"short copy": 1 / LETTERS, "long copy": 1 / LETTERS}  # a guess among the letters


TASK = CopyTask()
