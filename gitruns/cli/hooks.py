"""``gitruns hooks install``, ``gitruns setup`` and ``gitruns textconv``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gitruns import hooks as run_hooks
from gitruns import textconv as diff_driver
from gitruns.cli.common import with_store
from gitruns.store import RunStore


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
@with_store
def install(server: bool, force: bool, store: RunStore) -> None:
    """Install the gitruns hook into a repository.

    pre-receive refuses pushes that delete or rewrite a run branch, hold a
    malformed chunk, break step order or name a run wrongly; pre-push runs the
    same checks before `git push` sends anything. The hook runs this Python
    and this gitruns.
    """
    kind = "pre-receive" if server else "pre-push"
    target = run_hooks.install_hook(store.repo, kind, force=force)
    click.echo(f"installed {kind} hook: {target}")
    if server:
        click.echo(
            "run branches are now append-only there; "
            "`git config gitruns.allowRewrite true` lifts that"
        )


@click.command("setup")
@with_store
def setup(store: RunStore) -> None:
    """Make `git diff` and `git log -p` show metric chunks as text rows.

    Configures the gitruns diff driver (diff.gitruns.textconv) in the
    repository and marks the chunks in its info/attributes.
    """
    command = diff_driver.driver_command(sys.executable, _package_parent())
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
