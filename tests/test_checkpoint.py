"""Checkpoints (model.py) and model.load_model: files replaced whole or not at all; a hostile stored config refused in
one line before anything is built from it."""
import json
import os
import subprocess
import sys

import pytest
import torch

from model import GPT, CheckpointError, GPTConfig, load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(vocab_size=50, n_layer=1, n_head=2, n_kv_head=2, d_model=32)


@pytest.mark.parametrize("cfg", [SMALL, dict(SMALL, d_ff=48, tie_embeddings=False),
                                 dict(SMALL, n_layer=2, n_head=4, n_kv_head=2)])
def test_load_model_accepts_the_shapes_of_the_model_its_config_describes_and_refuses_others(cfg, tmp_path):
    model = GPT(GPTConfig(**cfg))
    built = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    path = str(tmp_path / "model.pt")
    torch.save({"model": model.state_dict(), "config": vars(model.config), "step": 0}, path)
    loaded, _ = load_model(path)
    assert {k: tuple(v.shape) for k, v in loaded.state_dict().items()} == built
    for name in built:  # any one tensor of another shape than its config needs: refused
        weights = dict(model.state_dict(), **{name: model.state_dict()[name][..., :-1]})
        torch.save({"model": weights, "config": vars(model.config), "step": 0}, path)
        with pytest.raises(CheckpointError, match=f"weights and config disagree: {name} has shape"):
            load_model(path)


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


# ----------------------------------------------------------------------------- files written whole or not at all


def with_a_full_disk(write, room=16):
    """write() in a forked child whose files may not grow past `room` bytes (RLIMIT_FSIZE: a write beyond it fails
    with EFBIG, as on a full disk). Returns the child's exit code: 1 when the write failed as it should."""
    import resource
    import signal
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
            resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))
            write()
        except BaseException:
            code = 1
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_results_json_and_log_rewrites_survive_a_full_disk_mid_write(tmp_path):
    """hf.write_json (realtext's results.json, exported config.json) and config.truncate_log (--resume's step log):
    a write that fails midway leaves the old file whole and no temp file beside it."""
    import config
    from formats import hf
    results, log = tmp_path / "results.json", tmp_path / "run.jsonl"
    results.write_text(json.dumps({"old": list(range(50))}))
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 30)))
    before = {p: p.read_bytes() for p in (results, log)}
    assert with_a_full_disk(lambda: hf.write_json(str(results), {"new": list(range(100))})) == 1
    assert with_a_full_disk(lambda: config.truncate_log(str(log), 20)) == 1
    assert {p: p.read_bytes() for p in (results, log)} == before
    assert sorted(os.listdir(tmp_path)) == ["results.json", "run.jsonl"]
    config.truncate_log(str(log), 20)  # with room on the disk: the records past step 20 go
    assert [json.loads(line)["step"] for line in open(log)] == list(range(1, 21))


WRITERS_OF_STREAMS = {  # open(..., "w" / "a") that is not a results file, a table or a log rewrite
    ("research/experiment.py", 1): "a launched run's stdout",
    ("research/grid.py", 1): "a launched run's stdout",
    ("config.py", 1): "the run lock's file (a pid, read only by a refused second process)",
    ("scale/loss_memory.py", 1): "/proc/self/clear_refs",
    ("train.py", 3): "the step log, appended to line by line (truncate_log rewrites it atomically); the CE twin's "
                     "stdout; /dev/null for the other ranks' stdout",
    ("formats/tokenizer.py", 2): "tokenizer files inside the temp folder that hf.write_folder renames into place",
}


def test_every_results_file_is_written_through_atomic_write():
    """No project file opens a file for writing except the streams listed above: results, tables and log
    rewrites go through atomic_write (a kill leaves the old file or the new, never half of one)."""
    import ast
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    found = {}
    for f in (f for f in files if not f.startswith("tests/")):
        for node in ast.walk(ast.parse(open(os.path.join(ROOT, f), encoding="utf-8").read())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
                modes = [a.value for a in node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]
                         if isinstance(a, ast.Constant)]
                if any(set(m) & set("wax") for m in modes):
                    found[f] = found.get(f, 0) + 1
    assert set(found.items()) == set(WRITERS_OF_STREAMS), found
