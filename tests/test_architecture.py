"""The house rules, checked statically over the source tree: no import cycles, and the boundaries.

* ``xvla.core`` (torch-free shared core) imports nothing of ours but itself and ``xvla.proto``;
* ``xvla.agents`` (the robot computer) imports only ``xvla.core`` / ``xvla.proto`` and light libraries;
* ``xvla.runtime`` imports torch and ``xvla.export`` only from a (lazily imported) torch engine module;
* ``xvla.export`` never imports ``xvla.runtime`` or ``xvla.agents``;
* session, execution, batching, engines and the server name no policy kind.

Every import counts, also those inside functions (a lazy import is still a dependency), except
those under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"core": "xvla.core", "runtime": "xvla.runtime", "agents": "xvla.agents", "export": "xvla.export",
            "proto": "xvla.proto", "benchmarks": "xvla.benchmarks"}
STDLIB = set(sys.stdlib_module_names)
AGENT_LIBS = {"numpy", "grpc", "google", "zmq", "msgpack", "websockets", "aiohttp", "PIL", "yaml"}
CORE_LIBS = {"numpy", "google", "grpc", "jsonschema", "PIL", "cv2"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names imported by a module (relative imports resolved), skipping TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


MODULES = _modules()
GRAPH = {m: {i for i in _imports(p, m) if i in MODULES and i != m} for m, p in MODULES.items()}
EXTERNAL = {m: {i.split(".")[0] for i in _imports(p, m) if not i.startswith("xvla")} for m, p in MODULES.items()}


def _ours(m: str) -> set[str]:
    return {i for i in _imports(MODULES[m], m) if i.startswith("xvla.")}


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("side, allowed_ours, allowed_libs", [
    ("xvla.core", ("xvla.core", "xvla.proto"), CORE_LIBS),
    ("xvla.agents", ("xvla.agents", "xvla.core", "xvla.proto"), AGENT_LIBS),
    ("xvla.proto", ("xvla.proto",), {"google", "grpc", "grpc_tools", "mypy_protobuf"}),
])
def test_light_sides_import_only_what_they_may(side, allowed_ours, allowed_libs):
    bad = []
    for m in sorted(x for x in MODULES if x == side or x.startswith(side + ".")):
        bad += [f"{m} -> {i}" for i in _ours(m) if not i.startswith(allowed_ours)]
        bad += [f"{m} -> {lib}" for lib in EXTERNAL[m] - STDLIB - allowed_libs]
    assert not bad, "\n".join(bad)


def _torch_engine(m: str) -> bool:
    return "torch" in m.rpartition(".")[2]


def test_runtime_imports_torch_and_export_only_in_a_torch_engine():
    bad = []
    for m in sorted(x for x in MODULES if x.startswith("xvla.runtime")):
        bad += [f"{m} -> {i}" for i in _ours(m) if i.startswith(("xvla.agents", "xvla.benchmarks"))]
        if not _torch_engine(m):
            bad += [f"{m} -> {i}" for i in _ours(m) if i.startswith("xvla.export")]
            bad += [f"{m} -> torch"] if "torch" in EXTERNAL[m] else []
    # and nothing on the serving path imports a torch engine module at import time (only lazily, by flag)
    for m in sorted(x for x in MODULES if x.startswith("xvla.runtime") and not _torch_engine(x)):
        tree = ast.parse(MODULES[m].read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        bad += [f"{m} imports a torch engine at import time" for n in top
                if any(_torch_engine(a.name) for a in n.names) or _torch_engine((getattr(n, "module", "") or ""))]
    assert not bad, "\n".join(bad)


def test_export_never_imports_runtime_or_agents():
    bad = [f"{m} -> {i}" for m in sorted(x for x in MODULES if x.startswith("xvla.export"))
           for i in _ours(m) if i.startswith(("xvla.runtime", "xvla.agents", "xvla.benchmarks"))]
    assert not bad, "\n".join(bad)


GENERIC = ("xvla.runtime.session", "xvla.runtime.execution", "xvla.runtime.batching", "xvla.runtime.service",
           "xvla.runtime.server", "xvla.runtime.engines", "xvla.runtime.wire", "xvla.runtime.skills",
           "xvla.runtime.bundle", "xvla.runtime.policies.base")


def test_the_generic_serving_path_knows_no_policy_kind():
    bad = []
    for m in sorted(x for x in MODULES if x.startswith(GENERIC)):
        bad += [f"{m} -> {i}" for i in _ours(m) if i in MODULES and i.startswith("xvla.runtime.policies.")
                and i != "xvla.runtime.policies.base"]
        text = MODULES[m].read_text().lower()
        bad += [f"{m} names {word!r}" for word in ("xvla.runtime.policies.xvla", "dexvla", "r1pro", "florence")
                if word in text]
    assert not bad, "\n".join(bad)


def test_every_package_folder_is_listed_in_pyproject():
    """A folder missing from [tool.setuptools] packages works in an editable install and is absent from the wheel."""
    tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads TOML")

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert found == listed, f"missing: {sorted(found - listed)}, stale: {sorted(listed - found)}"


def test_imports_go_through_the_xvla_namespace():
    """``from export.x import ...`` works only from a source checkout (the folder is on sys.path), never installed."""
    bare = {"core", "runtime", "agents", "export", "proto", "benchmarks"}
    bad = [f"{m} -> {i}" for m, p in MODULES.items() for i in _imports(p, m) if i.split(".")[0] in bare]
    assert not bad, "\n".join(bad)
