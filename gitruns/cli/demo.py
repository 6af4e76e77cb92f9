"""``gitruns demo``: the main job, end to end."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from gitruns.cli.common import repo_option
from gitruns.cli.runs import diff_command, lineage_command
from gitruns.demo import run_demo
from gitruns.repository import open_store
from gitruns.settings import env_repo


@click.command("demo")
@click.option(
    "--steps", default=600, show_default=True, help="Training steps of the base run."
)
@click.option(
    "--fork-at", default=300, show_default=True, help="Step the fork branches after."
)
@click.option(
    "--lr", default=0.05, show_default=True, help="Learning rate of the base run."
)
@click.option(
    "--fork-lr", default=0.5, show_default=True, help="Learning rate of the fork."
)
@repo_option
@click.pass_context
def demo_command(
    ctx: click.Context,
    steps: int,
    fork_at: int,
    lr: float,
    fork_lr: float,
    repo: str | None,
) -> None:
    """Train a real classifier on scikit-learn's digits, fork it, compare the runs."""
    if not 0 <= fork_at < steps - 1:
        raise click.BadParameter(
            "must be below --steps minus one", param_hint="--fork-at"
        )
    base, fork = run_demo(repo, steps, fork_at, lr, fork_lr, echo=click.echo)
    store = open_store(repo, env_repo=env_repo())
    click.echo("")
    click.echo(click.style("lineage", bold=True))
    ctx.invoke(lineage_command, run=fork, repo=repo, as_json=False)
    click.echo("")
    click.echo(click.style("diff", bold=True))
    ctx.invoke(diff_command, a=base, b=fork, repo=repo, as_json=False)
    git_dir = store.git_dir
    store.close()
    click.echo("")
    click.echo(f"runs are branches of the Git repository {git_dir}:")
    click.echo(
        f"  git --git-dir {git_dir} log --oneline --graph runs/{base} runs/{fork}"
    )
    # Off PATH (a virtual environment not activated), as the user started it.
    program = "gitruns"
    if shutil.which(program) is None and Path(sys.argv[0]).name == program:
        program = sys.argv[0]
    click.echo(
        f"  {program} history {fork} --keys eval/accuracy"
        + (f" --repo {repo}" if repo else "")
    )
