"""The project's modules form layers: each imports only from layers below it (never up, never in a circle), so every
script can be read bottom-up, and the core at the top level imports nothing from the lab's folders."""
import ast
import os

from tracked import ROOT, project_files as tracked_files

# Lowest first. A module may import modules of its own layer or a lower one, never of a higher one.
CORE = [  # the card's files at the top level, and the two the core needs (config, evaluate)
    {"rope", "data"},  # positions; the task's data and the packer
    {"model"},  # the GPT, its checkpoints
    {"distill", "evaluate"},  # the loss and the teacher; the tasks, their probes and what a run reports
    {"config"},  # flags, presets, settings, the checks of every input, the run's files
    {"train", "analyze"},  # the entry points of the core
]
LAB = [  # built on the core, in folders; the core imports none of them
    {"formats.tokenizer", "formats.files", "formats.gguf", "formats.text", "variants.rope_scaling",
     "variants.divergences", "variants.flex", "variants.chunked", "interp.spectrum", "interp.qk", "interp.match",
     "interp.qupdate", "interp.probes", "longctx.report", "scale.device", "viz.plots", "research.used_seeds"},  # pieces
    {"formats.hf", "longctx.text", "longctx.topk", "variants.arms", "scale.loss_memory"},  # real-model files; a real
    # teacher's text and its top-k cache; phase 2's arms; the memory of the losses (the top-k one's too)
    {"variants.train", "interp.analyses", "scale.bench"},  # the lab's entry points
    {"research.robustness", "research.screen", "research.overlap", "research.experiment", "research.finding1",
     "research.finding3", "research.realtext", "research.grid", "walkthrough.demos", "walkthrough.__main__",
     "variants.__main__", "interp.__main__", "docs.copy_task"},  # the research, the walkthrough and the example
    # task file of docs/fork.md, built on all of it
]
LAYERS = CORE + LAB


def project_files():
    """The project's own .py files (what git tracks), outside tests/ and without the packages' __init__.py."""
    return [f for f in tracked_files(".py") if not f.startswith("tests/") and not f.endswith("__init__.py")]


def test_the_core_imports_nothing_from_the_project_folders():
    """Anywhere in them, inside functions too: a forker can copy the core's files out alone."""
    graph = project_imports()
    core = set().union(*CORE)
    assert core == {f[:-3] for f in project_files() if "/" not in f}  # the top level is the core
    assert {m: sorted(graph[m] - core) for m in core if graph[m] - core} == {}


def project_imports():
    """{module: set of project modules it imports anywhere (top level or inside functions)}, dotted names."""
    modules = {f[:-3].replace("/", "."): f for f in project_files()}
    graph = {}
    for m, f in modules.items():
        names = set()
        for node in ast.walk(ast.parse(open(os.path.join(ROOT, f), encoding="utf-8").read())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[m] = (names & set(modules)) - {m}
    return graph


def find_cycle(graph):
    """One import circle as a list of modules [a, b, ..., a], or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def upward_imports(graph, layers):
    """Every (importer, imported) pair where the imported module sits in a higher layer than its importer."""
    rank = {m: i for i, layer in enumerate(layers) for m in layer}
    return sorted((a, b) for a in graph for b in graph[a] if rank[b] > rank[a])


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_layer_check_finds_an_upward_import():
    assert upward_imports({"model": {"train"}, "train": {"model"}}, [{"model"}, {"train"}]) == [("model", "train")]
    assert upward_imports({"model": set(), "train": {"model"}}, [{"model"}, {"train"}]) == []


def test_every_module_has_a_layer_and_imports_only_downwards():
    graph = project_imports()
    assert {"formats.hf", "formats.tokenizer", "distill", "model"} <= set(graph)
    assert set(graph) == set().union(*LAYERS), "a module without a layer (or a layer entry without a file)"
    assert "formats.hf" not in graph["formats.tokenizer"]  # the circle there was once: hf -> tokenizer only
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert upward_imports(graph, LAYERS) == []


def test_the_top_level_holds_the_core_and_at_most_two_more_files():
    top = [f for f in project_files() if "/" not in f]
    assert {"data.py", "rope.py", "model.py", "distill.py", "train.py", "analyze.py"} <= set(top)
    assert len(top) <= 8, top


def one_statement_per_line(source):
    """The lines of `source` that hold a statement after other text (`a; b`, `if x: y`, `else: y`) or pass 120
    characters."""
    lines = source.splitlines()
    found = [(i, "over 120 characters") for i, line in enumerate(lines, 1) if len(line) > 120]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.stmt) and lines[node.lineno - 1].encode()[:node.col_offset].strip():
            found.append((node.lineno, "two statements"))
    return sorted(set(found))


def test_the_style_check_finds_joined_statements_and_long_lines():
    source = ("a = 1; b = 2\nif a: b = 3\nfor i in []:\n    pass\nif a:\n    pass\nelse: b = 4\ntry:\n    pass\n"
              "except ValueError: pass\n" + "x = '" + "y" * 120 + "'\n")
    assert one_statement_per_line(source) == [(1, "two statements"), (2, "two statements"), (7, "two statements"),
                                              (10, "two statements"), (11, "over 120 characters")]


def test_every_core_line_holds_one_statement_and_at_most_120_characters():
    core = sorted(f for f in project_files() if "/" not in f)
    found = {f: one_statement_per_line(open(os.path.join(ROOT, f), encoding="utf-8").read()) for f in core}
    assert {f: v for f, v in found.items() if v} == {}
