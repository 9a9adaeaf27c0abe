"""Byte-level BPE (GPT-2 style): the teacher's tokenizer, so that a student can share its vocabulary.

Paper idea: logit distillation (arXiv 2604.06070) compares the teacher's and the student's
next-token distributions token by token, so both must read the same tokens: a student
distilled from a real pretrained teacher is trained on text tokenized with the teacher's
own tokenizer, split exactly as the teacher's was. This is that tokenizer, built from the
vocabulary and merges a GGUF file carries (or an HF folder's tokenizer.json, or its
vocab.json + merges.txt):

1. added tokens, special (<|endoftext|>) or not, found in the text become their own ids, as
   Hugging Face `tokenizers` does (a GGUF's control and unknown tokens are special, its user-defined
   ones plain added tokens: GGUF_TOKEN_TYPES);
2. the rest is split into pre-tokens as the model's pre-tokenizer names it (PRE_TOKENIZERS):
   "gpt-2" is the GPT-2 regular expression; "smollm" / "starcoder" first split every digit
   off on its own, then apply the GPT-2 expression to each piece (so "  2024" is "  " and
   four digits, not " " and " 2024");
3. each pre-token's UTF-8 bytes are mapped to printable characters (GPT-2 bytes_to_unicode),
4. then pairs are merged by rank (lowest first) until no ranked pair is left (Sennrich et al. 2016);
   with `ignore_merges`, a pre-token that is itself in the vocabulary is that one token.

Any other pre-tokenizer name is refused: its ids would differ silently. So is any tokenizer.json feature
this file does not compute (an added token's lstrip / rstrip / single_word, a template post-processor,
truncation, padding), each in one line naming it. Tested id for id
against the `tokenizers` library configured as SmolLM2's tokenizer.json defines it.
`\\p{L}` / `\\p{N}` need the `regex` package (Python's `re` has no Unicode classes).

  python -m formats.tokenizer out/smollm2 "The capital of France is"
"""
import argparse
import json
import os
import sys

try:
    import regex
except ImportError:  # pragma: no cover - the message is the point
    regex = None

# GPT-2's pre-tokenizer (openai/gpt-2 encoder.py; `tokenizers` ByteLevel with use_regex=True)
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
DIGIT = r"\p{N}"  # `tokenizers` Digits(individual_digits=True): every numeric character on its own
# {GGUF tokenizer.ggml.pre: expressions applied in turn, each to the pieces the previous one left}
PRE_TOKENIZERS = {"gpt-2": [GPT2_SPLIT], "smollm": [DIGIT, GPT2_SPLIT], "starcoder": [DIGIT, GPT2_SPLIT]}
# the same two pre-tokenizers as a tokenizer.json writes them
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
DIGITS = {"type": "Digits", "individual_digits": True}
# {GGUF tokenizer.ggml.token_type: what the token is here}: llama.cpp's types, as convert_hf_to_gguf.py writes a
# tokenizer.json's tokens (special added tokens CONTROL, the other added tokens USER_DEFINED)
GGUF_TOKEN_TYPES = {1: "normal", 2: "special", 3: "special", 4: "added", 5: "normal", 6: "normal"}


def bytes_to_unicode() -> dict:
    """{byte: printable character}: printable Latin-1 bytes map to themselves, the rest to 256+ (GPT-2)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def split_with(pattern, text: str) -> list:
    """Every match of `pattern` in text, and the text between matches, in order (nothing dropped)."""
    pieces, at = [], 0
    for m in pattern.finditer(text):
        pieces += [text[at:m.start()], m.group()] if m.start() > at else [m.group()]
        at = m.end()
    return pieces + ([text[at:]] if at < len(text) else [])


def token_text(tok) -> str:
    """A special token as a string, or as an HF AddedToken dict ({"content": ..., ...})."""
    return tok.get("content") if isinstance(tok, dict) else tok


class Tokenizer:
    """Byte-level BPE from a vocabulary {token string: id}, merges ["a b", ...] in rank order and
    the name of its pre-tokenizer (a key of PRE_TOKENIZERS). special / added: the added tokens, split out of
    the text before anything else, with and without the special flag."""

    def __init__(self, vocab: dict, merges: list, pre="gpt-2", special=(), eos="<|endoftext|>", added=(),
                 ignore_merges=False):
        if regex is None:
            raise ValueError("the tokenizer needs the regex package (\\p{L}, \\p{N}): pip install regex")
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"pre-tokenizer {pre!r} is not supported ({', '.join(PRE_TOKENIZERS)}): "
                             "its splits, and so its ids, would differ from the model's")
        self.vocab, self.inv = vocab, {i: t for t, i in vocab.items()}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.merges, self.pre, self.special = list(merges), pre, set(special)
        self.added, self.ignore_merges = set(added) - self.special, bool(ignore_merges)
        self.eos_id = vocab.get(eos, 0)
        self.patterns = [regex.compile(p) for p in PRE_TOKENIZERS[pre]]
        longest_first = sorted(self.special | self.added, key=len, reverse=True)
        self.special_pattern = regex.compile("|".join(map(regex.escape, longest_first))) if longest_first else None
        self.byte_char = bytes_to_unicode()
        self.char_byte = {c: b for b, c in self.byte_char.items()}
        self.cache = {}
        missing = [m for m in self.ranks if "".join(m) not in vocab]
        if missing:
            raise ValueError(f"merge {' '.join(missing[0])!r} makes a token that is not in the vocabulary")
        absent = sorted(t for t in self.special | self.added if t not in vocab)
        if absent:
            raise ValueError(f"{'special' if absent[0] in self.special else 'added'} token {absent[0]!r} is not in "
                             f"the vocabulary")

    @property
    def split_digits(self) -> bool:
        return DIGIT in PRE_TOKENIZERS[self.pre]

    def __len__(self):
        return len(self.vocab)

    def pre_tokenize(self, text: str) -> list:
        """The pre-tokens of text without special tokens: each expression splits what the last one left."""
        pieces = [text]
        for pattern in self.patterns:
            pieces = [p for piece in pieces for p in split_with(pattern, piece)]
        return pieces

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

    def encode_ordinary(self, text: str) -> list:
        """Ids of text read as plain text (a special token's string is tokenized like any other)."""
        ids = []
        for piece in self.pre_tokenize(text):
            if piece not in self.cache:  # pre-tokens repeat a lot: each is merged once
                word = "".join(self.byte_char[b] for b in piece.encode("utf-8"))
                self.cache[piece] = [self.vocab[word]] if self.ignore_merges and word in self.vocab else self.bpe(word)
            ids += self.cache[piece]
        return ids

    def encode(self, text: str) -> list:
        """Ids of text; an added token's exact string becomes its id (as `tokenizers` does)."""
        if self.special_pattern is None:
            return self.encode_ordinary(text)
        ids = []
        for piece in split_with(self.special_pattern, text):
            ids += [self.vocab[piece]] if piece in self.special or piece in self.added else self.encode_ordinary(piece)
        return ids

    def decode(self, ids) -> str:
        out = bytearray()
        for i in ids:
            tok = self.inv[int(i)]
            raw = tok in self.special or tok in self.added  # added tokens are their text, not mapped bytes
            out += tok.encode("utf-8") if raw else bytes(self.char_byte[c] for c in tok)
        return out.decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ files

    @classmethod
    def from_gguf(cls, field):
        """From a GGUF's tokenizer.ggml.* metadata; field(key) -> value or None (hf.gguf_field)."""
        kind = field("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"GGUF tokenizer {kind!r} is not byte-level BPE ('gpt2')")
        pre = field("tokenizer.ggml.pre")
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"GGUF pre-tokenizer tokenizer.ggml.pre = {pre!r} is not supported "
                             f"({', '.join(PRE_TOKENIZERS)}): its splits, and so its ids, would differ")
        tokens, merges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.merges")
        types = field("tokenizer.ggml.token_type") or [1] * len(tokens)
        unknown = sorted(set(types) - set(GGUF_TOKEN_TYPES))
        if unknown:
            raise ValueError(f"GGUF tokenizer.ggml.token_type {unknown[0]!r} is not a llama.cpp token type "
                             f"({', '.join(map(str, GGUF_TOKEN_TYPES))})")
        eos = tokens[field("tokenizer.ggml.eos_token_id") or 0]
        kind = [GGUF_TOKEN_TYPES[k] for k in types]
        return cls({t: i for i, t in enumerate(tokens)}, merges, pre,
                   [t for t, k in zip(tokens, kind) if k == "special"],
                   "<|endoftext|>" if "<|endoftext|>" in tokens else eos,
                   added=[t for t, k in zip(tokens, kind) if k == "added"])

    @classmethod
    def from_folder(cls, folder):
        """From an HF-style folder: tokenizer.json when there is one, else vocab.json + merges.txt;
        special tokens from tokenizer_config.json (eos_token as a string or an AddedToken dict, and
        added_tokens_decoder)."""
        try:
            conf = read_json_file(os.path.join(folder, "tokenizer_config.json"), {})
            full = read_json_file(os.path.join(folder, "tokenizer.json"), None)
            ignore_merges = False
            if full is not None:
                vocab, merges, pre, added, ignore_merges = parse_tokenizer_json(full)
            else:
                vocab = read_json_file(os.path.join(folder, "vocab.json"))
                with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
                    merges = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#version")]
                pre = conf.get("pre_tokenizer", "smollm" if conf.get("split_digits") else "gpt-2")
                added = {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"no tokenizer in {folder}: {type(e).__name__}: {e}") from None
        decoder = conf.get("added_tokens_decoder") or {}
        if not isinstance(decoder, dict):
            raise ValueError(f"{folder}/tokenizer_config.json: added_tokens_decoder is not an object")
        for i, t in decoder.items():
            check_added_token(t, f"{folder}/tokenizer_config.json")
            added[token_text(t)] = (int(i), bool(t.get("special", True)) if isinstance(t, dict) else True)
        for text, (i, _) in added.items():
            if vocab.get(text, i) != i:
                raise ValueError(f"{folder}: added token {text!r} has id {i} but the vocabulary gives {vocab[text]}")
            vocab[text] = i
        special = [t for t, (_, is_special) in added.items() if is_special] + \
            [token_text(t) for t in conf.get("special_tokens", ())]
        eos = token_text(conf.get("eos_token")) or "<|endoftext|>"
        return cls(vocab, merges, pre, special, eos, [t for t, (_, is_special) in added.items() if not is_special],
                   ignore_merges)

    def files(self) -> dict:
        """{file name: writer(path)} for hf.write_folder: tokenizer.json (what transformers' AutoTokenizer
        and the `tokenizers` library read), tokenizer_config.json, and vocab.json + merges.txt."""
        def dump(obj):
            def write(p):
                with open(p, "w", encoding="utf-8") as f:
                    json.dump(obj, f, ensure_ascii=False)
            return write

        def merges(p):
            with open(p, "w", encoding="utf-8") as f:
                f.write("#version: 0.2\n" + "".join(m + "\n" for m in self.merges))
        added = {str(self.vocab[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": t in self.special}
                 for t in sorted(self.special | self.added, key=self.vocab.get)}
        conf = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "clean_up_tokenization_spaces": False,
                "eos_token": self.inv[self.eos_id], "bos_token": self.inv[self.eos_id],
                "unk_token": self.inv[self.eos_id], "added_tokens_decoder": added}
        return {"tokenizer.json": dump(self.tokenizer_json()), "tokenizer_config.json": dump(conf),
                "vocab.json": dump(self.vocab), "merges.txt": merges}

    def tokenizer_json(self) -> dict:
        """The `tokenizers` library's description of this tokenizer (same ids: tested)."""
        pre = {"type": "Sequence", "pretokenizers": [DIGITS, BYTE_LEVEL]} if self.split_digits else BYTE_LEVEL
        added = [{"id": self.vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": t in self.special}
                 for t in sorted(self.special | self.added, key=self.vocab.get)]
        return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
                "pre_tokenizer": pre, "post_processor": dict(BYTE_LEVEL, trim_offsets=False),
                "decoder": BYTE_LEVEL,
                "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                          "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                          "ignore_merges": self.ignore_merges, "vocab": self.vocab, "merges": self.merges}}


def read_json_file(path, default=...):
    """A JSON object from path; `default` when the file does not exist (if one is given)."""
    if default is not ... and not os.path.isfile(path):
        return default
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    if not isinstance(obj, dict):
        raise TypeError(f"{path} does not hold a JSON object")
    return obj


def check_added_token(tok, where):
    """ValueError naming the option of an added token (an AddedToken dict) that encode does not compute."""
    if isinstance(tok, dict):
        for option in ("lstrip", "rstrip", "single_word"):
            if tok.get(option):
                raise ValueError(f"{where}: added token {tok.get('content')!r} has {option}: true, which is not "
                                 "supported (its ids would differ)")


def parse_tokenizer_json(full: dict):
    """(vocab, merges, pre-tokenizer name, {added token: (id, special)}, ignore_merges) of a tokenizer.json this
    module reproduces exactly: byte-level BPE, no normalizer, ByteLevel or Sequence[Digits, ByteLevel], added
    tokens without lstrip / rstrip / single_word, no template post-processor, no truncation or padding."""
    model, pre = full.get("model") or {}, full.get("pre_tokenizer")
    post = full.get("post_processor")
    if post is not None and post.get("type") != "ByteLevel":  # ByteLevel changes offsets only
        raise ValueError(f"tokenizer.json: post_processor {post.get('type')!r} is not supported (it adds tokens)")
    for option in ("truncation", "padding"):
        if full.get(option) is not None:
            raise ValueError(f"tokenizer.json: {option} is not supported (it changes the ids of a text)")
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix") or model.get("dropout"):
        raise ValueError("tokenizer.json: only a plain byte-level BPE model is supported")
    if full.get("normalizer") is not None:
        raise ValueError(f"tokenizer.json: normalizer {full['normalizer'].get('type')!r} is not supported")
    name = {json.dumps(BYTE_LEVEL, sort_keys=True): "gpt-2",
            json.dumps({"type": "Sequence", "pretokenizers": [DIGITS, BYTE_LEVEL]}, sort_keys=True): "smollm"}
    if not isinstance(pre, dict) or pre.get("type") not in ("ByteLevel", "Sequence"):
        raise ValueError(f"tokenizer.json: pre_tokenizer {pre!r:.120} is not supported")
    key = dict(pre, pretokenizers=[dict(p, trim_offsets=True) if p.get("type") == "ByteLevel" else p
                                   for p in pre.get("pretokenizers", [])]) if pre["type"] == "Sequence" \
        else dict(pre, trim_offsets=True)  # trim_offsets changes offsets only, never ids
    if json.dumps(key, sort_keys=True) not in name:
        raise ValueError(f"tokenizer.json: pre_tokenizer {json.dumps(pre)[:120]} is not supported "
                         "(ByteLevel, or Sequence[Digits(individual_digits), ByteLevel], without a prefix space)")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    for t in full.get("added_tokens", []):
        check_added_token(t, "tokenizer.json")
    added = {t["content"]: (int(t["id"]), bool(t.get("special", True))) for t in full.get("added_tokens", [])}
    return dict(model["vocab"]), merges, name[json.dumps(key, sort_keys=True)], added, bool(model.get("ignore_merges"))


def main():
    p = argparse.ArgumentParser(description="Tokenize text with a model folder's byte-level BPE and show the tokens.")
    p.add_argument("folder", help="folder with tokenizer.json, or vocab.json and merges.txt (formats/hf.py convert-gguf)")
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
