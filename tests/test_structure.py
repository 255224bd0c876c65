"""The code's shape stays what the README draws: every import points down (main.py, modes/, experiments/, then
data/, models/ and training/ side by side, then utils/), and no module imports one that imports it back, even
inside a function."""
import ast
import subprocess
import sys

import pytest

from helpers import REPO

LAYERS = {"main": 0, "modes": 1, "experiments": 2, "data": 3, "models": 3, "training": 3, "utils": 4}


def modules():
    """{dotted module name: its file} of the template's code."""
    found = {"main": REPO / "main.py"}
    for package in LAYERS:
        for path in (REPO / package).rglob("*.py") if (REPO / package).is_dir() else ():
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imported(path, names):
    """The template's modules that the file at `path` imports, anywhere in it (type-checking-only imports aside)."""
    found = set()

    class Imports(ast.NodeVisitor):
        def visit_If(self, node):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                self.generic_visit(node)

        def visit_Import(self, node):
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node):
            if node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)

    Imports().visit(ast.parse(path.read_text()))
    return found & names


def import_graph():
    found = modules()
    return {name: imported(path, set(found)) - {name} for name, path in found.items()}


def layer(name):
    return LAYERS[name.split(".")[0]]


def test_every_import_points_down_or_stays_in_its_folder():
    graph = import_graph()
    assert len(graph) > 40
    wrong = [(module, target) for module, targets in graph.items() for target in targets
             if layer(target) < layer(module)
             or (layer(target) == layer(module) and target.split(".")[0] != module.split(".")[0]
                 and layer(module) != 1)]
    assert not wrong, f"imports that point up or sideways: {wrong}"


def test_no_module_imports_one_that_imports_it_back():
    graph, state, cycles = import_graph(), {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [module, target])
            elif target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.slow  # mypy reads torch's stubs: about fifteen seconds
def test_the_seams_an_experiment_is_written_against_pass_the_type_checker_and_the_code_the_linter():
    """pyproject.toml names what mypy checks (experiments/, training/, models/, data/, utils/epochs.py,
    utils/runtable/run.py, the experiments' bodies included) and how ruff lints the whole checkout."""
    typed = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert typed.returncode == 0 and typed.stdout.startswith("Success: no issues found"), typed.stdout[-3000:]
    linted = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert linted.returncode == 0, linted.stdout[-3000:]
