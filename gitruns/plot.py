"""Pictures of runs with matplotlib: one line per run, each fork drawn off its parent.

A fork shares its parent's history up to the fork step, so drawing both runs in
full would draw that part twice. Here a fork's line starts where it leaves the
nearest ancestor that is also drawn, and a marker (with the SVG id
``fork-<project>-<run_id>``) sits at the fork point. matplotlib is an optional
extra (``gitruns[plot]``); nothing here imports it at module level.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from gitruns.errors import InvalidArgumentError, MetricNotFoundError, require
from gitruns.lineage import Edge, ancestors, descendants, fork_edges
from gitruns.reader import RunView
from gitruns.refs import RunRef
from gitruns.store import RunStore

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

#: File types :func:`save_figure` writes, by suffix.
IMAGE_FORMATS = ("png", "svg", "pdf")

#: Points per line above which a line is thinned (each bucket keeps its extremes).
MAX_POINTS = 4000

# The x axes that are not metrics: the step, and wall-clock time.
_STEP = "_step"
_TIME = "_timestamp"

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True)
class ForkMark:
    """Where a drawn fork leaves its parent.

    Attributes:
        run: the fork, ``<project>/<run_id>``.
        parent: the run it was forked from.
        step: the fork step (the last step the fork inherited).
        x: where the marker sits on the x axis.
        y: where the marker sits on the y axis.
    """

    run: str
    parent: str
    step: int
    x: float
    y: float


@dataclass(frozen=True)
class Curve:
    """The part of one run's history a plot draws, split where it is the run's own.

    Attributes:
        run: ``<project>/<run_id>``.
        label: the legend text.
        steps: the steps of the drawn points.
        x: their x values.
        y: their y values (NaN where the value is not a finite number).
        own: index of the first point of the run's own history: points before
            it were inherited from an ancestor that is not drawn (dashed).
        fork: the fork marker, or None for a root run.
        joins: the drawn run whose line this one starts from, if any.
    """

    run: str
    label: str
    steps: IntArray
    x: FloatArray
    y: FloatArray
    own: int
    fork: ForkMark | None
    joins: str | None


def marker_id(run: str, prefix: str = "") -> str:
    """The SVG id of a fork's marker: ``fork-<project>-<run_id>``."""
    return prefix + "fork-" + run.replace("/", "-")


def _matplotlib() -> Any:
    """Import matplotlib, or say how to install it."""
    return require("matplotlib", "plot", "drawing plots")


# --- from runs to curves ----------------------------------------------------


def _numeric(values: Any) -> tuple[np.ndarray[Any, np.dtype[np.bool_]], FloatArray]:
    """Which values can be drawn, and those values as floats.

    Numbers and bools can; str and None cannot (their points are dropped).
    NaN and the infinities stay as NaN points, which matplotlib draws as a
    gap: a loss that blew up shows as a break in the line, not a spike.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        floats = values.astype(np.float64)
        keep = np.ones(len(floats), dtype=bool)
    else:
        items = list(values)
        keep = np.array(
            [isinstance(v, (int, float)) for v in items], dtype=bool
        ).reshape(len(items))
        floats = np.array(
            [float(v) if k else math.nan for v, k in zip(items, keep)],
            dtype=np.float64,
        ).reshape(len(items))
    floats[~np.isfinite(floats)] = math.nan
    return keep, floats


class ColumnCache:
    """Each run's columns, read once however many metrics are drawn."""

    def __init__(self, keys: Iterable[str] | None = None) -> None:
        self._keys = None if keys is None else set(keys)
        self._seen: dict[str, dict[str, tuple[IntArray, Any]]] = {}

    def get(self, view: RunView) -> dict[str, tuple[IntArray, Any]]:
        """``view.columns(keys)``, read on first use."""
        if view.path not in self._seen:
            self._seen[view.path] = view.columns(self._keys)
        return self._seen[view.path]


def drawable_metrics(view: RunView, columns: ColumnCache | None = None) -> list[str]:
    """The run's metrics that have at least one number to draw, sorted."""
    cols = (columns or ColumnCache()).get(view)
    found = []
    for name, (_, values) in cols.items():
        if name in (_STEP, _TIME):
            continue
        keep, _ = _numeric(values)
        if keep.any():
            found.append(name)
    return sorted(found)


def _points(
    view: RunView, metric: str, x: str, columns: ColumnCache
) -> tuple[IntArray, FloatArray, FloatArray]:
    """(steps, x, y) of the run's drawable values of ``metric`` against ``x``."""
    cols = columns.get(view)
    if metric not in cols:
        return np.empty(0, np.int64), np.empty(0), np.empty(0)
    steps, values = cols[metric]
    keep, y = _numeric(values)
    steps, y = steps[keep], y[keep]
    if x == _STEP:
        return steps, steps.astype(np.float64), y
    if x not in cols:
        return np.empty(0, np.int64), np.empty(0), np.empty(0)

    # A point needs both values logged at its step, as scan_history(keys=) has it.
    x_steps, x_values = cols[x]
    x_keep, xs = _numeric(x_values)
    x_steps, xs = x_steps[x_keep], xs[x_keep]
    common, at_metric, at_x = np.intersect1d(steps, x_steps, return_indices=True)
    return common, xs[at_x], y[at_metric]


def _start(
    view: RunView, edges: Sequence[Edge], drawn: set[str]
) -> tuple[int, str] | None:
    """The step up to which the nearest drawn ancestor draws this run's history.

    Returns:
        (step, ancestor), or None when no ancestor is drawn.
    """
    limit: int | None = None
    for edge in edges:
        limit = edge.step if limit is None else min(limit, edge.step)
        if edge.parent not in drawn:
            continue
        # An ancestor rewound below the fork point after the fork was made no
        # longer holds what the fork inherited beyond the rewind step.
        created = str(view.info.get("created") or "")
        try:
            parent = RunView(view.store, view.store.resolve(edge.parent))
            rewinds = parent.info.get("rewinds") or []
        except LookupError:
            rewinds = []
        for rewind in rewinds:
            if int(rewind["step"]) < limit and str(rewind.get("at", "")) >= created:
                limit = int(rewind["step"])
        return limit, edge.parent
    return None


def _label(view: RunView, edges: Sequence[Edge]) -> str:
    text = view.path if view.name == view.id else f"{view.name} ({view.path})"
    if edges:
        text += f", fork of {edges[0].parent} at step {edges[0].step}"
    return text


def _cut(
    steps: IntArray, xs: FloatArray, ys: FloatArray, after: int
) -> tuple[IntArray, FloatArray, FloatArray]:
    """The points after step ``after``, led by the last point at or before it.

    The leading point is the junction: the fork's line starts on its parent's.
    """
    first = int(np.searchsorted(steps, after, side="right"))
    lead = max(first - 1, 0)
    return steps[lead:], xs[lead:], ys[lead:]


def _thin(ys: FloatArray, limit: int, pinned: Iterable[int]) -> IntArray:
    """Indices of at most about ``limit`` points that keep the line's shape.

    Each bucket keeps its lowest and highest point, and one NaN if it has
    any, so spikes and gaps survive; ``pinned`` indices (the first, the last,
    the junctions) are always kept.
    """
    n = len(ys)
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    keep = {0, n - 1, *pinned}
    edges = np.linspace(0, n, max(limit // 3, 1) + 1).astype(np.int64)
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        part = ys[lo:hi]
        finite = np.isfinite(part)
        if not finite.all():
            keep.add(lo + int(np.argmin(finite)))
        if finite.any():
            where = np.flatnonzero(finite)
            keep.add(lo + int(where[np.argmin(part[where])]))
            keep.add(lo + int(where[np.argmax(part[where])]))
    return np.array(sorted(keep), dtype=np.int64)


def trace(
    store: RunStore,
    views: Sequence[RunView],
    metric: str,
    x: str = _STEP,
    max_points: int = MAX_POINTS,
    columns: ColumnCache | None = None,
) -> list[Curve]:
    """Work out what to draw for each run: its points, where it starts, its fork.

    A run whose fork parent (or an earlier ancestor) is among ``views`` and has
    values of ``metric`` starts at the step where it leaves that ancestor's
    line; the points it inherited from ancestors that are not drawn are kept
    and marked as inherited. Runs without a value of ``metric`` are left out.

    Args:
        store: the repository of the runs.
        views: the runs to draw.
        metric: the metric on the y axis.
        x: ``_step``, ``_timestamp`` or another metric (``epoch``).
        max_points: thin lines longer than this (see :data:`MAX_POINTS`).
        columns: a cache of read columns, to share between calls.

    Returns:
        One curve per run that logged ``metric``, ancestors before forks.

    Raises:
        MetricNotFoundError: no run logged ``metric`` (or ``x``) as numbers.
    """
    columns = columns or ColumnCache({metric, x})
    unique = list({v.path: v for v in views}.values())
    points = {v.path: _points(v, metric, x, columns) for v in unique}
    drawn = {path for path, (steps, _, _) in points.items() if len(steps)}
    if not drawn:
        # Only now read every column, to name what the runs did log.
        everything = ColumnCache()
        logged = {k for v in unique for k in everything.get(v)}
        missing = x if metric in logged and x not in logged else metric
        names = ", ".join(v.path for v in unique)
        raise MetricNotFoundError(names, missing, sorted(logged - {_STEP, _TIME}))

    curves: list[Curve] = []
    depth: dict[str, int] = {}
    for view in unique:
        if view.path not in drawn:
            logger.info("%s logged no %s against %s; not drawn", view.path, metric, x)
            continue
        steps, xs, ys = points[view.path]
        edges = ancestors(store, view.ref)
        depth[view.path] = len(edges)
        start = _start(view, edges, drawn - {view.path})
        if start is not None:
            steps, xs, ys = _cut(steps, xs, ys, start[0])

        # The fork point: the last point the run inherited, where its own
        # line begins (or its first point, when it inherited none).
        own = 0
        fork = None
        if edges:
            fork_step = edges[0].step
            own = max(int(np.searchsorted(steps, fork_step, side="right")) - 1, 0)
            fork = ForkMark(
                view.path, edges[0].parent, fork_step, float(xs[own]), float(ys[own])
            )

        picks = _thin(ys, max_points, [own])
        own = int(np.searchsorted(picks, own))
        steps, xs, ys = steps[picks], xs[picks], ys[picks]
        joins = start[1] if start else None
        label = _label(view, edges)
        curves.append(Curve(view.path, label, steps, xs, ys, own, fork, joins))

    # Parents first, so each fork is drawn over the line it leaves.
    return sorted(curves, key=lambda c: depth[c.run])


def family(store: RunStore, runs: Sequence[RunRef]) -> list[RunRef]:
    """The runs with every ancestor and descendant they have, ancestors first."""
    edges = fork_edges(store)
    found: dict[str, RunRef] = {}
    for run in runs:
        for edge in reversed(ancestors(store, run)):
            found.setdefault(edge.parent, store.resolve(edge.parent))
        found.setdefault(run.path, run)
        for edge in descendants(store, run, edges):
            found.setdefault(edge.child, store.resolve(edge.child))
    return list(found.values())


# --- from curves to a figure ------------------------------------------------


def _x_values(xs: FloatArray, x: str) -> Any:
    """x values as matplotlib should see them: wall-clock seconds as dates."""
    if x == _TIME:
        return (xs * 1e6).astype("datetime64[us]")
    return xs


def _label_above(fork: Curve, parent: Curve | None) -> bool:
    """Whether a fork's label goes above its marker rather than below.

    The label sits left of the marker, where only the line the fork came from
    runs: a line rising into the fork point (an accuracy) leaves room above
    it, a falling one (a loss) below it. The trend is a straight-line fit, so
    a noisy line does not flip it.
    """
    assert fork.fork is not None
    if parent is None:
        xs, ys = fork.x[: fork.own + 1], fork.y[: fork.own + 1]
    else:
        before = parent.steps <= fork.fork.step
        xs, ys = parent.x[before], parent.y[before]
    finite = np.isfinite(ys)
    xs, ys = xs[finite][-200:], ys[finite][-200:]
    if len(xs) < 2 or np.ptp(xs) == 0:
        return True
    slope = np.polyfit(xs, ys, 1)[0]
    return bool(slope >= 0)


def draw(
    curves: Sequence[Curve],
    metric: str,
    x: str = _STEP,
    title: str | None = None,
    id_prefix: str = "",
    size: tuple[float, float] = (8.0, 4.5),
) -> Figure:
    """Draw curves on a new matplotlib figure (no pyplot, so no global state).

    Each run is one colour. Its own history is a solid line; points inherited
    from ancestors that are not drawn are dashed; a fork's marker is a diamond
    labelled with the fork step, whose SVG element id is :func:`marker_id`.

    Args:
        curves: from :func:`trace`.
        metric: the y axis label.
        x: the x axis (``_step``, ``_timestamp`` or a metric).
        title: the title (default: the metric).
        id_prefix: put before every element id this function sets.
        size: figure size in inches.
    """
    _matplotlib()
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    ax = figure.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(curves))]
    by_run = {c.run: c for c in curves}
    for curve, colour in zip(curves, colours):
        xs = _x_values(curve.x, x)
        if curve.own > 0:
            ax.plot(
                xs[: curve.own + 1],
                curve.y[: curve.own + 1],
                color=colour,
                linestyle="--",
                linewidth=1.2,
                alpha=0.6,
            )
        (line,) = ax.plot(
            xs[curve.own :],
            curve.y[curve.own :],
            color=colour,
            linewidth=1.5,
            label=curve.label,
        )
        line.set_gid(id_prefix + "run-" + curve.run.replace("/", "-"))
        if curve.fork is None:
            continue
        fork_x = _x_values(np.array([curve.fork.x]), x)
        (mark,) = ax.plot(
            fork_x,
            [curve.fork.y],
            linestyle="none",
            marker="D",
            markersize=7,
            markerfacecolor=colour,
            markeredgecolor="black",
            zorder=5,
        )
        mark.set_gid(marker_id(curve.run, id_prefix))
        above = _label_above(curve, by_run.get(curve.joins or ""))
        note = ax.annotate(
            f"fork @ {curve.fork.step}",
            (fork_x[0], curve.fork.y),
            xytext=(-8, 8 if above else -8),
            textcoords="offset points",
            horizontalalignment="right",
            verticalalignment="bottom" if above else "top",
            fontsize=8,
            color=colour,
            bbox={
                "boxstyle": "round,pad=0.2",
                "fc": "white",
                "ec": "none",
                "alpha": 0.8,
            },
        )
        note.set_gid(marker_id(curve.run, id_prefix) + "-label")

    ax.set_title(title or metric)
    ax.set_xlabel({_STEP: "step", _TIME: "time"}.get(x, x))
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if any(c.own > 0 for c in curves):
        ax.plot(
            [], [], color="grey", linestyle="--", label="inherited, parent not drawn"
        )
    if any(c.fork for c in curves):
        # One legend entry explains every diamond.
        ax.plot(
            [],
            [],
            linestyle="none",
            marker="D",
            markerfacecolor="white",
            markeredgecolor="black",
            label="fork point",
        )
    ax.legend(loc="best", fontsize="small", framealpha=0.85)
    return figure


def image_format(path: Path, fmt: str | None = None) -> str:
    """The image format of ``path`` (by its suffix) or ``fmt``.

    Raises:
        InvalidArgumentError: a format :func:`save_figure` does not write.
    """
    chosen = (fmt or path.suffix.lstrip(".")).lower()
    if chosen not in IMAGE_FORMATS:
        raise InvalidArgumentError(
            "output",
            path.name,
            "cannot tell the image format; end the name in "
            f"{', '.join('.' + f for f in IMAGE_FORMATS)}",
        )
    return chosen


# No dates in the files, so the same runs give the same bytes.
_METADATA: dict[str, dict[str, Any]] = {
    "png": {"Software": "gitruns"},
    "svg": {"Date": None},
    "pdf": {"CreationDate": None, "ModDate": None},
}


def _rc(inline: bool) -> dict[str, Any]:
    # A fixed salt makes the SVG ids, and so the file, the same on every run.
    return {"svg.hashsalt": "gitruns", "svg.fonttype": "none" if inline else "path"}


def save_figure(figure: Figure, out: Path | BinaryIO, fmt: str) -> None:
    """Write ``figure`` as ``fmt`` (png, svg, pdf) to a path or a binary stream."""
    matplotlib = _matplotlib()
    metadata = _METADATA[fmt]
    with matplotlib.rc_context(_rc(inline=False)):
        figure.savefig(out, format=fmt, dpi=100, metadata=metadata)


def inline_svg(figure: Figure, id_prefix: str) -> str:
    """The figure as an ``<svg>`` element to put inside an HTML page.

    Text stays text (the page's fonts draw it), and everything that would
    reach outside the page goes: the XML prolog, the DOCTYPE, the metadata
    block and its links, the namespace declarations (HTML needs none). Every
    id gets ``id_prefix`` so that several plots on one page never share one.
    """
    matplotlib = _matplotlib()
    buffer = io.StringIO()
    with matplotlib.rc_context(_rc(inline=True)):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.DOTALL)
    text = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", text)
    text = text.replace("xlink:href=", "href=")

    # Prefix ids and the references to them; the ids this module set already
    # carry the prefix (id_prefix was passed to draw()).
    def prefixed(name: str) -> str:
        return name if name.startswith(id_prefix) else id_prefix + name

    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefixed(m[1])}"', text)
    text = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefixed(m[1])}"', text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefixed(m[1])})", text)
    return text.strip()


def plot_runs(
    store: RunStore,
    views: Sequence[RunView],
    metric: str,
    out: Path,
    x: str = _STEP,
    title: str | None = None,
    fmt: str | None = None,
) -> list[Curve]:
    """Draw ``metric`` of the runs against ``x`` and write the picture to ``out``.

    Args:
        store: the repository of the runs.
        views: the runs; forks among them are drawn off their parents.
        metric: the metric on the y axis.
        out: the image file; its suffix names the format unless ``fmt`` does.
        x: ``_step`` (default), ``_timestamp`` or a metric such as ``epoch``.
        title: the title (default: the metric).
        fmt: ``png``, ``svg`` or ``pdf``.

    Returns:
        The curves drawn.

    Raises:
        MetricNotFoundError: no run logged ``metric``.
        ValueError: an image format that is not supported.
        MissingExtraError: matplotlib is not installed.
    """
    chosen = image_format(out, fmt)
    _matplotlib()
    curves = trace(store, views, metric, x)
    figure = draw(curves, metric, x, title)
    save_figure(figure, out, chosen)
    logger.info("plotted %s of %d run(s) to %s", metric, len(curves), out)
    return curves
