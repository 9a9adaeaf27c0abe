"""Your own text as training data: held-out text first, short documents for the students, long windows to test.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) trains the student on *short* documents packed into a
long window, while the teacher has read long ones. On a real corpus that means:

- the end of the text is held out first (never trained on): the end-of-run loss and the long-context report
  (longctx/report.py) read it;
- the teacher's windows hold whole documents in order, cut only by the window (it learns to use long context);
- the students' documents are chunks of at most --max-doc-len tokens, shuffled before they are packed, so that
  a window's documents are unrelated (in order they would be one long text with separators in it);
- the long held-out windows are the held-out text in order, whole documents behind their separators.
"""
import os
from typing import Callable, NamedTuple, Optional

import numpy as np

from data import pack_documents
from formats.text import DataError


class Corpus(NamedTuple):
    train: dict  # training windows: tokens, positions, doc_ids, each (N, L + 1)
    held_out: dict  # windows built like the training ones from the held-out text (the end-of-run loss)
    long: np.ndarray  # (M, L + 1) the held-out text in order (loss by distance, the passkey's filler)
    encode: Optional[Callable]  # text -> ids for the passkey test; None for token files (.bin)
    sep: int  # the separator in front of every document


def split_held_out(docs, n_tokens):
    """(training documents, held-out documents): the last n_tokens tokens of the text are held out (a document
    on the cut is cut in two)."""
    lengths = np.array([len(d) for d in docs])
    before = np.cumsum(lengths[::-1])[::-1] - lengths  # tokens after each document
    train, held = [], []
    for d, after in zip(docs, before):
        keep = max(0, len(d) - max(0, n_tokens - after))  # this document's tokens that stay in training
        if keep:
            train.append(d[:keep])
        if keep < len(d):
            held.append(d[keep:])
    return train, held


def short_documents(docs, max_doc_len, rng=None):
    """Every document cut into chunks of at most max_doc_len - 1 tokens (the separator makes max_doc_len), in
    order, or shuffled with `rng` (a window's documents unrelated, as the paper's short documents)."""
    body = max_doc_len - 1
    chunks = [d[i:i + body] for d in docs for i in range(0, len(d), body)]
    return chunks if rng is None else [chunks[i] for i in rng.permutation(len(chunks))]


def byte_ids(text):
    """Text as --data reads it without a tokenizer: each UTF-8 byte + 1 (0 is the separator; data.py)."""
    return (np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) + 1).tolist()


def build_corpus(docs, sep, window, max_doc_len, shuffle_seed=None, encode=None, fraction=0.05,
                 held_window=None) -> Corpus:
    """The documents of a file as a Corpus: the last `fraction` of the tokens held out (at least two windows of
    held_window, the longest window any phase on this text uses, so that every phase holds out the same text),
    the rest cut into documents of at most max_doc_len tokens (shuffled with shuffle_seed) and packed."""
    total = sum(len(d) + 1 for d in docs)
    n_held = max(int(fraction * total), 2 * (max(window, held_window or 0) + 1))
    if total - n_held < window + 1:
        raise DataError(f"the data holds {total:,} tokens: need at least {n_held + window + 1:,} (one training window "
                        f"of {window + 1} and {n_held:,} held out for the end-of-run report)")
    train_docs, held_docs = split_held_out(docs, n_held)
    rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
    train = pack_documents(short_documents(train_docs, max_doc_len, rng), window + 1, sep=sep)
    held = pack_documents(short_documents(held_docs, max_doc_len, rng), window + 1, sep=sep)
    if not len(train["tokens"]) or not len(held["tokens"]):
        raise DataError(f"the data holds fewer than {window + 1} tokens in its training or held-out part: not one "
                        f"window")
    long = pack_documents(held_docs, window + 1, sep=sep)["tokens"]  # (M, L + 1), whole documents in order
    return Corpus(train, held, long, encode, sep)


def data_prefix(args) -> str:
    """What --data's runs carry in front of their names, so that they never meet the synthetic language's (nor
    the shipped checkpoints): the corpus's file or folder name, the tokenizer's folder name (another vocabulary)
    and an explicit --vocab-size, e.g. "corpus-" or "corpus-smollm2-"; "" without --data."""
    if not args.data:
        return ""
    name = os.path.splitext(os.path.basename(os.path.normpath(args.data)))[0]
    name += f"-{os.path.basename(os.path.normpath(args.tokenizer))}" if args.tokenizer else ""
    return name + (f"-v{args.explicit_vocab}" if args.explicit_vocab else "") + "-"
