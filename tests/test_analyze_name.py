"""--name of the analyses (analyze.py, python -m interp) is a plain file stem: a path in it would write outside
--out."""
import os

import pytest

import interp.analyses


@pytest.mark.parametrize("name", ["../x", "sub/x", "/tmp/x", "..", ".", ""])
def test_a_name_with_a_path_is_one_error_line_and_nothing_is_written(tmp_path, capsys, name):
    out = tmp_path / "figures"
    with pytest.raises(SystemExit) as e:
        interp.analyses.main(["spectrum", "--name", name, "--out", str(out), "--windows", "8", "--bases", "100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: --name must be a plain file name")
    assert os.listdir(tmp_path) == []  # neither --out nor anything beside it


def test_a_plain_name_writes_inside_out(tmp_path):
    paths = interp.analyses.main(["spectrum", "--name", "mine", "--out", str(tmp_path), "--windows", "8",
                                  "--bases", "100"])
    assert paths and all(os.path.dirname(os.path.abspath(p)) == str(tmp_path) for p in paths)
    assert all(os.path.basename(p).startswith("mine") for p in paths)
