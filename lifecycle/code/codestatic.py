"""The static stages of the code gate: what can be said about a candidate model file by reading it.

A candidate is the text of a new `models/model.py`; the base is the file it was made from.
Every function here reads text or an AST and never runs the candidate: these stages run in
minimind's own process. They are an intent filter for honest mistakes and obvious
misbehaviour (an import of `subprocess`, `eval`, a `while True` at import time), not a
security boundary; the child process of lifecycle/code/sandbox.py is the boundary.

The stages, cheapest first, each `stage(...) -> Stage`; lifecycle/code/codegate.py runs them in
order and stops at the first failure.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

MODEL_PATH = "models/model.py"   # the one file a code change may touch
MAX_CHANGED_LINES = 200          # added + removed lines of one change

# torch and its submodules, and these standard modules: what the model file needs.
ALLOWED_IMPORTS = frozenset({"torch", "math", "dataclasses", "typing", "functools", "itertools", "collections",
                             "enum", "warnings", "__future__"})
REFUSED_CALLS = frozenset({"eval", "exec", "compile", "__import__", "open", "breakpoint", "input", "globals",
                           "locals", "vars"})
REFUSED_ATTRIBUTES = frozenset({"__subclasses__", "__globals__", "__builtins__", "__code__", "__closure__",
                                "__bases__", "__mro__", "__base__", "__getattribute__", "__dict__", "__class__",
                                "__loader__", "__spec__", "__import__", "__reduce__", "__reduce_ex__", "f_globals",
                                "f_locals", "f_back", "gi_frame", "tb_frame", "__func__", "__self__",
                                # standard modules that torch's namespace carries (torch.os.environ, torch.sys)
                                "os", "sys", "subprocess", "builtins", "importlib", "ctypes", "socket", "shutil",
                                "pickle", "marshal", "environ", "system", "popen"})
# Attribute paths refused wherever they appear (torch's file, network and compiler doors).
REFUSED_PATHS = ("torch.save", "torch.load", "torch.hub", "torch.utils.cpp_extension", "torch.utils.model_zoo",
                 "torch.ops.load_library", "torch.classes.load_library", "torch.package", "torch.jit.load",
                 "torch.jit.save", "torch.serialization", "torch.distributed", "torch.multiprocessing",
                 "torch.utils.data", "torch._C", "torch.backends")

# What the registry, the trainer, evaluation and the checks use of the model file.
INTERFACE_NAMES = ("ModelConfig", "MiniMindLM", "PRESETS", "PRESET_ALIASES")
INTERFACE_METHODS = {
    "ModelConfig": ("from_dict", "to_dict", "fields_schema"),
    "MiniMindLM": ("forward", "generate", "load_memory_bank", "after_optimizer_step", "memory_stats",
                   "inspect_memory", "memory_entry", "set_memory_entry", "memory_layers"),
}
CONFIG_CLASS = "ModelConfig"


@dataclass
class Stage:
    """One stage's result: `status` passed | failed | skipped; `items` the specifics (lines, names)."""

    stage: str
    status: str
    detail: str
    items: list[Any] = field(default_factory=list)
    lesson: Optional[str] = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def to_dict(self) -> dict[str, Any]:
        out = {"stage": self.stage, "status": self.status, "detail": self.detail}
        if self.items:
            out["items"] = self.items
        if self.lesson:
            out["lesson"] = self.lesson
        return out


def passed(stage: str, detail: str, items: Optional[list] = None) -> Stage:
    return Stage(stage, "passed", detail, items or [])


def failed(stage: str, detail: str, items: Optional[list] = None, lesson: Optional[str] = None) -> Stage:
    return Stage(stage, "failed", detail, items or [], lesson)


# --- diffs and hunks ------------------------------------------------------------------------

@dataclass(frozen=True)
class Hunk:
    """One hunk of the unified diff: old lines [old_start, old_start+old_len), new likewise (1-based)."""

    old_start: int
    old_len: int
    new_start: int
    new_len: int
    text: str            # the hunk with its @@ header, as it appears in model.patch


def unified_diff(old: str, new: str, path: str = MODEL_PATH) -> str:
    """A diff `git apply` accepts: a/ and b/ prefixes, and the no-newline marker where it applies."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    out = []
    for line in difflib.unified_diff(a, b, fromfile=f"a/{path}", tofile=f"b/{path}", n=3):
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        out.append(line)
    if not out:
        return ""
    return f"diff --git a/{path} b/{path}\n" + "".join(out)


HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def hunks(diff: str) -> list[Hunk]:
    found, current, header = [], [], None
    for line in diff.splitlines(keepends=True):
        match = HUNK_HEADER.match(line)
        if match:
            if header:
                found.append(_hunk(header, current))
            header, current = match, [line]
        elif header is not None:
            current.append(line)
    if header:
        found.append(_hunk(header, current))
    return found


def _hunk(match: re.Match, lines: list[str]) -> Hunk:
    old_start, old_len, new_start, new_len = (int(g) if g is not None else 1 for g in match.groups())
    return Hunk(old_start, old_len, new_start, new_len, "".join(lines))


def changed_line_count(diff: str) -> int:
    return sum(1 for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---")))


def _changed_new_lines(hunk: Hunk) -> tuple[int, int]:
    """[first, last] new-file lines the hunk really changes (context excluded); an empty range
    (a pure deletion) is the line after the deletion point."""
    line, first, last = hunk.new_start, None, None
    for raw in hunk.text.splitlines()[1:]:
        kind = raw[:1]
        if kind == "+":
            first, last = first or line, line
            line += 1
        elif kind == "-":
            first = first or line
            last = max(last or line, line - 1) if last else line - 1
        elif kind == " ":
            line += 1
    return (first or hunk.new_start), (last if last is not None and last >= (first or 0) else (first or hunk.new_start) - 1)


def changed_ranges(diff: str) -> list[tuple[int, int]]:
    """[first, last] candidate lines each hunk of the diff changes, in order."""
    return [_changed_new_lines(h) for h in hunks(diff)]


def hunk_reasons(diff: str, reasons: list[tuple[int, int, str]]) -> list[dict[str, Any]]:
    """Each hunk with the reasons whose candidate line range [start, end] meets what it changes."""
    out = []
    for h in hunks(diff):
        first, last = _changed_new_lines(h)
        lo, hi = first, max(last, first)
        mine = [why for start, end, why in reasons if start <= hi + 1 and end >= lo - 1]
        out.append({"hunk": h.text, "old_start": h.old_start, "new_start": h.new_start,
                    "reasons": list(dict.fromkeys(mine))})
    return out


# --- 1. scope -------------------------------------------------------------------------------

def scope(base: str, candidate: str, reasons: list[tuple[int, int, str]], files: tuple[str, ...] = (MODEL_PATH,),
          max_lines: int = MAX_CHANGED_LINES) -> Stage:
    others = [f for f in files if f != MODEL_PATH]
    if others:
        return failed("scope", f"only {MODEL_PATH} may change; the change also touches {', '.join(others)}", others)
    diff = unified_diff(base, candidate)
    if not diff:
        return failed("scope", f"the change is empty: {MODEL_PATH} is byte-identical to the base")
    count = changed_line_count(diff)
    if count > max_lines:
        return failed("scope", f"the change adds or removes {count} lines; at most {max_lines} are allowed in one change")
    bare = [h for h in hunk_reasons(diff, reasons) if not h["reasons"]]
    if bare:
        lines = [f"line {h['new_start']}" for h in bare]
        return failed("scope", f"{len(bare)} hunk(s) of the diff have no reason ({', '.join(lines)}): "
                      "give a reason for every edit", lines)
    return passed("scope", f"{count} changed line(s) in {len(hunks(diff))} hunk(s) of {MODEL_PATH}, each with a reason")


# --- 2. parse and compile -------------------------------------------------------------------

def parse(candidate: str) -> tuple[Stage, Optional[ast.Module]]:
    try:
        tree = ast.parse(candidate, filename=MODEL_PATH)
        compile(tree, MODEL_PATH, "exec")  # compiling a tree runs nothing; it finds what parsing does not
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        text = (exc.text or "").rstrip()
        return failed("parse", f"{MODEL_PATH} {where}: {exc.msg}" + (f": {text.strip()}" if text else ""),
                      [{"line": exc.lineno}]), None
    except ValueError as exc:  # e.g. null bytes
        return failed("parse", f"{MODEL_PATH}: {exc}"), None
    return passed("parse", "parses and compiles"), tree


# --- 3. lint (pyflakes, only what is new against the base) ----------------------------------

def _flakes(text: str) -> list[Any]:
    from pyflakes import checker

    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    return list(checker.Checker(tree, filename=MODEL_PATH).messages)


def lint(base: str, candidate: str) -> Stage:
    def key(message):
        return (type(message).__name__, tuple(str(a) for a in message.message_args))

    known = Counter(key(m) for m in _flakes(base))
    new = []
    for message in sorted(_flakes(candidate), key=lambda m: m.lineno):
        k = key(message)
        if known[k] > 0:
            known[k] -= 1
            continue
        new.append(f"line {message.lineno}: {message.message % message.message_args}")
    if new:
        return failed("lint", f"{len(new)} new pyflakes error(s): " + "; ".join(new[:8]), new)
    return passed("lint", "no pyflakes error that the base does not have")


# --- 4. policy, read from the AST -----------------------------------------------------------

def _dotted(node: ast.AST) -> Optional[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> the module path it stands for (`import torch.nn as nn` -> nn: torch.nn)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _refused_path(path: str) -> Optional[str]:
    return next((p for p in REFUSED_PATHS if path == p or path.startswith(p + ".")), None)


def policy(tree: ast.Module, base_tree: Optional[ast.Module] = None) -> Stage:
    """Refused constructs of the candidate; one the base already has as often (the lab's own
    `getattr(self, name)`) is the lab's code, not the change's, and is not held against it."""
    known = Counter(text for _, text in _findings(base_tree)) if base_tree is not None else Counter()
    problems = []
    for line, text in sorted(_findings(tree), key=lambda f: f[0]):
        if known[text] > 0:
            known[text] -= 1
            continue
        problems.append(f"line {line}: {text}")
    problems = list(dict.fromkeys(problems))
    if problems:
        return failed("policy", f"{len(problems)} refused construct(s): " + "; ".join(problems[:8]), problems,
                      lesson="the model file imports only torch and a few standard modules, reads no file, runs no "
                      "code at import time and never reaches the interpreter's internals")
    return passed("policy", "imports from the allow-list only; no refused call, attribute or module-level statement")


def _units(tree: ast.Module):
    """(qualified name, node) of each top-level statement, a class's methods on their own."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for item in methods:
                yield f"{node.name}.{item.name}", item
            rest = ast.ClassDef(name=node.name, bases=node.bases, keywords=node.keywords,
                                body=[n for n in node.body if n not in methods], decorator_list=node.decorator_list)
            yield node.name, rest
        else:
            yield getattr(node, "name", None) or f"<module line {node.lineno}>", node


def _findings(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, 'symbol: what is refused') of every refused construct."""
    problems: list[tuple[int, str]] = []
    aliases = _aliases(tree)
    for unit, top in _units(tree):
        for line, text in _unit_findings(top, aliases):
            problems.append((line, f"{text} (in {unit})" if not unit.startswith("<") else text))
    return problems + _module_level(tree)


def _unit_findings(top: ast.AST, aliases: dict[str, str]) -> list[tuple[int, str]]:
    problems: list[tuple[int, str]] = []

    def refuse(node: ast.AST, text: str) -> None:
        problems.append((getattr(node, "lineno", 0), text))

    for node in ast.walk(top):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom) and node.level:
                refuse(node, "relative imports are refused: the model file is self-contained")
                continue
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] not in ALLOWED_IMPORTS:
                    refuse(node, f"import of {module!r} is refused (allowed: torch and its submodules, "
                           f"{', '.join(sorted(ALLOWED_IMPORTS - {'torch', '__future__'}))})")
                elif _refused_path(module):
                    refuse(node, f"import of {module!r} is refused")
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    bad = _refused_path(f"{node.module}.{alias.name}")
                    if bad:
                        refuse(node, f"{node.module}.{alias.name} is refused ({bad})")
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in REFUSED_CALLS:
                refuse(node, f"{node.func.id}() is refused")
            if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
                name = node.args[1] if len(node.args) > 1 else None
                if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                    refuse(node, f"{node.func.id}() with a computed attribute name is refused")
                elif name.value.startswith("__") or name.value in REFUSED_ATTRIBUTES:
                    refuse(node, f"{node.func.id}(..., {name.value!r}) is refused")
        elif isinstance(node, ast.Attribute):
            if node.attr in REFUSED_ATTRIBUTES:
                refuse(node, f"attribute {node.attr} is refused")
            path = _dotted(node)
            if path:
                head, _, rest = path.partition(".")
                full = aliases.get(head, head) + (f".{rest}" if rest else "")
                bad = _refused_path(full)
                if bad:
                    refuse(node, f"{full} is refused")
        elif isinstance(node, ast.Name) and node.id in ("__builtins__", "__loader__", "__spec__"):
            refuse(node, f"{node.id} is refused")
    return problems


def _module_level(tree: ast.Module) -> list[tuple[int, str]]:
    """Only imports, definitions, docstrings and constant assignments at module level; an
    assignment may call only classes the module defines above it (PRESETS' BlockSpec)."""
    out, classes = [], set()
    for index, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef)):
            continue
        if isinstance(node, ast.ClassDef):
            classes.add(node.name)
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring or a string used as a comment
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            if not all(isinstance(t, ast.Name) for t in targets):
                out.append((node.lineno, "module-level assignment to something other than a name"))
                continue
            if value is None:
                continue
            calls = [c for c in ast.walk(value) if isinstance(c, ast.Call)]
            bad = [c for c in calls if not (isinstance(c.func, ast.Name) and (c.func.id in classes or c.func.id in SAFE_BUILDERS))]
            if bad or any(isinstance(n, (ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield)) for n in ast.walk(value)):
                out.append((node.lineno, "a module-level assignment may hold only constants and classes "
                            "defined in the file (it runs at import time)"))
            continue
        out.append((node.lineno, f"module-level {type(node).__name__} statement is refused "
                    "(only imports, definitions, constant assignments and docstrings)"))
    return out


SAFE_BUILDERS = frozenset({"dict", "list", "tuple", "set", "frozenset", "float", "int", "str", "bool", "range"})


# --- 5. interface ---------------------------------------------------------------------------

def _top_level(tree: ast.Module) -> dict[str, ast.AST]:
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def _methods(node: ast.AST) -> set[str]:
    if not isinstance(node, ast.ClassDef):
        return set()
    return {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def interface(base_tree: ast.Module, tree: ast.Module) -> Stage:
    """Every name and method the tool uses that the base provides, the candidate still provides."""
    base, cand = _top_level(base_tree), _top_level(tree)
    missing = [n for n in INTERFACE_NAMES if n in base and n not in cand]
    for cls, methods in INTERFACE_METHODS.items():
        if cls in base and cls in cand:
            missing += [f"{cls}.{m}" for m in methods if m in _methods(base[cls]) and m not in _methods(cand[cls])]
    if missing:
        return failed("interface", "the candidate no longer provides " + ", ".join(missing)
                      + " (the registry, the trainer, evaluation and the checks use them)", missing)
    return passed("interface", "provides " + ", ".join(n for n in INTERFACE_NAMES if n in cand)
                  + " and the methods the tool calls")


# --- 6. touched symbols ---------------------------------------------------------------------

def _symbols(tree: ast.Module) -> dict[str, str]:
    """Qualified name -> a dump of its definition: functions, classes (their body without the
    methods), methods `Class.method`, and module-level assignments."""
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = ast.dump(node)
        elif isinstance(node, ast.ClassDef):
            rest = []
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out[f"{node.name}.{item.name}"] = ast.dump(item)
                else:
                    rest.append(ast.dump(item))
            out[node.name] = "\n".join([ast.dump(b) for b in node.bases] + [ast.dump(d) for d in node.decorator_list] + rest)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for name in _top_level(ast.Module(body=[node], type_ignores=[])):
                out[name] = ast.dump(node)
    return out


def changed_symbols(base_tree: ast.Module, tree: ast.Module) -> list[str]:
    old, new = _symbols(base_tree), _symbols(tree)
    return sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))


def _covered(name: str, touches: set[str]) -> bool:
    owner = name.split(".")[0]
    return name in touches or owner in touches or owner == CONFIG_CLASS


def touched(base_tree: ast.Module, tree: ast.Module, touches: Optional[list[str]]) -> Stage:
    """The changed definitions ⊆ the declared `touches` plus the config class. touches=None
    (a human's patch) declares nothing: the changed symbols are listed, not refused."""
    changed = changed_symbols(base_tree, tree)
    if touches is None:
        return passed("touched", "changed: " + (", ".join(changed) or "no definition"), changed)
    extra = [name for name in changed if not _covered(name, set(touches))]
    if extra:
        return failed("touched", f"the change edits {', '.join(extra)}, which the plan did not declare in touches "
                      f"(declared: {', '.join(touches) or 'none'}, plus {CONFIG_CLASS}); undo those edits or "
                      "declare them", extra)
    return passed("touched", "changed: " + (", ".join(changed) or "no definition") + f" (declared: {', '.join(touches)})",
                  changed)


def new_config_fields(base_tree: ast.Module, tree: ast.Module) -> list[str]:
    def fields(t):
        node = _top_level(t).get(CONFIG_CLASS)
        if not isinstance(node, ast.ClassDef):
            return []
        return [n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]

    known = set(fields(base_tree))
    return [f for f in fields(tree) if f not in known]


def removed_config_fields(base_tree: ast.Module, tree: ast.Module) -> list[str]:
    return new_config_fields(tree, base_tree)


def settings(base_tree: ast.Module, tree: ast.Module, declared: Optional[list[str]]) -> Stage:
    """New ModelConfig fields: old configs must still load, so none is removed; with a plan,
    the new fields are exactly the declared new_settings."""
    added, removed = new_config_fields(base_tree, tree), removed_config_fields(base_tree, tree)
    if removed:
        return failed("settings", f"the change removes ModelConfig field(s) {', '.join(removed)}: older "
                      "experiments' configs and checkpoints would no longer load", removed)
    if declared is not None:
        undeclared = [f for f in added if f not in declared]
        absent = [f for f in declared if f not in added]
        if undeclared or absent:
            parts = ([f"new field(s) not in new_settings: {', '.join(undeclared)}"] if undeclared else []) + \
                    ([f"new_settings not added to ModelConfig: {', '.join(absent)}"] if absent else [])
            return failed("settings", "; ".join(parts), undeclared + absent)
    return passed("settings", "new setting(s): " + (", ".join(added) or "none"), added)
