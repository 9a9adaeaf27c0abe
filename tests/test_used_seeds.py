"""research/used_seeds.py on this repository: the seeds its JSON, pages and history name, and `--check`, which
exits 1 when a seed to be drawn was used before."""
import pytest

from research import used_seeds


def test_seeds_come_from_json_keys_flags_and_phrases():
    assert used_seeds.json_seeds({"phase1_seed": 3, "runs": [{"seed": 4, "step": 5}], "seeds": [6, True]}) == {3, 4, 6}
    assert used_seeds.text_seeds("--phase1-seeds 0 1 2; seed 7, seeds 12-14") == {
        0, 1, 2, 7, 12, 13, 14}


def test_check_passes_unused_seeds_and_exits_1_on_a_used_one(capsys):
    used = used_seeds.used_seeds()
    assert 0 in used and 1000 in used  # phase-1 seed 0, and its retry seed
    fresh = max(used) + 1
    used_seeds.main(["--check", str(fresh)])
    assert "checked 1 seeds: none of them was used" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        used_seeds.main(["--check", str(fresh), "0"])
    assert e.value.code == 1 and "already used: [0]" in capsys.readouterr().out
