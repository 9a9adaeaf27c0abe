"""tests/schema.py: the schema of a JSON value on hand-made dicts, and its map of the lab's entry points to the
committed JSON they write, which must cover every committed JSON under docs/ and research/notes/ (or beside a mapped
file) and every entry point of the lab, each mapped one checked by a test."""
import ast
import json
import os
import re

import pytest

import interp.analyses
from schema import (ANY_KEY, COMMITTED, NO_COMMITTED_JSON, NOT_WRITTEN, ROOT, assert_same_schema, difference,
                    schema)
from tracked import project_files

COMMITTED_RUN = {  # a run as a committed file holds it: two models, three distances
    "window": 1024,
    "distances": [256, 512, 900],
    "models": {
        "teacher": {"kv": {"256": 1.0, "512": 0.98, "900": 0.97}, "in_doc": 0.99, "peak": 512},
        "KD student (1e4 -> 5e5)": {"kv": {"256": 0.9, "512": 0.5, "900": 0.1}, "in_doc": 0.95, "peak": None},
    },
    "rows": [{"arm": "kd", "kv": [0.5, None]}, {"arm": "ce", "kv": [0.1, 0.2]}],
}


def written_run():
    """What a tiny run writes: other labels, distances and numbers, one model, a null where nothing was measured."""
    return {
        "window": 64,
        "distances": [4, 40],
        "models": {"T": {"kv": {"4": 0.5, "40": 0.0}, "in_doc": 0.25, "peak": None}},
        "rows": [{"arm": "kd", "kv": [0.5, 0.75]}],
    }


def test_schema_keeps_the_keys_and_types_and_drops_data_keys():
    s = schema(COMMITTED_RUN)
    assert s["window"] == "int" and s["distances"] == ["int"]
    assert s["models"] == {ANY_KEY: [{"kv": {ANY_KEY: ["float"]}, "in_doc": "float", "peak": "int"},
                                     {"kv": {ANY_KEY: ["float"]}, "in_doc": "float", "peak": "null"}]}
    assert s["rows"] == [{"arm": "str", "kv": ["float", "null"]}, {"arm": "str", "kv": ["float"]}]
    assert schema({"flag": True, "count": 3}) == {"flag": "bool", "count": "int"}  # a bool is not an int


def test_a_tiny_run_with_other_labels_distances_and_numbers_has_the_committed_schema(tmp_path):
    assert difference(schema(written_run()), schema(COMMITTED_RUN)) is None
    committed = tmp_path / "committed.json"
    committed.write_text(json.dumps(COMMITTED_RUN))
    assert_same_schema(written_run(), committed)


@pytest.mark.parametrize("change, path", [
    (lambda r: r.pop("window"), "$.window"),  # a key missing
    (lambda r: r.update(seed=0), "$.seed"),  # a key too many
    (lambda r: r["models"]["T"].update(in_doc="0.25"), "$.models.*.in_doc"),  # another type
    (lambda r: r["models"]["T"].update(kv=[0.5, 0.0]), "$.models.*.kv"),  # a list for a dict
    (lambda r: r["rows"].append({"arm": "ce", "kv": [0.5], "steps": 4}), "$.rows[].steps"),  # another kind of row
    (lambda r: r["distances"].append(900.0), "$.distances[]"),  # a float among ints
])
def test_a_differing_schema_fails_naming_the_first_differing_path(tmp_path, change, path):
    run = written_run()
    change(run)
    committed = tmp_path / "committed.json"
    committed.write_text(json.dumps(COMMITTED_RUN))
    with pytest.raises(AssertionError, match="at " + re.escape(path) + ","):
        assert_same_schema(run, committed)


def mapped_paths():
    """Every committed path the map names, with repeats."""
    return [p for files in COMMITTED.values() for p in files]


def in_scope(path, folders) -> bool:
    """Whether a committed JSON must be mapped or listed: under docs/ or research/notes/, or in a folder that holds a
    mapped file."""
    return path.startswith(("docs/", "research/notes/")) or os.path.dirname(path) in folders


def test_every_committed_json_under_docs_is_written_by_an_entry_point_or_listed():
    paths = mapped_paths()
    assert len(paths) == len(set(paths)), "a committed file is named twice: a move would need two edits"
    folders = {os.path.dirname(p) for p in paths + list(NOT_WRITTEN)}
    docs = {p for p in project_files(".json") if in_scope(p, folders)}
    assert sorted(docs - set(paths) - set(NOT_WRITTEN)) == []
    assert sorted((set(paths) | set(NOT_WRITTEN)) - docs) == []  # nothing named that is not committed
    assert not set(paths) & set(NOT_WRITTEN)


def lab_entry_points():
    """{module: the entry point it is run as}: every lab file with a `__main__` (a package's __main__.py is the
    package; a module that a package's __main__.py runs is that package)."""
    out = {}
    for path in project_files(".py"):
        if "/" not in path or path.startswith("tests/"):
            continue
        text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        module = path[:-3].replace("/", ".")
        if module.endswith(".__main__"):
            package = module[: -len(".__main__")]
            out[package] = package
            out.update({node.module: package for node in ast.walk(ast.parse(text))
                        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package + ".")})
        elif '__name__ == "__main__"' in text:
            out.setdefault(module, module)
    return out


def test_every_lab_entry_point_is_mapped_or_listed():
    entries = lab_entry_points()
    assert {"interp", "variants", "walkthrough", "research.screen", "scale.bench"} <= set(entries.values())
    named = {e.split()[0] for e in list(COMMITTED) + list(NO_COMMITTED_JSON)}
    assert sorted(set(entries.values()) - named) == []
    assert sorted(named - set(entries.values())) == []  # no entry point named that the lab does not have
    assert not set(COMMITTED) & set(NO_COMMITTED_JSON)


def test_every_mapped_entry_point_has_a_test_that_checks_its_schema():
    """A test file names the entry point to assert_committed_schema or committed_params."""
    tests = "".join(open(os.path.join(ROOT, f), encoding="utf-8").read() for f in project_files(".py")
                    if f.startswith("tests/test_") and f != "tests/test_schema.py")
    unchecked = [e for e in COMMITTED if f'assert_committed_schema("{e}"' not in tests
                 and f'committed_params("{e}"' not in tests]
    assert unchecked == []


def test_every_interp_subcommand_is_mapped_or_listed():
    named = {e.split()[1] for e in list(COMMITTED) + list(NO_COMMITTED_JSON) if e.startswith("interp ")}
    assert named == set(interp.analyses.COMMANDS)
