"""The main job, pinned: a few phase-2 steps of the KD student and its CE twin from the shipped checkpoints, in float32
on one thread, give these per-step losses and this probe table, bit for bit.

Any change that moves code around must leave these numbers as they are; a change that means to alter them (a new
shipped student, another way of running the twin) rewrites the pin in a commit of its own that says why:

    PIN_WRITE=1 python -m pytest -q tests/test_main_job.py

Float32 sums come out in another order on another instruction set, so the pin is kept per CPU capability (torch's
name for the vector unit it uses: AVX2, AVX512, ...); on a CPU without a pin of its own the run is compared with
the pins of the others, the losses to 1e-4 relative and every accuracy to 0.02.
"""
import json
import os

import pytest
import torch

import train

PIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pins", "main_job.json")
ARGV = ["--phase", "2", "--rope-base", "500000", "--steps", "3", "--dtype", "float32", "--threads", "1"]
RUNS = ("phase2-kd-b10000-b500000", "phase2-ce-b10000-b500000")


def observed(out):
    """{run: {"log": the step log (steps and quick probes), "results": the probe table, "floors": ...}}."""
    got = {}
    for name in RUNS:
        with open(os.path.join(out, name + ".jsonl")) as f:
            log = [json.loads(line) for line in f]
        with open(os.path.join(out, name + ".json")) as f:
            res = json.load(f)
        got[name] = {"log": [{k: v for k, v in r.items() if k != "tok_s"} for r in log],
                     "results": res["results"], "floors": res["floors"]}
    return got


def close(a, b):
    """Equal within the cross-CPU tolerance: losses 1e-4 relative, accuracies 0.02 absolute."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        if a != a or b != b:  # NaN: the CE twin's KL
            return a != a and b != b
        return a == pytest.approx(b, rel=1e-4, abs=0.02 if abs(a) <= 1 else 0)
    return a == b


def test_the_main_job_gives_its_pinned_losses_and_probe_table(tmp_path):
    train.main(ARGV + ["--out-dir", str(tmp_path)])
    got = observed(tmp_path)
    capability = torch.backends.cpu.get_cpu_capability()
    pins = json.load(open(PIN)) if os.path.exists(PIN) else {}
    if os.environ.get("PIN_WRITE"):
        pins[capability] = got
        os.makedirs(os.path.dirname(PIN), exist_ok=True)
        with open(PIN, "w") as f:
            json.dump(pins, f, indent=1)
    assert pins, f"no pin in {PIN}"
    if capability in pins:
        assert json.dumps(got, sort_keys=True) == json.dumps(pins[capability], sort_keys=True)  # bit for bit
    else:
        assert any(close(got, pin) for pin in pins.values())
    kd, ce = got[RUNS[0]]["log"], got[RUNS[1]]["log"]
    assert [r["step"] for r in kd if "loss" in r] == [1, 2, 3] == [r["step"] for r in ce if "loss" in r]
