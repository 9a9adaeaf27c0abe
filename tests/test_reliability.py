"""Loading never runs code; bad input is one line on stderr, a non-zero exit, and nothing written."""
import dataclasses
import hashlib
import os

import pytest
import torch

import train
from data import TaskSpec
from model import GPT, CheckpointError, GPTConfig, load_checkpoint, save_checkpoint

TINY = ["--preset", "tiny", "--threads", "1", "--device", "cpu"]


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pt")
    torch.save({"model": Hostile(marker), "config": {}, "step": 0}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    with pytest.raises(SystemExit):
        train.main(["--phase", "1", "--out-dir", str(tmp_path / "o"), "--teacher", path] + TINY)
    assert not marker.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def snapshot(folder):
    return {f: hashlib.md5(open(os.path.join(folder, f), "rb").read()).hexdigest() for f in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """An output folder with a finished tiny teacher, plus some bad files."""
    d = tmp_path_factory.mktemp("work")
    out = str(d / "out")
    train.main(["--phase", "teacher", "--out-dir", out, "--curriculum-steps", "0", "--steps", "2"] + TINY)
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=50, d_model=16, n_head=2, n_kv_head=2, n_layer=1))
    save_checkpoint({"model": m.state_dict(), "config": dataclasses.asdict(m.config), "step": 1, "done": True,
                     "phase": "1"}, str(d / "vocab50.pt"))
    (d / "cut.pt").write_bytes(open(os.path.join(out, "teacher.pt"), "rb").read()[:300])
    (d / "empty.txt").write_text("")
    (d / "odd.bin").write_bytes(b"\x01\x02\x03")
    assert TaskSpec().vocab_size != 50
    return d


BAD = {
    "vocab mismatch": (["--phase", "1", "--teacher", "{d}/vocab50.pt"], "vocabulary"),
    "window < doc length": (["--phase", "2", "--window", "8", "--max-doc-len", "16"], "smaller than the document"),
    "zero base": (["--phase", "1", "--rope-base", "0"], "rope-base"),
    "inf base": (["--phase", "1", "--rope-base", "inf"], "rope-base"),
    "nan base": (["--phase", "1", "--rope-base", "nan"], "rope-base"),
    "unknown rope_type": (["--phase", "1", "--rope-scaling", '{"rope_type": "foo"}'], "unknown rope_type"),
    "missing scaling key": (["--phase", "1", "--rope-scaling", '{"rope_type": "yarn", "factor": 4}'],
                            "original_max_position_embeddings"),
    "bad scaling json": (["--phase", "1", "--rope-scaling", "{yarn"], "rope-scaling"),
    "zero steps": (["--phase", "1", "--steps", "0"], "steps"),
    "negative batch": (["--phase", "1", "--batch-size", "-2"], "batch-size"),
    "zero lr": (["--phase", "1", "--lr", "0"], "lr"),
    "zero temperature": (["--phase", "1", "--temperature", "0"], "temperature"),
    "kd weight > 1": (["--phase", "1", "--kd-weight", "1.5"], "kd-weight"),
    "missing teacher": (["--phase", "1", "--teacher", "{d}/nope.pt"], "not found"),
    "truncated teacher": (["--phase", "1", "--teacher", "{d}/cut.pt"], "cut.pt"),
    "init of another architecture": (["--phase", "2", "--init", "{d}/vocab50.pt", "--no-baseline"], "vocabulary 50"),
    "init model size differs": (["--phase", "2", "--init", "{d}/out/teacher.pt", "--d-model", "64",
                                 "--no-baseline"], "phase-1"),
    "empty data file": (["--phase", "teacher", "--data", "{d}/empty.txt"], "no text"),
    "odd .bin": (["--phase", "teacher", "--data", "{d}/odd.bin"], "uint16"),
    "finished run": (["--phase", "teacher"], "finished run"),
    "resume without checkpoint": (["--phase", "1", "--resume"], "no checkpoint"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, workdir, capsys):
    argv, match = BAD[case]
    argv = [a.replace("{d}", str(workdir)) for a in argv] + ["--out-dir", str(workdir / "out")]
    before = snapshot(workdir / "out")
    with pytest.raises(SystemExit) as e:
        train.main(argv + TINY)
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0], err
    assert snapshot(workdir / "out") == before


def test_same_seed_same_losses(tmp_path):
    for name in ("a", "b"):
        train.main(["--phase", "teacher", "--out-dir", str(tmp_path / name), "--steps", "6"] + TINY)
    logs = [open(tmp_path / n / "teacher.jsonl").read() for n in ("a", "b")]
    strip = lambda s: [{k: v for k, v in eval(l.replace("NaN", "None")).items() if k != "tok_s"}
                       for l in s.splitlines()]
    assert strip(logs[0]) == strip(logs[1])
