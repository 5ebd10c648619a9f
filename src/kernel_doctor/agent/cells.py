"""What the agent learns from the cells it saw run, for checkpoints: the names a cell
uses, the statements that define things (imports, functions, classes: run again on
restore), the cell that last bound each name (run again by ``--recompute``), and the
order cells ran in (``kernel-doctor run --resume`` finds its place by it). Standard
library only (see ``protocol``)."""

from __future__ import annotations

import ast
import hashlib
import re
import types
from collections.abc import Callable
from typing import Any

from .hooks import wrap_shell

HIDDEN = frozenset({"In", "Out", "exit", "quit", "get_ipython"})
_IDENTIFIER = re.compile(r"[^\W\d]\w*")
# execution count, source, the namespace's names after it (listed then only where a
# checkpoint may be taken while cells run), the tree IPython parsed of it
Source = tuple[int | None, str, "list[str] | None", "ast.Module | None"]


class TreeKeeper:
    """Keeps the tree IPython parsed (in the main thread) of the cell that runs, so
    that the checkpoint thread never parses. Before Python 3.12, ``ast.parse`` in two
    threads at once can fail the cell's own compile: the AST constructor's recursion
    counter is the interpreter's ("SystemError: AST constructor recursion depth
    mismatch", seen in the tests).

    It wraps the shell's ``transform_ast`` instead of joining its ``ast_transformers``:
    with any transformer there, IPython walks each cell's whole tree again in Python
    (``ast.fix_missing_locations``: 36 µs for a 4-line cell, 3 ms for 350 lines)."""

    def __init__(self) -> None:
        self.tree: ast.Module | None = None
        self._undo: Callable[[], None] = lambda: None

    def install(self, shell: Any) -> None:
        def make(original: Any, active: Callable[[], bool]) -> Any:
            def transform_ast(node: Any) -> Any:
                node = original(node)
                if isinstance(node, ast.Module) and active():
                    self.tree = node
                return node

            return transform_ast

        self._undo = wrap_shell(shell, "transform_ast", make)

    def uninstall(self) -> None:
        self._undo()

    def take(self) -> ast.Module | None:
        tree, self.tree = self.tree, None
        return tree


def source_hash(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class CellBook:
    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.history: list[str] = []  # every cell the kernel ran, as source_hash
        self.definitions: dict[str, str] = {}  # what a def/class/import binds → source
        self.made_by: dict[str, tuple[int | None, str]] = {}  # name → its last cell

    def definition_list(self) -> list[str]:
        return list(dict.fromkeys(self.definitions.values()))

    def learn(self, sources: list[Source]) -> None:
        """Note the statements that define things, the cells that bind names, and the
        order cells ran in (``kernel-doctor run --resume`` finds its place by it)."""
        for count, source, _, tree in sources:
            self.history.append(source_hash(source))
            if tree is None:
                continue  # a cell that did not compile bound nothing
            for node in tree.body:
                for name in _defined(node):
                    self.definitions.pop(name, None)  # kept in the order they ran
                    self.definitions[name] = ast.unparse(node)
                for name in _assigned(node):
                    self.definitions.pop(name, None)  # rebound by an assignment since
                    self.made_by[name] = (count, source)

    def named(self, sources: list[Source]) -> set[str]:
        """Names the cells mention, and the globals of notebook functions they call: a
        variable any of these may have changed in place."""
        names: set[str] = set()
        for _, source, _, tree in sources:
            names |= mentioned(source, tree)
        namespace = self.shell.user_ns
        todo = list(names)
        while todo:
            value = namespace.get(todo.pop())
            if isinstance(value, types.FunctionType) and value.__module__ == "__main__":
                for name in _code_names(value.__code__):
                    if name not in names:
                        names.add(name)
                        todo.append(name)
        return names


def mentioned(source: str, tree: ast.Module | None) -> set[str]:
    """The names a cell's code uses (not its comments or strings), and every word of a
    magic's arguments (``%timeit f(x)``); without its tree, every word of its source."""
    if tree is None:
        return set(_IDENTIFIER.findall(source))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "").startswith("run_"):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.update(_IDENTIFIER.findall(arg.value))
    return names


def candidate(name: str, hidden: Any) -> bool:
    return not name.startswith("_") and name not in HIDDEN and name not in hidden


def restored_by_definition(name: str, obj: object, definitions: dict[str, str]) -> bool:
    """Modules, and what an import, def or class statement bound: run again, not
    pickled (the notebook's own functions cannot be pickled by reference)."""
    if isinstance(obj, types.ModuleType):
        return True
    return name in definitions and isinstance(obj, (types.FunctionType, type))


def _defined(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names if a.name != "*"]
    return []


def _assigned(node: ast.AST) -> set[str]:
    """Names a top-level statement binds by assignment (not inside the functions and
    classes it defines)."""
    if isinstance(node, ast.Name):
        return {node.id} if isinstance(node.ctx, ast.Store) else set()
    names: set[str] = set()
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            names |= _assigned(child)
    return names


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names
