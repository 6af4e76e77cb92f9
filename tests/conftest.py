"""Fixtures shared by the whole suite: a clean environment, repositories, seed runs."""

from __future__ import annotations

import inspect
import math
import os
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from dulwich.repo import Repo

import gitruns
from gitruns.reader import RunView

pytest.register_assert_rewrite("tests.gitserver")

# The loopback Git servers' fixtures, for every test module.
from tests.gitserver import (  # noqa: E402
    SCRUBBED_GIT_ENV,
    git_daemon,
    git_env,
    git_server,
    http_backend,
)
from tests.gitserver import git as server_git  # noqa: E402

__all__ = ["git_daemon", "git_env", "git_server", "http_backend"]

#: The real training logs, read-only (see ../shared/data/real-runs/SOURCES.md):
#: beside the clone, as CI lays them out, or wherever GITRUNS_REAL_RUNS says.
REAL_RUNS = Path(
    os.environ.get("GITRUNS_REAL_RUNS")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-runs"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip, saying why, the tests that read the real logs when they are absent."""
    if REAL_RUNS.is_dir():
        return
    skip = pytest.mark.skip(
        reason=f"the real training logs are not at {REAL_RUNS}: put gitruns' "
        "clone beside the shared/ folder, or set GITRUNS_REAL_RUNS"
    )
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and "REAL_RUNS" in inspect.getsource(function):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user git config, no GITRUNS_* settings, and a cwd outside any repository.

    Without the chdir, a test that omits repo= would write into the project's
    own Git repository (the enclosing one).
    """
    for name in list(os.environ):
        if name.startswith("GITRUNS_") or name in ("GIT_DIR", "GIT_WORK_TREE"):
            monkeypatch.delenv(name)
    for name, value in SCRUBBED_GIT_ENV.items():
        monkeypatch.setenv(name, value)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Where a test's runs go (created on first use)."""
    return tmp_path / "runs.git"


@pytest.fixture
def local_bare(tmp_path: Path, git_env: dict[str, str]) -> Path:
    """An empty bare repository made by real git, for a user's runs to push."""
    path = tmp_path / "local.git"
    server_git("init", "--quiet", "--bare", path)
    return path


@pytest.fixture
def local_repo(local_bare: Path) -> Iterator[Repo]:
    """``local_bare`` opened with dulwich, as remote.push() and the hooks take it."""
    with closing(Repo(str(local_bare))) as opened:
        yield opened


@pytest.fixture
def seed_runs(repo: Path) -> tuple[RunView, RunView]:
    """DESIGN.md §5's reference scenario in ``repo``: (demo/source, demo/forked).

    The source logs steps 0..299; its fork at step 200 holds 0..200 and logs
    201..400 itself, two log() calls per i. Written as the design writes it, but
    with fixed ids so tests can name the runs, and a config on the source for
    the fork to inherit.
    """
    src = gitruns.init(project="demo", id="source", repo=repo, config={"lr": 0.1})
    for i in range(300):
        src.log({"metric": i})
    src.finish()

    fork = gitruns.init(
        project="demo", id="forked", fork_from=f"{src.id}?_step=200", repo=repo
    )
    for i in range(200, 300):
        wiggle = 0 if i < 250 else 2 * math.sin(i / 3.0)
        fork.log({"metric": i + wiggle})
        fork.log({"additional_metric": i * 1.1})
    fork.finish()
    api = gitruns.Api(repo)
    return api.run("demo/source"), api.run("demo/forked")


def git(*args: str, cwd: Path | None = None) -> str:
    """Run the real git binary and return its stdout; fail the test on error."""
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"git {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout
