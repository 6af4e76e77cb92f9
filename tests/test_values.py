"""Values: every row of the README's table is stored exactly, or refused clearly."""

from __future__ import annotations

import enum
import fractions
import math
import re
import struct
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gitruns
import gitruns.writer as writer_module
from gitruns.errors import InvalidArgumentError, InvalidValueError
from gitruns.fork import create_run
from gitruns.refs import RunRef
from gitruns.run import new_run_info
from gitruns.store import RunStore
from gitruns.values import MAX_STR, clean_row
from gitruns.writer import RunWriter, WriterOptions

try:
    import torch
except ImportError:  # not installed on purpose: the rows are skipped
    torch = None


class Level(enum.IntEnum):
    HIGH = 3


class Meters(float):
    pass


class Tag(str):
    pass


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


# (id, what the user logs, what gitruns stores: same type, same bits)
STORED: list[tuple[str, Any, Any]] = [
    ("float", 0.1, 0.1),
    ("float NaN", math.nan, math.nan),
    ("float +inf", math.inf, math.inf),
    ("float -inf", -math.inf, -math.inf),
    ("float -0.0", -0.0, -0.0),
    ("smallest subnormal", 5e-324, 5e-324),
    ("largest subnormal", 2.225073858507201e-308, 2.225073858507201e-308),
    ("largest float", 1.7976931348623157e308, 1.7976931348623157e308),
    ("int", 42, 42),
    ("int64 max", 2**63 - 1, 2**63 - 1),
    ("int64 min", -(2**63), -(2**63)),
    ("bool True", True, True),
    ("bool False", False, False),
    ("str", "héllo 日本語 🙂", "héllo 日本語 🙂"),
    ("empty str", "", ""),
    ("longest str", "s" * MAX_STR, "s" * MAX_STR),
    ("None", None, None),
    ("IntEnum", Level.HIGH, 3),
    ("float subclass", Meters(2.5), 2.5),
    ("str subclass", Tag("x"), "x"),
    ("numpy float64", np.float64(0.1), 0.1),
    ("numpy float32", np.float32(0.1), float(np.float32(0.1))),
    ("numpy float32 NaN", np.float32("nan"), math.nan),
    ("numpy float32 -0.0", np.float32(-0.0), -0.0),
    ("numpy float32 inf", np.float32("inf"), math.inf),
    ("numpy float16", np.float16(0.1), float(np.float16(0.1))),
    ("numpy int8", np.int8(-128), -128),
    ("numpy int16", np.int16(-32768), -32768),
    ("numpy int32", np.int32(2**31 - 1), 2**31 - 1),
    ("numpy int64", np.int64(-(2**63)), -(2**63)),
    ("numpy uint8", np.uint8(255), 255),
    ("numpy uint16", np.uint16(65535), 65535),
    ("numpy uint32", np.uint32(2**32 - 1), 2**32 - 1),
    ("numpy uint64 in range", np.uint64(2**63 - 1), 2**63 - 1),
    ("numpy bool", np.bool_(True), True),
    ("numpy str", np.str_("s"), "s"),
    ("0-d float64 array", np.array(2.5), 2.5),
    ("0-d float32 array NaN", np.array(np.nan, dtype=np.float32), math.nan),
    ("0-d int32 array", np.array(7, dtype=np.int32), 7),
    ("0-d bool array", np.array(False), False),
]
if torch is not None:
    STORED += [
        ("torch 0-d float32", torch.tensor(0.5), 0.5),
        ("torch 0-d int64", torch.tensor(3), 3),
        ("torch 0-d bool", torch.tensor(True), True),
    ]

# (id, what the user logs, a fragment of the error)
REFUSED: list[tuple[str, Any, str]] = [
    ("int above int64", 2**63, "must fit in int64"),
    ("int below int64", -(2**63) - 1, "must fit in int64"),
    ("numpy uint64 above int64", np.uint64(2**64 - 1), "must fit in int64"),
    ("str too long", "s" * (MAX_STR + 1), f"limited to {MAX_STR} characters"),
    ("list", [1.0, 2.0], "list is not a number"),
    ("tuple", (1.0,), "tuple is not a number"),
    ("set", {1.0}, "set is not a number"),
    ("bytes", b"raw", "bytes is not a number"),
    ("complex", 1j, "complex is not a number"),
    ("numpy complex64", np.complex64(1j), "complex is not a number"),
    ("Decimal", Decimal("0.1"), "Decimal is not a number"),
    ("Fraction", fractions.Fraction(1, 3), "Fraction is not a number"),
    ("datetime", datetime(2024, 1, 1), "datetime is not a number"),
    ("numpy datetime64", np.datetime64("2024-01-01"), "is not a number"),
    ("1-element array", np.array([1.0]), "ndarray is not a number"),
    ("2-d array", np.zeros((2, 2)), "ndarray is not a number"),
    ("object", object(), "object is not a number"),
]
if np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant:
    REFUSED.append(
        ("numpy longdouble", np.longdouble(1) / 3, "does not fit a float64 exactly")
    )
if torch is not None:
    REFUSED.append(("torch 1-d tensor", torch.tensor([1.0]), "is not a number"))


def same(a: Any, b: Any) -> bool:
    """Equal in type and, for floats, in every bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return bits(a) == bits(b)
    return bool(a == b)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every STORED value, logged once, read back committed and recovered.

    ``committed``: logged and finished normally. ``recovered``: logged, the
    writer dropped as by a crash, and the journal committed by the next open.
    """
    repo = tmp_path_factory.mktemp("values") / "runs.git"
    store = RunStore.open(repo)
    out: dict[str, dict[str, Any]] = {}
    try:
        for how in ("committed", "recovered"):
            ref = RunRef("values", how)
            options = WriterOptions(background=False)
            info = new_run_info(ref, options)
            create_run(store, ref, info, {})
            writer = RunWriter.open(store, ref, options)
            known: set[str] = set()
            for name, value, _ in STORED:
                writer.log(clean_row({name: value}, known))
            if how == "committed":
                writer.finish("finished")
            else:
                writer.abandon()
                RunWriter.open(store, ref, options).finish("crashed")
            rows = gitruns.Api(store).run(ref.path).scan_history()
            out[how] = {k: v for row in rows for k, v in row.items() if k[0] != "_"}
    finally:
        store.close()
    return out


@pytest.mark.parametrize("how", ["committed", "recovered"])
@pytest.mark.parametrize(
    ("name", "value", "expected"), STORED, ids=[row[0] for row in STORED]
)
def test_value_is_stored_exactly(
    stored: dict[str, dict[str, Any]], how: str, name: str, value: Any, expected: Any
) -> None:
    assert name in stored[how]
    assert same(stored[how][name], expected), (stored[how][name], expected)


@pytest.mark.parametrize(
    ("name", "value", "fragment"), REFUSED, ids=[row[0] for row in REFUSED]
)
def test_value_is_refused_with_a_clear_error(
    name: str, value: Any, fragment: str
) -> None:
    with pytest.raises(InvalidValueError) as refused:
        clean_row({"metric": value}, set())
    assert fragment in str(refused.value)
    assert refused.value.key == "metric"
    assert str(refused.value).startswith("cannot log 'metric'")


def test_a_refused_value_stores_nothing_and_the_run_goes_on(repo: Path) -> None:
    run = gitruns.init(project="values", id="refused", repo=repo, save_code=False)
    run.log({"loss": 1.0})
    for _, value, _ in REFUSED[:6]:
        with pytest.raises(InvalidValueError):
            run.log({"loss": 2.0, "bad": value})
    with pytest.raises(InvalidValueError, match="lone surrogate"):
        run.log({"note": "\udc80"})
    assert run.step == 1
    run.log({"loss": 3.0})
    run.finish()
    rows = list(gitruns.Api(repo).run("values/refused").scan_history())
    assert [(r["_step"], r["loss"]) for r in rows] == [(0, 1.0), (1, 3.0)]
    assert all("bad" not in r and "note" not in r for r in rows)


def test_one_metric_may_change_kind_from_step_to_step(repo: Path) -> None:
    values: list[Any] = [1, 2.5, True, "text", None, math.nan, -(2**63), -0.0]
    run = gitruns.init(project="values", id="mixed", repo=repo, save_code=False)
    for value in values:
        run.log({"m": value})
    run.finish()
    got = [row.get("m") for row in gitruns.Api(repo).run("values/mixed").scan_history()]
    assert len(got) == len(values)
    assert all(same(a, b) for a, b in zip(got, values)), got


def test_a_nested_dict_is_flattened_and_a_list_inside_it_refused() -> None:
    assert clean_row({"eval": {"wer": 0.25, "n": 3}}, set()) == {
        "eval/wer": 0.25,
        "eval/n": 3,
    }
    with pytest.raises(InvalidValueError) as refused:
        clean_row({"eval": {"hist": [1, 2]}}, set())
    assert refused.value.key == "eval/hist"


def test_log_refuses_a_payload_that_is_not_a_dict() -> None:
    with pytest.raises(InvalidValueError, match="takes a dict"):
        clean_row([("loss", 1.0)], set())


@pytest.mark.parametrize(
    ("init", "where"),
    [
        ({"name": "a\ud800"}, "run['name']"),
        ({"notes": "\ud800"}, "run['notes']"),
        ({"tags": ["ok", "\udfff"]}, "run['tags'][1]"),
        ({"group": "\ud800"}, "run['group']"),
        ({"config": {"k\ud800": 1}}, "config key"),
        ({"config": {"k": ["\ud800"]}}, "config['k'][0]"),
    ],
)
def test_metadata_with_a_lone_surrogate_is_refused_at_init(
    repo: Path, init: dict[str, Any], where: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(where)):
        gitruns.init(project="p", id="s", repo=repo, **init)
    assert not repo.exists() or gitruns.Api(repo).runs() == []


def test_metadata_with_a_lone_surrogate_leaves_a_live_run_as_it_was(
    repo: Path,
) -> None:
    run = gitruns.init(project="p", id="s", repo=repo, config={"lr": 0.1})
    for change in (
        lambda: run.config.update({"bad": "\ud800"}),
        lambda: setattr(run, "name", "\ud800"),
        lambda: setattr(run, "tags", ["\ud800"]),
        lambda: run.summary.__setitem__("best", "\ud800"),
        lambda: run.define_metric("acc\ud800", summary="max"),
    ):
        with pytest.raises(InvalidArgumentError, match="lone surrogate"):
            change()
    run.config.update({"ok": 1})
    run.define_metric("x", summary="max")
    run.log({"x": 1.0})
    run.finish()

    view = gitruns.Api(repo).run("p/s")
    assert view.state == "finished"
    assert view.config == {"lr": 0.1, "ok": 1}
    assert view.name == "s" and list(view.tags) == [] and "best" not in view.summary


def test_a_config_larger_than_readers_take_is_refused_and_leaves_no_run(
    repo: Path,
) -> None:
    vocabulary = [f"token{i}" for i in range(1_600_000)]  # about 26 MiB of JSON
    with pytest.raises(InvalidArgumentError, match="config may take 16 MiB"):
        gitruns.init(project="p", id="big", repo=repo, config={"vocab": vocabulary})
    assert gitruns.Api(repo).runs() == []

    run = gitruns.init(project="p", id="grows", repo=repo)
    with pytest.raises(InvalidArgumentError, match="config may take 16 MiB"):
        for i in range(60):
            run.config[f"part{i}"] = vocabulary[i * 25_000 : (i + 1) * 25_000]
    kept = dict(run.config)
    run.log({"x": 1.0})
    run.finish()
    view = gitruns.Api(repo).run("p/grows")
    assert view.state == "finished" and view.config == kept and 0 < len(kept) < 60


def test_strings_no_summary_could_hold_are_refused_at_log(repo: Path) -> None:
    # The summary holds the last value of every string metric: 600 metrics
    # of 16,000 characters would make it too large to commit, and finish()
    # could then commit none of the run.
    run = gitruns.init(project="p", id="texts", repo=repo)
    for step in range(50):
        run.log({"loss": 1 / (step + 1)})
    text = "g" * 16_000
    accepted = 0
    with pytest.raises(InvalidValueError, match=r"MiB in its summary") as refused:
        for i in range(600):
            run.log({f"gen/{i}": text})
            accepted += 1
    # Each new metric's first and last value, 16,002 bytes each as JSON.
    assert accepted == writer_module.SUMMARY_STRING_BYTES // (2 * 16_002)
    assert refused.value.key == f"gen/{accepted}"
    run.log({"loss": 0.5})
    run.finish()

    view = gitruns.Api(repo).run("p/texts")
    assert view.state == "finished" and view.last_step == 50 + accepted
    assert view.summary[f"gen/{accepted - 1}"] == text
    assert f"gen/{accepted}" not in view.summary

    # A resumed run counts what it holds already.
    again = gitruns.init(project="p", id="texts", resume="must", repo=repo)
    with pytest.raises(InvalidValueError, match="gitruns.save"):
        again.log({"more": text})
    again.log({"loss": 0.25})
    again.finish()


def test_strings_no_chunk_could_hold_are_refused_at_log(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every chunk carries the first and last value of every string metric;
    # the bound, lowered here, keeps one step of them within a chunk.
    monkeypatch.setattr(writer_module, "STRING_BYTES", 100_000)
    run = gitruns.init(project="p", id="edges", repo=repo, window=10)
    logged = []
    with pytest.raises(InvalidValueError, match="MiB of strings in a chunk"):
        for step in range(100):
            text = f"{step:03d}" + "é" * 2_000  # 4,003 bytes
            run.log({f"s{step}": text})
            logged.append(text)
    # Step k carries 2 x 4,003 bytes for each metric before it, and its own
    # 4,003 three times: 8,006 k + 12,009 <= 100,000 for k up to 10.
    assert len(logged) == 11
    run.finish()
    rows = list(gitruns.Api(repo).run("p/edges").scan_history())
    assert [r[f"s{i}"] for i, r in enumerate(rows)] == logged


def test_strings_are_counted_as_the_summary_writes_them(repo: Path) -> None:
    # JSON writes a control character as six: 60,000 of them take 360 kB,
    # as first and again as last value (11 metrics take 7.9 MB). Counted as
    # their 60,000 UTF-8 bytes, 60 would fit.
    run = gitruns.init(project="p", id="controls", repo=repo)
    text = "\x01" * 60_000
    logged = 0
    with pytest.raises(InvalidValueError, match="in its summary"):
        for i in range(60):
            run.log({f"c{i}": text})
            logged += 1
    assert logged == writer_module.SUMMARY_STRING_BYTES // (2 * (6 * 60_000 + 2))
    run.finish()
    assert gitruns.Api(repo).run("p/controls").summary["c0"] == text


def test_a_string_logged_again_at_its_step_is_counted_once(repo: Path) -> None:
    # Only the last of a key's values at a step is stored: 200 calls of 65
    # kB each at one step hold 65 kB, not 13 MB (39 MB counted three times).
    run = gitruns.init(project="p", id="again", repo=repo)
    for i in range(200):
        run.log({"text": f"{i:03d}" + "y" * 65_000}, step=5, commit=False)
    run.finish()
    rows = list(gitruns.Api(repo).run("p/again").scan_history())
    assert [r["text"][:3] for r in rows] == ["199"]


def test_names_no_summary_could_hold_are_refused_at_log(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The summary holds a line per metric: many long names could take it
    # past what a run's file may hold (here lowered to 50,000 bytes).
    monkeypatch.setattr(writer_module, "SUMMARY_BYTES", 50_000)
    run = gitruns.init(project="p", id="names", repo=repo)
    logged = 0
    with pytest.raises(InvalidValueError, match="fewer .or shorter. names"):
        for i in range(1_000):
            run.log({f"{i:04d}" + "n" * 96: 1.0})
            logged += 1
    assert logged == 50_000 // (100 + 40)  # a name's line: 100 bytes and 40
    run.log({"0000" + "n" * 96: 2.0})  # a name it holds is no new name
    run.finish()
    assert len(gitruns.Api(repo).run("p/names").summary) == logged


def test_summary_values_set_by_hand_count_with_the_derived_ones(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Together they make one file (its limit lowered here to 60,000 bytes):
    # neither may push the other past it.
    monkeypatch.setattr(writer_module, "_SUMMARY_LIMIT", 60_000)
    run = gitruns.init(project="p", id="by-hand", repo=repo)
    run.log({"text": "t" * 10_000})  # 20,000 bytes: first and last
    set_by_hand = 0
    with pytest.raises(InvalidArgumentError, match="values set by hand"):
        for i in range(10):
            run.summary[f"o{i}"] = "o" * 10_000
            set_by_hand += 1
    assert set_by_hand == 3 and "o3" not in run.summary
    with pytest.raises(InvalidValueError, match="in its summary"):
        run.log({"more": "m" * 5_000})
    run.finish()
    assert sorted(gitruns.Api(repo).run("p/by-hand").summary) == [
        "o0",
        "o1",
        "o2",
        "text",
    ]

    # A resumed run counts what it holds.
    again = gitruns.init(project="p", id="by-hand", resume="must", repo=repo)
    with pytest.raises(InvalidArgumentError, match="values set by hand"):
        again.summary["o3"] = "o" * 10_000
    del again.summary["o0"]
    again.summary["o3"] = "o" * 10_000  # room again
    again.finish()
