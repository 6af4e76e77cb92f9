"""One commit of a run: its message and trailers, its README, and moving its branch.

Every operation that adds a commit to a run (create, a window of steps, fork,
rewind, an edit) goes through :func:`commit_run`, so each commit carries the
same trailers and moves its branch by compare-and-swap the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gitruns.errors import ConflictError, RunExistsError
from gitruns.readme import render_readme
from gitruns.refs import RunRef, Sha
from gitruns.store import RunStore, Snapshot

#: Trailers of a run's commit messages, which plain ``git log`` shows.
TRAILER_RUN = "Gitruns-Run"
TRAILER_FORK_OF = "Gitruns-Fork-Of"
TRAILER_REWIND = "Gitruns-Rewind"

#: What a caller that lost a compare-and-swap of a run's branch can do.
RETRY = "another process changed this run; try again"


def commit_run(
    store: RunStore,
    run: RunRef,
    snapshot: Snapshot,
    parents: Sequence[Sha],
    what: str,
    *,
    new_branch: bool = False,
    trailers: Sequence[tuple[str, str]] = (),
    reflog: str | None = None,
    conflict: str = RETRY,
) -> Sha:
    """Write ``snapshot`` as a commit of ``run`` and move the run's branch to it.

    Args:
        store: the repository.
        run: the run the commit belongs to.
        snapshot: what the commit's tree holds.
        parents: the commit's parents; the first is the branch's tip unless
            ``new_branch``.
        what: what the commit holds, for the message's subject
            (``steps 0..999``, ``fork of p/a at step 200``).
        new_branch: the branch must not exist yet (a new run or a fork).
        trailers: more ``(key, value)`` trailers after ``Gitruns-Run``.
        reflog: the branch's reflog message; None writes no reflog entry.
        conflict: what to do when the branch moved meanwhile, for the
            :class:`ConflictError`.

    Returns:
        The new commit.

    Raises:
        RunExistsError: ``new_branch`` and the branch exists.
        ConflictError: the branch is no longer at ``parents[0]``.
    """
    lines = [f"{TRAILER_RUN}: {run.path}"]
    lines += [f"{key}: {value}" for key, value in trailers]
    message = f"{run.path}: {what}\n\n" + "".join(line + "\n" for line in lines)
    readme = render_readme(snapshot.info, snapshot.config, snapshot.summary)
    sha = store.write_commit(snapshot, list(parents), message, readme)

    expected = None if new_branch else parents[0]
    if not store.update_ref(run, expected, sha, reflog):
        if new_branch:
            raise RunExistsError(run.path)
        raise ConflictError(run.branch, 1, conflict)
    return sha


def summary_overrides(snapshot: Snapshot) -> dict[str, Any]:
    """The summary values a user set on the run, which derived ones never replace.

    Args:
        snapshot: the run as one of its commits holds it.

    Returns:
        Metric name -> the value the user set, for each name run.json lists in
        ``summary_set``.
    """
    return {k: snapshot.summary.get(k) for k in snapshot.info.get("summary_set", [])}
