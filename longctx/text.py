"""Real text in a real model's tokens: the task of `python -m variants --data TEXT --tokenizer FOLDER` and of
`--data FILE.bin` (nanoGPT's uint16 token files).

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) distils a real long-context teacher into a student on real
short documents; the student must then read the text in the teacher's tokens. evaluate.TextTask reads text as bytes;
here the same task reads it in a byte-level BPE's ids (formats/tokenizer.py) with its end-of-text token between
documents, or reads token ids as a `.bin` file holds them. Their runs carry the text's and the tokenizer's names.
"""
import os

from config import fail
from evaluate import TextTask
from formats.text import read_bin_documents
from formats.tokenizer import Tokenizer


class BinTask(TextTask):
    """A `.bin` file's uint16 ids, documents split at eot_id."""

    def __init__(self, path, eot_id, vocab_size, name):
        super().__init__(path, None, eot_id, vocab_size, name)

    def documents(self):
        return read_bin_documents(self.path, self.sep, self.vocab_size)


def data_name(data, tokenizer, vocab_size):
    """What the runs of this data carry in front of their names, so that they never meet the byte-level runs of the
    same text (nor the shipped checkpoints): the data's file name, the tokenizer's folder name (another vocabulary)
    and an explicit vocabulary size, e.g. "corpus-smollm2-"."""
    name = os.path.splitext(os.path.basename(os.path.normpath(data)))[0]
    name += f"-{os.path.basename(os.path.normpath(tokenizer))}" if tokenizer else ""
    return name + (f"-v{vocab_size}" if vocab_size else "") + "-"


def real_text_task(args, tokenizer, eot_id, vocab_size):
    """The task of --data in --tokenizer's ids, or of a .bin file (--eot-id); vocab_size: an explicit --vocab-size."""
    name = data_name(args.data, tokenizer, vocab_size)
    if args.data.endswith(".bin"):
        vocab = vocab_size or 50304  # GPT-2's ids, padded
        if not 0 <= eot_id < min(vocab, 2**16):
            fail(f"--eot-id {eot_id} must be a uint16 token id below --vocab-size {vocab}")
        return BinTask(args.data, eot_id, vocab, name)
    try:
        tok = Tokenizer.from_folder(tokenizer)
    except ValueError as e:
        fail(f"--tokenizer: {e}")
    if vocab_size is not None and vocab_size < len(tok):
        fail(f"--vocab-size {vocab_size} is too small: the tokenizer's ids go up to {len(tok) - 1}")
    return TextTask(args.data, tok.encode, tok.eos_id, vocab_size or len(tok), name)
