"""One self-contained HTML page for a run: identity, lineage, plots, config, summary.

The page loads nothing from anywhere: styles are inline, plots are inline SVG
(or PNG as ``data:`` URIs), and it holds no script. It opens from a file, from
a run branch checked out on disk, or as an attachment.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from gitruns.lineage import Edge, ancestors, descendants
from gitruns.plot import (
    ColumnCache,
    draw,
    drawable_metrics,
    family,
    inline_svg,
    save_figure,
    trace,
)
from gitruns.reader import RunView
from gitruns.store import RunStore

logger = logging.getLogger(__name__)

ImageKind = Literal["svg", "png"]

#: Plots one report draws at most (one per metric), and runs in each plot.
MAX_PLOTS = 24
MAX_RUNS = 12

_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       margin: 2em auto; max-width: 60em; padding: 0 1em; color: #1f2328; }
h1 { margin-bottom: .1em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.8em; }
.sub { color: #59636e; margin-top: 0; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace;
       background: #f6f8fa; padding: .1em .3em; border-radius: 4px; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { text-align: left; padding: .25em .8em .25em 0; vertical-align: top;
         border-bottom: 1px solid #eaeef2; }
td.num { font-variant-numeric: tabular-nums; }
figure { margin: 1.2em 0; }
figure svg, figure img { max-width: 100%; height: auto; }
figcaption { color: #59636e; font-size: 13px; }
ul.lineage { list-style: none; padding-left: 1.2em; }
.this { font-weight: 600; }
footer { margin-top: 3em; color: #59636e; font-size: 13px; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _flat(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested config as dotted keys (``optimizer.lr``), the way W&B shows it."""
    for key in sorted(mapping, key=str):
        value = mapping[key]
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flat(value, name + ".")
        else:
            yield name, value


def _cell(value: Any) -> str:
    """A value as a table cell; a float keeps its exact text in a tooltip."""
    if isinstance(value, float) and math.isfinite(value):
        return f'<td class="num" title="{_e(repr(value))}">{_e(f"{value:.6g}")}</td>'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{_e(value)}</td>'
    if isinstance(value, str):
        return f"<td>{_e(value)}</td>"
    text = json.dumps(value, sort_keys=True, default=str)
    return f"<td><code>{_e(text)}</code></td>"


def _table(mapping: Mapping[str, Any], what: str) -> str:
    rows = list(_flat(mapping))
    if not rows:
        return f"<p>No {what}.</p>"
    body = "".join(f"<tr><th>{_e(k)}</th>{_cell(v)}</tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _identity(view: RunView) -> str:
    """The run's own facts: branch, commit, times, code, source, tags."""
    info = view.info
    rows: list[tuple[str, str]] = [
        ("branch", f"<code>{_e(view.branch)}</code>"),
        ("commit", f"<code>{_e(view.tip)}</code>"),
        ("created", _e(info.get("created", ""))),
        ("updated", _e(info.get("updated", ""))),
    ]
    code = info.get("code")
    if code:
        dirty = " (uncommitted changes)" if code.get("dirty") else ""
        rows.append(
            (
                "code",
                f"<code>{_e(str(code.get('commit', ''))[:12])}</code> on "
                f"{_e(code.get('branch'))}{_e(dirty)}",
            )
        )
    if view.source:
        rows.append(("imported from", f"<code>{_e(json.dumps(view.source))}</code>"))
    for rewind in info.get("rewinds") or []:
        rows.append(
            (
                "rewound",
                f"to step {_e(rewind.get('step'))} at {_e(rewind.get('at'))} "
                f"(earlier history: <code>{_e(str(rewind.get('commit'))[:12])}</code>)",
            )
        )
    for key in ("group", "job_type"):
        if info.get(key):
            rows.append((key, _e(info[key])))
    if view.tags:
        rows.append(("tags", _e(", ".join(view.tags))))
    if view.notes:
        rows.append(("notes", _e(view.notes)))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _lineage(view: RunView, up: Sequence[Edge], down: Sequence[Edge]) -> str:
    """Ancestors from the root down to this run, then its forks as a tree."""
    if not up and not down:
        return "<p>A root run; nothing has been forked from it.</p>"
    items = []
    chain = list(reversed(up))
    if chain:
        items.append(f"<li><code>{_e(chain[0].parent)}</code> (root)</li>")
    for edge in chain:
        here = ' class="this"' if edge.child == view.path else ""
        items.append(
            f"<li{here}>&#8627; <code>{_e(edge.child)}</code>, forked from "
            f"<code>{_e(edge.parent)}</code> at step {edge.step}</li>"
        )
    if not chain:
        items.append(f'<li class="this"><code>{_e(view.path)}</code> (root)</li>')

    depth = {view.path: 0}
    for edge in down:
        depth[edge.child] = depth.get(edge.parent, 0) + 1
        pad = f' style="padding-left: {1.2 * depth[edge.child]:.1f}em"'
        items.append(
            f"<li{pad}>&#8627; <code>{_e(edge.child)}</code>, forked from "
            f"<code>{_e(edge.parent)}</code> at step {edge.step}</li>"
        )
    return f'<ul class="lineage">{"".join(items)}</ul>'


def _plot_runs(store: RunStore, view: RunView, with_lineage: bool) -> list[RunView]:
    """The run, then its ancestors and descendants, at most :data:`MAX_RUNS`."""
    if not with_lineage:
        return [view]
    views = [view]
    for ref in family(store, [view.ref]):
        if ref != view.ref and len(views) < MAX_RUNS:
            views.append(RunView(store, ref))
    return views


def _figure(
    store: RunStore,
    views: Sequence[RunView],
    metric: str,
    number: int,
    images: ImageKind,
    columns: ColumnCache,
) -> str:
    curves = trace(store, views, metric, columns=columns)
    prefix = f"plot{number}-"
    figure = draw(curves, metric, id_prefix=prefix, size=(8.0, 4.2))
    if images == "svg":
        picture = inline_svg(figure, prefix)
    else:
        buffer = io.BytesIO()
        save_figure(figure, buffer, "png")
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        picture = f'<img alt="{_e(metric)}" src="data:image/png;base64,{data}">'
    runs = ", ".join(c.run for c in curves)
    return (
        f'<figure id="plot-{number}">{picture}'
        f"<figcaption>{_e(metric)}: {_e(runs)}</figcaption></figure>"
    )


def render_report(
    store: RunStore,
    view: RunView,
    metrics: Sequence[str] | None = None,
    with_lineage: bool = True,
    images: ImageKind = "svg",
) -> str:
    """The report page of a run, as a string of HTML.

    Args:
        store: the repository of the run.
        view: the run.
        metrics: the metrics to plot (default: every metric with numbers,
            at most :data:`MAX_PLOTS`).
        with_lineage: draw the run's ancestors and forks in each plot.
        images: ``svg`` (inline, sharp, text searchable) or ``png`` (base64).

    Raises:
        MetricNotFoundError: a metric in ``metrics`` that no drawn run logged.
        MissingExtraError: matplotlib is not installed.
    """
    columns = ColumnCache()
    up = ancestors(store, view.ref)
    down = descendants(store, view.ref)
    views = _plot_runs(store, view, with_lineage)

    # Which metrics to draw, and what is left out and why.
    chosen = list(metrics) if metrics else drawable_metrics(view, columns)
    notes = []
    if len(chosen) > MAX_PLOTS and not metrics:
        notes.append(
            f"{len(chosen) - MAX_PLOTS} more metric(s) not drawn; name them with "
            "--metric to draw them"
        )
        chosen = chosen[:MAX_PLOTS]
    left_out = len(up) + len(down) + 1 - len(views)
    if with_lineage and left_out > 0:
        notes.append(f"{left_out} more run(s) of this lineage not drawn")
    figures = [
        _figure(store, views, metric, number, images, columns)
        for number, metric in enumerate(chosen, start=1)
    ]

    last = view.last_step
    steps = "no steps yet" if last is None else f"steps 0..{last}"
    try:
        version = metadata.version("gitruns")
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    plots = "".join(figures) or "<p>No metric with numbers to draw.</p>"
    plots += "".join(f"<p>{_e(n)}.</p>" for n in notes)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="gitruns {_e(version)}">',
        f"<title>{_e(view.name)} - gitruns report</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(view.name)}</h1>",
        f'<p class="sub"><code>{_e(view.path)}</code> &middot; {_e(view.state)} '
        f"&middot; {_e(steps)}</p>",
        f'<section id="run"><h2>Run</h2>{_identity(view)}</section>',
        f'<section id="lineage"><h2>Lineage</h2>{_lineage(view, up, down)}</section>',
        f'<section id="plots"><h2>Metrics</h2>{plots}</section>',
        '<section id="config"><h2>Config</h2>'
        f"{_table(view.config, 'config')}</section>",
        '<section id="summary"><h2>Summary</h2>'
        f"{_table(view.summary, 'summary')}</section>",
        f"<footer>Written by gitruns {_e(version)} from <code>{_e(view.branch)}</code> "
        f"at commit <code>{_e(view.tip[:12])}</code>. Read the full history with "
        f"<code>gitruns history {_e(view.path)}</code>.</footer>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def write_report(
    store: RunStore,
    view: RunView,
    out: Path,
    metrics: Sequence[str] | None = None,
    with_lineage: bool = True,
    images: ImageKind = "svg",
) -> Path:
    """Write the report page of a run to ``out``, whole or not at all.

    Args:
        store: the repository of the run.
        view: the run.
        out: the HTML file to write; replaced only once the page is whole.
        metrics: the metrics to plot (see :func:`render_report`).
        with_lineage: draw the run's ancestors and forks in each plot.
        images: ``svg`` or ``png`` (see :func:`render_report`).

    Returns:
        ``out``.

    Raises:
        MetricNotFoundError: a metric in ``metrics`` that no drawn run logged.
        ImportError: matplotlib is not installed.
        RepositoryError: the run cannot be read.
        ChunkFormatError: a metric chunk of a drawn run is malformed.
        OSError: ``out`` cannot be written.
    """
    page = render_report(store, view, metrics, with_lineage, images)
    # A report that failed halfway must not replace a good one.
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("wrote the report of %s to %s", view.path, out)
    return out
