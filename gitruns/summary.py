"""A run's summary, derived from per-metric digests and define_metric rules."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from gitruns.chunk import Digest

SUMMARY_MODES = ("last", "first", "min", "max", "mean", "none")


def metric_rule(definitions: Mapping[str, Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    """The define_metric rule for ``name``: an exact entry, else the first glob."""
    if name in definitions:
        return definitions[name]
    for pattern, rule in definitions.items():
        if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern):
            return rule
    return {}


def summarize(
    totals: Mapping[str, Digest],
    definitions: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """The summary dict a reader sees.

    A metric's summary is its last value unless define_metric asked for other
    aggregates, in which case it is a dict such as ``{"max": 0.93}``. Values the
    user set on ``run.summary`` win over derived ones.
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
    raise ValueError(f"unknown summary mode {mode!r}; use one of {SUMMARY_MODES}")
