"""formats/tokenizer.py on each tokenizer.json feature: computed as the `tokenizers` library computes it (non-special
added tokens, ignore_merges), or refused in one line naming it (lstrip, rstrip, single_word, a template
post-processor, truncation, padding); and every GGUF token type and pre-tokenizer name it claims, pinned."""
import json

import pytest

from formats.tokenizer import GGUF_TOKEN_TYPES, PRE_TOKENIZERS, Tokenizer, bytes_to_unicode

tokenizers = pytest.importorskip("tokenizers", reason="the reference tokenizer: pip install tokenizers")

BYTES = list(bytes_to_unicode().values())  # ids 0..255: one token per byte


def ids(*tokens):
    """The ids of the small vocabulary's tokens ("Ġ" is the space byte)."""
    return [small().vocab[t] for t in tokens]


def written(tmp_path, tok, change=lambda full: None):
    """The folder tok.files() writes, its tokenizer.json changed by change(full); returns the folder."""
    for name, write in tok.files().items():
        write(str(tmp_path / name))
    full = json.loads((tmp_path / "tokenizer.json").read_text())
    change(full)
    (tmp_path / "tokenizer.json").write_text(json.dumps(full))
    return str(tmp_path)


def both(folder, text):
    """(ids here, ids in the `tokenizers` library) of text, both from folder/tokenizer.json."""
    ref = tokenizers.Tokenizer.from_file(folder + "/tokenizer.json")
    return Tokenizer.from_folder(folder).encode(text), ref.encode(text).ids


def small(**kw):
    """Bytes, "ab" (256) and "abc" (257) reached by no merge, "<tool>" (258) and <|endoftext|> (259)."""
    vocab = {**{c: i for i, c in enumerate(BYTES)}, "ab": 256, "abc": 257, "<tool>": 258, "<|endoftext|>": 259}
    return Tokenizer(vocab, ["a b"], "gpt-2", special=["<|endoftext|>"], **kw)


TEXT = "abc <tool>abc x<tool> <tool><|endoftext|>abcabc"


def test_a_non_special_added_token_is_split_out_of_the_text_as_the_tokenizers_library_does(tmp_path):
    def add_tool(full):
        full["added_tokens"].append({"id": 258, "content": "<tool>", "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": True, "special": False})
    ours, ref = both(written(tmp_path, small(), add_tool), TEXT)
    assert ours == ref and ours[:6] == ids("ab", "c", "Ġ", "<tool>", "ab", "c")
    tok = Tokenizer.from_folder(str(tmp_path))
    assert tok.decode(ours) == TEXT and "<tool>" in tok.added and "<tool>" not in tok.special


def test_ignore_merges_takes_a_pre_token_in_the_vocabulary_whole(tmp_path):
    def ignore(full):
        full["model"]["ignore_merges"] = True
    ours, ref = both(written(tmp_path, small(), ignore), "abc abc")
    assert ours == ref == ids("abc", "Ġ", "ab", "c")  # "abc" whole; " abc" is not in the vocabulary: merges
    assert small(ignore_merges=True).encode("abc") == [257] and small().encode("abc") == ids("ab", "c")


@pytest.mark.parametrize("option", ["lstrip", "rstrip", "single_word"])
def test_an_added_token_option_that_is_not_computed_is_refused_naming_it(tmp_path, option):
    def opt(full):
        full["added_tokens"][0][option] = True
    with pytest.raises(ValueError, match=f"added token '<\\|endoftext\\|>' has {option}: true") as e:
        Tokenizer.from_folder(written(tmp_path, small(), opt))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key, value, says", [
    ("post_processor", {"type": "TemplateProcessing", "single": [], "pair": [], "special_tokens": {}},
     "post_processor 'TemplateProcessing' is not supported"),
    ("truncation", {"max_length": 8, "strategy": "LongestFirst", "stride": 0, "direction": "Right"},
     "truncation is not supported"),
    ("padding", {"strategy": "BatchLongest", "pad_id": 0, "pad_token": "<pad>"}, "padding is not supported")])
def test_a_tokenizer_json_that_adds_or_cuts_tokens_is_refused(tmp_path, key, value, says):
    def change(full):
        full[key] = value
    with pytest.raises(ValueError, match=says):
        Tokenizer.from_folder(written(tmp_path, small(), change))


def gguf_meta(types, pre="gpt-2"):
    """GGUF tokenizer metadata: the small vocabulary with the given token_type per token."""
    tok = small()
    tokens = sorted(tok.vocab, key=tok.vocab.get)
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.eos_token_id": 259}.get


@pytest.mark.parametrize("kind, split, special", [(1, False, False), (2, True, True), (3, True, True),
                                                  (4, True, False), (5, False, False), (6, False, False)])
def test_every_gguf_token_type_is_what_llama_cpp_makes_of_it(tmp_path, kind, split, special):
    """<tool> (258) of each llama.cpp token type: normal, unused and byte tokens are vocabulary only; control and
    unknown tokens are special added tokens; user-defined ones are added tokens without the special flag. The
    written tokenizer.json gives the `tokenizers` library the same ids."""
    tok = Tokenizer.from_gguf(gguf_meta([1] * 258 + [kind, 3]))
    got = tok.encode("x<tool>")
    assert got == (ids("x", "<tool>") if split else ids("x", "<", "t", "o", "o", "l", ">"))
    assert ("<tool>" in tok.special) == special and ("<tool>" in tok.added) == (split and not special)
    assert both(written(tmp_path, tok), "x<tool> <tool>ab") == (tok.encode("x<tool> <tool>ab"),) * 2
    assert tok.vocab["<|endoftext|>"] in tok.encode("<|endoftext|>")


def test_a_token_type_llama_cpp_does_not_define_is_refused():
    assert sorted(GGUF_TOKEN_TYPES) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="token_type 7 is not a llama.cpp token type"):
        Tokenizer.from_gguf(gguf_meta([1] * 259 + [7]))


@pytest.mark.parametrize("pre, pieces", [
    ("gpt-2", ["In", " 2024", ",", "  ", " x", "'s", " ab"]),
    ("smollm", ["In", " ", "2", "0", "2", "4", ",", "  ", " x", "'s", " ab"]),
    ("starcoder", ["In", " ", "2", "0", "2", "4", ",", "  ", " x", "'s", " ab"])])
def test_every_gguf_pre_tokenizer_name_splits_as_pinned(pre, pieces):
    assert sorted(PRE_TOKENIZERS) == ["gpt-2", "smollm", "starcoder"]
    tok = Tokenizer.from_gguf(gguf_meta([1] * 259 + [3], pre))
    assert tok.pre_tokenize("In 2024,   x's ab") == pieces
