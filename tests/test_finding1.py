"""research/finding1.py: the learning-curve area and the paired phase-wise vs small-kept table; its JSON has the schema
of research/notes/finding1.json."""
import json
import os

import pytest

from research import finding1
from evaluate import HELDOUT_SEEDS
from schema import assert_committed_schema


def test_area_is_the_mean_accuracy_over_the_logged_span():
    assert finding1.area([(0, 0.0), (250, 1.0), (500, 1.0)]) == pytest.approx(0.75)
    assert finding1.area([(0, 0.2), (750, 0.2)]) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        finding1.area([(0, 0.5)])


def write_run(out, name, accs, final, step0):
    """A run's step log (quick probes at 0, 250, ... with D = 32 and 256 / 768 / 900) and held-out results."""
    with open(out / f"{name}.jsonl", "w") as f:
        for i, a in enumerate(accs):
            f.write(json.dumps({"step": 250 * i, "eval": {"kv": {"32": 1.0, "256": a, "768": a, "900": a},
                                                          "in_doc": 0.5}}) + "\n")
            f.write(json.dumps({"step": 250 * i + 1, "loss": 1.0}) + "\n")
    kv = {str(d): final for d in finding1.DISTANCES}
    res = {"probe_seeds": list(HELDOUT_SEEDS), "results": {name: {"kv": kv, "in_doc": 0.6},
                                                          "step 0": {"kv": {str(d): step0 for d in finding1.DISTANCES},
                                                                     "in_doc": 0.1}}}
    (out / f"{name}.json").write_text(json.dumps(res))


def test_curve_reads_the_quick_probes_at_long_range_only(tmp_path):
    write_run(tmp_path, "r", [0.0, 0.3, 0.9], 1.0, 0.0)
    assert finding1.curve(str(tmp_path / "r.jsonl")) == [(0, 0.0), (250, pytest.approx(0.3)), (500, pytest.approx(0.9))]


def test_end_to_end_pairs_the_two_schedules_per_phase1_seed(tmp_path):
    out, docs = tmp_path / "out", tmp_path / "docs"
    out.mkdir()
    write_run(out, "phase2-kd-b10000-b500000", [0.0, 1.0, 1.0, 1.0], 1.0, 0.02)  # phase-1 seed 0: phase-wise fast
    write_run(out, "phase2-kd-b10000-b10000", [0.0, 0.0, 1.0, 1.0], 1.0, 0.03)  # ... small kept slower
    write_run(out, "phase2-kd-b10000-b500000-p1", [0.0, 0.0, 0.0, 0.0], 0.1, 0.02)  # seed 1 lacks its pair
    finding1.main(["--out-dir", str(out), "--phase1-seeds", "0", "1", "--docs-dir", str(docs)])
    rows = json.loads((docs / "finding1.json").read_text())["rows"]
    assert [(r["phase1_seed"], r["schedule"]) for r in rows] == [(0, "phase-wise 1e4->5e5"), (0, "small kept 1e4->1e4")]
    assert rows[0]["auc"] == pytest.approx(5 / 6) and rows[1]["auc"] == pytest.approx(0.5)
    assert rows[0]["at_250"] == pytest.approx(1.0) and rows[1]["step0"] == [0.03] * 4
    md = (docs / "finding1.md").read_text()
    assert md == finding1.markdown(rows)
    assert "seed 0: +0.33" in md and "in 1 of 1" in md
    assert_committed_schema("research.finding1", docs / "finding1.json")


def test_refuses_a_folder_without_pairs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        finding1.main(["--out-dir", str(tmp_path), "--docs-dir", str(tmp_path / "docs")])
    assert e.value.code != 0 and "both KD students" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "docs")
