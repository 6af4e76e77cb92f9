"""Comparing two runs: config, summary, where they diverge and what moved after."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gitruns.lineage import divergence
from gitruns.reader import RunView
from gitruns.store import RunStore


class _Missing:
    """A key one run does not have (distinct from a value of None)."""

    def __repr__(self) -> str:
        return "(missing)"


MISSING: Any = _Missing()


@dataclass
class MetricMove:
    """One metric's value where the runs diverge and at the end of each run."""

    name: str
    at_divergence: Any
    last_a: Any
    last_b: Any


@dataclass
class RunDiff:
    """What differs between runs ``a`` and ``b``."""

    a: str
    b: str
    config: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    summary: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    common_run: str | None = None
    last_shared_step: int | None = None
    metrics: list[MetricMove] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (missing sides are None)."""
        return {
            "a": self.a,
            "b": self.b,
            "common_run": self.common_run,
            "last_shared_step": self.last_shared_step,
            "config": {k: _plain(v) for k, v in self.config.items()},
            "summary": {k: _plain(v) for k, v in self.summary.items()},
            "metrics": [vars(m) for m in self.metrics],
        }


def _plain(pair: tuple[Any, Any]) -> list[Any]:
    # JSON has no "missing": both a missing key and None become null there.
    return [None if v is MISSING else v for v in pair]


def _same(x: Any, y: Any) -> bool:
    if (
        isinstance(x, float)
        and isinstance(y, float)
        and math.isnan(x)
        and math.isnan(y)
    ):
        return True
    return bool(type(x) is type(y) and x == y)


def _changes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    out = {}
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, MISSING), b.get(key, MISSING)
        if not _same(x, y):
            out[key] = (x, y)
    return out


def diff_runs(store: RunStore, a: RunView, b: RunView) -> RunDiff:
    """Compare two runs of one repository.

    Args:
        store: the repository of both runs.
        a: the run compared from.
        b: the run compared to.

    Returns:
        Their config and summary changes, where their histories diverge, and
        for each metric both logged its last value in each (and at the last
        shared step).

    Raises:
        RunNotFoundError: if either run has no branch.
        RepositoryError: if a run's files cannot be read.
        ChunkFormatError: if a metric chunk of either run is malformed.
    """
    result = RunDiff(a.path, b.path)
    result.config = _changes(a.config, b.config)
    result.summary = _changes(a.summary, b.summary)
    shared = divergence(store, a.ref, b.ref)
    if shared is not None:
        result.common_run, result.last_shared_step = shared

    names = sorted(set(a.summary) | set(b.summary))
    cols_a, cols_b = a.columns(names), b.columns(names)
    for name in names:
        if name not in cols_a or name not in cols_b:
            continue
        at = None
        if result.last_shared_step is not None:
            steps, values = cols_a[name]
            upto = [
                i for i, s in enumerate(steps.tolist()) if s <= result.last_shared_step
            ]
            if upto:
                at = _py(values[upto[-1]])
        result.metrics.append(
            MetricMove(name, at, _py(cols_a[name][1][-1]), _py(cols_b[name][1][-1]))
        )
    return result


def _py(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if item is not None else value
