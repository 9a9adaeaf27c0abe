"""WALKTHROUGH.md cannot rot: every command it shows runs, and prints what the text says it prints.

The walkthrough marks each command as a fenced block tagged `bash check` (options: `tol=X`, `slow`), followed by a
`text` block with the output it printed when the text was written. This test parses the file, runs each command
from the repository root in order (later stops may use what earlier ones wrote), with every `/tmp/walkthrough`
replaced by a temporary folder, and compares stdout with the text line by line:
- a line that is exactly `...` stands for any number of printed lines (progress, timings, paths);
- the words of a line must match exactly (runs of spaces count as one);
- every number must match: integers exactly, numbers written with a decimal point or an exponent within the block's
  `tol` (absolute; 0 when not given, i.e. equal at the printed precision).
Blocks tagged `slow` (training runs of minutes) run only with WALKTHROUGH_SLOW=1. The functions the text tells a
reader to read (`file.py`: `name`, ...) must exist, and every figure it shows must be in the repository.
WALKTHROUGH.md states these rules in its last section, after the method (a test below keeps them there).
"""
import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "WALKTHROUGH.md")
PLACEHOLDER = "/tmp/walkthrough"
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
SLOW = os.environ.get("WALKTHROUGH_SLOW") == "1"


@dataclass
class Check:
    command: str
    expected: list
    tol: float
    slow: bool
    line: int  # of the command in WALKTHROUGH.md

    def __str__(self):
        return f"line {self.line}: {self.command.splitlines()[0][:60]}"


def fenced_blocks(text):
    """[(info string, body lines, line number of the opening fence)] of every ``` block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            info, start = lines[i].strip()[3:].strip(), i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip().startswith("```"))
            blocks.append((info, lines[start:end], i + 1))
            i = end
        i += 1
    return blocks


def parse_checks(text):
    blocks, checks = fenced_blocks(text), []
    for k, (info, body, line) in enumerate(blocks):
        words = info.split()
        if words[:1] != ["bash"]:
            continue
        assert "check" in words, f"WALKTHROUGH.md line {line}: a bash block without `check` would go untested"
        assert k + 1 < len(blocks) and blocks[k + 1][0] == "text", \
            f"WALKTHROUGH.md line {line}: a `bash check` block must be followed by a `text` block of its output"
        opts = dict(w.split("=", 1) for w in words if "=" in w)
        checks.append(Check(" ".join(l.rstrip("\\").strip() for l in body), blocks[k + 1][1],
                            float(opts.get("tol", 0)), "slow" in words, line))
    return checks


def line_problem(want, got, tol):
    """None if the printed line `got` matches the text's line `want`, else what differs."""
    words_want, words_got = (" ".join(NUMBER.sub("#", s).split()) for s in (want, got))
    if words_want != words_got:
        return "the words differ"
    for w, g in zip(NUMBER.findall(want), NUMBER.findall(got)):
        if re.search(r"[.eE]", w):
            if abs(float(w) - float(g)) > tol + 1e-12:
                return f"{g} is not {w} within {tol:g}"
        elif w != g:
            return f"{g} is not {w}"
    return None


def match(want, got, tol):
    """Match the text's lines (with `...` wildcards) against the printed ones; None or the first mismatch."""
    best = [None]  # the deepest failure, for the message

    def go(i, j):
        if i == len(want):
            return j == len(got)
        if want[i].strip() == "...":
            return any(go(i + 1, k) for k in range(j, len(got) + 1))
        if j < len(got):
            problem = line_problem(want[i], got[j], tol)
            if problem is None:
                return go(i + 1, j + 1)
            if best[0] is None or i >= best[0][0]:
                best[0] = (i, f"text line {i + 1} {want[i]!r}\n printed   {got[j]!r}: {problem}")
        elif best[0] is None or i >= best[0][0]:
            best[0] = (i, f"text line {i + 1} {want[i]!r}: the output ended before it")
        return False

    return None if go(0, 0) else (best[0] or (0, "extra printed lines at the end"))[1]


with open(DOC) as f:
    TEXT = f.read()
CHECKS = parse_checks(TEXT)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("walkthrough"))


@pytest.mark.parametrize("check", CHECKS, ids=str)
def test_walkthrough_command_prints_what_the_text_says(check, workdir):
    if check.slow and not SLOW:
        pytest.skip("a training run of minutes: WALKTHROUGH_SLOW=1 runs it")
    command = check.command.replace(PLACEHOLDER, workdir)
    if command.startswith("python "):
        command = sys.executable + command[len("python"):]
    run = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True,
                         timeout=1800 if check.slow else 300)
    assert run.returncode == 0, f"{check} failed:\n{run.stderr[-3000:]}"
    printed = [l.rstrip() for l in run.stdout.replace(workdir, PLACEHOLDER).splitlines()]
    expected = [l.rstrip() for l in check.expected]
    problem = match(expected, printed, check.tol)
    assert problem is None, (f"WALKTHROUGH.md {check} no longer prints what the text says:\n{problem}\n"
                             f"--- printed:\n" + "\n".join(printed))


def test_the_walkthrough_has_a_command_per_stop_and_its_exercises():
    stops = re.findall(r"^## Stop \d+", TEXT, re.M)
    assert len(stops) >= 7 and len(CHECKS) >= len(stops)
    exercises = re.findall(r"^### Exercise \d+", TEXT, re.M)
    assert len(exercises) >= 6 and TEXT.count("<details>") >= len(exercises)


def defined_names(path):
    """Top-level functions and classes of a file, and Class.method for their methods."""
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
    return names


def test_every_function_the_text_tells_to_read_exists():
    reads = re.findall(r"`([\w/]+\.py)`: ((?:`[\w.]+`(?:, )?)+)", TEXT)
    assert len(reads) >= 7
    for path, names in reads:
        missing = set(re.findall(r"`([\w.]+)`", names)) - defined_names(path)
        assert not missing, f"WALKTHROUGH.md names {sorted(missing)} in {path}, which has no such function"


def test_every_figure_the_text_shows_exists():
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", TEXT)
    assert len(figures) >= 3
    for fig in figures:
        assert os.path.isfile(os.path.join(ROOT, fig)), fig


def test_the_matcher_accepts_tolerance_and_wildcards_and_refuses_the_rest():
    want = ["KD | 0.67 | 0.75 | 12 docs", "...", "end"]
    assert match(want, ["KD | 0.69 | 0.74 | 12 docs", "speed: 5 tok/s", "x", "end"], tol=0.03) is None
    assert "0.80 is not 0.75" in match(want, ["KD | 0.67 | 0.80 | 12 docs", "end"], tol=0.03)
    assert "13 is not 12" in match(want, ["KD | 0.67 | 0.75 | 13 docs", "end"], tol=0.03)
    assert "words differ" in match(want, ["CE | 0.67 | 0.75 | 12 docs", "end"], tol=0.03)
    assert match(["a 1.5"], ["a 1.5", "b"], tol=0) is not None  # no wildcard: nothing may follow


def test_the_method_comes_first_and_the_harness_rules_last():
    last = TEXT.rindex("\n## ")
    assert TEXT[last:].startswith("\n## How this text is kept true"), "the harness section must be the last one"
    for rule in ("WALKTHROUGH_SLOW", "`tol=0.01` means", "a line `...` stands"):
        assert TEXT.index(rule) > last, f"{rule} is explained before the method: move it to the last section"
    first_stop = TEXT.index("\n## Stop 1")
    for term in ("finding 1", "finding 2", "finding 3", "**floor**", "**KD**", "**CE**"):
        assert TEXT.index(term) < first_stop, f"{term} must be defined on the first screen"


def test_stop_5_points_at_the_phase_2_step_in_one_sitting():
    """Stop 5 names at most 150 lines of train.py, and they hold main -> train -> train_step -> training_loss."""
    stop5 = TEXT[TEXT.index("## Stop 5"):TEXT.index("## Stop 6")]
    first, last = map(int, re.search(r"\*\*Read\*\* `train\.py` lines (\d+)-(\d+)", stop5).groups())
    assert last - first + 1 <= 150
    with open(os.path.join(ROOT, "train.py")) as f:
        lines = f.read().splitlines()[first - 1:last]
    defs = [m.group(1) for line in lines if (m := re.match(r"def (\w+)\(", line))]
    assert defs == ["main", "train", "train_step", "training_loss"]
    assert lines[-1].strip().startswith("return")  # the range ends with training_loss's last line
