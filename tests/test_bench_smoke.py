"""The benchmark entry point, run at its tiny size so it cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "bench" / "run.py"

SECTIONS = ("logging", "fork", "read", "memory", "listing")


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """Run ``bench/run.py --tiny`` once (tensorboardX, the quickest peer)."""
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--tiny",
            "--peers",
            "tensorboardx",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_section_is_reported(bench: tuple[dict[str, Any], str]) -> None:
    results, stdout = bench
    assert results["profile"] == "tiny"
    for section in SECTIONS:
        assert section in results, section
    assert results["meta"]["cores"] >= 1
    assert "## goals" in stdout
    assert "## logging: end to end" in stdout


def test_logging_rows_cover_gitruns_floors_and_the_peer(
    bench: tuple[dict[str, Any], str],
) -> None:
    results, _ = bench
    rows = {(r["label"], r["tool"]): r for r in results["logging"]}
    labels = {label for label, _ in rows}
    assert labels == {"300 x 3", "1k sparse"}
    for label in labels:
        for tool in ("gitruns", "floor-msgpack", "floor-dulwich"):
            row = rows[(label, tool)]
            assert row["status"] == "ok", row
            assert row["us_per_point"] > 0
            assert row["points"] == row["calls"] * 3 or label == "1k sparse"
            assert row["latency"]["median_us"] <= row["latency"]["max_us"]
    # A peer is measured or reported missing, never anything else.
    assert rows[("300 x 3", "tensorboardx")]["status"] in ("ok", "missing")
    assert rows[("1k sparse", "tensorboardx")]["status"] == "skipped"


def test_storage_and_commit_growth_are_measured(
    bench: tuple[dict[str, Any], str],
) -> None:
    results, _ = bench
    ours = next(
        r
        for r in results["logging"]
        if r["tool"] == "gitruns" and r["label"] == "1k sparse"
    )
    assert ours["storage"]["bytes"] > 0
    assert ours["storage"]["gc_bytes_per_point"] > 0
    # 1,000 steps in windows of 1,000: at least the first commit and one chunk.
    assert ours["growth"]["commits"] >= 2
    assert len(ours["growth"]["per_commit"]) == ours["growth"]["commits"]


def test_every_read_returns_the_same_values(bench: tuple[dict[str, Any], str]) -> None:
    results, _ = bench
    reads = [r for r in results["read"] if r["status"] == "ok"]
    assert len(reads) == 8
    for one, expected in ((False, 500 * 4), (True, 500)):
        values = {r["variant"]: r["values"] for r in reads if r["one"] is one}
        assert values == dict.fromkeys(values, expected)


def test_fork_memory_and_listing(bench: tuple[dict[str, Any], str]) -> None:
    results, _ = bench
    assert [f["steps"] for f in results["fork"]] == [100, 1_000]
    assert all(f["status"] == "ok" and f["bytes_added"] > 0 for f in results["fork"])
    assert all(m["traced_peak_bytes"] > 0 for m in results["memory"])
    listing = results["listing"]
    assert listing["gitruns"]["runs"] == listing["git"]["runs"] == 20


def test_goals_have_a_verdict_or_say_why_not(
    bench: tuple[dict[str, Any], str],
) -> None:
    results, _ = bench
    goals = {g["goal"]: g for g in results["goals"]}
    assert len(goals) == 15
    for goal in goals.values():
        if goal["measured"] is None:
            assert goal["met"] is None
        else:
            assert goal["met"] in (True, False)
    assert goals["listing runs vs git for-each-ref"]["measured"] is not None
