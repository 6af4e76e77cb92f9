"""Shared pieces of the CLI: the --repo option, error mapping and output."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import wraps
from typing import Any, TypeVar, overload

import click

from gitruns.errors import GitRunsError
from gitruns.repository import open_store
from gitruns.settings import env_repo

F = TypeVar("F", bound=Callable[..., Any])

repo_option = click.option(
    "--repo",
    "repo",
    metavar="PATH",
    default=None,
    help="Git repository of the runs (default: $GITRUNS_REPO, the enclosing "
    "repository, else ./.gitruns).",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@overload
def with_store(func: F) -> F: ...


@overload
def with_store(*, create: bool) -> Callable[[F], F]: ...


def with_store(func: F | None = None, *, create: bool = False) -> Any:
    """Open the repository named by --repo and pass it as ``store``.

    Args:
        create: make the repository if there is none (commands that bring runs
            in); other commands say there is no repository instead.
    """

    def decorate(func: F) -> F:
        @repo_option
        @wraps(func)
        def wrapper(*args: Any, repo: str | None, **kwargs: Any) -> Any:
            store = open_store(repo, create=create, env_repo=env_repo())
            try:
                return func(*args, store=store, **kwargs)
            finally:
                store.close()

        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate


class GitRunsGroup(click.Group):
    """A group that turns GitRunsError into ``Error: …`` and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GitRunsError as exc:
            raise failure(str(exc), exc.exit_code) from exc


class _Failure(click.ClickException):
    """Prints ``Error: `` before each line of its message, one error a line."""

    def show(self, file: Any = None) -> None:
        for line in self.format_message().splitlines():
            click.echo(f"Error: {line}", file=file, err=file is None)


def failure(message: str, exit_code: int) -> click.ClickException:
    """A ClickException that prints ``Error: message`` and exits with ``exit_code``.

    A message of several lines (a push that refused several runs) prints one
    ``Error:`` line each.
    """
    error = _Failure(message)
    # click declares exit_code a class variable; its main() reads the instance.
    error.exit_code = exit_code  # type: ignore[misc]
    return error


def dumps(value: Any) -> str:
    """JSON for the terminal: sorted keys; NaN and infinities as Python writes them."""
    return json.dumps(value, sort_keys=True, default=str)


def fmt(value: Any) -> str:
    """A value as a table cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return dumps(value)
    return str(value)


def echo_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print aligned columns."""
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def echo_mapping(title: str, mapping: Mapping[str, Any]) -> None:
    """Print a titled key/value block."""
    click.echo(click.style(title, bold=True))
    if not mapping:
        click.echo("  (none)")
    width = max((len(k) for k in mapping), default=0)
    for key in sorted(mapping):
        click.echo(f"  {key.ljust(width)}  {fmt(mapping[key])}")


__all__ = [
    "GitRunsGroup",
    "dumps",
    "echo_mapping",
    "echo_table",
    "failure",
    "fmt",
    "json_option",
    "repo_option",
    "split_keys",
    "with_store",
]


def split_keys(keys: Iterable[str]) -> list[str] | None:
    """Metric names from repeated and comma-separated options; None for none."""
    return [k for part in keys for k in part.split(",") if k] or None
