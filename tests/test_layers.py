"""The import contract: layers import downward only (docs/ARCHITECTURE.md).

Every import is read from the source, including imports inside functions, so a lazy
import cannot hide an edge that goes the wrong way.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the project packages it may import (itself included)
ALLOWED = {
    "minimind": {"minimind"},
    "models": {"minimind", "models"},
    "corpus": {"minimind", "corpus"},
    "training": {"minimind", "models", "corpus", "training"},
    "agent": {"minimind", "agent"},
    "lifecycle": {"minimind", "models", "corpus", "training", "agent", "lifecycle"},
    "cli": {"minimind", "models", "corpus", "training", "agent", "lifecycle"},
    "bench": {"minimind", "models", "corpus", "training", "lifecycle", "bench"},
}
PROJECT = set(ALLOWED) - {"cli", "bench"}
# Run scripts written by minimind <= 0.1 call `python -m agent.finish`; that shim forwards
# to the lifecycle and is the one edge allowed to point up (see its docstring).
EXCEPTIONS = {("agent/finish.py", "lifecycle")}
# The foundation may use only the standard library and yaml; the living model file is
# self-contained (snapshots are byte copies loaded by path), so torch and stdlib only.
THIRD_PARTY = {"minimind": {"yaml"}, "models/model.py": {"torch"}}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in a file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def layer_of(root: Path, path: Path) -> str:
    rel = path.relative_to(root)
    return "cli" if rel.parts == ("cli.py",) else rel.parts[0]


def violations(root: Path) -> list[str]:
    """Every import that breaks the contract, as 'file:line imports X'."""
    files = [root / "cli.py"] if (root / "cli.py").exists() else []
    for package in ALLOWED:
        if (root / package).is_dir():
            files += sorted((root / package).rglob("*.py"))
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    out = []
    for path in files:
        layer = layer_of(root, path)
        rel = str(path.relative_to(root))
        for line, module in imports_of(path):
            if module in PROJECT:
                if module not in ALLOWED[layer] and (rel, module) not in EXCEPTIONS:
                    out.append(f"{rel}:{line} imports {module} ({layer} may import {', '.join(sorted(ALLOWED[layer]))})")
                if rel == "models/model.py":
                    out.append(f"{rel}:{line} imports {module} (the model file must be self-contained)")
                continue
            limited = THIRD_PARTY.get(rel, THIRD_PARTY.get(layer) if layer == "minimind" else None)
            if limited is not None and module not in stdlib and module not in limited:
                out.append(f"{rel}:{line} imports {module} (only the standard library and {', '.join(sorted(limited))})")
    return out


def test_every_import_goes_downward():
    assert violations(ROOT) == []


def test_the_check_catches_a_wrong_way_import(tmp_path):
    """The contract test can fail: a foundation module importing the trainer is reported."""
    for package in ("minimind", "training", "models"):
        (tmp_path / package).mkdir()
    (tmp_path / "training" / "loop.py").write_text("from minimind.rundir import update_state\n")
    (tmp_path / "minimind" / "lab.py").write_text("def init():\n    from training.loop import Trainer\n")
    (tmp_path / "minimind" / "heavy.py").write_text("import torch\n")
    (tmp_path / "models" / "model.py").write_text("import torch\nfrom minimind import errors\n")
    found = violations(tmp_path)
    assert any(v.startswith("minimind/lab.py:2 imports training") for v in found), found
    assert any(v.startswith("minimind/heavy.py:1 imports torch") for v in found), found
    assert any("models/model.py:2 imports minimind (the model file must be self-contained)" in v for v in found), found
    assert not any(v.startswith("training/") for v in found), found


@pytest.mark.parametrize("argv", [["--help"], ["status"], ["status", "--json"]])
def test_fast_paths_import_nothing_heavy(tmp_path, argv):
    """`minimind --help` and `minimind status` stay under the start-up budget (QUALITY.md)."""
    lab = tmp_path / "lab"
    (lab / "runs" / "0.1.0").mkdir(parents=True)
    (lab / "minimind.yaml").write_text("model:\n  preset: memory\n")
    (lab / "runs" / "0.1.0" / "state.json").write_text('{"version": "0.1.0", "state": "drafted"}')
    code = ("import sys, cli\n"
            f"cli.main({argv!r}, standalone_mode=False)\n"
            "print(sorted(m for m in ('torch', 'anthropic', 'swanlab', 'git', 'jinja2', 'accelerate', 'numpy')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={"MINIMIND_LAB": str(lab), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _bound(node) -> list[tuple[str, tuple]]:
    """(name, (module, imported name)) for each name an import statement binds."""
    module = node.module if isinstance(node, ast.ImportFrom) else None
    return [(alias.asname or alias.name.split(".")[0], (module, alias.name)) for alias in node.names]


def reimports(root: Path) -> list[str]:
    """Imports inside functions of a name the module already imports at its top, from the same place."""
    files = [root / "cli.py"] + [p for package in ALLOWED if (root / package).is_dir()
                                 for p in sorted((root / package).rglob("*.py"))]
    out = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = dict(b for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)) for b in _bound(node))
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out += [f"{path.relative_to(root)}:{node.lineno} imports {name} again"
                        for node in ast.walk(func) if isinstance(node, (ast.Import, ast.ImportFrom))
                        for name, source in _bound(node) if top.get(name) == source]
    return out


def test_no_function_imports_again_what_its_module_has():
    assert reimports(ROOT) == []


# Two modules of one package that import each other (at any depth, function-local imports
# included) are one module in two files: a lazy import hid check <-> new <-> proposal,
# launch <-> slurm, record <-> review, runtime <-> sft and new <-> codechange. What two
# modules both need lives below them (models/registry.py, lifecycle/knowledge/bases.py).


def module_graph(root: Path) -> dict[str, set[str]]:
    """{dotted module: the project modules it imports} for every module of the packages,
    sub-packages included; `from a.b import c` counts as importing a.b.c when that is a module."""
    graph: dict[str, set[str]] = {}
    for package in PROJECT:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            graph[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = _imported(path)
    return {name: {_module(root, t) for t in targets if _module(root, t)} - {name} for name, targets in graph.items()}


def _imported(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def _module(root: Path, dotted: str):
    """The project module (or package) a dotted import target names, None outside the project."""
    parts = dotted.split(".")
    if parts[0] not in PROJECT:
        return None
    if (root.joinpath(*parts[:-1]) / f"{parts[-1]}.py").is_file() or (root.joinpath(*parts) / "__init__.py").is_file():
        return dotted
    return None


def cycles(root: Path) -> list[set[str]]:
    """Every set of two or more modules of one package that reach each other through imports."""
    graph = module_graph(root)
    graph = {name: {m for m in deps if m.split(".")[0] == name.split(".")[0]} for name, deps in graph.items()}
    found, seen = [], set()
    for start in graph:  # the strongly connected sets, by reachability (a few hundred modules)
        if start in seen:
            continue
        reach = _reach(graph, start)
        group = {m for m in reach if start in _reach(graph, m)} | {start}
        seen |= group
        if len(group) > 1:
            found.append(group)
    return found


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    out, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in out:
                out.add(nxt)
                todo.append(nxt)
    return out


def test_no_two_modules_of_a_package_import_each_other():
    assert [sorted(c) for c in cycles(ROOT)] == []


def test_the_cycle_check_sees_a_function_local_import(tmp_path):
    files = {"lifecycle/a.py": "def f():\n    from lifecycle.room.b import g\n",
             "lifecycle/room/__init__.py": "", "lifecycle/room/b.py": "from lifecycle import a\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert [sorted(c) for c in cycles(tmp_path)] == [["lifecycle.a", "lifecycle.room.b"]]


# The lifecycle's rooms (docs/ARCHITECTURE.md): the verbs are the modules at its top and
# import any room; a room imports only the rooms below it, and never a verb.
ROOMS = {
    "lifecycle.running": {"lifecycle.document", "lifecycle.knowledge"},
    "lifecycle.code": {"lifecycle.document", "lifecycle.knowledge"},
    "lifecycle.document": {"lifecycle.knowledge"},
    "lifecycle.knowledge": set(),
}


def room_of(module: str):
    """'lifecycle.running' for lifecycle.running.launch; 'verb' for a module at the top of lifecycle."""
    parts = module.split(".")
    if parts[0] != "lifecycle" or len(parts) < 2:
        return None
    room = ".".join(parts[:2])
    return room if room in ROOMS else "verb"


def room_violations(root: Path) -> list[str]:
    out = []
    for name, deps in module_graph(root).items():
        room = room_of(name)
        if room in (None, "verb"):
            continue
        for dep in sorted(deps):
            target = room_of(dep)
            if target is None or target == room or dep == "lifecycle":
                continue
            if target == "verb" or target not in ROOMS[room]:
                out.append(f"{name} imports {dep} ({room} may import {', '.join(sorted(ROOMS[room])) or 'no other room'}, never a verb)")
    return out


def test_rooms_import_downward_and_never_a_verb():
    assert room_violations(ROOT) == []
    assert {p.name for p in (ROOT / "lifecycle").iterdir() if p.is_dir() and (p / "__init__.py").exists()} == \
        {room.split(".")[1] for room in ROOMS}


def test_the_room_check_catches_an_upward_import(tmp_path):
    files = {"lifecycle/status.py": "", "lifecycle/knowledge/__init__.py": "", "lifecycle/document/__init__.py": "",
             "lifecycle/knowledge/lessons.py": "def f():\n    from lifecycle.document import record\n",
             "lifecycle/document/record.py": "from lifecycle.status import show\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = room_violations(tmp_path)
    assert any(v.startswith("lifecycle.knowledge.lessons imports lifecycle.document.record") for v in found), found
    assert any(v.startswith("lifecycle.document.record imports lifecycle.status") for v in found), found
