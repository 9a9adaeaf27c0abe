"""Real files into documents: UTF-8 text read as bytes (or a tokenizer's ids) and nanoGPT `.bin` token files
(uint16), split into documents that longctx/corpus.py cuts, holds out and packs with data.pack_documents.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) packs short documents end to end into a long window. On
a real corpus (train.py --data) the documents are a file's paragraphs, a folder's files, or a `.bin` file's spans
between end-of-text ids, cut to at most --max-doc-len tokens; the packer and everything after it are the synthetic
task's.
"""
import os

import numpy as np


class DataError(ValueError):
    """A data file that cannot be used (missing, empty, unreadable, malformed)."""


def read_text_documents(path, min_len=1, encode=None):
    """UTF-8 text as bytes (token = byte + 1; 0 is SEP; vocabulary 257), or as the ids of
    `encode(text)` (a teacher's tokenizer, formats/tokenizer.py).

    A folder gives one document per file (sorted by name); a file gives one document per
    paragraph (split at blank lines).
    """
    if not os.path.exists(path):
        raise DataError(f"data path not found: {path}")
    files = sorted(os.path.join(path, f) for f in os.listdir(path)) if os.path.isdir(path) else [path]
    files = [f for f in files if os.path.isfile(f)]
    docs = []
    for f in files:
        try:
            with open(f, "rb") as fh:
                raw = fh.read()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {f} as UTF-8 text: {e}") from None
        parts = [text] if os.path.isdir(path) else text.split("\n\n")
        docs += [np.array(encode(p), dtype=np.int64) if encode else
                 np.frombuffer(p.encode("utf-8"), dtype=np.uint8).astype(np.int64) + 1 for p in parts
                 if len(p.strip()) >= min_len]
    if not docs:
        raise DataError(f"no text found in {path}")
    return docs


def read_bin_documents(path, eot_id, vocab_size):
    """nanoGPT `.bin` (flat uint16 ids), memory-mapped, split into documents at eot_id."""
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path}")
    size = os.path.getsize(path)
    if size == 0 or size % 2:
        raise DataError(f"{path}: {size} bytes is not a whole number of uint16 tokens" if size else
                        f"{path} is empty")
    ids = np.memmap(path, dtype=np.uint16, mode="r")
    if int(ids.max()) >= vocab_size:
        raise DataError(f"{path}: token id {int(ids.max())} is outside the vocabulary of {vocab_size}")
    cuts = np.flatnonzero(ids == eot_id)
    docs = [np.asarray(d, dtype=np.int64) for d in np.split(ids, cuts) if len(d)]
    docs = [d[1:] if d[0] == eot_id else d for d in docs]  # the packer adds the separator
    return [d for d in docs if len(d)]
