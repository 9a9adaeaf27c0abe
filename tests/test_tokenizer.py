"""formats/tokenizer.py: byte-level BPE round trips, merges by rank, digit splitting, files."""
import json
import os

import pytest

from formats.tokenizer import Tokenizer, bytes_to_unicode


MERGES = ("Ġ t", "Ġt h", "Ġth e", "t h", "th e", "Ġ a", "Ġa n", "Ġan d", "1 2", "e e", "ee e")


def make(merges=MERGES, split_digits=False):
    """Every byte as a token, then one token per merge result, then one special token."""
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    return Tokenizer(vocab, list(merges), "smollm" if split_digits else "gpt-2", special=["<|endoftext|>"])


def test_bytes_to_unicode_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ"  # GPT-2's space marker


@pytest.mark.parametrize("text", ["the and then", "  two  spaces\n\nand lines\t", "Héllo, wörld! 日本語 🙂",
                                  "x = 12345; y_z = 'it's'", "", "<|endoftext|> is plain text here"])
def test_round_trip(text):
    for split_digits in (False, True):
        tok = make(split_digits=split_digits)
        assert tok.decode(tok.encode(text)) == text


def test_merges_apply_by_rank_and_words_keep_their_leading_space():
    tok = make()
    assert [tok.decode([i]) for i in tok.encode("the and then")] == ["the", " and", " the", "n"]
    eos = tok.vocab["<|endoftext|>"]
    assert tok.encode("the<|endoftext|>the") == tok.encode("the") + [eos] + tok.encode("the")  # as `tokenizers`
    assert eos not in tok.encode_ordinary("<|endoftext|>")
    # "eeee": "e e" (rank 9) merges the leftmost pair first, again, then nothing ranks "ee ee"
    assert [tok.decode([i]) for i in tok.encode("eeee")] == ["ee", "ee"]
    assert [tok.decode([i]) for i in tok.encode("eee")] == ["eee"]  # "e e" then "ee e"


def test_digits_split_one_by_one_when_the_model_was_trained_so():
    assert [make().decode([i]) for i in make().encode("x 123")] == ["x", " ", "12", "3"]
    tok = make(split_digits=True)
    assert [tok.decode([i]) for i in tok.encode("x 123")] == ["x", " ", "1", "2", "3"]


@pytest.mark.parametrize("legacy", [False, True])
def test_files_round_trip(tmp_path, legacy):
    """The folder written by files() reads back the same tokenizer; so does a folder of vocab.json, merges.txt
    and a tokenizer_config.json with split_digits (as earlier versions wrote them, without tokenizer.json)."""
    tok = make(split_digits=True)
    for name, write in tok.files().items():
        write(str(tmp_path / name))
    if legacy:
        os.remove(tmp_path / "tokenizer.json")
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(
            {"split_digits": True, "special_tokens": ["<|endoftext|>"], "eos_token": "<|endoftext|>"}))
    back = Tokenizer.from_folder(str(tmp_path))
    text = "the 42 ants and  the bees<|endoftext|>"
    assert back.encode(text) == tok.encode(text) and back.split_digits and back.pre == "smollm"
    assert back.eos_id == tok.vocab["<|endoftext|>"] and back.decode([back.eos_id]) == "<|endoftext|>"


def test_a_real_hf_folder_with_addedtoken_dicts_and_added_tokens_decoder(tmp_path):
    """transformers writes eos_token as an AddedToken dict and lists added tokens in added_tokens_decoder,
    which vocab.json may leave out."""
    tok = make()
    vocab = {t: i for t, i in tok.vocab.items() if t != "<|endoftext|>"}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    eos_id = len(vocab)
    added = {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
             "single_word": False, "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": dict(added, __type="AddedToken"), "added_tokens_decoder": {str(eos_id): added},
        "tokenizer_class": "GPT2Tokenizer"}))
    back = Tokenizer.from_folder(str(tmp_path))
    assert back.eos_id == eos_id and back.encode("the<|endoftext|>") == tok.encode("the") + [eos_id]
    assert back.decode([eos_id]) == "<|endoftext|>"


@pytest.mark.parametrize("pre", ["llama-bpe", "llama3", "qwen2", "deepseek-llm", None])
def test_an_unsupported_gguf_pre_tokenizer_is_refused(pre):
    tok = make()
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": list(tok.vocab),
            "tokenizer.ggml.merges": list(MERGES)}
    with pytest.raises(ValueError, match=f"tokenizer.ggml.pre = {pre!r} is not supported"):
        Tokenizer.from_gguf(meta.get)
    meta["tokenizer.ggml.pre"] = "smollm"
    assert Tokenizer.from_gguf(meta.get).split_digits


@pytest.mark.parametrize("text, pieces", [
    ("In the year  2024, 3.14", ["In", " the", " year", "  ", "2", "0", "2", "4", ",", " ", "3", ".", "1", "4"]),
    ("tab\t\t7", ["tab", "\t\t", "7"]),
    ("a  b\n\n  c ", ["a", " ", " b", "\n\n ", " c", " "]),  # \s+(?!\S): a run leaves its last space to the word
    ("it's x²½ ٣", ["it", "'s", " x", "²", "½", " ", "٣"]),
])
def test_smollm_pre_tokenizer_splits_digits_first_then_the_gpt2_expression(text, pieces):
    """Reference splits, as `tokenizers` Sequence[Digits(individual_digits), ByteLevel] gives them."""
    assert make(split_digits=True).pre_tokenize(text) == pieces


def test_a_merge_outside_the_vocabulary_is_an_error():
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer({"a": 0, "b": 1}, ["a b"])


def test_a_byte_without_a_token_is_an_error_naming_it():
    with pytest.raises(ValueError, match="no token for 'b'"):
        Tokenizer({"a": 0}, []).encode("ab")


def test_the_command_line_prints_a_folders_tokens_and_the_round_trip(tmp_path, monkeypatch, capsys):
    """`python -m formats.tokenizer FOLDER TEXT` on the files a tokenizer writes: the ids, the pieces, the round trip;
    a folder without a tokenizer is one error line, exit 2."""
    from formats import tokenizer
    tok = make()
    for name, write in tok.files().items():
        write(str(tmp_path / name))
    monkeypatch.setattr("sys.argv", ["tokenizer", str(tmp_path), " the and 12"])
    tokenizer.main()
    ids, pieces, summary = capsys.readouterr().out.splitlines()
    assert ids == str(tok.encode(" the and 12")) and pieces == " the |  and |   | 12"  # " 12": a space, then 12
    assert summary == f"{len(tok.encode(' the and 12'))} tokens; round trip ok"
    monkeypatch.setattr("sys.argv", ["tokenizer", str(tmp_path / "missing"), "text"])
    with pytest.raises(SystemExit) as e:
        tokenizer.main()
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error:")
