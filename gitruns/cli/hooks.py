"""``gitruns hooks install``, ``gitruns setup`` and ``gitruns textconv``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from gitruns import hooks as run_hooks
from gitruns import textconv as diff_driver
from gitruns.errors import GitRunsError
from gitruns.store import RunStore, locate_repository

_REPO_HELP = (
    "The repository (default: $GITRUNS_REPO, the enclosing Git repository, "
    "else ./.gitruns)."
)


@contextmanager
def _cli_errors() -> Iterator[None]:
    """Print a gitruns error as one ``Error:`` line and exit with its code."""
    try:
        yield
    except GitRunsError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)


@contextmanager
def _open_store(repo: str | None) -> Iterator[RunStore]:
    path, may_create = locate_repository(
        repo, os.environ.get("GITRUNS_REPO"), Path.cwd()
    )
    store = RunStore.open(path, create=may_create)
    try:
        yield store
    finally:
        store.close()


def _package_parent() -> str:
    return str(Path(run_hooks.__file__).resolve().parent.parent)


@click.group("hooks")
def hooks() -> None:
    """Git hooks that keep shared run branches valid and append-only."""


@hooks.command("install")
@click.option(
    "--server",
    is_flag=True,
    help="Install pre-receive (on the repository a server serves) instead of "
    "the client's pre-push.",
)
@click.option("--force", is_flag=True, help="Replace a hook gitruns did not write.")
@click.option("--repo", type=click.Path(), help=_REPO_HELP)
def install(server: bool, force: bool, repo: str | None) -> None:
    """Install the gitruns hook into a repository.

    pre-receive refuses pushes that delete or rewrite a run branch, hold a
    malformed chunk, break step order or name a run wrongly; pre-push runs the
    same checks before `git push` sends anything. The hook runs this Python
    and this gitruns.
    """
    kind = "pre-receive" if server else "pre-push"
    with _cli_errors(), _open_store(repo) as store:
        target = run_hooks.install_hook(store.repo, kind, force=force)
    click.echo(f"installed {kind} hook: {target}")
    if server:
        click.echo(
            "run branches are now append-only there; "
            "`git config gitruns.allowRewrite true` lifts that"
        )


@click.command("setup")
@click.option("--repo", type=click.Path(), help=_REPO_HELP)
def setup(repo: str | None) -> None:
    """Make `git diff` and `git log -p` show metric chunks as text rows.

    Configures the gitruns diff driver (diff.gitruns.textconv) in the
    repository and marks the chunks in its info/attributes.
    """
    command = diff_driver.driver_command(sys.executable, _package_parent())
    with _cli_errors(), _open_store(repo) as store:
        changed = diff_driver.configure(store.repo, command)
    for change in changed:
        click.echo(f"set {change}")
    if not changed:
        click.echo("the gitruns diff driver is already set up")


@click.command("textconv")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def textconv(file: str) -> None:
    """Print a metric chunk FILE as text: one row per step, one column per metric."""
    click.echo(diff_driver.file_text(file), nl=False)


#: The commands of this module, for the root group to register.
COMMANDS = [hooks, setup, textconv]
