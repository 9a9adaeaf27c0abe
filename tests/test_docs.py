"""The README and the docs/ pages: a front page of bounded size, links that resolve, generated tables that
equal what research/experiment.py makes of the JSON they come from, and text that speaks of the project alone."""
import json
import os
import re

import pytest

from research import experiment
from tracked import ROOT, project_files

PAGES = ["README.md", "WALKTHROUGH.md"] + [f for f in project_files(".md")
                                           if re.fullmatch(r"(docs|research/notes)/[^/]+\.md", f)]


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def block(text, name):
    """The text between `<!-- name: ... -->` and `<!-- /name -->`."""
    m = re.search(rf"<!-- {name}:[^>]*-->\n(.*?)\n<!-- /{name} -->", text, re.S)
    assert m, f"no generated {name} block"
    return m.group(1)


def test_the_readme_is_a_front_page():
    readme = read("README.md")
    assert len(readme.encode("utf-8")) <= 10_000
    pages = set(re.findall(r"\]\((docs/[\w.-]+\.md)", readme))
    assert len(pages) >= 2
    assert readme.index("## The task") < readme.index("## Two commands") < readme.index("## The headline")
    assert "python -m pytest -q tests" in readme and "python train.py --phase 2 --rope-base 500000" in readme


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    folder = os.path.dirname(os.path.join(ROOT, page))
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(page)):
        if "://" not in target:
            assert os.path.exists(os.path.join(folder, target)), f"{page} links to {target}, which does not exist"


def test_the_grid_table_is_what_the_json_gives():
    results = json.loads(read("research/notes/paper_results.json"))
    assert block(read("research/notes/results.md"), "grid") == experiment.grid_markdown(results)


def test_the_finding3_tables_are_what_its_json_gives():
    from research import finding3
    res = json.loads(read("research/notes/finding3.json"))
    page = read("research/notes/results.md")
    assert block(page, "finding3").strip() == finding3.markdown(res, res["critical_pairs"]).strip()


def test_the_alias_table_is_what_its_json_gives():
    res = json.loads(read("research/notes/alias-ce.json"))
    page = read("research/notes/causal.md")
    for base, b in res["bases"].items():
        acc = dict(zip(res["distances"], b["acc"]))
        two_turns = b["turns"][1]  # rope.turn_distances: test_analyze.py checks the formula
        label = f"{float(base):.0e}".replace("e+0", "e") + (" (its own)" if float(base) == experiment.LARGE else "")
        assert f"| {label} | {b['peak']} ({acc[b['peak']]:.2f}) | {two_turns:.0f} |" in page


def test_the_grid_reports_sample_standard_deviations():
    """mean ± std over 3 seeds uses ddof = 1 (the sample standard deviation), as a table of 3 seeds should."""
    table = experiment.grid_markdown({"teacher": {"kv": {"16": 1.0}, "in_doc": 0.5}, "schedules": {"s": {
        "phase1_base": 1e4, "phase2_base": 5e5, "KD": {"per_seed": [[0.0], [1.0], [0.5]],
                                                       "in_doc_per_seed": [0.2, 0.2, 0.2]}}}})
    assert "| KD 10000 -> 500000 (s) | 3 | 0.50 ± 0.50 | 0.20 ± 0.00 |" in table


TOLD = re.compile(r"\bissues?\b|\bsessions?\b|\.\./shared|RECIPE\.md|METHOD\.md|\btracker\b", re.I)


def told_lines(files):
    """Every line of `files` (paths relative to the root) that refers to how the project was made."""
    found = []
    for f in files:
        with open(os.path.join(ROOT, f), encoding="utf-8") as fh:
            found += [f"{f}:{i}: {line.strip()[:80]}" for i, line in enumerate(fh, 1) if TOLD.search(line)]
    return found


def test_the_project_speaks_of_itself_alone():
    """No text refers to how it was made (a tracker, past work sessions) or to files a clone does not have."""
    found = told_lines(f for f in project_files(".py", ".md") if not f.endswith("test_docs.py"))
    assert not found, "\n".join(found)


@pytest.mark.parametrize("use_git", [True, False])
def test_an_untracked_folder_inside_the_checkout_is_not_read(use_git):
    """A venv (or, with git, any folder git does not track) inside the checkout: its .py and .md files are not the
    project's, with git or with the list that stands in for it (which knows a venv by its pyvenv.cfg)."""
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix="venv-", dir=ROOT)
    try:
        with open(os.path.join(folder, "pyvenv.cfg"), "w", encoding="utf-8") as f:
            f.write("home = /usr/bin\n")  # what python -m venv writes first
        for name in ("site.py", "notes.md"):
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                f.write("this " + "session filed an " + "issue with the tracker\n")  # split: this file is read too
        planted = [os.path.relpath(os.path.join(folder, n), ROOT).replace(os.sep, "/") for n in ("site.py", "notes.md")]
        assert len(told_lines(planted)) == 2  # what the old walk over the whole tree would have found
        files = project_files(".py", ".md", use_git=use_git)
        assert "train.py" in files and "README.md" in files
        assert not [f for f in files if f.startswith(os.path.basename(folder) + "/")]
    finally:
        shutil.rmtree(folder)


def test_without_git_the_fallback_lists_every_file_git_tracks():
    """The list that stands in for git (an unpacked archive) holds every tracked module and page, so the docs and
    layer checks read all of them without git too."""
    from tracked import fixed_list, git_files
    tracked = git_files()
    if tracked is None:
        pytest.skip("no git here to compare the fallback with")
    wanted = {f for f in tracked if f.endswith((".py", ".md"))}
    missing = sorted(wanted - {f.replace(os.sep, "/") for f in fixed_list()})
    assert wanted and not missing, missing


def test_the_readme_headline_is_what_the_grid_json_gives():
    """The headline table is research.grid's of the committed grid JSON, and the front page's count of the
    protocol's students is that JSON's."""
    from research import grid
    res = json.loads(read("research/notes/grid/grid.json"))
    readme = read("README.md")
    assert block(readme, "grid-headline") == grid.headline_markdown(res)
    assert f"{len(res['students'])} seeds started, {len(res['accepted'])} accepted" in readme


def test_the_grid_page_is_what_the_grid_json_gives():
    from research import grid
    res = json.loads(read("research/notes/grid/grid.json"))
    page = read("research/notes/grid.md")
    assert block(page, "grid-students") == grid.students_markdown(res)
    assert block(page, "grid-combinations") == grid.combinations_markdown(res)
    assert block(page, "grid-cells") == grid.cells_markdown(res)


def test_the_finding1_table_is_what_its_json_gives():
    from research import finding1
    rows = json.loads(read("research/notes/finding1.json"))["rows"]
    assert block(read("research/notes/results.md"), "finding1").strip() == finding1.markdown(rows).strip()


def test_the_leak_free_table_is_what_its_json_gives():
    from research.robustness import runs_markdown
    rows = json.loads(read("research/notes/leakfree.json"))["runs"]
    assert {r["arm"] for r in rows} == {"step0", "kd", "ce", "kd-masked", "ce-masked", "ce-teacher-labels",
                                        "kd-teacher-docmask"}
    assert block(read("research/notes/causal.md"), "leakfree").strip() == runs_markdown(rows).strip()


@pytest.mark.parametrize("name", ["acceptance", "grid-lr"])
def test_the_acceptance_tables_are_what_their_json_gives(name):
    from research.screen import acceptance_markdown
    screen = json.loads(read(f"research/notes/{name}.json"))
    assert block(read("research/notes/seeds.md"), name).strip() == acceptance_markdown(screen).strip()


def test_the_grid_position_table_is_what_its_json_gives():
    from research.screen import positions_markdown
    screen = json.loads(read("research/notes/grid-lr.json"))
    assert {r["arm"] for r in screen["positions"]} == {"kd", "ce"}
    assert block(read("research/notes/seeds.md"), "grid-lr-positions").strip() == positions_markdown(screen).strip()


def test_the_grid_ablation_table_is_what_its_json_gives():
    from research.screen import ablations_markdown
    screen = json.loads(read("research/notes/grid-lr.json"))
    ablations = {"kd-masked", "ce-masked", "ce-teacher-labels", "kd-teacher-docmask"}
    assert {r["arm"] for r in screen["ablations"]} <= ablations
    assert block(read("research/notes/causal.md"), "grid-lr-ablations").strip() == ablations_markdown(screen).strip()


def test_the_overlap_table_is_what_its_json_gives():
    from research.overlap import overlap_markdown
    sweep = json.loads(read("research/notes/overlap.json"))
    assert block(read("research/notes/overlap.md"), "overlap").strip() == overlap_markdown(sweep).strip()
    assert {r["recurrence"] for r in sweep["rows"]} >= {0.0, None}  # the sweep holds rate 0 and the default
    assert len({r["phase1_seed"] for r in sweep["rows"]}) >= 2  # from two phase-1 students


def test_the_match_hole_table_is_what_its_json_gives():
    from interp.match import match_markdown
    res = json.loads(read("research/notes/match-hole.json"))
    assert block(read("research/notes/seeds.md"), "match-hole").strip() == match_markdown(res).strip()
    for r in res["models"].values():  # the page's reading: the hole sits where the fast pairs dip deepest
        fast = dict(zip(r["distances"], r["fast"]))
        worst = min(r["measured"], key=r["measured"].get)
        assert fast[int(worst)] == min(fast[int(d)] for d in r["measured"])
