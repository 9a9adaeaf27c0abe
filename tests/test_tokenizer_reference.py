"""formats/tokenizer.py against the `tokenizers` library: identical ids on >= 100 KB of varied text.

The reference is configured as SmolLM2's tokenizer.json defines it: pre-tokenizer
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)],
a byte-level BPE model, <|endoftext|> a special token. Its vocabulary and merges are learned by
`tokenizers`' own BPE trainer on part of the corpus (SmolLM2's 49,152 tokens are not shipped
with the project), so the merge table is a real one (about 900 ranks).
"""
import numpy as np
import pytest

from formats.tokenizer import Tokenizer

tokenizers = pytest.importorskip("tokenizers", reason="the reference tokenizer: pip install tokenizers")

WORDS = ("the and of to my thou thee thy lord king queen love death night day sweet fair heaven earth "
         "blood crown sword honour grace noble heart soul speak come go hence what why o alas good "
         "madam sir villain fool ghost father mother brother sister daughter").split()
NAMES = ["HAMLET", "OPHELIA", "MACBETH", "Lady Macbeth", "Viola", "Sir Toby Belch", "Horatio"]
CONTRACTIONS = ["'tis", "'twas", "o'er", "I'll", "we're", "they've", "I'm", "he'd", "it's", "don't", "IT'S"]
UNICODE = ["café", "naïve", "Straße", "Ærøskøbing", "日本語のテキスト", "中文字符", "한국어", "Ελληνικά", "русский",
           "עברית", "العربية", "🙂", "👍🏽", "🇫🇷", "e\u0301", "x²", "½", "Ⅻ", "٣٤٥", "१२३", "①", "…", "—", "«guillemets»",
           "\u00a0", "\u2009", "\u3000", "ﬁ"]
CODE = ["def f(x):\n    return x ** 2 + 1\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
        "if __name__ == \"__main__\":\n    main()\n", "x_1 = {'key': [1, 2.5, -3e-4]}  # comment\n",
        "<div class=\"a\">&amp;</div>\n", "SELECT * FROM t WHERE id=42;\n", "    \n\t\t  \n"]


def corpus(seed, n_bytes):
    """Varied text: play-like lines, numbers, whitespace runs, tabs, unicode, code and special tokens."""
    rng = np.random.default_rng(seed)
    out, size = [], 0
    while size < n_bytes:
        kind = rng.integers(7)
        if kind == 0:  # a speech
            words = " ".join(rng.choice(WORDS, rng.integers(3, 20)))
            piece = f"{rng.choice(NAMES)}. {words.capitalize()}{rng.choice(['.', '!', '?', ';', ','])}\n"
        elif kind == 1:  # numbers of every shape
            piece = rng.choice([f"In the year {rng.integers(1000, 2100)}, ", f"{rng.random() * 1000:.5f} ",
                                f"{rng.integers(0, 10**9):,} ", f"tel. +{rng.integers(1, 99)} {rng.integers(10**7, 10**8)} ",
                                f"v{rng.integers(0, 9)}.{rng.integers(0, 20)} ", f"{rng.integers(0, 100)}%"])
        elif kind == 2:  # whitespace runs: spaces, tabs, newlines, mixed, before words and digits
            ws = "".join(rng.choice([" ", "  ", "\t", "\n", "\r\n", "   "], rng.integers(1, 4)))
            piece = ws + rng.choice([str(rng.integers(0, 100)), rng.choice(WORDS), ""]) + rng.choice(["", " ", "\t"])
        elif kind == 3:
            piece = " ".join(rng.choice(UNICODE, rng.integers(1, 4))) + rng.choice([" ", "", "\n"])
        elif kind == 4:
            piece = rng.choice(CODE)
        elif kind == 5:
            piece = rng.choice(CONTRACTIONS) + rng.choice([" ", ", ", "  "])
        else:
            piece = rng.choice(["<|endoftext|>", "\n\n", " -- ", "(aside) ", "[Exit.] ", "_italic_ ", "**bold** "])
        out.append(piece)
        size += len(piece.encode("utf-8"))
    return "".join(out)


def reference(vocab, merges, digits=True):
    """`tokenizers` configured as SmolLM2's tokenizer.json (digits=True) or GPT-2's (False)."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
    ref = HFTokenizer(models.BPE(vocab, [tuple(m.split(" ")) for m in merges]))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    ref.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) \
        if digits else byte_level
    ref.decoder = decoders.ByteLevel()
    ref.add_special_tokens(["<|endoftext|>"])
    return ref


@pytest.fixture(scope="module")
def trained():
    """(vocab, merges) learned by `tokenizers`' BPE trainer on 60 KB of the corpus (the SmolLM2 layout)."""
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
    import json
    t = HFTokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator([corpus(1, 60_000)], trainer)
    model = json.loads(t.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    assert len(merges) > 500
    return model["vocab"], merges


@pytest.mark.parametrize("pre", ["smollm", "gpt-2"])
def test_ids_equal_the_tokenizers_library_on_100kb_of_varied_text(trained, pre):
    vocab, merges = trained
    text = corpus(2, 100_000)  # not the training text
    assert len(text.encode("utf-8")) >= 100_000
    ours = Tokenizer(dict(vocab), merges, pre, special=["<|endoftext|>"])
    ref = reference(vocab, merges, digits=pre == "smollm")
    expected = ref.encode(text).ids
    got = ours.encode(text)
    first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    assert got == expected, f"first difference at token {first}: {ours.decode(got[max(0, first - 3):first + 3])!r}"
    assert ours.decode(got) == text and len(got) > 20_000


def test_the_written_tokenizer_json_gives_the_same_ids_in_the_tokenizers_library(trained, tmp_path):
    """What formats/hf.py convert-gguf writes: tokenizers.Tokenizer.from_file(DIR/tokenizer.json), the file that
    transformers' AutoTokenizer.from_pretrained(DIR) reads, encodes as formats/tokenizer.py does."""
    from tokenizers import Tokenizer as HFTokenizer
    vocab, merges = trained
    ours = Tokenizer(dict(vocab), merges, "smollm", special=["<|endoftext|>"])
    for name, write in ours.files().items():
        write(str(tmp_path / name))
    text = corpus(3, 30_000)
    loaded = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert loaded.encode(text).ids == ours.encode(text)
    assert loaded.decode(ours.encode(text), skip_special_tokens=False) == text
    assert Tokenizer.from_folder(str(tmp_path)).encode(text) == ours.encode(text)
