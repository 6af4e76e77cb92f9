"""The core contracts of DESIGN.md §2-§5: storage, fork, resume, rewind, read."""

from __future__ import annotations

import math
import os
import struct
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

import gitruns
from gitruns.chunk import build_chunk, encode_chunk
from gitruns.errors import (
    AmbiguousRunError,
    ForkPointError,
    InvalidArgumentError,
    InvalidNameError,
    InvalidValueError,
    RunExistsError,
    RunNotFoundError,
    StepOrderError,
)
from gitruns.reader import RunView
from gitruns.store import RunStore
from tests.conftest import git


def test_seed_scenario(seed_runs: tuple[RunView, RunView]) -> None:
    src, fork = seed_runs
    src_path = src.path

    src_rows = list(src.scan_history())
    fork_rows = list(fork.scan_history())
    assert [r["_step"] for r in src_rows] == list(range(300))
    assert [r["_step"] for r in fork_rows] == list(range(401))
    assert fork_rows[:201] == src_rows[:201]
    assert fork_rows[201] == {**fork_rows[201], "_step": 201, "metric": 200}
    assert fork_rows[202]["additional_metric"] == 200 * 1.1
    assert fork_rows[-1]["_step"] == 400
    assert fork.fork_from is not None
    assert fork.fork_from["run"] == src_path and fork.fork_from["step"] == 200
    assert src.fork_from is None
    assert src.state == fork.state == "finished"
    assert src.summary == {"metric": 299}
    assert fork.summary["additional_metric"] == 299 * 1.1


def test_fork_leaves_source_untouched(repo: Path) -> None:
    src = gitruns.init(project="p", id="src", repo=repo)
    for i in range(300):
        src.log({"m": i})
    src.finish()
    store = RunStore.open(repo)
    before = store.tip(src.ref)
    fork = gitruns.init(project="p", fork_from="p/src?_step=120", repo=repo)
    fork.log({"m": -1})
    fork.finish()
    assert RunStore.open(repo).tip(src.ref) == before
    assert [r["_step"] for r in gitruns.Api(repo).run("p/src").scan_history()] == list(
        range(300)
    )


def test_fork_inside_a_window_cuts_only_that_window(repo: Path) -> None:
    src = gitruns.init(project="p", id="src", repo=repo, window=100)
    for i in range(300):
        src.log({"m": float(i)})
    src.finish()
    fork = gitruns.init(project="p", id="f", fork_from="p/src?_step=150", repo=repo)
    assert fork.step == 151
    fork.log({"m": 1000.0})
    fork.finish()

    store = RunStore.open(repo)
    src_snap = store.read_snapshot(store.tip(src.ref))
    fork_view = gitruns.Api(repo).run("p/f")
    fork_first = store.read_snapshot(store.read_commit(store.tip(fork.ref)).parents[0])
    # window 0 is shared by blob id; window 1 is cut, window 2 is gone
    assert fork_first.history.blobs[0] == src_snap.history.blobs[0]
    assert fork_first.history.blobs[100] != src_snap.history.blobs[100]
    assert 200 not in fork_first.history.blobs
    steps = [r["_step"] for r in fork_view.scan_history()]
    assert steps == [*range(151), 151]
    # the fork's first commit has as parent the source commit that holds step 150
    parent = store.read_commit(fork_first.commit).parents[0]
    assert parent.decode() == fork_view.fork_from["commit"]
    assert store.read_snapshot(parent).last_step >= 150


def test_fork_parent_is_earliest_commit_holding_the_step(repo: Path) -> None:
    # Committing in log() makes one commit per window (no group commits).
    src = gitruns.init(project="p", id="src", repo=repo, window=10, background=False)
    for i in range(45):
        src.log({"m": i})
    src.finish()
    fork = gitruns.init(project="p", id="f", fork_from="p/src?_step=23", repo=repo)
    fork.finish()
    store = RunStore.open(repo)
    parent = gitruns.Api(repo).run("p/f").fork_from["commit"].encode()
    assert store.read_snapshot(parent).last_step == 29  # the commit adding 20..29
    grandparent = store.read_commit(parent).parents[0]
    assert store.read_snapshot(grandparent).last_step == 19


def test_fork_of_20000_steps_adds_one_chunk_and_few_objects(repo: Path) -> None:
    src = gitruns.init(project="p", id="long", repo=repo)
    for i in range(20_000):
        src.log({"loss": 1.0 / (i + 1), "acc": i / 20_000})
    src.finish()
    git("gc", "-q", cwd=repo)
    before = set(git("rev-list", "--objects", "--all", cwd=repo).split())
    fork = gitruns.init(project="p", id="f", fork_from="p/long?_step=10500", repo=repo)
    fork.finish()
    after = set(git("rev-list", "--objects", "--all", cwd=repo).split())
    new = after - before
    store = RunStore.open(repo)
    raw = {
        sha: store.repo.object_store[sha.encode()].as_raw_string()
        for sha in new
        if len(sha) == 40
    }
    sizes = {sha: len(data) for sha, data in raw.items()}
    chunks = [sha for sha, data in raw.items() if b"gitruns.chunk" in data[:16]]
    assert len(chunks) == 1, sizes  # one cut window
    # ... stored as chunks are, at zlib level 0 (their numbers are zstd frames).
    assert _stored_blocks(
        (repo / "objects" / chunks[0][:2] / chunks[0][2:]).read_bytes()
    )
    assert len(new) <= 14  # blobs of run.json & co, a few trees, two commits
    assert sum(sizes.values()) < 40_000


@pytest.mark.parametrize("background", [False, True])
def test_a_relative_repo_path_survives_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, background: bool
) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    run = gitruns.init(
        project="p", id="cd", repo="rel.git", window=10, background=background
    )
    run.log({"x": 0.0})
    # A script that moves to its output folder.
    monkeypatch.chdir(tmp_path / "elsewhere")
    for step in range(1, 30):
        run.log({"x": float(step)})
    run.finish()
    assert list((tmp_path / "elsewhere").iterdir()) == []
    steps = [
        r["_step"] for r in gitruns.Api(tmp_path / "rel.git").run("p/cd").scan_history()
    ]
    assert steps == list(range(30))


def test_resume_modes(repo: Path) -> None:
    run = gitruns.init(project="p", id="r1", repo=repo)
    run.log({"a": 1})
    run.finish()
    with pytest.raises(RunExistsError, match="already exists.*resume='allow'"):
        gitruns.init(project="p", id="r1", repo=repo)
    with pytest.raises(RunExistsError):
        gitruns.init(project="p", id="r1", resume="never", repo=repo)
    with pytest.raises(RunNotFoundError, match="no run 'p/nope'"):
        gitruns.init(project="p", id="nope", resume="must", repo=repo)
    again = gitruns.init(project="p", id="r1", resume="must", repo=repo)
    assert again.step == 1
    again.log({"a": 2})
    again.finish()
    fresh = gitruns.init(project="p", id="r2", resume="allow", repo=repo)
    fresh.finish()
    rows = list(gitruns.Api(repo).run("p/r1").scan_history())
    assert [(r["_step"], r["a"]) for r in rows] == [(0, 1), (1, 2)]


def test_rewind_in_place_keeps_removed_steps_in_git(repo: Path) -> None:
    run = gitruns.init(project="p", id="r", repo=repo, window=50)
    for i in range(120):
        run.log({"m": i})
    run.finish()
    store = RunStore.open(repo)
    old_tip = store.tip(run.ref)
    again = gitruns.init(project="p", resume_from="p/r?_step=70", repo=repo)
    assert again.step == 71
    again.log({"m": -71})
    again.finish()
    view = gitruns.Api(repo).run("p/r")
    rows = list(view.scan_history())
    assert [r["_step"] for r in rows] == list(range(72))
    assert rows[-1]["m"] == -71
    assert view.info["rewinds"][0]["step"] == 70
    # the branch moved forward: the old tip is an ancestor of the new one
    assert (
        git("merge-base", "--is-ancestor", old_tip.decode(), view.tip, cwd=repo) == ""
    )
    assert "Gitruns-Rewind: 70" in git(
        "log", "-3", "--format=%B", view.branch, cwd=repo
    )


def test_log_step_semantics(repo: Path) -> None:
    run = gitruns.init(project="p", id="s", repo=repo)
    run.log({"a": 1}, step=5)
    run.log({"b": 2}, step=5)
    run.log({"a": 3}, step=5)  # a key logged twice keeps the later value
    run.log({"c": 4}, commit=False)
    run.log({"d": 5})
    assert run.step == 6
    with pytest.raises(
        StepOrderError, match="step 5 is below the current step 6.*rewind"
    ):
        run.log({"a": 0}, step=5)
    run.log({"e": 6})
    run.finish()
    rows = list(gitruns.Api(repo).run("p/s").scan_history())
    assert [{k: v for k, v in r.items() if k != "_timestamp"} for r in rows] == [
        {"_step": 5, "a": 3, "b": 2, "c": 4, "d": 5},
        {"_step": 6, "e": 6},
    ]


def test_exact_values_round_trip(repo: Path) -> None:
    values = {
        "nan": math.nan,
        "inf": math.inf,
        "ninf": -math.inf,
        "nzero": -0.0,
        "tiny": 5e-324,
        "huge": 1.7976931348623157e308,
        "i64": 2**63 - 1,
        "i64min": -(2**63),
        "flag": True,
        "text": "héllo ✓",
        "nothing": None,
    }
    with gitruns.init(project="p", id="v", repo=repo) as run:
        run.log(values)
    row = next(gitruns.Api(repo).run("p/v").scan_history())
    for key, value in values.items():
        got = row[key]
        assert type(got) is type(value), key
        if isinstance(value, float):
            assert struct.pack("<d", got) == struct.pack("<d", value), key
        else:
            assert got == value, key


def test_sparse_metrics_keep_gaps_and_keys_filter(repo: Path) -> None:
    with gitruns.init(project="p", id="sp", repo=repo, window=7) as run:
        for i in range(30):
            row = {"loss": float(i)}
            if i % 10 == 0:
                row["eval"] = i / 10
            run.log(row)
    view = gitruns.Api(repo).run("p/sp")
    evals = list(view.scan_history(keys=["eval"]))
    assert [r["_step"] for r in evals] == [0, 10, 20]
    assert all(set(r) == {"_step", "eval"} for r in evals)
    window = list(view.scan_history(min_step=8, max_step=12))
    assert [r["_step"] for r in window] == [8, 9, 10, 11]
    cols = view.columns(["eval", "loss"])
    assert cols["eval"][0].tolist() == [0, 10, 20]
    assert cols["loss"][1].tolist() == [float(i) for i in range(30)]


NAN_PAYLOAD = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000C0FFEE))[0]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> RunView:
    """A run of 61 steps in windows of 7, flushed in parts, of every shape."""
    repo = tmp_path_factory.mktemp("mixed") / "runs.git"
    specials = [-0.0, math.inf, NAN_PAYLOAD, 5e-324]
    with gitruns.init(project="p", id="mixed", repo=repo, window=7) as run:
        for i in range(61):
            row: dict[str, object] = {"dense": specials[i % 4] if i % 9 == 0 else i / 3}
            if i % 3 == 0:
                row["sparse"] = float(i)
            if i >= 30:
                row["late"] = i
            if i <= 10 or 40 <= i <= 50:
                row["gappy"] = i * 0.5
            row["kind"] = float(i) if i < 20 else (i if i < 40 else f"s{i}")
            row["flag"] = i % 2 == 0
            run.log(row)
            if i % 5 == 0:
                run._writer.flush()  # a segment that ends mid-window
    return gitruns.Api(repo).run("p/mixed")


def _same_values(got: object, want: list[object]) -> bool:
    items = got.tolist() if isinstance(got, np.ndarray) else list(got)  # type: ignore[attr-defined]
    return len(items) == len(want) and all(
        type(a) is type(b) and (struct.pack("<d", a) == struct.pack("<d", b))
        if isinstance(a, float)
        else type(a) is type(b) and a == b
        for a, b in zip(items, want)
    )


SLICES = [(None, None), (5, 50), (8, 9), (0, 7), (13, 14), (20, 41), (59, None)]
SLICES += [(100, 200)]


def _columns_as_rows(
    view: RunView, keys: list[str] | None, lo: int | None, hi: int | None
) -> dict[str, tuple[np.ndarray, object]]:
    # The columnar read joins each metric across segments as it reads them;
    # it must give the rows' values exactly: bit for bit, of their types,
    # with their gaps, and a list where a metric changes type.
    rows = list(view.scan_history(min_step=lo, max_step=hi))
    cols = view.columns(keys, min_step=lo, max_step=hi)
    names = {k for row in rows for k in row}
    if keys is not None:
        names &= {*keys, "_step"} if "_step" in keys else set(keys)
    assert set(cols) == names
    for name in names:
        at = [row["_step"] for row in rows if name in row]
        want = [row[name] for row in rows if name in row]
        steps, values = cols[name]
        assert steps.tolist() == at, name
        assert _same_values(values, want), name
    return cols


@pytest.mark.parametrize(("lo", "hi"), SLICES)
@pytest.mark.parametrize("keys", [None, ["dense"], ["gappy", "kind", "_timestamp"]])
def test_columns_hold_what_scan_history_yields(
    mixed_run: RunView, lo: int | None, hi: int | None, keys: list[str] | None
) -> None:
    cols = _columns_as_rows(mixed_run, keys, lo, hi)
    if "dense" in cols and keys is None:
        assert isinstance(cols["dense"][1], np.ndarray)
        assert cols["dense"][1].dtype == np.float64
        assert np.shares_memory(cols["dense"][0], cols["_step"][0])
        assert isinstance(cols["flag"][1], np.ndarray) and cols["flag"][1].dtype == bool
    if "kind" in cols and lo is None:
        assert isinstance(cols["kind"][1], list)  # float, then int, then str


@pytest.fixture(scope="module")
def block_run(tmp_path_factory: pytest.TempPathFactory) -> RunView:
    """A run of 90 steps in windows of 7, flushed in parts, of many dense
    float and int metrics, some of which later leave off being dense."""
    repo = tmp_path_factory.mktemp("block") / "runs.git"
    specials = [-0.0, math.inf, NAN_PAYLOAD, 5e-324, -math.inf, 0.0]
    with gitruns.init(project="p", id="block", repo=repo, window=7) as run:
        for i in range(90):
            row: dict[str, object] = {
                "a": specials[i % 6] if i % 4 == 0 else i / 3,
                "b": 0.25 * i,  # a schedule: stored delta-coded
                "c": i // 10,  # an epoch counter: stored delta-coded
                "d": (i * 2**40 - 2**62) ^ (i * 7919),
                "flag": i % 2 == 0,
            }
            if i < 40 or i % 2:
                row["e"] = math.sin(i)  # sparse from step 40
            row["f"] = i if 60 <= i < 70 else float(i)  # ints for a while
            if i >= 20:
                row["g"] = -float(i)  # not in the first segment
            if not 30 <= i < 37:
                row["h"] = i * 3  # a window without it
            run.log(row)
            if i % 5 == 0:
                run._writer.flush()  # a segment that ends mid-window
    return gitruns.Api(repo).run("p/block")


@pytest.mark.parametrize(("lo", "hi"), SLICES)
@pytest.mark.parametrize(
    "keys",
    [None, ["a", "b", "c", "d"], ["a", "b", "_timestamp"], ["c", "h"], ["f", "a"]],
)
def test_columns_of_metrics_read_at_once_hold_what_scan_history_yields(
    block_run: RunView, lo: int | None, hi: int | None, keys: list[str] | None
) -> None:
    # Metrics logged at every step of the first segment are kept as rows of
    # one array per dtype, and filled a segment at a time while they all
    # stay so; the rest, and every segment after one breaks step, go a
    # metric at a time. Either way the values are those of the rows.
    cols = _columns_as_rows(block_run, keys, lo, hi)
    if "_timestamp" in cols:
        # Against each segment's times as the chunk itself unpacks them.
        times = [c.times[c.steps == s] for c in block_run.chunks() for s in c.steps]
        steps, values = cols["_timestamp"]
        want = np.concatenate(times)[np.isin(np.arange(90), steps)]
        assert values.tobytes() == want.tobytes()
    if keys == ["a", "b", "c", "d"] and lo is None and hi is None:
        floats, ints = cols["a"][1], cols["c"][1]
        assert isinstance(floats, np.ndarray) and isinstance(ints, np.ndarray)
        assert floats.base is not None and floats.base is cols["b"][1].base
        assert ints.base is not None and ints.base is cols["d"][1].base
        assert floats.dtype == np.float64 and ints.dtype == np.int64


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> RunView:
    """25 full windows of 10 steps: segments a block places 8 at a time."""
    repo = tmp_path_factory.mktemp("long") / "runs.git"
    specials = [NAN_PAYLOAD, -0.0, math.inf, 5e-324]
    with gitruns.init(project="p", id="long", repo=repo, window=10) as run:
        for i in range(250):
            row: dict[str, object] = {
                "a": specials[i % 4] if i % 7 == 0 else math.cos(i),
                "lr": 1e-3 * 0.5 ** (i // 40),  # a schedule: delta-coded
                "epoch": i // 25,
                "ints": i * 7919 - 2**40,
            }
            if not 163 <= i < 170:
                row["b"] = float(i)  # missing inside a segment: out of step
            run.log(row)
    return gitruns.Api(repo).run("p/long")


@pytest.mark.parametrize(
    ("lo", "hi"), [(None, None), (35, 201), (80, 160), (170, None), (0, 10)]
)
@pytest.mark.parametrize("keys", [None, ["a", "lr", "epoch", "ints"]])
def test_columns_placed_segments_at_a_time_hold_what_scan_history_yields(
    long_run: RunView, lo: int | None, hi: int | None, keys: list[str] | None
) -> None:
    cols = _columns_as_rows(long_run, keys, lo, hi)
    assert isinstance(cols["lr"][1], np.ndarray) and cols["lr"][1].dtype == float
    assert isinstance(cols["epoch"][1], np.ndarray) and cols["epoch"][1].dtype == int


def test_columns_size_each_metric_by_what_it_holds(repo: Path) -> None:
    # Arrays start with room for as many values per segment as the first
    # segment holds: a wide run of rare metrics takes room for its values,
    # not for every step of the run times every metric (200 metrics x 3,000
    # steps x 8 bytes, twice, would be 9.6 MB).
    with gitruns.init(project="p", id="wide", repo=repo, window=100) as run:
        for i in range(3000):
            row = {"dense": float(i), f"r{i % 100}": float(i), f"r{100 + i % 100}": i}
            run.log(row)
    view = gitruns.Api(repo).run("p/wide")
    view.snapshot  # noqa: B018 - read apart from the columns

    tracemalloc.start()
    try:
        cols = view.columns()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cols["r7"][0].tolist() == list(range(7, 3000, 100))
    assert cols["r107"][1].tolist() == list(range(7, 3000, 100))
    assert len(cols) == 2 + 1 + 200
    assert peak < 3 * 2**20, f"{peak} bytes traced"


def test_bad_input_errors(repo: Path) -> None:
    run = gitruns.init(project="p", id="bad", repo=repo)
    with pytest.raises(InvalidNameError, match="metric key ''.*must not be empty"):
        run.log({"": 1.0})
    with pytest.raises(InvalidNameError, match="must be a string"):
        run.log({3: 1.0})  # type: ignore[dict-item]
    with pytest.raises(
        InvalidValueError, match="list is not a number, bool, str or None"
    ):
        run.log({"x": [1, 2]})
    with pytest.raises(InvalidValueError, match="ints must fit in int64"):
        run.log({"x": 2**64})
    run.log({"ok": 1.0})
    run.finish()
    assert [r["ok"] for r in gitruns.Api(repo).run("p/bad").scan_history()] == [1.0]


def test_a_run_refuses_more_distinct_metrics_than_a_chunk_holds(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gitruns.writer

    monkeypatch.setattr(gitruns.writer, "MAX_METRICS", 4)
    run = gitruns.init(project="p", id="wide", repo=repo, window=10)
    run.log({"a": 1.0, "b": 2.0})
    run.log({"c": 3.0}, commit=False)
    with pytest.raises(
        InvalidValueError, match="may hold 4 distinct metric names and p/wide has 3"
    ):
        run.log({"d": 4.0, "e": 5.0})
    run.log({"a": 6.0, "d": 7.0})  # the fourth name still fits
    run.finish()
    again = gitruns.init(project="p", id="wide", repo=repo, resume="must")
    with pytest.raises(InvalidValueError, match="has 4"):  # names read from history
        again.log({"f": 1.0})
    again.log({"b": 1.0})
    again.finish()
    rows = [
        {k: v for k, v in r.items() if not k.startswith("_")}
        for r in gitruns.Api(repo).run("p/wide").scan_history()
    ]
    assert rows == [{"a": 1.0, "b": 2.0}, {"c": 3.0, "a": 6.0, "d": 7.0}, {"b": 1.0}]
    # A rewind drops the names of the steps it removes.
    rewound = gitruns.init(
        project="p", id="wide", repo=repo, resume_from="p/wide?_step=0"
    )
    rewound.log({"f": 1.0, "g": 2.0})
    rewound.finish()
    kept = gitruns.Api(repo).run("p/wide").scan_history()
    names = [sorted(k for k in r if k[0] != "_") for r in kept]
    assert names == [["a", "b"], ["f", "g"]]
    # Names a crashed writer journaled count once its journal is recovered.
    crashed = gitruns.init(
        project="p", id="wide", repo=repo, resume_from="p/wide?_step=0"
    )
    crashed.log({"h": 1.0})  # a, b and h
    crashed._writer.abandon()
    recovered = gitruns.init(project="p", id="wide", repo=repo, resume="must")
    with pytest.raises(InvalidValueError, match="has 3"):
        recovered.log({"i": 1.0, "j": 2.0})
    recovered.finish()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("p/src?_step=300", "committed steps up to 299"),
        ("p/src?_step=-1", "must not be negative"),
        ("p/src?_step=1.5", "must be an integer"),
        ("p/src?_step=abc", "must be an integer"),
        ("p/src?_step=\u0663", "must be an integer"),  # an Arabic-Indic 3
        ("p/src", "write it as '<run>\\?_step=N'"),
        ("p/src?epoch=2", "not a step metric"),
    ],
)
def test_fork_point_errors(repo: Path, spec: str, message: str) -> None:
    src = gitruns.init(project="p", id="src", repo=repo)
    for i in range(300):
        src.log({"m": i})
    src.finish()
    with pytest.raises(ForkPointError, match=message):
        gitruns.init(project="p", fork_from=spec, repo=repo)
    assert len(gitruns.Api(repo).runs()) == 1  # nothing half-created


def test_unknown_and_ambiguous_runs(repo: Path) -> None:
    for project in ("a", "b"):
        gitruns.init(project=project, id="same", repo=repo).finish()
    with pytest.raises(AmbiguousRunError, match="a/same, b/same.*<project>/<run_id>"):
        gitruns.init(project="c", fork_from="same?_step=0", repo=repo)
    with pytest.raises(RunNotFoundError, match="no run 'ghost'"):
        gitruns.Api(repo).run("ghost")
    assert gitruns.Api(repo).run("entity/a/same").project == "a"


@pytest.mark.parametrize(
    "name",
    ["..", "a/b", "a\\b", "x.lock", "-x", ".x", "a b", "é", "a" * 65, "", "a..b"],
)
def test_unsafe_names_are_refused(repo: Path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        gitruns.init(project=name, repo=repo)
    with pytest.raises(InvalidNameError):
        gitruns.init(project="ok", id=name, repo=repo)
    assert not (repo / "refs" / "heads" / "runs").exists() or not any(
        (repo / "refs" / "heads" / "runs").rglob("*")
    )


def test_fork_by_monotonic_step_metric(repo: Path) -> None:
    src = gitruns.init(project="p", id="src", repo=repo)
    src.define_metric("*", step_metric="epoch")
    for i in range(40):
        src.log({"loss": 1 / (i + 1), "epoch": i // 10})
    src.finish()
    fork = gitruns.init(project="p", id="f", fork_from="p/src?epoch=2", repo=repo)
    assert fork.step == 30  # the last step of epoch 2 is 29
    fork.finish()

    bad = gitruns.init(project="p", id="bad", repo=repo)
    bad.define_metric("*", step_metric="epoch")
    for epoch in [0, 1, 2, 0, 1]:
        bad.log({"epoch": epoch})
    bad.finish()
    with pytest.raises(
        ForkPointError, match="not monotonic: 2.0 at step 2 then 0 at step 3"
    ):
        gitruns.init(project="p", fork_from="p/bad?epoch=1", repo=repo)
    with pytest.raises(ForkPointError, match=r"runs up to 3\); pick a value it takes"):
        gitruns.init(project="p", fork_from="p/src?epoch=7", repo=repo)

    # A NaN between an epoch and a smaller one must not hide the drop.
    nan = gitruns.init(project="p", id="nan", repo=repo)
    nan.define_metric("*", step_metric="epoch")
    for epoch in [0, 1, 2, math.nan, 1, 5]:
        nan.log({"epoch": epoch})
    nan.finish()
    with pytest.raises(ForkPointError, match="epoch is NaN at step 3"):
        gitruns.init(project="p", fork_from="p/nan?epoch=1", repo=repo)


def test_define_metric_summary(repo: Path) -> None:
    with gitruns.init(project="p", id="sm", repo=repo) as run:
        run.define_metric("acc", summary="max")
        for acc in (0.1, 0.9, 0.5):
            run.log({"acc": acc, "loss": acc})
        run.summary["best_note"] = "hand-set"
        assert run.summary["acc"] == {"max": 0.9}
    summary = gitruns.Api(repo).run("p/sm").summary
    assert summary == {"acc": {"max": 0.9}, "loss": 0.5, "best_note": "hand-set"}


def test_run_tree_is_valid_git(
    seed_runs: tuple[RunView, RunView], repo: Path, tmp_path: Path
) -> None:
    src_path, fork_path = (view.path for view in seed_runs)
    git("fsck", "--strict", "--no-dangling", cwd=repo)
    branch = f"runs/{fork_path}"
    files = git("ls-tree", "-r", "--name-only", branch, cwd=repo).split()
    assert {
        "run.json",
        "config.json",
        "summary.json",
        "README.md",
        ".gitattributes",
    } <= set(files)
    assert any(f.startswith("history/") and f.endswith(".msgpack") for f in files)
    log = git("log", "--format=%s%n%b", branch, cwd=repo)
    assert f"Gitruns-Fork-Of: {src_path}?_step=200" in log
    assert f"{fork_path}: steps 201..400" in log
    clone = tmp_path / "clone"
    git("clone", "-q", "--mirror", str(repo), str(clone))
    rows = list(gitruns.Api(clone).run(fork_path).scan_history())
    assert len(rows) == 401
    git("gc", "-q", cwd=repo)
    assert len(list(gitruns.Api(repo).run(src_path).scan_history())) == 300


def test_finished_run_leaves_few_loose_objects(repo: Path) -> None:
    from gitruns.store import PACK_THRESHOLD

    # Committing in log() makes one commit per window (no group commits), so
    # the number of objects written is known.
    with gitruns.init(
        project="p", id="small", repo=repo, window=100, background=False
    ) as run:
        for i in range(1000):
            run.log({"m": i})
    small = dict(
        line.split(": ") for line in git("count-objects", "-v", cwd=repo).splitlines()
    )
    assert 10 * 4 < int(small["count"]) <= PACK_THRESHOLD  # a few, left loose

    with gitruns.init(
        project="p", id="many", repo=repo, window=2, background=False
    ) as run:
        for i in range(1000):
            run.log({"m": i})
    counts = dict(
        line.split(": ") for line in git("count-objects", "-v", cwd=repo).splitlines()
    )
    assert int(counts["count"]) == 0  # past the threshold: all packed
    assert int(counts["in-pack"]) > 500 * 3
    assert len(list(gitruns.Api(repo).run("p/many").scan_history())) == 1000


def _stored_blocks(stream: bytes) -> bool:
    # Whether a zlib stream's first deflate block is stored (BTYPE 00): what
    # level 0 writes, where level 1 already writes Huffman-coded blocks.
    return (stream[2] >> 1) & 3 == 0


def test_chunk_blobs_are_stored_at_zlib_level_0_loose_and_packed(
    repo: Path,
) -> None:
    # A chunk's numbers are zstd frames already: Git's zlib is kept for the
    # other objects, loose or packed, and the repository stays valid to git.
    rng = np.random.default_rng(0)
    store = RunStore.open(repo)
    chunks, texts = [], []
    for k in range(3):
        n = 1000
        values = (np.exp(-np.arange(n) / 300) + rng.normal(0, 0.01, n)).tolist()
        chunk = build_chunk(
            n, k * n, range(k * n, (k + 1) * n), [1.7e9 + i for i in range(n)],
            {"loss": (range(n), values)},
        )  # fmt: skip
        data = encode_chunk(chunk)
        chunks.append((store.chunk_blob(data), data))
        text = b'{"lr": 0.001, "optimizer": "adam"}\n' * 50 + b"%d" % k
        texts.append((store.blob(text), text))

    loose = repo / "objects"
    for sha, data in chunks:
        stream = (loose / sha[:2].decode() / sha[2:].decode()).read_bytes()
        assert zlib.decompress(stream) == b"blob %d\0" % len(data) + data
        assert _stored_blocks(stream) and len(stream) > len(data)
    for sha, text in texts:
        stream = (loose / sha[:2].decode() / sha[2:].decode()).read_bytes()
        assert not _stored_blocks(stream) and len(stream) < len(text) / 5

    assert store.pack_loose_objects() == 6
    assert store.count_loose_objects() == 0
    sizes = {
        line.split()[0]: (int(line.split()[2]), int(line.split()[3]))
        for pack in (loose / "pack").glob("*.idx")
        for line in git("verify-pack", "-v", str(pack), cwd=repo).splitlines()
        if line.split()[1:2] == ["blob"]
    }
    for sha, data in chunks:
        size, in_pack = sizes[sha.decode()]
        assert size == len(data) and in_pack > size  # stored: a little larger
    for sha, text in texts:
        size, in_pack = sizes[sha.decode()]
        assert size == len(text) and in_pack < size / 5  # deflated
    git("fsck", "--strict", cwd=repo)
    reader = RunStore.open(repo)
    for sha, data in chunks + texts:
        assert reader.read_blob(sha, "a blob", limit=len(data)) == data


def test_a_commit_of_many_windows_is_one_pack_git_reads(repo: Path) -> None:
    # A short run is committed at finish() in one commit: its objects go in
    # one pack and its index, not a loose file each.
    run = gitruns.init(project="p", id="many", repo=repo)
    for i in range(10_000):
        run.log({"a": float(i), "b": i})
    run.finish()

    store = RunStore.open(repo)
    snapshot = store.read_snapshot(store.tip(run.ref))
    assert len(snapshot.history.blobs) == 10
    packs = list((repo / "objects" / "pack").glob("pack-*.idx"))
    assert len(packs) == 1
    packed = git("verify-pack", "-v", str(packs[0]), cwd=repo)
    for blob in snapshot.history.blobs.values():
        assert blob.decode() in packed
    assert not any(
        (repo / "objects" / b[:2].decode() / b[2:].decode()).exists()
        for b in snapshot.history.blobs.values()
    )
    git("fsck", "--strict", cwd=repo)
    steps = [r["_step"] for r in gitruns.Api(repo=repo).run("p/many").scan_history()]
    assert steps == list(range(10_000))


def test_held_objects_are_written_before_a_ref_moves_and_dropped_on_error(
    repo: Path,
) -> None:
    store = RunStore.open(repo)
    with pytest.raises(RuntimeError), store.batched_objects():
        sha = store.blob(b"never named by a ref")
        raise RuntimeError("the commit failed")
    assert not store.objects.contains(sha)

    run = gitruns.init(project="p", id="held", repo=repo)
    run.finish()
    tip = store.tip(run.ref)
    with store.batched_objects():
        blob = store.blob(b"named by the next commit")
        assert not store.objects.contains(blob)
        snapshot = store.read_snapshot(tip)
        snapshot.extra[b"note.txt"] = (0o100644, blob)
        commit = store.write_commit(snapshot, [tip], "a note\n", "readme")
        assert store.update_ref(run.ref, tip, commit, None)
        # The ref moved: everything it names is on disk already.
        assert store.objects.contains(blob) and store.objects.contains(commit)
    git("fsck", "--strict", cwd=repo)


def test_storage_grows_linearly_with_flushes(repo: Path) -> None:
    # A flush every step (committing in log(), so every step is its own
    # segment) must not rewrite the window's earlier data.
    with gitruns.init(
        project="p", id="fl", repo=repo, flush_interval=0.0, background=False
    ) as run:
        for i in range(200):
            run.log({"m": float(i)})
    store = RunStore.open(repo)
    snapshot = store.read_snapshot(store.tip(run.ref))
    sizes = [len(store.read_blob(b, "chunk")) for b in snapshot.history.blobs.values()]
    assert len(sizes) >= 100  # many partial segments in one window
    assert max(sizes) < 3 * min(sizes) + 200  # none holds earlier segments' data


def test_code_commit_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = tmp_path / "code"
    code.mkdir()
    git("init", "-q", "-b", "main", cwd=code)
    (code / "train.py").write_text("print('v1')\n")
    git("add", "train.py", cwd=code)
    git("commit", "-qm", "v1", cwd=code)
    head = git("rev-parse", "HEAD", cwd=code).strip()
    (code / "train.py").write_text("print('v2')\n")
    monkeypatch.chdir(code)
    with gitruns.init(project="p", id="c") as run:  # runs live in the code repo
        run.log({"m": 1})
    view = gitruns.Api().run("p/c")
    assert view.info["code"] == {"commit": head, "branch": "main", "dirty": True}
    patch = git("show", "runs/p/c:code.patch", cwd=code)
    assert "+print('v2')" in patch
    assert git("branch", "--show-current", cwd=code).strip() == "main"
    assert git("status", "--porcelain", cwd=code).strip() == "M train.py"


def test_rewind_to_the_last_step_writes_nothing(repo: Path) -> None:
    with gitruns.init(project="p", id="r", repo=repo) as run:
        for i in range(5):
            run.log({"m": i})
    store = RunStore.open(repo)
    tip = store.tip(run.ref)
    again = gitruns.init(project="p", resume_from="p/r?_step=4", repo=repo)
    assert again.step == 5
    again.finish()
    assert store.read_commit(store.tip(run.ref)).parents == [tip]  # only finish
    assert (
        "rewinds" not in gitruns.Api(repo).run("p/r").info
        or not gitruns.Api(repo).run("p/r").info["rewinds"]
    )


def test_fork_into_an_existing_id_writes_nothing(repo: Path) -> None:
    with gitruns.init(project="p", id="src", repo=repo) as run:
        run.log({"m": 1})
    gitruns.init(project="p", id="taken", repo=repo).finish()
    before = set(git("rev-list", "--all", "--objects", cwd=repo).split())
    loose_before = git("count-objects", cwd=repo)
    with pytest.raises(RunExistsError):
        gitruns.init(project="p", id="taken", fork_from="p/src?_step=0", repo=repo)
    assert set(git("rev-list", "--all", "--objects", cwd=repo).split()) == before
    assert git("count-objects", cwd=repo) == loose_before


def test_history_frame_matches_scan_history(repo: Path) -> None:
    with gitruns.init(project="p", id="h", repo=repo, window=100) as run:
        for i in range(1000):
            row: dict[str, object] = {"loss": 1 / (i + 1), "i": i}
            if i % 50 == 0:
                row["eval"] = i / 1000
                row["tag"] = "t"
            run.log(row)
    view = gitruns.Api(repo).run("p/h")
    frame = view.history()
    rows = list(view.scan_history())
    assert frame.shape == (1000, 6)
    assert frame["loss"].tolist() == [r["loss"] for r in rows]
    assert math.isnan(frame["eval"][1]) and frame["eval"][50] == 0.05
    assert frame["tag"].isna()[1] and frame["tag"][50] == "t"
    evals = view.history(keys=["eval", "tag"], samples=5)
    assert evals["_step"].tolist() == [0, 250, 500, 700, 950]
    assert view.history(min_step=95, max_step=105)["_step"].tolist() == list(
        range(95, 105)
    )
    assert view.history(keys=["nosuch"]).empty
    assert view.columns(["eval"], min_step=120, max_step=260)["eval"][0].tolist() == [
        150,
        200,
        250,
    ]


def _steps_run(repo: Path, run_id: str, steps: range, **init: object) -> gitruns.Run:
    run = gitruns.init(project="p", id=run_id, repo=repo, window=10, **init)
    for i in steps:
        run.log({"m": float(i)})
    run.finish()
    return run


def test_divergence_counts_rewinds_of_either_side(repo: Path) -> None:
    from gitruns.lineage import divergence

    store = lambda: RunStore.open(repo)  # noqa: E731 - reopened after each write
    src = _steps_run(repo, "src", range(200))
    kid = _steps_run(repo, "kid", range(101, 150), fork_from="p/src?_step=100")
    assert divergence(store(), src.ref, kid.ref) == ("p/src", 100)

    # The fork rewound below its fork point holds the source's steps 0..50 only.
    gitruns.init(
        project="p", id="kid", repo=repo, resume_from="p/kid?_step=50"
    ).finish()
    assert divergence(store(), src.ref, kid.ref) == ("p/src", 50)
    assert divergence(store(), kid.ref, src.ref) == ("p/src", 50)

    # A source rewound after a fork was made no longer holds what it shared.
    other = _steps_run(repo, "other", range(121, 130), fork_from="p/src?_step=120")
    gitruns.init(
        project="p", id="src", repo=repo, resume_from="p/src?_step=30"
    ).finish()
    assert divergence(store(), src.ref, other.ref) == ("p/src", 30)
    # Two forks of one source share what they both hold of it...
    assert divergence(store(), kid.ref, other.ref) == ("p/src", 50)
    # ...and a fork of the rewound source shares nothing the rewind removed.
    late = _steps_run(repo, "late", range(21, 40), fork_from="p/src?_step=20")
    assert divergence(store(), other.ref, late.ref) == ("p/src", 20)
    assert divergence(store(), late.ref, kid.ref) == ("p/src", 20)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"flush_interval": -1}, "flush_interval=-1: use a number of seconds, 0"),
        ({"flush_interval": "soon"}, "flush_interval='soon': use a number"),
        ({"background": "maybe"}, "background='maybe': use True or False"),
        ({"float32": 1}, "float32=1: use True or False"),
        ({"window": True}, "window=True: use a whole number"),
        ({"window": 0}, "window=0: use a whole number of steps in 1.."),
        ({"fsync": "sometimes"}, "fsync='sometimes': use one of never"),
    ],
)
def test_bad_writer_settings_are_refused(
    repo: Path, settings: dict[str, object], message: str
) -> None:
    from gitruns.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=message):
        gitruns.init(project="p", id="s", repo=repo, **settings)
    assert not repo.exists() or RunStore.open(repo).list_runs() == []


@pytest.mark.parametrize(
    ("value", "message"), [("maybe", "set it to 1 or 0"), ("x", "a whole number")]
)
def test_bad_writer_settings_in_the_environment_are_refused(
    repo: Path, monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    from gitruns.errors import InvalidArgumentError

    name = "GITRUNS_BACKGROUND" if value == "maybe" else "GITRUNS_WINDOW"
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidArgumentError, match=f"{name}.*{message}"):
        gitruns.init(project="p", id="s", repo=repo)


def test_a_window_that_differs_from_the_runs_own_is_refused(repo: Path) -> None:
    from gitruns.errors import InvalidArgumentError

    src = _steps_run(repo, "src", range(30))  # window 10
    tip = RunStore.open(repo).tip(src.ref)
    with pytest.raises(InvalidArgumentError, match="has window 10, fixed for its"):
        gitruns.init(project="p", id="src", repo=repo, resume="allow", window=20)
    with pytest.raises(InvalidArgumentError, match="the fork source p/src has window"):
        gitruns.init(project="p", repo=repo, fork_from="p/src?_step=5", window=20)
    with pytest.raises(InvalidArgumentError, match="the rewound run p/src"):
        gitruns.init(project="p", repo=repo, resume_from="p/src?_step=5", window=20)
    # Nothing was written, and the same window is fine.
    assert RunStore.open(repo).tip(src.ref) == tip
    assert [r.path for r in gitruns.Api(repo).runs()] == ["p/src"]
    gitruns.init(project="p", id="src", repo=repo, resume="allow", window=10).finish()


def test_a_fork_into_a_taken_id_says_to_leave_the_id_out(repo: Path) -> None:
    _steps_run(repo, "src", range(30))
    with pytest.raises(RunExistsError, match="a fork is a new run: leave id= out"):
        gitruns.init(
            project="p", id="src", repo=repo, resume="allow", fork_from="p/src?_step=5"
        )


def test_the_writer_holds_no_rows_whatever_the_length_of_the_run(repo: Path) -> None:
    import tracemalloc

    # Rows live in the journal (a file) until committed: the writer's memory
    # does not grow with what it logged, committed or waiting.
    row = {f"m{i}": float(i) for i in range(100)}

    def peak(steps: int, background: bool) -> int:
        run = gitruns.init(
            project="p", id=f"r{steps}{background}", repo=repo, background=background
        )
        run.log(row)
        tracemalloc.start()
        for _ in range(steps):
            run.log(row)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        run.finish()
        assert gitruns.Api(repo).run(f"p/r{steps}{background}").last_step == steps
        return top

    for background in (False, True):
        short, long = peak(2_000, background), peak(20_000, background)
        # 20,000 rows are 16 MB of float64: none of it stays in memory.
        assert long < 1.5 * short + (1 << 20), (background, short, long)


@pytest.mark.parametrize(
    ("config", "author"),
    [
        ({"user.email": "ada@example.org"}, "gitruns <ada@example.org>"),
        ({"user.name": "Ada"}, "Ada <gitruns@"),
        ({"user.name": "Ada", "user.email": "ada@example.org"}, "Ada <ada@example"),
    ],
)
def test_commits_take_each_identity_key_git_config_sets(
    repo: Path, config: dict[str, str], author: str
) -> None:
    git("init", "-q", "--bare", str(repo))
    for key, value in config.items():
        git("config", key, value, cwd=repo)
    run = gitruns.init(project="p", id="who", repo=repo)
    run.log({"x": 1})
    run.finish()
    assert git("log", "-1", "--format=%an <%ae>", "runs/p/who", cwd=repo).startswith(
        author
    )


def test_resume_without_an_id_warns_that_it_starts_a_new_run(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="gitruns"):
        run = gitruns.init(project="p", resume=True, repo=repo)
    run.finish()
    assert [r.getMessage() for r in caplog.records] == [
        f"init(resume=True) without id= starts a new run ({run.path}): gitruns "
        "does not pick the last run itself; pass id= to resume one"
    ]


def test_resuming_with_a_config_that_changes_a_value_says_so(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = gitruns.init(project="p", id="cfg", repo=repo, config={"lr": 0.03, "b": 1})
    first.log({"loss": 1.0})
    first.finish()
    with caplog.at_level("WARNING", logger="gitruns"):
        again = gitruns.init(
            project="p", id="cfg", resume="must", repo=repo, config={"lr": 0.01, "b": 1}
        )
        again.finish()
    warned = [
        r.getMessage() for r in caplog.records if "resumed with" in r.getMessage()
    ]
    assert len(warned) == 1 and "lr from 0.03 to 0.01" in warned[0]
    assert "b from" not in warned[0]
    assert gitruns.Api(repo).run("p/cfg").config == {"lr": 0.01, "b": 1}

    caplog.clear()
    with caplog.at_level("WARNING", logger="gitruns"):
        same = gitruns.init(
            project="p", id="cfg", resume="must", repo=repo, config={"lr": 0.01}
        )
        same.finish()
    assert not [r for r in caplog.records if "resumed with" in r.getMessage()]


def test_a_config_value_changed_to_an_equal_one_of_another_type_is_kept(
    repo: Path,
) -> None:
    # 1 == 1.0 == True and 0.0 == -0.0: the change is still a change.
    run = gitruns.init(
        project="p", id="types", repo=repo, config={"a": 1, "b": 0, "c": 1.0, "d": 0.0}
    )
    run.config.update(
        {"a": 1.0, "b": False, "c": True, "d": -0.0}, allow_val_change=True
    )
    run.summary["s"] = 1
    run.summary["s"] = 1.0
    run.finish()
    view = gitruns.Api(repo).run("p/types")
    config = view.config
    assert [(k, type(v)) for k, v in sorted(config.items())] == [
        ("a", float),
        ("b", bool),
        ("c", bool),
        ("d", float),
    ]
    assert math.copysign(1.0, config["d"]) == -1.0
    assert type(view.summary["s"]) is float


def test_a_step_below_the_current_one_says_to_finish_then_rewind(repo: Path) -> None:
    run = gitruns.init(project="p", id="back", repo=repo)
    for i in range(10):
        run.log({"x": i})
    with pytest.raises(StepOrderError, match="finish the run and rewind it") as e:
        run.log({"x": 0}, step=5)
    run.finish()
    # The advice works once the run is finished.
    fixed = gitruns.init(project="p", resume_from="p/back?_step=4", repo=repo)
    fixed.log({"x": 0.5})
    fixed.finish()
    assert e.value.step == 5 and e.value.current == 10
    rows = list(gitruns.Api(repo).run("p/back").scan_history())
    assert [r["_step"] for r in rows] == [0, 1, 2, 3, 4, 5]


def test_a_refused_value_raises_one_error_not_a_chain(repo: Path) -> None:
    import numpy as np

    run = gitruns.init(project="p", id="arr", repo=repo)
    with pytest.raises(InvalidValueError) as refused:
        run.log({"a": np.arange(3)})
    run.finish()
    assert refused.value.__context__ is None


def test_a_window_of_large_text_rows_is_cut_into_segments_that_fit(
    repo: Path,
) -> None:
    from gitruns.committer import SEGMENT_BYTES

    # 1,100 steps of 20 kB of text: the first window alone journals about
    # 20 MB, more than a segment may hold, so it is committed in parts.
    text = "x" * 10_000
    with gitruns.init(project="p", id="text", repo=repo, background=False) as run:
        for i in range(1100):
            run.log({"a": text + str(i), "b": text})
    view = gitruns.Api(repo).run("p/text")
    starts = view.snapshot.history.starts
    assert len([s for s in starts if s < 1000]) > 20_000 * 1000 // SEGMENT_BYTES
    rows = list(view.scan_history())
    assert [r["_step"] for r in rows] == list(range(1100))
    assert rows[1099]["a"] == text + "1099" and rows[0]["b"] == text


def test_a_sweep_of_runs_in_one_process_leaves_no_descriptors_open(repo: Path) -> None:
    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    def sweep(count: int, first: int) -> None:
        for n in range(first, first + count):
            run = gitruns.init(project="p", id=f"s{n}", repo=repo, save_code=False)
            for i in range(10):
                run.log({"x": float(i)})
            run.finish()

    sweep(20, 0)  # the repository packs on the way
    before = open_files()
    sweep(60, 20)
    assert open_files() <= before + 3


def test_define_metric_refuses_rules_run_json_could_not_hold(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (gitruns.run is the current run, as wandb.run is: the module by name.)
    monkeypatch.setattr(sys.modules["gitruns.run"], "MAX_RULES", 3)
    run = gitruns.init(project="p", id="rules", repo=repo)
    run.log({"loss": 1.0})
    with pytest.raises(InvalidArgumentError, match="at most 256 characters"):
        run.define_metric("loss", step_metric="e" * 300)
    for i in range(3):
        run.define_metric(f"m{i}/*", summary="max")
    run.define_metric("m0/*", summary="min")  # a rule replaced is no new rule
    with pytest.raises(InvalidArgumentError, match="3 metric rules"):
        run.define_metric("m3/*", summary="max")
    run.finish()
    assert gitruns.Api(repo).run("p/rules").last_step == 0
