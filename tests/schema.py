"""The schema of a JSON value, and which committed JSON each lab entry point writes.

A test runs an entry point on tiny inputs and holds what it wrote against its committed copy (research/notes/,
docs/): the same nested keys and value types, not the same numbers. `schema(obj)` is that structure:

- a scalar is its type name: "str", "int", "float", "bool"; null is "null", which fits any schema (a value that
  was not measured: a peak before any distance qualifies, a memory figure that failed);
- a list is the list of its elements' distinct schemas (first seen first): a written list fits a committed one
  when each of its element schemas fits one of the committed list's (a tiny run may show fewer kinds of
  elements, never another kind); an empty committed list says nothing about its elements;
- a dict is either an object, {key: schema} with its keys compared one by one, or a dict keyed by data,
  {"*": [distinct value schemas]}, compared like a list of its values. A dict is keyed by data when
  1. every key parses as a number (distances, bases, layers, pairs, seeds: {"512": 0.9}; an empty dict too), or
  2. it is the value of a field named in DATA_KEYED (model labels, run names, schedule names: "models",
     "teachers", ...), whatever its keys.

`assert_same_schema(written, committed_path)` fails with the first path where the two differ, as
`$.models.*.kv.*` (`*`: any key of a dict keyed by data, `[]`: any element of a list).

COMMITTED maps each lab entry point to the committed JSON files it writes (the only place their paths are named);
NOT_WRITTEN lists the committed JSON files (docs/, research/notes/) that no entry point writes, NO_COMMITTED_JSON
the entry points that write none; tests/test_schema.py checks that together they cover those folders and the lab's
entry points, and that a test runs each mapped entry point and holds what it wrote against its files
(assert_committed_schema, or committed_params where a committed file is stale: an expected failure, strict, with
the reason in COMMITTED).
"""
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANY_KEY = "*"
NULL = "null"
SCALARS = ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"))  # bool first: it is an int too
DATA_KEYED = frozenset({
    "combinations",  # "seed/overlap/phase-2 seed" (research.grid report)
    "runs",  # run names -> their commit and start (research.grid report)
    "models",  # model labels (interp retrieval and match, research.robustness's probes, scale.bench --targets)
    "ckpts",  # model label -> checkpoint path (interp retrieval)
    "teachers",  # run names (research.robustness's probes)
    "students",  # student labels (research.finding3; research.screen's "students" is a list)
    "schedules",  # schedule names (research.experiment)
    "critical_pairs",  # "before (base 10000, L=32)" -> pair (interp qupdate, research.finding3, research.experiment)
    "kd_vs_ce_beyond_spread",  # "wq layer 0" -> {pair: difference} (research.experiment)
    "results",  # model labels (research.realtext)
    "train_log",  # model labels (research.realtext)
    "buckets",  # position buckets, "0-128" (research.realtext)
    "tokens_per_s",  # timed modes, "bfloat16 KD" (scale.bench --targets)
    "mfu",  # the same modes (scale.bench --targets)
})

STALE_DEPTH = "retrieval by the query's depth moved to `interp depth`: retrieval writes no depths nor models.*.depth"
STALE_TEACHER = ("its teacher row is an older train.py's results (a copy probe, no in_doc_fresh / in_doc_recurring); "
                 "the teacher of a run now has these two and no copy")
STALE_BENCH = "scale.bench now also writes dtype, threads, flops, batch_build_seconds and cpu_ranks_tokens_per_s"
COMMITTED = {  # entry point -> {committed JSON it writes: None, or why its schema is not the one written now}
    "interp spectrum": {"research/notes/spectrum.json": None},
    "interp qupdate": {
        "research/notes/qupdate-kd.json": None,
        "research/notes/qupdate-ce.json": None,
    },
    "interp retrieval": {
        "research/notes/claim.json": STALE_DEPTH,
        "research/notes/grid/claim-s101.json": None,
        "research/notes/schedules.json": STALE_DEPTH,
    },
    "interp alias": {"research/notes/alias-ce.json": None},
    "interp match": {"research/notes/match-hole.json": None},
    "research.experiment": {"research/notes/paper_results.json": STALE_TEACHER},
    "research.experiment robustness": {
        "research/notes/robustness.json": None,
        "research/notes/probes.json": None,
        "research/notes/robustness-steps250.json": None,  # with --steps 250: the same files, another name
        "research/notes/probes-steps250.json": None,
    },
    "research.finding1": {"research/notes/finding1.json": None},
    "research.grid report": {"research/notes/grid/grid.json": None},
    "research.finding3": {"research/notes/finding3.json": None},
    "research.overlap": {"research/notes/overlap.json": None},
    "research.screen": {
        "research/notes/acceptance.json": None,
        "research/notes/grid-lr.json": None,
    },
    "research.realtext run": {"docs/realtext/results.json": None},
    "scale.bench": {
        "docs/bench/cpu-1thread.json": STALE_BENCH,
        "docs/bench/cpu-2threads.json": STALE_BENCH,
        "docs/bench/d256-1thread.json": STALE_BENCH,
        "docs/bench/large-2threads.json": STALE_BENCH,
    },
    "scale.bench --targets": {"docs/bench/targets-1thread.json": None},
}
NOT_WRITTEN = {  # committed JSON that no entry point writes -> why
    "research/notes/leakfree.json": "gathered by hand from the band rows of runs trained for it; research.overlap "
                                    "reads it",
}
NO_COMMITTED_JSON = {  # lab entry point -> why no committed JSON is held against what it writes
    "scale.loss_memory": "prints a table of peak memory; docs/performance.md quotes it",
    "interp perturb": "its JSON has no committed copy (docs/ keeps its figures only)",
    "interp depth": "its JSON has no committed copy",
    "interp all": "runs spectrum, retrieval, perturb and qupdate, whose files are checked as theirs",
    "research.robustness": "band rows go to the run folder; none is committed",
    "research.grid run": "its runs and measurements go to the run folder; `research.grid report` gathers them",
    "research.used_seeds": "prints the used seeds, writes nothing",
    "research.realtext check": "prints what the converted teacher says, writes nothing",
    "variants": "a run's checkpoint and results, as train.py (the core) writes them; none is committed under docs/",
    "formats.hf": "writes Hugging Face folders (their config.json is Hugging Face's), no JSON of its own",
    "formats.tokenizer": "prints the tokens, writes nothing",
    "walkthrough": "prints and draws figures, writes no JSON",
}


def is_number(key) -> bool:
    """Whether a dict key parses as a number ("512", "1e+06", "0.25")."""
    try:
        float(key)
    except ValueError:
        return False
    return True


def keyed_by_data(field, obj) -> bool:
    """Whether dict `obj`, the value of `field`, is keyed by data (the module's docstring says when)."""
    return field in DATA_KEYED or all(is_number(k) for k in obj)


def distinct(schemas) -> list:
    """The distinct schemas, first seen first."""
    out = []
    for s in schemas:
        if s not in out:
            out.append(s)
    return out


def schema(obj, field=None):
    """The schema of a JSON value (the module's docstring); `field`: the key it is stored under, if any."""
    if obj is None:
        return NULL
    for kind, name in SCALARS:
        if isinstance(obj, kind):
            return name
    if isinstance(obj, list):
        return distinct(schema(v) for v in obj)
    if keyed_by_data(field, obj):
        return {ANY_KEY: distinct(schema(v) for v in obj.values())}
    return {k: schema(v, k) for k, v in obj.items()}


def describe(s) -> str:
    """A schema in a few words, for a failure message."""
    if isinstance(s, str):
        return s
    if isinstance(s, list):
        return "a list"
    if ANY_KEY in s:
        return "a dict keyed by data"
    return "an object with keys " + ", ".join(s)


def difference(written, committed, path="$"):
    """(path, what differs) at the first place where schema `written` does not fit schema `committed`, or None."""
    if NULL in (written, committed):
        return None
    if isinstance(written, list) and isinstance(committed, list):
        return variants_difference(written, committed, path + "[]")
    if isinstance(written, dict) and isinstance(committed, dict) and (ANY_KEY in written) == (ANY_KEY in committed):
        if ANY_KEY in committed:
            return variants_difference(written[ANY_KEY], committed[ANY_KEY], path + "." + ANY_KEY)
        return object_difference(written, committed, path)
    if written == committed:
        return None
    return path, f"written {describe(written)}, committed {describe(committed)}"


def variants_difference(written, committed, path):
    """The first written element schema that fits none of the committed ones, with its difference from the closest
    (the one it differs from deepest); None when each fits one, or when nothing was committed to compare with."""
    if not committed:
        return None
    for w in written:
        found = [difference(w, c, path) for c in committed]
        if None not in found:
            return max(found, key=lambda d: len(d[0]))
    return None


def object_difference(written, committed, path):
    """The first key (in the committed file's order) missing, extra or of another schema, as (path, what)."""
    for key, value in committed.items():
        if key not in written:
            return f"{path}.{key}", "in the committed file, not written"
        found = difference(written[key], value, f"{path}.{key}")
        if found:
            return found
    extra = [k for k in written if k not in committed]
    if extra:
        return f"{path}.{extra[0]}", "written, not in the committed file"
    return None


def load(path_or_obj):
    """A JSON file's value (the path of one), or the value itself."""
    if isinstance(path_or_obj, (str, os.PathLike)):
        with open(path_or_obj) as f:
            return json.load(f)
    return path_or_obj


def assert_same_schema(written, committed_path):
    """`written` (a JSON file's path, or its value) has the schema of the committed JSON at `committed_path`."""
    found = difference(schema(load(written)), schema(load(committed_path)))
    if found:
        path, what = found
        name = written if isinstance(written, (str, os.PathLike)) else "the written value"
        raise AssertionError(f"{name} does not have the schema of {committed_path}: at {path}, {what}")


def committed(entry, prefix=""):
    """{absolute path: None or why stale} of the committed JSON files `entry` writes whose name starts with
    `prefix`; at least one."""
    found = {os.path.join(ROOT, p): why for p, why in COMMITTED[entry].items()
             if os.path.basename(p).startswith(prefix)}
    assert found, f"no committed JSON of {entry} named {prefix}*"
    return found


def assert_committed_schema(entry, written, prefix=""):
    """`written` has the schema of every committed JSON of `entry` named `prefix`* (none of them stale)."""
    for path, why in committed(entry, prefix).items():
        assert why is None, f"{path} is stale ({why}): check it with committed_params"
        assert_same_schema(written, path)


def committed_params(entry, prefix=""):
    """pytest parameters, one per committed JSON of `entry` named `prefix`*: a stale one is an expected failure."""
    params = []
    for path, why in committed(entry, prefix).items():
        marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=why)] if why else []
        params.append(pytest.param(path, id=os.path.relpath(path, ROOT), marks=marks))
    return params
