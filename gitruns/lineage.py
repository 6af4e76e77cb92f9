"""Lineage of runs: ancestors, descendants and where two runs diverge.

Everything comes from ``fork_from`` in run.json plus the commit graph; no
other index is needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gitruns.errors import GitRunsError, RunNotFoundError
from gitruns.reader import RunView
from gitruns.refs import RunRef, Sha
from gitruns.store import RUN_JSON, RunStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Edge:
    """A fork: ``child`` started from ``parent`` after ``step``."""

    parent: str
    child: str
    step: int
    commit: str


def ancestors(store: RunStore, run: RunRef) -> list[Edge]:
    """The fork edges from ``run`` up to its root run, nearest first.

    The walk stops at a source that is not in the repository, and at one
    whose run.json cannot be read (with a warning): the edges up to there
    are still the run's lineage.

    Raises:
        RepositoryError: ``run``'s own run.json cannot be read.
    """
    edges: list[Edge] = []
    seen = {run.path}
    view = RunView(store, run)
    fork = view.fork_from
    while fork:
        edges.append(Edge(fork["run"], view.path, fork["step"], fork["commit"]))
        parent = fork["run"]
        if parent in seen:
            break  # a crafted loop; lineage stops rather than spins
        seen.add(parent)
        try:
            view = RunView(store, store.resolve(parent))
            fork = view.fork_from
        except RunNotFoundError:
            break  # the source is not in this repository
        except GitRunsError as exc:
            logger.warning("lineage of %s stops at %s: %s", run.path, parent, exc)
            break
    return edges


def fork_edges(store: RunStore) -> list[Edge]:
    """Every fork edge in the repository (one run.json read per run).

    A run whose run.json cannot be read is left out with a warning, as
    :func:`gitruns.reader.readable_runs` leaves it out of a listing.
    """
    edges = []
    for run in store.list_runs():
        try:
            fork = RunView(store, run).fork_from
        except GitRunsError as exc:
            logger.warning("skipping run %s: %s", run.path, exc)
            continue
        if fork:
            edges.append(Edge(fork["run"], run.path, fork["step"], fork["commit"]))
    return edges


def descendants(
    store: RunStore, run: RunRef, edges: list[Edge] | None = None
) -> list[Edge]:
    """The fork edges below ``run``, depth first.

    Args:
        store: the repository of the runs.
        run: the run whose forks (and their forks) to list.
        edges: every fork edge of the repository, if the caller has them;
            None reads them with :func:`fork_edges`.

    Returns:
        The edges, each child listed once, forks at earlier steps first.

    Raises:
        RepositoryError: if the run list cannot be read (a run whose run.json
            cannot be read is skipped with a warning).
    """
    edges = fork_edges(store) if edges is None else edges
    children: dict[str, list[Edge]] = {}
    for edge in edges:
        children.setdefault(edge.parent, []).append(edge)
    found: list[Edge] = []
    stack = sorted(
        children.get(run.path, []), key=lambda e: (e.step, e.child), reverse=True
    )
    seen = {run.path}
    while stack:
        edge = stack.pop()
        if edge.child in seen:
            continue
        seen.add(edge.child)
        found.append(edge)
        below = children.get(edge.child, [])
        stack.extend(sorted(below, key=lambda e: (e.step, e.child), reverse=True))
    return found


def divergence(store: RunStore, a: RunRef, b: RunRef) -> tuple[str, int] | None:
    """The run whose history ``a`` and ``b`` share, and the last shared step.

    A run holds its source's steps up to its fork step, less what it rewound
    away since. Each run on the way up is read as it was when its child
    forked from it, so a rewind made after that does not count against the
    child; and where ``a`` and ``b`` reach the common run at different
    commits, the rewinds made between them cut what they share.

    Args:
        store: the repository of the runs.
        a: one run.
        b: the other run.

    Returns:
        (common run, last step both hold from it), or None when the runs
        share no history.

    Raises:
        RunNotFoundError: if ``a`` or ``b`` has no branch.
        RepositoryError: if ``a``'s or ``b``'s own run.json cannot be read
            (an unreadable ancestor ends the walk up instead).
    """
    if a == b:
        view = RunView(store, a)
        return a.path, view.last_step if view.last_step is not None else -1
    reach_a, reach_b = _reach(store, a), _reach(store, b)
    for path, (limit_a, commit_a) in reach_a.items():
        if path not in reach_b:
            continue
        limit_b, commit_b = reach_b[path]
        limits = [s for s in (limit_a, limit_b) if s is not None]
        limits += _rewinds_between(store, commit_a, commit_b)
        return path, min(limits) if limits else -1
    return None


def _reach(store: RunStore, run: RunRef) -> dict[str, tuple[int | None, Sha]]:
    # Each run whose history ``run`` holds -> (the last of its steps ``run``
    # still holds, None for all; the commit at which ``run`` holds them).
    tip = store.tip(run)
    if tip is None:
        raise RunNotFoundError(run.path, str(store.git_dir))
    reach: dict[str, tuple[int | None, Sha]] = {run.path: (None, tip)}
    info = RunView(store, run).info
    limit: int | None = None
    while isinstance(fork := info.get("fork_from"), dict):
        cut = min([int(fork["step"]), *_rewind_steps(info)])
        limit = cut if limit is None else min(limit, cut)
        parent, commit = str(fork["run"]), Sha(str(fork["commit"]).encode())
        if parent in reach:
            break  # a crafted loop; lineage stops rather than spins
        reach[parent] = (limit, commit)
        try:
            info = store.read_json(commit, RUN_JSON) or {}
        except GitRunsError:
            break  # the source commit is not here (a partial fetch)
    return reach


def _rewind_steps(info: dict[str, Any]) -> list[int]:
    rewinds = info.get("rewinds")
    if not isinstance(rewinds, list):
        return []
    return [int(r["step"]) for r in rewinds if isinstance(r, dict) and "step" in r]


def _rewinds_between(store: RunStore, one: Sha, other: Sha) -> list[int]:
    # Steps of the rewinds a run made between two of its commits: the later
    # commit's run.json lists them after the earlier one's.
    if one == other:
        return []
    try:
        first = _rewind_steps(store.read_json(one, RUN_JSON) or {})
        second = _rewind_steps(store.read_json(other, RUN_JSON) or {})
    except GitRunsError:
        return []
    shorter, longer = sorted((first, second), key=len)
    return longer[len(shorter) :]
