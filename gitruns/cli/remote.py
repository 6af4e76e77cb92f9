"""``gitruns push``, ``pull`` and ``fetch``: run branches to and from Git remotes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click

from gitruns import remote as remotes
from gitruns.cli.common import with_store
from gitruns.errors import GitRunsError, RemoteError, RunNotFoundError
from gitruns.refs import RunRef, check_name
from gitruns.remote import RefOutcome
from gitruns.store import RunStore


def _ssh_command() -> str | None:
    # git's own variables, so an ssh:// remote behaves as it does for `git push`.
    return os.environ.get("GIT_SSH_COMMAND") or os.environ.get("GIT_SSH") or None


class _Progress:
    """Transfer progress on stderr: redrawn in place on a terminal, else by line.

    The transports send ``\r``-separated updates; a log file gets only each
    line's final state, and an unfinished last line is ended on close.
    """

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.pending = ""

    def __call__(self, text: str) -> None:
        if self.tty:
            click.echo(text, err=True, nl=False)
            self.pending = text.rsplit("\n", 1)[-1]
            return
        *done, self.pending = (self.pending + text).split("\n")
        for line in done:
            final = line.rstrip("\r").rsplit("\r", 1)[-1]
            if final.strip():
                click.echo(final, err=True)

    def close(self) -> None:
        final = self.pending.rstrip("\r").rsplit("\r", 1)[-1]
        if final.strip():
            click.echo("" if self.tty else final, err=True)
        self.pending = ""


@contextmanager
def _progress(quiet: bool) -> Iterator[_Progress | None]:
    sink = None if quiet else _Progress()
    try:
        yield sink
    finally:
        if sink is not None:
            sink.close()


def _remote_and_runs(
    store: RunStore, verb: str, remote: str | None, runs: tuple[str, ...]
) -> tuple[str, tuple[str, ...]]:
    """Split the arguments into REMOTE and RUNs, REMOTE being optional.

    A first argument that names no remote (configured, URL or existing path)
    but does name a run is a run, and the runs go to or come from origin.
    """
    if remote is None:
        return "origin", runs
    if remotes.names_remote(store.repo, remote) or not _names_run(store, remote):
        return remote, runs
    if not remotes.names_remote(store.repo, "origin"):
        raise RemoteError(
            f"{remote!r} is a run, not a remote, and this repository has no "
            f"remote 'origin' to {verb} it; name the remote first (`gitruns "
            f"{verb} REMOTE {remote}`) or add origin with "
            f"`{remotes.git_command(store.repo)} remote add origin <url>`"
        )
    return "origin", (remote, *runs)


def _names_run(store: RunStore, text: str) -> bool:
    """Whether ``text`` reads as a run: ``project/id``, or an id known here.

    A path (``/srv/runs.git``, ``./runs``, ``~/runs``) never does, even where
    nothing is there yet: pushing to it then says that no repository is there.
    """
    if text.startswith(("/", "./", "../", "~")):
        return False
    parts = text.strip("/").split("/")
    try:
        if len(parts) in (2, 3):
            RunRef(parts[-2], parts[-1])
            return True
        store.resolve(text)
    except GitRunsError:
        return False
    return True


def _local_runs(store: RunStore, names: Sequence[str]) -> list[RunRef] | None:
    """Runs named on the command line, resolved in the local repository."""
    if not names:
        return None
    return [store.resolve(name) for name in names]


def _remote_runs(store: RunStore, names: Sequence[str]) -> list[RunRef] | None:
    """Runs named for a pull: ``project/id``, or an id the local repository knows."""
    if not names:
        return None
    runs = []
    for name in names:
        parts = name.strip("/").split("/")
        if len(parts) == 3:
            parts = parts[1:]
        if len(parts) == 2:
            runs.append(RunRef(parts[0], parts[1]))
            continue
        try:
            runs.append(store.resolve(name))
        except RunNotFoundError:
            check_name("run id", name)
            raise RunNotFoundError(
                name,
                "this repository (name a run that is only on the remote as "
                "<project>/<run_id>)",
            ) from None
    return runs


def _show(outcomes: Sequence[RefOutcome], where: str, verb: str) -> None:
    if not outcomes:
        click.echo(f"no runs to {verb} {where}")
        return
    click.echo(f"{verb} {where}:")
    for outcome in outcomes:
        span = ""
        if outcome.old and outcome.new and outcome.old != outcome.new:
            span = f"{outcome.old[:7].decode()}..{outcome.new[:7].decode()}"
        elif outcome.new:
            span = outcome.new[:7].decode()
        # A refusal is explained once, by the Error line that follows the table.
        note = f"  ({outcome.message})" if outcome.message and outcome.ok else ""
        click.echo(f"  {outcome.status:<12} {outcome.run.path:<40} {span}{note}")


_remote_argument = click.argument("remote", required=False, default=None)
_runs_argument = click.argument("runs", nargs=-1, metavar="[RUN]...")
_project_option = click.option("--project", "-p", help="Only the runs of this project.")
_quiet_option = click.option(
    "--quiet", "-q", is_flag=True, help="Show no transfer progress."
)


@click.command("push")
@_remote_argument
@_runs_argument
@click.option(
    "--force",
    "-f",
    is_flag=True,
    help="Replace remote runs that diverged; says what each replaced.",
)
@click.option(
    "--atomic", is_flag=True, help="Ask the server to accept every run or none."
)
@click.option(
    "--no-verify",
    "no_verify",
    is_flag=True,
    help="Skip the checks of an installed gitruns pre-push hook.",
)
@_project_option
@_quiet_option
@with_store
def push(
    remote: str | None,
    runs: tuple[str, ...],
    force: bool,
    atomic: bool,
    no_verify: bool,
    project: str | None,
    quiet: bool,
    store: RunStore,
) -> None:
    """Push run branches (all, a project's, or the RUNs named) to REMOTE.

    REMOTE is a remote of the repository or a URL (default: origin; it may be
    left out before RUNs). Only refs/heads/runs/... moves, and each run's
    outcome is the server's own. A run the server or the pre-push check
    refused, that is behind the remote or that diverged from it makes the
    command fail (exit 7), with the server's own message.
    """
    remote, runs = _remote_and_runs(store, "push", remote, runs)
    selected = _local_runs(store, runs)
    with _progress(quiet) as progress:
        outcomes = remotes.push(
            store.repo,
            remote,
            selected,
            project=project,
            force=force,
            atomic=atomic,
            verify=not no_verify,
            progress=progress,
            ssh_command=_ssh_command(),
            check=False,
        )
    target = remotes.resolve_remote(store.repo, remote, push=True)
    _show(outcomes, f"to {target}", "push")
    remotes.check_outcomes(outcomes, f"push to {target}")


@click.command("pull")
@_remote_argument
@_runs_argument
@_project_option
@click.option(
    "--force",
    is_flag=True,
    help="Replace local runs that diverged with the remote's (says what it replaced).",
)
@_quiet_option
@with_store(create=True)
def pull(
    remote: str | None,
    runs: tuple[str, ...],
    project: str | None,
    force: bool,
    quiet: bool,
    store: RunStore,
) -> None:
    """Fetch runs from REMOTE, fast-forward local runs and create missing ones.

    The commits a run would gain get the pre-receive hook's checks first. A
    run that fails them, or that diverged (both sides logged after a common
    commit), is reported and left as it is (exit 7), unless --force replaces
    a diverged one; the other runs are updated. A local run ahead of the
    remote is kept.
    """
    remote, runs = _remote_and_runs(store, "pull", remote, runs)
    with _progress(quiet) as progress:
        outcomes = remotes.pull(
            store.repo,
            remote,
            _remote_runs(store, runs),
            project=project,
            progress=progress,
            ssh_command=_ssh_command(),
            check=False,
            force=force,
        )
    target = remotes.resolve_remote(store.repo, remote)
    _show(outcomes, f"from {target}", "pull")
    remotes.check_outcomes(outcomes, f"pull from {target}")


@click.command("fetch")
@_remote_argument
@_runs_argument
@_project_option
@_quiet_option
@with_store(create=True)
def fetch(
    remote: str | None,
    runs: tuple[str, ...],
    project: str | None,
    quiet: bool,
    store: RunStore,
) -> None:
    """Fetch runs from REMOTE into refs/remotes/REMOTE/runs/..., moving no run.

    A run the remote cannot send (it lacks an object the run names) is
    reported and the command exits 7; the other runs are fetched.
    """
    remote, runs = _remote_and_runs(store, "fetch", remote, runs)
    with _progress(quiet) as progress:
        outcomes = remotes.fetch(
            store.repo,
            remote,
            _remote_runs(store, runs),
            project=project,
            progress=progress,
            ssh_command=_ssh_command(),
        )
    target = remotes.resolve_remote(store.repo, remote)
    _show(outcomes, f"from {target}", "fetch")
    remotes.check_outcomes(outcomes, f"fetch from {target}")


#: The commands of this module, for the root group to register.
COMMANDS = [push, pull, fetch]
