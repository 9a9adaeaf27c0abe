"""Byte-level BPE (GPT-2 style): the teacher's tokenizer, so that a student can share its vocabulary.

Paper idea: logit distillation (arXiv 2604.06070) compares the teacher's and the student's
next-token distributions token by token, so both must read the same tokens: a student
distilled from a real pretrained teacher is trained on text tokenized with the teacher's
own tokenizer. This is that tokenizer, built from the vocabulary and merges a GGUF file
carries (or vocab.json + merges.txt of an HF folder):

- text is split into pre-tokens by the GPT-2 regular expression (digits one by one when the
  model was trained so, as SmolLM2 was);
- each pre-token's UTF-8 bytes are mapped to printable characters (GPT-2 bytes_to_unicode),
- then pairs are merged by rank (lowest first) until no ranked pair is left (Sennrich et al. 2016).

Python's `re` has no \\p{L} / \\p{N}: letters are [^\\W\\d_] and numbers \\d, which is exact on
ASCII text and close elsewhere. Special tokens (<|endoftext|>, ...) are never produced from text.

  python tokenizer.py out/smollm2 "The capital of France is"
"""
import argparse
import json
import os
import re
import sys

SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+|{num}| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


def bytes_to_unicode() -> dict:
    """{byte: printable character}: printable Latin-1 bytes map to themselves, the rest to 256+ (GPT-2)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


class Tokenizer:
    """Byte-level BPE from a vocabulary {token string: id} and merges ["a b", ...] in rank order."""

    def __init__(self, vocab: dict, merges: list, split_digits=False, special=(), eos="<|endoftext|>"):
        self.vocab, self.inv = vocab, {i: t for t, i in vocab.items()}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.merges, self.split_digits, self.special = list(merges), split_digits, set(special)
        self.eos_id = vocab.get(eos, 0)
        self.pattern = re.compile(SPLIT.format(num=r"\d" if split_digits else r" ?\d+"))
        self.byte_char = bytes_to_unicode()
        self.char_byte = {c: b for b, c in self.byte_char.items()}
        self.cache = {}
        missing = [m for m in self.ranks if "".join(m) not in vocab]
        if missing:
            raise ValueError(f"merge {' '.join(missing[0])!r} makes a token that is not in the vocabulary")

    def __len__(self):
        return len(self.vocab)

    def bpe(self, word: str) -> list:
        """Merge the best-ranked adjacent pair (leftmost on ties) until no pair has a rank."""
        parts = list(word)
        while len(parts) > 1:
            rank, i = min((self.ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(parts, parts[1:])))
            if rank == float("inf"):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        try:
            return [self.vocab[p] for p in parts]
        except KeyError as e:  # a vocabulary without all 256 byte tokens
            raise ValueError(f"the vocabulary has no token for {e.args[0]!r}") from None

    def encode(self, text: str) -> list:
        ids = []
        for piece in self.pattern.findall(text):
            if piece not in self.cache:  # pre-tokens repeat a lot: each is merged once
                self.cache[piece] = self.bpe("".join(self.byte_char[b] for b in piece.encode("utf-8")))
            ids += self.cache[piece]
        return ids

    def decode(self, ids) -> str:
        out = bytearray()
        for i in ids:
            tok = self.inv[int(i)]
            out += tok.encode("utf-8") if tok in self.special else bytes(self.char_byte[c] for c in tok)
        return out.decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ files

    @classmethod
    def from_gguf_reader(cls, reader):
        """From a GGUF's tokenizer.ggml.* metadata (model 'gpt2' = byte-level BPE)."""
        from hf import FormatError, gguf_field
        kind = gguf_field(reader, "tokenizer.ggml.model")
        if kind != "gpt2":
            raise FormatError(f"GGUF tokenizer {kind!r} is not byte-level BPE ('gpt2')")
        tokens, merges = gguf_field(reader, "tokenizer.ggml.tokens"), gguf_field(reader, "tokenizer.ggml.merges")
        types = gguf_field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
        eos = tokens[gguf_field(reader, "tokenizer.ggml.eos_token_id", 0)]
        special = [t for t, k in zip(tokens, types) if k in (3, 4)]  # control, user-defined
        split_digits = gguf_field(reader, "tokenizer.ggml.pre") in ("smollm", "llama3", "qwen2", "deepseek-llm")
        return cls({t: i for i, t in enumerate(tokens)}, merges, split_digits, special,
                   "<|endoftext|>" if "<|endoftext|>" in tokens else eos)

    @classmethod
    def from_folder(cls, folder):
        """From vocab.json + merges.txt (+ tokenizer_config.json) in an HF-style folder."""
        try:
            with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
                vocab = json.load(f)
            with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
                merges = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#version")]
            conf_path = os.path.join(folder, "tokenizer_config.json")
            conf = json.load(open(conf_path, encoding="utf-8")) if os.path.isfile(conf_path) else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"no tokenizer in {folder}: {e}") from None
        return cls(vocab, merges, conf.get("split_digits", False), conf.get("special_tokens", ()),
                   conf.get("eos_token", "<|endoftext|>"))

    def files(self) -> dict:
        """{file name: writer(path)} for hf.write_folder: vocab.json, merges.txt, tokenizer_config.json."""
        def dump(obj):
            return lambda p: json.dump(obj, open(p, "w", encoding="utf-8"), ensure_ascii=False)

        def merges(p):
            with open(p, "w", encoding="utf-8") as f:
                f.write("#version: 0.2\n" + "".join(m + "\n" for m in self.merges))
        conf = {"tokenizer_class": "GPT2Tokenizer", "split_digits": self.split_digits,
                "special_tokens": sorted(self.special), "eos_token": self.inv[self.eos_id]}
        return {"vocab.json": dump(self.vocab), "merges.txt": merges, "tokenizer_config.json": dump(conf)}


def main():
    p = argparse.ArgumentParser(description="Tokenize text with a model folder's byte-level BPE and show the tokens.")
    p.add_argument("folder", help="folder with vocab.json and merges.txt (e.g. from hf.py convert-gguf)")
    p.add_argument("text", help="the text to tokenize")
    args = p.parse_args()
    try:
        tok = Tokenizer.from_folder(args.folder)
        ids = tok.encode(args.text)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(ids)
    print(" | ".join(tok.decode([i]) for i in ids))
    print(f"{len(ids)} tokens; round trip {'ok' if tok.decode(ids) == args.text else 'DIFFERS'}")


if __name__ == "__main__":
    main()
