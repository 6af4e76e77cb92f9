"""The layers of DESIGN.md §1: imports point down, only the top reads the environment.

Every module of the package is placed in one layer below, by hand, so a new
module fails here until someone decides where it belongs. Imports are read with
:mod:`ast`, so function-local and ``TYPE_CHECKING`` imports count like the rest.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gitruns"

#: Plumbing: codecs, names, Git objects and refs. Imports only within itself.
BOTTOM = (
    "gitruns.errors",
    "gitruns.values",
    "gitruns.refs",
    "gitruns.chunk",
    "gitruns.summary",  # digests of chunks -> a summary; shared by writer and readers
    "gitruns.readme",  # the README.md of a run's tree, rendered from its summary
    "gitruns.objects",
    "gitruns.packs",  # the packs gitruns writes, and merging them
    "gitruns.store",
    "gitruns.journal",
)

#: Operations on runs: write, fork, read, compare, move, check, import, export.
MIDDLE = (
    "gitruns.commits",
    "gitruns.committer",  # journal -> commits, in the writer or in its own process
    "gitruns.committer_process",
    "gitruns.writer",
    "gitruns.fork",
    "gitruns.files",
    "gitruns.run_config",
    "gitruns.repository",
    "gitruns.reader",
    "gitruns.lineage",
    "gitruns.diff",
    "gitruns.export",
    "gitruns.plot",
    "gitruns.report",
    "gitruns.textconv",
    "gitruns.remote",
    "gitruns.hooks",
    "gitruns.compat",
    "gitruns.importers.csv_logs",
    "gitruns.importers.dvclive_dir",
    "gitruns.importers.gitruns_export",
    "gitruns.importers.hf_trainer",
    "gitruns.importers.mlflow_store",
    "gitruns.importers.model",
    "gitruns.importers.table",
    "gitruns.importers.tfevents",
    "gitruns.importers.wandb_dir",
    "gitruns.importers.wandb_log",
)

#: What users call: the package root (it re-exports init and Api), the W&B-style
#: API and its settings, the demo, the CLI, and import_runs (the importers
#: package and its writer), which writes runs through init() as a script does.
TOP = (
    "gitruns",
    "gitruns.importers",
    "gitruns.importers.writer",
    "gitruns.run",
    "gitruns.settings",
    "gitruns.api",
    "gitruns.demo",
    "gitruns.cli",
    "gitruns.cli.main",
    "gitruns.cli.common",
    "gitruns.cli.branch",
    "gitruns.cli.demo",
    "gitruns.cli.export",
    "gitruns.cli.hooks",
    "gitruns.cli.imports",
    "gitruns.cli.remote",
    "gitruns.cli.runs",
)

LAYERS = {"bottom": BOTTOM, "middle": MIDDLE, "top": TOP}
RANK = {module: rank for rank, layer in enumerate(LAYERS.values()) for module in layer}

#: Imports against the layers that exist today: (importer, imported) -> why.
#: Each is a known problem to remove, never a precedent; an entry that no longer
#: matches an import fails test_allow_lists_are_not_stale.
UPWARD_IMPORTS: dict[tuple[str, str], str] = {}

#: The modules that read the process environment, and why. Only the top layer
#: may; a module below the top is allowed only while it is in ENV_OUTSIDE_TOP.
ENV_READERS = {
    "gitruns.settings": "every GITRUNS_* variable: the repository, mode, project "
    "and init()'s writer settings",
    "gitruns.cli.remote": "git's GIT_SSH_COMMAND / GIT_SSH, as for `git push`",
}
ENV_OUTSIDE_TOP: set[str] = set()

#: What reads (or writes) the environment through the os module.
ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    module_name(path): path
    for path in sorted(PACKAGE.rglob("*.py"))
    if "__pycache__" not in path.parts
}


@dataclass(frozen=True)
class Found:
    """One import of a gitruns module, or one use of the environment, in a file."""

    target: str
    line: int


def known_module(name: str, modules: set[str]) -> str | None:
    """The module an import name loads: itself, or its nearest known package."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def gitruns_imports(
    tree: ast.Module, name: str, is_package: bool, modules: set[str]
) -> list[Found]:
    """Every gitruns module ``name`` imports, at any depth of the file."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            # ``from gitruns import hooks`` imports the module gitruns.hooks;
            # ``from gitruns import init`` imports the package root.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        for target in targets:
            module = known_module(target, modules)
            if module is not None and module != name:
                found.append(Found(module, node.lineno))
    return found


def environment_uses(tree: ast.Module) -> list[Found]:
    """Where a file reaches the environment: ``os.environ``, ``getenv``, aliases."""
    os_names = {"os"}
    imported: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names |= {a.asname or a.name for a in node.names if a.name == "os"}
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            for alias in node.names:
                if alias.name in ENV_NAMES:
                    imported.add(alias.asname or alias.name)
                    found.append(Found(f"os.{alias.name}", node.lineno))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in os_names
            and node.attr in ENV_NAMES
        ):
            found.append(Found(f"os.{node.attr}", node.lineno))
        elif isinstance(node, ast.Name) and node.id in imported:
            found.append(Found(node.id, node.lineno))
    return found


def parse(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(encoding="utf-8"), str(MODULES[name]))


def imports_of(name: str) -> list[Found]:
    is_package = MODULES[name].name == "__init__.py"
    return gitruns_imports(parse(name), name, is_package, set(MODULES))


# -- the scan itself -------------------------------------------------------------

SAMPLE = '''"""A module that hides its imports."""
import os as system
from os import getenv as ge
from . import hooks
from ..store import RunStore
import gitruns.refs
from gitruns import init

def late():
    from gitruns.cli.main import main
    return system.environ.get("X"), ge("Y"), os.environ
'''


def test_the_scan_sees_local_relative_and_aliased_imports() -> None:
    modules = {
        "gitruns",
        "gitruns.hooks",
        "gitruns.store",
        "gitruns.refs",
        "gitruns.cli",
        "gitruns.cli.main",
        "gitruns.importers",
        "gitruns.importers.x",
    }
    tree = ast.parse(SAMPLE)
    imported = gitruns_imports(tree, "gitruns.importers.x", False, modules)
    assert [(f.target, f.line) for f in imported] == [
        ("gitruns.importers", 4),  # ``from . import hooks``: no importers.hooks
        ("gitruns.store", 5),
        ("gitruns.refs", 6),
        ("gitruns", 7),
        ("gitruns.cli.main", 10),
    ]
    uses = sorted((f.line, f.target) for f in environment_uses(tree))
    assert uses == [
        (3, "os.getenv"),
        (11, "ge"),
        (11, "os.environ"),
        (11, "os.environ"),
    ]


# -- the layers ------------------------------------------------------------------


def test_every_module_is_placed_in_exactly_one_layer() -> None:
    placed = [module for layer in LAYERS.values() for module in layer]
    duplicates = sorted({m for m in placed if placed.count(m) > 1})
    assert not duplicates, f"in more than one layer: {duplicates}"
    unplaced = sorted(set(MODULES) - set(placed))
    assert not unplaced, f"place these in BOTTOM, MIDDLE or TOP: {unplaced}"
    gone = sorted(set(placed) - set(MODULES))
    assert not gone, f"no such modules any more: {gone}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    layer = list(LAYERS)[RANK[name]]
    upward = [
        f"line {f.line}: {f.target} ({list(LAYERS)[RANK[f.target]]})"
        for f in imports_of(name)
        if RANK[f.target] > RANK[name] and (name, f.target) not in UPWARD_IMPORTS
    ]
    assert not upward, f"{name} ({layer} layer) imports from above: {upward}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_top_reads_the_environment(name: str) -> None:
    uses = [f"line {f.line}: {f.target}" for f in environment_uses(parse(name))]
    if name in ENV_READERS:
        assert uses, f"{name} no longer reads the environment: drop it from ENV_READERS"
    else:
        assert not uses, f"{name} reads the environment, which only the top may: {uses}"


def test_allow_lists_are_not_stale() -> None:
    for importer, imported in UPWARD_IMPORTS:
        entry = f"UPWARD_IMPORTS[{importer!r}, {imported!r}]"
        assert importer in MODULES and imported in MODULES, f"{entry}: no such module"
        targets = {f.target for f in imports_of(importer)}
        assert imported in targets, f"{entry}: the import is gone, drop the entry"
        assert RANK[imported] > RANK[importer], f"{entry}: it points down now"
    assert ENV_OUTSIDE_TOP.issubset(ENV_READERS)
    for name in ENV_READERS:
        on_top = name in TOP
        assert on_top != (name in ENV_OUTSIDE_TOP), (
            f"{name}: a top-layer reader needs no exception, any other one does"
        )


# -- docstrings ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_opens_with_a_one_line_docstring(name: str) -> None:
    docstring = ast.get_docstring(parse(name))
    assert docstring, f"{name} has no module docstring"
    lines = docstring.splitlines()
    assert lines[0].strip(), f"{name}: the docstring's first line is empty"
    assert len(lines) == 1 or not lines[1].strip(), (
        f"{name}: the summary runs onto a second line; end it after one line "
        "and leave a blank line before the rest"
    )
    assert lines[0].rstrip().endswith("."), f"{name}: end the summary with a period"
