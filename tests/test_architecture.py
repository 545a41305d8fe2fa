"""The house rules of the layout (docs/architecture.md): floors that only look down, no module
that grew past one concern's size."""
import ast
import os
import sys
from typing import Iterator, List, Tuple

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("utils", "config", "model", "datasets", "solver", "loss", "deploy", "processor",
            "tools")
# What each package may import from the project besides itself: the floors below it.
MAY_IMPORT = {
    "utils": set(),
    "config": {"utils"},
    "model": {"utils", "config"},
    "datasets": {"utils", "config"},
    "solver": {"utils", "config"},
    "loss": {"utils", "config", "model"},
    "deploy": {"utils", "config", "model", "datasets", "solver", "loss"},
    "processor": {"utils", "config", "model", "datasets", "solver", "loss", "deploy"},
    "tools": {"utils", "config", "model", "datasets", "solver", "loss", "deploy", "processor"},
}
MAX_MODULE_LINES = 390
MAX_FUNCTION_LINES = 50
# Serving's libraries: only deploy/ imports them (train.py and test.py on .pth never load them).
SERVING_LIBRARIES = {"onnx", "onnxruntime", "openvino", "nncf", "faiss"}


def project_modules() -> Iterator[Tuple[str, str]]:
    """(package, path) of every Python file of the project's packages."""
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(REPO_ROOT, package)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield package, os.path.join(folder, name)


def imported_packages(path: str, packages=PACKAGES) -> List[Tuple[int, str]]:
    """(line, top-level package among `packages`) of every import in `path`, function bodies
    included, relative imports resolved."""
    module_parts = os.path.relpath(path, REPO_ROOT)[:-3].split(os.sep)
    found = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module_parts[:len(module_parts) - node.level]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
        else:
            continue
        found += [(node.lineno, name.split(".")[0]) for name in names
                  if name.split(".")[0] in packages]
    return found


def climbing_imports() -> List[str]:
    bad = []
    for package, path in project_modules():
        for line, target in imported_packages(path):
            if target != package and target not in MAY_IMPORT[package]:
                bad.append(f"{os.path.relpath(path, REPO_ROOT)}:{line} imports {target}")
    return bad


def test_no_package_imports_a_floor_above_its_own():
    assert climbing_imports() == []


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    # The check itself: a lazy import in a function body and a relative climb are both found.
    package = tmp_path / "utils"
    package.mkdir()
    (package / "lazy.py").write_text("def f():\n    from model.weights import load_file\n")
    (package / "rel.py").write_text("from ..processor import checkpoint\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", str(tmp_path))
    found = sorted(t for p in ("lazy.py", "rel.py") for _, t in imported_packages(str(package / p)))
    assert found == ["model", "processor"]


def test_no_package_imports_another_in_a_cycle():
    edges = {package: set() for package in PACKAGES}
    for package, path in project_modules():
        edges[package] |= {target for _, target in imported_packages(path) if target != package}
    for package, targets in edges.items():
        for target in targets:
            assert package not in edges[target], f"{package} <-> {target}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_longer_than_one_concern_needs(package):
    long = [f"{os.path.relpath(path, REPO_ROOT)}: {n} lines" for p, path in project_modules()
            if p == package for n in [sum(1 for _ in open(path, encoding="utf-8"))]
            if n > MAX_MODULE_LINES]
    assert long == []


def test_only_deploy_imports_the_serving_libraries():
    found = [f"{os.path.relpath(path, REPO_ROOT)}:{line} imports {library}"
             for package, path in project_modules() if package != "deploy"
             for line, library in imported_packages(path, SERVING_LIBRARIES)]
    assert found == []


def long_functions(path: str) -> List[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    return [f"{os.path.relpath(path, REPO_ROOT)}:{node.lineno} {node.name}: "
            f"{node.end_lineno - node.lineno + 1} lines" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_function_is_longer_than_one_screen():
    scripts = [os.path.join(REPO_ROOT, name) for name in ("train.py", "test.py")]
    benchmarks = os.path.join(REPO_ROOT, "benchmarks")
    scripts += [os.path.join(benchmarks, name) for name in sorted(os.listdir(benchmarks))
                if name.endswith(".py")]
    paths = [path for _, path in project_modules()] + scripts
    assert [line for path in paths for line in long_functions(path)] == []
