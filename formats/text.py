"""nanoGPT `.bin` token files (uint16) split into documents, which data.build_corpus cuts, holds out and packs.

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) packs short documents end to end into a long window. On
a real corpus the documents are a file's paragraphs (data.read_text_documents) or, here, a `.bin` file's spans
between end-of-text ids (python -m variants --data FILE.bin --eot-id ID), cut to at most --max-doc-len tokens; the
packer and everything after it are the synthetic task's.
"""
import os

import numpy as np

from data import DataError


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
