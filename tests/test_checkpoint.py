"""checkpoint.py and model.load_model: files replaced whole or not at all; a hostile stored config refused in one
line before anything is built from it."""
import json
import os
import subprocess
import sys

import pytest
import torch

from model import GPT, GPTConfig, atomic_write, gpt_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(vocab_size=50, n_layer=1, n_head=2, n_kv_head=2, d_model=32)


@pytest.mark.parametrize("cfg", [SMALL, dict(SMALL, d_ff=48, tie_embeddings=False),
                                 dict(SMALL, n_layer=2, n_head=4, n_kv_head=2)])
def test_gpt_shapes_are_the_shapes_of_the_model_it_describes(cfg):
    built = {k: tuple(v.shape) for k, v in GPT(GPTConfig(**cfg)).state_dict().items()}
    assert gpt_shapes(GPTConfig(**cfg)) == built


HOSTILE = {"vocab_2e31": {"vocab_size": 2**31}, "heads_0": {"n_head": 0}, "kv_heads_0": {"n_kv_head": 0},
           "layers_1e6": {"n_layer": 1_000_000}, "heads_text": {"n_head": "2"}, "vocab_float": {"vocab_size": 50.0},
           "base_text": {"rope_base": "abc"}, "base_nan": {"rope_base": float("nan")}, "eps_0": {"norm_eps": 0.0},
           "tie_text": {"tie_embeddings": "yes"}, "scaling_text": {"rope_scaling": "linear"},
           "scaling_incomplete": {"rope_scaling": {"rope_type": "linear"}}, "unknown_key": {"colour": 1},
           # within the bounds, but not what the stored tensors hold: refused before anything is built
           "vocab_4e6": {"vocab_size": 4_000_000}, "wide": {"d_model": 65536, "n_head": 512, "n_kv_head": 512,
                                                            "d_ff": 1 << 20}, "layers_1000": {"n_layer": 1000}}


def hostile_checkpoints(folder):
    """One .pt per HOSTILE case: a small model's weights under a config changed as the case says."""
    model = GPT(GPTConfig(**SMALL))
    paths = []
    for case, change in HOSTILE.items():
        path = os.path.join(folder, case + ".pt")
        torch.save({"model": model.state_dict(), "config": dict(vars(model.config), **change), "step": 0}, path)
        paths.append(path)
    path = os.path.join(folder, "config_list.pt")
    torch.save({"model": model.state_dict(), "config": [1, 2], "step": 0}, path)
    return paths + [path]


BOUNDED = """
import contextlib, io, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from formats import hf
report = []
for path in sys.argv[1:]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            hf.main(["export", path, path + "-hf"] if path.endswith("heads_0.pt") else ["info", path])
            code = 0
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # what must not happen: a traceback instead of one line
            code = type(e).__name__
    report.append([code, err.getvalue(), out.getvalue()])
print(json.dumps(report))
"""


def test_hostile_checkpoint_configs_are_one_error_line_each_in_bounded_memory(tmp_path):
    """`python -m formats.hf info` (and export) on a .pt whose config is absurd, zero, of the wrong type or at odds
    with its tensors: one `error:` line, exit 2, nothing written, all under a 4 GB address-space limit."""
    paths = hostile_checkpoints(str(tmp_path))
    before = sorted(os.listdir(tmp_path))
    run = subprocess.run([sys.executable, "-c", BOUNDED, *paths], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stderr[-3000:]
    for path, (code, err, out) in zip(paths, json.loads(run.stdout)):
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and not out, (path, code, err)
        assert os.path.basename(path) in lines[0]
    assert sorted(os.listdir(tmp_path)) == before
