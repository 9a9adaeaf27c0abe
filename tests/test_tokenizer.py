"""tokenizer.py: byte-level BPE round trips, merges by rank, digit splitting, files."""
import pytest

from tokenizer import Tokenizer, bytes_to_unicode


MERGES = ("Ġ t", "Ġt h", "Ġth e", "t h", "th e", "Ġ a", "Ġa n", "Ġan d", "1 2", "e e", "ee e")


def make(merges=MERGES, split_digits=False):
    """Every byte as a token, then one token per merge result, then one special token."""
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    return Tokenizer(vocab, list(merges), split_digits, special=["<|endoftext|>"])


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
    assert tok.encode("<|endoftext|>") != [tok.vocab["<|endoftext|>"]]  # specials never come from text
    # "eeee": "e e" (rank 9) merges the leftmost pair first, again, then nothing ranks "ee ee"
    assert [tok.decode([i]) for i in tok.encode("eeee")] == ["ee", "ee"]
    assert [tok.decode([i]) for i in tok.encode("eee")] == ["eee"]  # "e e" then "ee e"


def test_digits_split_one_by_one_when_the_model_was_trained_so():
    assert [make().decode([i]) for i in make().encode("x 123")] == ["x", " ", "12", "3"]
    tok = make(split_digits=True)
    assert [tok.decode([i]) for i in tok.encode("x 123")] == ["x", " ", "1", "2", "3"]


def test_files_round_trip(tmp_path):
    tok = make(split_digits=True)
    for name, write in tok.files().items():
        write(str(tmp_path / name))
    back = Tokenizer.from_folder(str(tmp_path))
    text = "the 42 ants and the bees"
    assert back.encode(text) == tok.encode(text) and back.split_digits
    assert back.eos_id == tok.vocab["<|endoftext|>"] and back.decode([back.eos_id]) == "<|endoftext|>"


def test_a_merge_outside_the_vocabulary_is_an_error():
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer({"a": 0, "b": 1}, ["a b"])


def test_a_byte_without_a_token_is_an_error_naming_it():
    with pytest.raises(ValueError, match="no token for 'b'"):
        Tokenizer({"a": 0}, []).encode("ab")
