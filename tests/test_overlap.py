"""research/overlap.py: the sweep's rows from band files and earlier sweeps, the rates from the file names, the
measured overlap; the sweep's JSON (its --out) has the schema of research/notes/overlap.json."""
import json

import pytest

from research.overlap import collect, long_range, main, overlap_markdown, overlap_stats, rate_of
from schema import assert_committed_schema


def band_file(path, seed, arms, value):
    rows = [{"phase1_seed": seed, "phase2_seed": 0, "arm": a, "distances": [256, 512, 768, 900], "kv": [value] * 4,
             "in_doc": 0.5} for a in arms]
    path.write_text(json.dumps(rows))
    return str(path)


def test_rates_come_from_the_file_names():
    assert rate_of("out/band-p0-rec0-s0.json") == 0.0
    assert rate_of("out/band-p9-rec0.25-s1.json") == 0.25
    assert rate_of("out/band-p9-at1000-s0.json") is None and rate_of("research/notes/leakfree.json") is None


def test_collect_keeps_the_swept_students_defaults_and_nothing_else(tmp_path):
    files = [band_file(tmp_path / "band-p0-rec0-s0.json", 0, ["kd", "ce"], 0.1),
             band_file(tmp_path / "band-p0-rec0.1-s0.json", 0, ["kd", "ce"], 0.2),
             band_file(tmp_path / "band-p0-s0.json", 0, ["step0", "kd", "ce"], 0.9),  # default: step 0 left out
             band_file(tmp_path / "band-p5-s0.json", 5, ["kd", "ce"], 0.9)]  # a student not swept: left out
    rows = collect(files)
    assert [(r["recurrence"], r["arm"]) for r in rows] == [
        (0.0, "kd"), (0.0, "ce"), (0.1, "kd"), (0.1, "ce"), (None, "kd"), (None, "ce")]
    assert [long_range(r) for r in rows[::2]] == pytest.approx([0.1, 0.2, 0.9])
    assert rows[0]["recurrence_measured"] == 0 and rows[0]["far_back_per_window"] == 0
    table = overlap_markdown({"rows": rows})
    assert table.count("\n| 0 |") == 3 and "default (uniform keys)" in table
    with pytest.raises(ValueError):  # a screen's selection-probe file is not a held-out row
        collect([band_file(tmp_path / "band-p0-rec0-s0-probe0.json", 0, ["kd"], 0.1)])


def test_an_earlier_sweep_grows_by_new_students_and_keeps_its_rows(tmp_path):
    earlier = tmp_path / "overlap.json"
    main([band_file(tmp_path / "band-p0-rec0-s0.json", 0, ["kd", "ce"], 0.1),
          band_file(tmp_path / "band-p0-s0.json", 0, ["kd", "ce"], 0.9), "--out", str(earlier)])
    assert_committed_schema("research.overlap", earlier)
    assert (tmp_path / "overlap.png").stat().st_size > 0
    rows = collect([str(earlier), band_file(tmp_path / "band-p7-rec0-s0.json", 7, ["kd", "ce"], 0.3),
                    band_file(tmp_path / "band-p7-s0.json", 7, ["step0", "kd", "ce"], 0.8)])
    assert [(r["phase1_seed"], r["recurrence"], r["arm"]) for r in rows] == [
        (0, 0.0, "kd"), (0, 0.0, "ce"), (0, None, "kd"), (0, None, "ce"),
        (7, 0.0, "kd"), (7, 0.0, "ce"), (7, None, "kd"), (7, None, "ce")]
    assert [long_range(r) for r in rows[::2]] == pytest.approx([0.1, 0.9, 0.3, 0.8])


def test_the_measured_rate_follows_the_asked_one():
    stats = {r: overlap_stats(r, n_windows=16) for r in (0, 0.25, None)}
    assert stats[0]["recurrence_measured"] == 0 < stats[0.25]["recurrence_measured"] < stats[None]["recurrence_measured"]
    assert stats[0]["answers_per_window"] < stats[None]["answers_per_window"]  # 64 keys: rate 0 drops records
