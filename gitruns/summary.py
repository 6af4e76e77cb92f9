"""A run's summary, derived from per-metric digests and define_metric rules."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from gitruns.chunk import Digest
from gitruns.errors import InvalidArgumentError, RepositoryError

SUMMARY_MODES = ("last", "first", "min", "max", "mean", "none")

#: W&B's ``summary="best"`` resolves to one of these by the metric's goal.
_BEST = {"minimize": "min", "maximize": "max"}


def metric_rule(
    definitions: Mapping[str, Mapping[str, Any]], name: str
) -> Mapping[str, Any]:
    """The define_metric rule for ``name``: an exact entry, else the first glob."""
    if name in definitions:
        return definitions[name]
    for pattern, rule in definitions.items():
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern):
            return rule
    return {}


def summary_modes(summary: str | None, goal: str | None = None) -> str | None:
    """Check define_metric's ``summary=`` and return it normalized.

    ``"best"`` becomes ``"min"`` or ``"max"`` by ``goal``, as W&B reads it.

    Raises:
        InvalidArgumentError: for an unknown mode, or ``best`` without a goal.
    """
    if summary is None:
        return None
    if goal is not None and goal not in _BEST:
        raise InvalidArgumentError(
            "goal", goal, "use 'minimize' or 'maximize' (or leave it out)"
        )
    modes = []
    for mode in str(summary).replace(" ", "").split(","):
        if mode == "best":
            if goal is None:
                raise InvalidArgumentError(
                    "summary",
                    summary,
                    "'best' needs goal='minimize' or goal='maximize'; "
                    "or ask for 'min' or 'max' directly",
                )
            mode = _BEST[goal]
        if mode not in SUMMARY_MODES:
            raise InvalidArgumentError(
                "summary", summary, f"use some of {', '.join(SUMMARY_MODES)}"
            )
        if mode not in modes:
            modes.append(mode)
    return ",".join(modes)


def summarize(
    totals: Mapping[str, Digest],
    definitions: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """The summary dict a reader sees.

    A metric's summary is its last value unless define_metric asked for other
    aggregates, in which case it is a dict such as ``{"max": 0.93}``; ``none``
    leaves the metric out. Values the user set on ``run.summary`` win over
    derived ones.

    Args:
        totals: the digest of each metric over the whole history.
        definitions: the define_metric rules, by metric name or glob.
        overrides: what the user set on ``run.summary``.

    Returns:
        A new dict of metric name to summary value.

    Raises:
        RepositoryError: for a summary mode in ``definitions`` (read from
            run.json) that gitruns does not know.
    """
    summary: dict[str, Any] = {}
    for name, digest in totals.items():
        modes = metric_rule(definitions, name).get("summary")
        if not modes:
            summary[name] = digest.last
            continue
        chosen = [m for m in str(modes).split(",") if m and m != "none"]
        if chosen:
            summary[name] = {mode: aggregate(digest, mode) for mode in chosen}
    summary.update(overrides)
    return summary


def aggregate(digest: Digest, mode: str) -> Any:
    """One aggregate of a digest: last, first, min, max or mean."""
    if mode == "last":
        return digest.last
    if mode == "first":
        return digest.first
    if mode == "min":
        return digest.min
    if mode == "max":
        return digest.max
    if mode == "mean":
        return digest.mean()
    raise RepositoryError(
        f"unknown summary mode {mode!r} in run.json; use one of {SUMMARY_MODES}"
    )


def visible(
    summary: Mapping[str, Any], definitions: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The summary without metrics that define_metric marked ``hidden``.

    Hidden metrics stay in ``summary.json``; views meant for people (the run's
    README, ``gitruns show``) leave them out, as W&B leaves them off its charts.
    """
    return {
        name: value
        for name, value in summary.items()
        if not metric_rule(definitions, name).get("hidden")
    }
