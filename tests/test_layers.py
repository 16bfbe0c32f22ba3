"""The tree shows the layers: each package imports only those below it, no module imports
another's private names, no import cycle, and the worker packages hold no launcher code."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Lowest first: a package may import only the packages before it (and itself).
LAYERS = ("core", "imaging", "protocols", "engine", "transforms", "pipeline")
MAX_MODULE_LINES = 450


def modules():
    for package in LAYERS:
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith(".py"):
                yield package, os.path.join(package, name)


def project_imports(path: str):
    """(imported module, names) of every import of a project package in `path`."""
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in LAYERS:
                yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LAYERS:
                    yield alias.name, []


@pytest.mark.parametrize("package,path", list(modules()))
def test_imports_go_down_the_layers_only(package, path):
    allowed = LAYERS[:LAYERS.index(package) + 1]
    for module, names in project_imports(path):
        assert module.split(".")[0] in allowed, f"{path} imports {module}"
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{path} imports private names {private} from {module}"


def module_name(path: str) -> str:
    return path[:-3].replace(os.sep, ".").removesuffix(".__init__")


def test_no_import_cycle_between_modules():
    graph = {}
    for _, path in modules():
        targets = set()
        for module, names in project_imports(path):
            for name in names or [""]:  # `from pkg import module` imports pkg.module
                sub = f"{module}.{name}"
                candidate = sub.replace(".", os.sep) + ".py"
                targets.add(sub if name and os.path.exists(os.path.join(ROOT, candidate))
                            else module)
        graph[module_name(path)] = targets - {module_name(path)}
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join(trail + [node])
        state[node] = "open"
        for target in graph.get(node, ()):
            visit(target, trail + [node])
        state[node] = "done"

    for node in graph:
        visit(node, [])


@pytest.mark.parametrize("package,path", list(modules()))
def test_modules_stay_readable_in_size(package, path):
    with open(os.path.join(ROOT, path)) as f:
        lines = sum(1 for _ in f)
    assert lines <= MAX_MODULE_LINES, f"{path} has {lines} lines"


@pytest.mark.parametrize("package", LAYERS[:-1])
def test_worker_packages_make_no_blocking_start_up_calls(package):
    """urllib/http.client (the launcher's blocking checks) stay in pipeline/."""
    for pkg, path in modules():
        if pkg != package:
            continue
        for module, _ in project_imports(path):
            assert not module.startswith("pipeline"), path
        with open(os.path.join(ROOT, path)) as f:
            source = f.read()
        assert "import http.client" not in source and "urllib.request" not in source, path
