"""formats/hf.py and formats/gguf.py: a config.json or GGUF metadata value of the wrong type, null or zero is one
FormatError line (exit 2 from the command line), never a traceback, before anything is used or built."""
import json
import os

import pytest

from formats import hf
from formats.hf import FormatError
from model import GPT, GPTConfig

BASE = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "intermediate_size": 48, "max_position_embeddings": 128}


@pytest.mark.parametrize("change, says", [
    ({"rope_theta": "abc"}, "rope_theta must be a finite number > 0, got 'abc'"),
    ({"rope_theta": None}, "rope_theta must be a finite number > 0, got None"),
    ({"rope_theta": [10000.0]}, "rope_theta must be a finite number > 0, got [10000.0]"),
    ({"rope_theta": 0}, "rope_theta must be a finite number > 0, got 0"),
    ({"rope_scaling": "linear"}, "rope_scaling must be an object or null, got 'linear'"),
    ({"rope_scaling": ["linear", 2.0]}, "rope_scaling must be an object or null"),
    ({"rope_parameters": "default"}, "rope_parameters must be an object or null, got 'default'"),
    ({"rope_scaling": {"rope_type": 7, "factor": 2.0}}, "the rope type must be a string, got 7"),
    ({"rope_scaling": {"rope_type": "linear", "factor": None}}, "rope_scaling"),
    ({"rope_scaling": {"rope_type": "linear", "factor": "two"}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": "1e4"}}, "rope_theta must be a finite number"),
    ({"rms_norm_eps": "1e-5"}, "rms_norm_eps must be a finite number > 0, got '1e-5'"),
    ({"rms_norm_eps": None}, "rms_norm_eps must be a finite number > 0, got None"),
])
def test_config_values_of_the_wrong_type_are_one_format_error(change, says):
    with pytest.raises(FormatError, match="config.json") as e:
        hf.config_from_hf(dict(BASE, **change))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_folder_with_a_text_rope_theta_is_one_error_line_and_exit_2(tmp_path, capsys):
    folder = str(tmp_path / "m")
    hf.save_hf_folder(GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=2, n_kv_head=2, d_model=32, d_ff=48)), folder)
    cfg = json.load(open(os.path.join(folder, hf.CONFIG)))
    json.dump(dict(cfg, rope_theta="abc", rope_scaling="linear"), open(os.path.join(folder, hf.CONFIG), "w"))
    with pytest.raises(SystemExit) as e:
        hf.main(["info", folder])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: config.json: rope_scaling"), err


def write_header_only_gguf(path, **heads):
    """A llama GGUF with metadata and no tensors: embedding 64, one block, the given head counts (None: absent)."""
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_feed_forward_length(64)
    if heads.get("head_count") is not None:
        w.add_head_count(heads["head_count"])
    if heads.get("head_count_kv") is not None:
        w.add_head_count_kv(heads["head_count_kv"])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


@pytest.mark.parametrize("heads, says", [({"head_count": 0}, "llama.attention.head_count must be an integer >= 1, "
                                          "got 0"),
                                         ({}, "llama.attention.head_count is missing"),
                                         ({"head_count": 4, "head_count_kv": 0}, "head_count_kv must be an integer")])
def test_gguf_head_counts_of_zero_or_missing_are_one_error_line(tmp_path, capsys, heads, says):
    path = str(tmp_path / "zero.gguf")
    write_header_only_gguf(path, **heads)
    with pytest.raises(SystemExit) as e:
        hf.main(["convert-gguf", path, str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and says in err[0], err
    assert os.listdir(tmp_path) == ["zero.gguf"]
