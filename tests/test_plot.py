"""Plots and the report page: forks drawn off their parents, files checked as files."""

from __future__ import annotations

import base64
import math
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import gitruns
from gitruns.cli.common import GitRunsGroup
from gitruns.cli.export import plot_command, report_command
from gitruns.errors import MetricNotFoundError
from gitruns.plot import marker_id, plot_runs, trace
from gitruns.reader import RunView
from gitruns.report import render_report

pytest.importorskip("matplotlib", reason="plots need the plot extra")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SVG = "{http://www.w3.org/2000/svg}"
CHROMIUM = Path("/usr/bin/chromium")


def invoke(*args: str) -> tuple[int, str, str]:
    """Run a command as ``gitruns`` would (errors mapped to exit codes)."""
    group = GitRunsGroup(commands=[plot_command, report_command])
    result = CliRunner().invoke(group, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --- what is drawn ----------------------------------------------------------


def test_fork_line_starts_at_its_fork_point(seed_runs: tuple[RunView, RunView]) -> None:
    src, fork = seed_runs
    curves = {c.run: c for c in trace(src.store, [fork, src], "metric")}
    assert list(curves) == ["demo/source", "demo/forked"]  # parents drawn first

    # The source is drawn whole; the fork only from step 200 on, so the shared
    # part is drawn once.
    assert curves["demo/source"].steps.tolist() == list(range(300))
    drawn = curves["demo/forked"].steps
    assert drawn[0] == 200 and drawn[-1] == 399 and (drawn[1:] > 200).all()
    assert curves["demo/forked"].joins == "demo/source"
    assert curves["demo/forked"].own == 0

    mark = curves["demo/forked"].fork
    assert mark is not None and (mark.parent, mark.step) == ("demo/source", 200)
    assert (mark.x, mark.y) == (200.0, 200.0)
    assert "fork of demo/source at step 200" in curves["demo/forked"].label


def test_fork_alone_draws_its_inherited_part_once(
    seed_runs: tuple[RunView, RunView],
) -> None:
    _, fork = seed_runs
    (curve,) = trace(fork.store, [fork], "metric")
    assert curve.steps[0] == 0 and curve.joins is None
    # Points up to the fork point are inherited (dashed), the rest its own.
    assert curve.steps[curve.own] == 200
    assert curve.fork is not None and curve.fork.step == 200


def test_metric_only_the_fork_logged(seed_runs: tuple[RunView, RunView]) -> None:
    src, fork = seed_runs
    (curve,) = trace(src.store, [src, fork], "additional_metric")
    assert curve.run == "demo/forked" and curve.steps[0] == 202
    assert curve.fork is not None and curve.fork.step == 200


def test_grandchild_starts_where_it_leaves_the_drawn_ancestor(repo: Path) -> None:
    with gitruns.init(project="p", id="a", repo=repo) as run:
        for i in range(300):
            run.log({"loss": 1.0 / (i + 1)})
    with gitruns.init(project="p", id="b", fork_from="a?_step=100", repo=repo) as run:
        for _ in range(101, 300):
            run.log({"loss": 0.5})
    with gitruns.init(project="p", id="c", fork_from="b?_step=200", repo=repo) as run:
        for _ in range(201, 300):
            run.log({"loss": 0.25})
    api = gitruns.Api(repo)
    a, c = api.run("p/a"), api.run("p/c")

    curves = {x.run: x for x in trace(api.store, [a, c], "loss")}
    grandchild = curves["p/c"]
    # It leaves a's line at 100; 101..200 came from b, which is not drawn.
    assert grandchild.joins == "p/a" and grandchild.steps[0] == 100
    assert grandchild.steps[grandchild.own] == 200
    assert grandchild.y[1] == 0.5 and grandchild.y[-1] == 0.25
    assert grandchild.fork is not None and grandchild.fork.parent == "p/b"


def test_parent_rewound_below_the_fork_point(repo: Path) -> None:
    with gitruns.init(project="p", id="a", repo=repo) as run:
        for i in range(300):
            run.log({"loss": float(i)})
    gitruns.init(project="p", id="b", fork_from="a?_step=200", repo=repo).finish()
    with gitruns.init(project="p", resume_from="a?_step=150", repo=repo) as run:
        for _ in range(151, 260):
            run.log({"loss": -1.0})
    api = gitruns.Api(repo)
    curves = {x.run: x for x in trace(api.store, [api.run("a"), api.run("b")], "loss")}
    # a no longer holds what b inherited after 150: b draws it, dashed.
    assert curves["p/b"].steps[0] == 150
    assert curves["p/b"].steps[curves["p/b"].own] == 200
    assert curves["p/b"].y.tolist() == [float(s) for s in range(150, 201)]


def test_custom_x_and_values_that_are_not_numbers(repo: Path) -> None:
    with gitruns.init(project="p", id="x", repo=repo) as run:
        for i in range(10):
            row: dict[str, Any] = {"loss": [1.0, math.nan, math.inf, 0.5][i % 4]}
            if i % 2 == 0:
                row["epoch"] = i / 2
            run.log(row)
        run.log({"loss": "diverged"})
    view = gitruns.Api(repo).run("x")
    (by_epoch,) = trace(view.store, [view], "loss", x="epoch")
    assert by_epoch.steps.tolist() == [0, 2, 4, 6, 8]
    assert by_epoch.x.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    (by_step,) = trace(view.store, [view], "loss")
    # Text is left out; NaN and infinities are gaps (NaN), never spikes.
    assert by_step.steps.tolist() == list(range(10))
    assert np.isnan(by_step.y).tolist() == [i % 4 in (1, 2) for i in range(10)]


def test_long_lines_are_thinned_keeping_spikes_and_gaps(repo: Path) -> None:
    with gitruns.init(project="p", id="long", repo=repo) as run:
        for i in range(30_000):
            value = 100.0 if i == 12_345 else (math.nan if i == 23_456 else math.sin(i))
            run.log({"loss": value})
    view = gitruns.Api(repo).run("long")
    (curve,) = trace(view.store, [view], "loss", max_points=3000)
    assert len(curve.steps) <= 3100
    assert 12_345 in curve.steps.tolist() and np.nanmax(curve.y) == 100.0
    assert np.isnan(curve.y).any()
    assert curve.steps[0] == 0 and curve.steps[-1] == 29_999


def test_unknown_metric(seed_runs: tuple[RunView, RunView]) -> None:
    src, fork = seed_runs
    with pytest.raises(MetricNotFoundError, match="additional_metric, metric"):
        trace(src.store, [src, fork], "loss")
    with pytest.raises(MetricNotFoundError, match="'epoch'"):
        trace(src.store, [src], "metric", x="epoch")


# --- files ------------------------------------------------------------------


def test_seed_plot_png(seed_runs: tuple[RunView, RunView], tmp_path: Path) -> None:
    src, _ = seed_runs
    out = tmp_path / "seed.png"
    code, _, err = invoke(
        "plot",
        "source",
        "forked",
        "-m",
        "metric",
        "-o",
        str(out),
        "--repo",
        str(src.store.git_dir),
    )
    assert code == 0, err
    assert "2 run(s) (1 fork(s))" in err
    data = out.read_bytes()
    assert png_size(data) == (800, 450)
    assert 10_000 < len(data) < 300_000


def test_seed_plot_svg_has_the_fork_marker(
    seed_runs: tuple[RunView, RunView], tmp_path: Path
) -> None:
    src, fork = seed_runs
    out = tmp_path / "seed.svg"
    plot_runs(src.store, [src, fork], "metric", out)
    text = out.read_text()
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    by_id = {el.get("id"): el for el in root.iter() if el.get("id")}

    mark = by_id[marker_id("demo/forked")]
    assert mark.get("id") == "fork-demo-forked"
    assert list(mark.iter(f"{SVG}use")) or list(mark.iter(f"{SVG}path"))
    assert "fork-demo-forked-label" in by_id
    assert "run-demo-source" in by_id and "run-demo-forked" in by_id
    assert "fork-demo-source" not in by_id  # the root run has no marker
    # matplotlib keeps each text as a comment beside its glyphs.
    assert "fork @ 200" in text and "fork of demo/source at step 200" in text

    # The same runs give the same bytes.
    again = tmp_path / "again.svg"
    plot_runs(src.store, [src, fork], "metric", again)
    assert again.read_bytes() == out.read_bytes()


def test_plot_lineage_flag_adds_forks(
    seed_runs: tuple[RunView, RunView], tmp_path: Path
) -> None:
    src, _ = seed_runs
    out = tmp_path / "all.svg"
    code, _, err = invoke(
        "plot",
        "source",
        "--lineage",
        "-m",
        "metric",
        "-o",
        str(out),
        "--repo",
        str(src.store.git_dir),
    )
    assert code == 0 and "2 run(s)" in err
    assert 'id="fork-demo-forked"' in out.read_text()


def test_plot_errors(seed_runs: tuple[RunView, RunView], tmp_path: Path) -> None:
    repo = str(seed_runs[0].store.git_dir)
    code, _, err = invoke(
        "plot", "source", "-m", "metric", "-o", str(tmp_path / "x.gif"), "--repo", repo
    )
    assert code == 2 and ".png, .svg, .pdf" in err
    code, _, err = invoke(
        "plot", "source", "-m", "nope", "-o", str(tmp_path / "x.png"), "--repo", repo
    )
    assert code == 3 and "logged no metric 'nope'" in err
    code, _, err = invoke(
        "plot", "ghost", "-m", "metric", "-o", str(tmp_path / "x.png"), "--repo", repo
    )
    assert code == 3 and "no run 'ghost'" in err
    assert not list(tmp_path.glob("x.*"))


def test_without_matplotlib_the_message_says_what_to_install(
    seed_runs: tuple[RunView, RunView], tmp_path: Path
) -> None:
    # A fresh interpreter in which importing matplotlib fails, as if absent.
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from gitruns.cli.main import main\n"
        "from gitruns.cli.export import plot_command\n"
        "main.add_command(plot_command)\n"
        "main()\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "plot",
            "source",
            "-m",
            "metric",
            "-o",
            str(tmp_path / "x.png"),
            "--repo",
            str(seed_runs[0].store.git_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "Error: drawing plots needs matplotlib" in done.stderr
    assert "pip install 'gitruns[plot]'" in done.stderr
    assert "Traceback" not in done.stderr


# --- the report page --------------------------------------------------------


VOID = {"meta", "img", "br", "hr", "input", "link", "col", "area", "base", "wbr"}


class PageCheck(HTMLParser):
    """Checks a page is well formed and collects what it refers to."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.refs: list[str] = []
        self.tags: dict[str, int] = {}
        self.doctype = ""
        self.text: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name, value in attrs:
            if name == "id" and value:
                self.ids.append(value)
            if name in ("src", "href", "xlink:href", "action", "data") and value:
                self.refs.append(value)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(
                f"</{tag}> closes <{self.stack[-1] if self.stack else ''}>"
            )
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_page(page: str) -> PageCheck:
    check = PageCheck()
    check.feed(page)
    check.close()
    assert check.doctype.lower() == "doctype html"
    assert not check.errors, check.errors[:5]
    assert not check.stack, check.stack
    assert len(check.ids) == len(set(check.ids)), "ids repeat across the page"
    # Self-contained: nothing fetched from anywhere, no script.
    assert "http://" not in page and "https://" not in page
    assert all(r.startswith(("#", "data:")) for r in check.refs), check.refs[:5]
    assert "script" not in check.tags and "iframe" not in check.tags
    return check


def test_report_of_the_seed_fork(
    seed_runs: tuple[RunView, RunView], tmp_path: Path
) -> None:
    src, fork = seed_runs
    out = tmp_path / "report.html"
    code, _, err = invoke(
        "report", "forked", "-o", str(out), "--repo", str(src.store.git_dir)
    )
    assert code == 0, err
    page = out.read_text()
    check = check_page(page)

    # One inline SVG per metric, each with the fork's marker under its own id.
    assert check.tags["svg"] == 2
    assert (
        "plot1-fork-demo-forked" in check.ids and "plot2-fork-demo-forked" in check.ids
    )
    text = " ".join(check.text)
    assert "fork @ 200" in text  # the label is text, not glyph outlines
    for section in ("run", "lineage", "plots", "config", "summary"):
        assert section in check.ids
    assert "forked from" in text and "at step 200" in text
    assert "additional_metric" in text and f"{fork.summary['metric']:.6g}" in text
    assert "runs/demo/forked" in text and fork.tip in text


def test_report_with_png_images_and_hostile_names(repo: Path, tmp_path: Path) -> None:
    name = '<script>alert("x")</script>'
    config = {"opt": {"lr": 0.1, "name": "<b>adam</b>"}, "layers": [1, 2]}
    with gitruns.init(project="p", id="r", name=name, config=config, repo=repo) as run:
        for i in range(20):
            run.log({"loss": 1 / (i + 1), "note": "text only"})
    view = gitruns.Api(repo).run("r")
    page = render_report(view.store, view, images="png")
    check = check_page(page)
    assert "&lt;script&gt;" in page and "<b>adam" not in page
    assert "opt.lr" in " ".join(check.text)  # nested config as dotted keys

    images = [r for r in check.refs if r.startswith("data:image/png;base64,")]
    assert len(images) == 1  # "note" holds no numbers, so it gets no plot
    assert png_size(base64.b64decode(images[0].split(",", 1)[1]))[0] > 100


def test_report_metric_choice_and_errors(
    seed_runs: tuple[RunView, RunView], tmp_path: Path
) -> None:
    repo = str(seed_runs[0].store.git_dir)
    out = tmp_path / "one.html"
    code, _, _ = invoke(
        "report",
        "forked",
        "-m",
        "metric",
        "--no-lineage",
        "-o",
        str(out),
        "--repo",
        repo,
    )
    assert code == 0
    check = check_page(out.read_text())
    assert check.tags["svg"] == 1
    code, _, err = invoke(
        "report",
        "forked",
        "-m",
        "loss",
        "-o",
        str(tmp_path / "bad.html"),
        "--repo",
        repo,
    )
    assert code == 3 and "logged no metric 'loss'" in err
    assert not (tmp_path / "bad.html").exists()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium to open the page"
)
def test_report_opens_in_headless_chromium(
    seed_runs: tuple[RunView, RunView], tmp_path: Path
) -> None:
    src, _ = seed_runs
    page = tmp_path / "report.html"
    assert (
        invoke("report", "forked", "-o", str(page), "--repo", str(src.store.git_dir))[0]
        == 0
    )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [str(CHROMIUM), *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The browser built the page: both plots, the fork's marker, the tables.
    assert dom.stdout.count("<svg") == 2
    assert 'id="plot1-fork-demo-forked"' in dom.stdout
    assert "<h1>forked</h1>" in dom.stdout

    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [
            str(CHROMIUM),
            *flags,
            "--hide-scrollbars",
            "--window-size=1000,1400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert png_size(shot.read_bytes()) == (1000, 1400)
