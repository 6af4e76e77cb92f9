"""Lineage of runs: ancestors, descendants and where two runs diverge.

Everything comes from ``fork_from`` in run.json plus the commit graph; no
other index is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitruns.errors import RunNotFoundError
from gitruns.reader import RunView
from gitruns.refs import RunRef
from gitruns.store import RunStore


@dataclass(frozen=True)
class Edge:
    """A fork: ``child`` started from ``parent`` after ``step``."""

    parent: str
    child: str
    step: int
    commit: str


def ancestors(store: RunStore, run: RunRef) -> list[Edge]:
    """The fork edges from ``run`` up to its root run, nearest first."""
    edges: list[Edge] = []
    seen = {run.path}
    view = RunView(store, run)
    while view.fork_from:
        fork = view.fork_from
        edges.append(
            Edge(fork["run"], view.path, int(fork["step"]), str(fork["commit"]))
        )
        parent = fork["run"]
        if parent in seen:
            break  # a crafted loop; lineage stops rather than spins
        seen.add(parent)
        try:
            view = RunView(store, store.resolve(parent))
            view.snapshot  # noqa: B018 - the source may be absent locally
        except RunNotFoundError:
            break
    return edges


def fork_edges(store: RunStore) -> list[Edge]:
    """Every fork edge in the repository (one run.json read per run)."""
    edges = []
    for run in store.list_runs():
        fork = RunView(store, run).fork_from
        if fork:
            edges.append(
                Edge(fork["run"], run.path, int(fork["step"]), str(fork["commit"]))
            )
    return edges


def descendants(
    store: RunStore, run: RunRef, edges: list[Edge] | None = None
) -> list[Edge]:
    """The fork edges below ``run``, depth first."""
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

    Returns:
        (common run, last step both hold from it), or None when the runs
        share no history.
    """
    if a == b:
        view = RunView(store, a)
        return a.path, view.last_step if view.last_step is not None else -1

    def chain(run: RunRef) -> dict[str, int | None]:
        # Each ancestor run -> the last of its steps this run inherited.
        reach: dict[str, int | None] = {run.path: None}
        limit: int | None = None
        for edge in ancestors(store, run):
            limit = edge.step if limit is None else min(limit, edge.step)
            reach[edge.parent] = limit
        return reach

    reach_a, reach_b = chain(a), chain(b)
    for path, step_a in reach_a.items():
        if path in reach_b:
            step_b = reach_b[path]
            steps = [s for s in (step_a, step_b) if s is not None]
            if not steps:
                continue
            return path, min(steps)
    return None
