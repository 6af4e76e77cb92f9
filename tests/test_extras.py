"""A missing optional extra is one error everywhere, with the pip line that adds it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import gitruns
from gitruns.cli import main
from gitruns.demo import load_digits_split
from gitruns.errors import GitRunsError, MissingExtraError
from gitruns.importers import read_source
from gitruns.importers.model import load_yaml
from gitruns.plot import plot_runs
from gitruns.reader import RunView
from gitruns.report import render_report


def hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make ``module`` and its submodules unimportable, as if not installed."""
    monkeypatch.setitem(sys.modules, module, None)
    for name in list(sys.modules):
        if name.startswith(module + "."):
            monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def run(repo: Path) -> RunView:
    with gitruns.init(project="p", id="base", repo=repo) as writer:
        for i in range(5):
            writer.log({"loss": 1 / (i + 1)})
    return gitruns.Api(repo).run("p/base")


def _tfevents(tmp_path: Path) -> Path:
    folder = tmp_path / "tb"
    folder.mkdir()
    (folder / "events.out.tfevents.0.host").write_bytes(b"")
    return folder


LIBRARY: list[tuple[str, str, str, Callable[[RunView, Path], Any]]] = [
    ("pandas", "pandas", "history(pandas=True)", lambda r, _: r.history()),
    (
        "pandas",
        "pandas",
        "history(pandas=True)",
        lambda r, _: r.history(stream="system"),
    ),
    (
        "matplotlib",
        "plot",
        "drawing plots",
        lambda r, t: plot_runs(r.store, [r], "loss", t / "x.png"),
    ),
    ("matplotlib", "plot", "drawing plots", lambda r, _: render_report(r.store, r)),
    ("sklearn", "demo", "the demo's data set", lambda r, _: load_digits_split()),
    ("yaml", "import", "reading ", lambda r, t: load_yaml(t / "params.yaml")),
    (
        "tensorboard",
        "import",
        "reading TensorBoard event files",
        lambda r, t: read_source("tensorboard", [_tfevents(t)]),
    ),
    (
        "wandb",
        "wandb",
        "reading the history of a W&B run",
        lambda r, t: read_source("wandb", [t]),
    ),
]


@pytest.mark.parametrize(
    ("module", "extra", "what", "call"),
    LIBRARY,
    ids=["history", "history-system", "plot", "report", "demo", "yaml", "tb", "wandb"],
)
def test_each_entry_point_says_which_extra_to_install(
    run: RunView,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    extra: str,
    what: str,
    call: Callable[[RunView, Path], Any],
) -> None:
    hide(monkeypatch, module)
    with pytest.raises(MissingExtraError) as caught:
        call(run, tmp_path)

    error = caught.value
    assert isinstance(error, GitRunsError) and isinstance(error, ImportError)
    assert error.module.partition(".")[0] == module and error.extra == extra
    assert str(error).startswith(what)
    assert str(error).endswith(f"pip install 'gitruns[{extra}]'")
    assert error.exit_code == 1


@pytest.mark.parametrize(
    ("module", "extra", "args"),
    [
        ("matplotlib", "plot", ["plot", "p/base", "-m", "loss", "-o", "{tmp}/x.png"]),
        ("matplotlib", "plot", ["report", "p/base", "-o", "{tmp}/r.html"]),
        ("sklearn", "demo", ["demo", "--steps", "10", "--fork-at", "5"]),
        ("tensorboard", "import", ["import", "tensorboard", "{tb}"]),
        ("wandb", "wandb", ["import", "wandb", "{tmp}"]),
    ],
    ids=["plot", "report", "demo", "import-tb", "import-wandb"],
)
def test_the_cli_prints_one_error_line_and_exits_1(
    run: RunView,
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    extra: str,
    args: list[str],
) -> None:
    tb = _tfevents(tmp_path)
    args = [a.format(tmp=tmp_path, tb=tb) for a in args]
    hide(monkeypatch, module)
    result = CliRunner().invoke(main, [*args, "--repo", str(repo)])

    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, MissingExtraError)  # mapped, not raised
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert lines[0].endswith(
        f"needs {module.replace('sklearn', 'scikit-learn')}: "
        f"pip install 'gitruns[{extra}]'"
    )
