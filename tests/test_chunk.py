"""Tests of the chunk codec: round-trips, digests, golden files, hostile input.

Regenerate the golden files after a deliberate format change with either::

    python -m tests.test_chunk --regen          # from the repository root
    GITRUNS_REGEN_GOLDEN=1 pytest tests/test_chunk.py -k golden

and commit the ``tests/golden/`` diff together with the change to docs/FORMAT.md.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gitruns.chunk import (
    FORMAT_MAJOR,
    FORMAT_MINOR,
    MAX_CHUNK_BYTES,
    MAX_METRICS,
    MAX_NAME_CHARS,
    Chunk,
    Column,
    Digest,
    Value,
    build_chunk,
    check_metric_name,
    compressed_chunk,
    decode_chunk,
    decode_digests,
    encode_chunk,
    encode_digests,
    values_into_rows,
)
from gitruns.errors import (
    ChunkFormatError,
    InvalidNameError,
    InvalidValueError,
    UnsupportedVersionError,
)

# The codec runs inside training loops: numpy's warnings about NaN, overflow
# or invalid casts in values it stores on purpose must never reach the user.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

GOLDEN = Path(__file__).resolve().parent / "golden"
#: Chunks as gitruns 2.0 wrote them (plain numeric bins): a 3.x reader reads them.
GOLDEN_V2 = GOLDEN / "v2"
from tests.conftest import REAL_RUNS  # noqa: E402

SOURCE = "blob 1234abcd (test)"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# --------------------------------------------------------------------------
# Helpers


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def float_from_bits(b: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", b))[0])


def same(a: object, b: object) -> bool:
    """Exact equality of logged values: same type, floats by bit pattern."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return bits(a) == bits(b)  # type: ignore[arg-type]
    return a == b


def as_list(values: Any) -> list[Value]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def refused(
    data: bytes, kind: type[ChunkFormatError] = ChunkFormatError, **kw: Any
) -> ChunkFormatError:
    """Assert decode_chunk refuses ``data`` with exactly ``kind``, naming SOURCE."""
    with pytest.raises(ChunkFormatError) as info:
        decode_chunk(data, source=SOURCE, **kw)
    assert type(info.value) is kind, info.value
    assert SOURCE in str(info.value)
    assert info.value.__cause__ is None, "an internal error reached the safety net"
    return info.value


def decodes_or_refuses(data: bytes) -> Chunk | None:
    """Decode hostile bytes: a chunk that re-encodes, or exactly the one error."""
    try:
        chunk = decode_chunk(data, source=SOURCE)
    except ChunkFormatError as exc:
        assert type(exc) in (ChunkFormatError, UnsupportedVersionError)
        assert SOURCE in str(exc)
        assert exc.__cause__ is None, f"an internal error reached the safety net: {exc}"
        return None
    again = decode_chunk(encode_chunk(chunk), source=SOURCE)
    assert again.steps.tolist() == chunk.steps.tolist()
    return chunk


def splice(doc: dict[str, Any], raw: bytes) -> bytes:
    """Pack ``doc`` with the bin b"@@HOLE@@" replaced by the raw bytes ``raw``."""
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    hole: bytes = msgpack.packb(b"@@HOLE@@", use_bin_type=True)
    assert packed.count(hole) == 1
    return packed.replace(hole, raw)


def shuffled(items: list[int], width: int = 8, delta: bool = False) -> bytes:
    """Byte-shuffle unsigned ints as docs/FORMAT.md says, one byte at a time."""
    mod = 2 ** (8 * width)
    if delta:
        items = [(b - a) % mod for a, b in zip([0, *items], items, strict=False)]
    raw = [(item % mod).to_bytes(width, "little") for item in items]
    return bytes(value[k] for k in range(width) for value in raw)


def frame(planes: bytes) -> bytes:
    """One zstd frame holding ``planes``, as a writer of docs/FORMAT.md may make it."""
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=True)
    return compressor.compress(planes)


def unframe(blob: bytes) -> bytes:
    """The content of one zstd frame, read by zstandard apart from gitruns.chunk."""
    if not blob:
        raise AssertionError("an empty bin is not a frame")
    return zstandard.ZstdDecompressor().decompress(blob)


def steps_bin(steps: list[int]) -> bytes:
    """A ``steps`` bin: delta-coded int64, byte-shuffled, in a zstd frame."""
    return frame(shuffled(steps, delta=True))


def naive_digest(steps: list[int], values: list[Value]) -> Digest:
    """The digest definition of docs/FORMAT.md, one value at a time."""
    numbers = [
        float(v)
        for v in values
        if type(v) is int or (type(v) is float and not math.isnan(v))
    ]
    return Digest(
        count=len(values),
        first=values[0],
        last=values[-1],
        first_step=steps[0],
        last_step=steps[-1],
        min=min(numbers) if numbers else None,
        max=max(numbers) if numbers else None,
        sum=naive_sum(numbers) if numbers else None,
        numeric_count=len(numbers),
    )


def naive_sum(numbers: list[float]) -> float:
    """The exact sum, rounded; NaN where float addition may overflow on the way."""
    finite = [x for x in numbers if math.isfinite(x)]
    try:
        overflows = math.fsum(abs(x) for x in finite) > 1e308
    except OverflowError:
        overflows = True
    if overflows:
        return math.nan  # no reference: sum_close() accepts any float
    if math.inf in numbers and -math.inf in numbers:
        return math.nan
    if math.inf in numbers or -math.inf in numbers:
        return math.inf if math.inf in numbers else -math.inf
    return math.fsum(numbers)


def sum_close(
    ours: float | None, exact: float | None, numbers: int, scale: float
) -> bool:
    if ours is None or exact is None:
        return ours is exact
    if math.isnan(exact):
        return isinstance(ours, float)
    if math.isinf(exact):
        return ours == exact
    return abs(ours - exact) <= numbers * 2.3e-16 * numbers * scale + 1e-300


def assert_digest(ours: Digest, expected: Digest) -> None:
    assert ours.count == expected.count
    assert ours.numeric_count == expected.numeric_count
    assert (ours.first_step, ours.last_step) == (
        expected.first_step,
        expected.last_step,
    )
    assert same(ours.first, expected.first) and same(ours.last, expected.last)
    assert ours.min == expected.min and ours.max == expected.max
    scale = max(abs(expected.min or 0.0), abs(expected.max or 0.0))
    assert sum_close(ours.sum, expected.sum, ours.numeric_count, scale), (
        ours,
        expected,
    )


# --------------------------------------------------------------------------
# Strategies

special_floats = st.sampled_from(
    [0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, -5e-324, 2.2250738585072014e-308,
     1.7976931348623157e308, float_from_bits(0x7FF0000000000001),  # signalling NaN
     float_from_bits(0xFFF8000000001234)]  # negative quiet NaN with a payload
)  # fmt: skip
any_float = st.one_of(
    st.floats(), st.integers(0, 2**64 - 1).map(float_from_bits), special_floats
)
int64s = st.one_of(
    st.integers(INT64_MIN, INT64_MAX), st.sampled_from([INT64_MIN, INT64_MAX, 0, -1])
)
texts = st.text(max_size=12)
values_of_kind: dict[str, st.SearchStrategy[Any]] = {
    "f8": any_float,
    "i8": int64s,
    "bool": st.booleans(),
    "str": texts,
    "obj": st.one_of(st.none(), st.booleans(), int64s, any_float, texts),
}
metric_names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40
).filter(lambda s: s not in ("_step", "_timestamp"))


@st.composite
def chunk_args(draw: st.DrawFn, max_window: int = 48) -> dict[str, Any]:
    """Arguments of build_chunk: a random window, sparse columns of every kind."""
    window = draw(st.integers(1, max_window))
    start = window * draw(st.one_of(st.just(0), st.integers(0, 2**40)))
    offsets = draw(st.sets(st.integers(0, window - 1), max_size=window))
    steps = [start + o for o in sorted(offsets)]
    n = len(steps)
    times = draw(st.lists(any_float, min_size=n, max_size=n))

    metrics: dict[str, tuple[list[int], list[Value]]] = {}
    if n:
        for name in draw(st.lists(metric_names, unique=True, max_size=6)):
            kind = draw(st.sampled_from(sorted(values_of_kind)))
            rows = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1)))
            values = draw(
                st.lists(values_of_kind[kind], min_size=len(rows), max_size=len(rows))
            )
            metrics[name] = (rows, values)

    prefix: dict[str, Digest] = {}
    if start > 0:
        for name in draw(st.lists(metric_names, unique=True, max_size=3)):
            size = min(5, start)
            values = draw(st.lists(values_of_kind["obj"], min_size=1, max_size=size))
            last = draw(st.integers(len(values) - 1, start - 1))
            prefix[name] = naive_digest(
                list(range(last - len(values) + 1, last + 1)), values
            )
    return {
        "window": window,
        "start": start,
        "steps": steps,
        "times": times,
        "metrics": metrics,
        "prefix": prefix,
    }


def expected_kind(values: list[Value]) -> str:
    types = {type(v) for v in values}
    return {
        frozenset({float}): "f8",
        frozenset({int}): "i8",
        frozenset({bool}): "bool",
        frozenset({str}): "str",
    }.get(frozenset(types), "obj")


def assert_matches_args(chunk: Chunk, args: dict[str, Any]) -> None:
    """The chunk holds exactly what build_chunk was given, bit for bit."""
    assert chunk.window == args["window"] and chunk.start == args["start"]
    assert chunk.steps.tolist() == args["steps"]
    assert [bits(t) for t in chunk.times.tolist()] == [bits(t) for t in args["times"]]
    assert set(chunk.columns) == set(args["metrics"])
    for name, (rows, values) in args["metrics"].items():
        col = chunk.columns[name]
        assert col.kind == expected_kind(values)
        got_steps, got_values = chunk.column(name)
        assert got_steps.tolist() == [args["steps"][r] for r in rows]
        got = as_list(got_values)
        assert len(got) == len(values)
        assert all(same(a, b) for a, b in zip(got, values, strict=True))
    assert set(chunk.prefix) == set(args["prefix"])
    for name, digest in args["prefix"].items():
        assert_digest(chunk.prefix[name], digest)


# --------------------------------------------------------------------------
# Round-trips


@FAST
@given(chunk_args())
def test_round_trip_is_exact(args: dict[str, Any]) -> None:
    chunk = build_chunk(**args)
    assert_matches_args(chunk, args)

    # Unchecked, as the committer encodes what build_chunk made: a reader
    # must still take every such chunk.
    data = encode_chunk(chunk, check=False)
    decoded = decode_chunk(data, source=SOURCE, verify=True)
    assert_matches_args(decoded, args)
    assert encode_chunk(decoded) == data


@FAST
@given(chunk_args())
def test_digests_match_a_naive_computation(args: dict[str, Any]) -> None:
    chunk = decode_chunk(encode_chunk(build_chunk(**args)))
    digests = chunk.digests()
    assert set(digests) == set(args["metrics"])
    for name, (rows, values) in args["metrics"].items():
        expected = naive_digest([args["steps"][r] for r in rows], values)
        assert_digest(digests[name], expected)


@FAST
@given(chunk_args())
def test_totals_merge_prefix_and_chunk(args: dict[str, Any]) -> None:
    chunk = build_chunk(**args)
    totals = chunk.totals()
    assert set(totals) == set(args["prefix"]) | set(args["metrics"])
    for name, digest in totals.items():
        before = args["prefix"].get(name)
        own = chunk.digests().get(name)
        assert digest.count == (before.count if before else 0) + (
            own.count if own else 0
        )
        if before:
            assert same(digest.first, before.first)
            assert digest.first_step == before.first_step
        if own:
            assert same(digest.last, own.last) and digest.last_step == own.last_step


@FAST
@given(st.lists(values_of_kind["obj"], min_size=3, max_size=40), st.data())
def test_merged_is_associative_and_equals_the_whole(
    values: list[Value], data: st.DataObject
) -> None:
    cut1 = data.draw(st.integers(1, len(values) - 2))
    cut2 = data.draw(st.integers(cut1 + 1, len(values) - 1))
    steps = list(range(len(values)))

    def digest(lo: int, hi: int) -> Digest:
        chunk = build_chunk(
            1000, 0, steps, [0.0] * len(steps), {"m": (steps[lo:hi], values[lo:hi])}
        )
        return chunk.digests()["m"]

    a, b, c = digest(0, cut1), digest(cut1, cut2), digest(cut2, len(values))
    left, right = a.merged(b).merged(c), a.merged(b.merged(c))
    whole = naive_digest(steps, values)
    for got in (left, right):
        assert_digest(got, whole)
    # Apart from the float sum, regrouping changes nothing, not even a zero's sign.
    for field in ("count", "numeric_count", "first_step", "last_step"):
        assert getattr(left, field) == getattr(right, field)
    for field in ("first", "last", "min", "max"):
        assert same(getattr(left, field), getattr(right, field))


def float_columns(
    extra: Callable[[int], st.SearchStrategy[list[float]]],
) -> st.SearchStrategy[list[list[float]]]:
    """Two to five float columns of one length: any floats, or ``extra(length)``."""
    return st.integers(1, 40).flatmap(
        lambda n: st.lists(
            st.one_of(st.lists(any_float, min_size=n, max_size=n), extra(n)),
            min_size=2,
            max_size=5,
        )
    )


@settings(FAST, max_examples=60)
@given(float_columns(lambda n: st.lists(st.floats(-1e6, 1e6), min_size=n, max_size=n)))
def test_float_columns_digested_together_match_one_by_one(
    columns: list[list[float]],
) -> None:
    # Chunk.digests() reduces dense float columns as one array: it must give
    # each column's own digest, bit for bit (the chunk's bytes depend on it).
    n = len(columns[0])
    metrics = {f"m{i}": (None, values) for i, values in enumerate(columns)}
    chunk = build_chunk(10_000, 0, list(range(n)), [0.0] * n, metrics)
    together = chunk.digests()
    for name in chunk.columns:
        alone = build_chunk(10_000, 0, list(range(n)), [0.0] * n, {name: metrics[name]})
        expected = alone.digests()[name]
        got = together[name]
        assert (
            got.count == expected.count and got.numeric_count == expected.numeric_count
        )
        assert (got.first_step, got.last_step) == (
            expected.first_step,
            expected.last_step,
        )
        for field in ("first", "last", "min", "max", "sum"):
            assert same(getattr(got, field), getattr(expected, field)), (name, field)


def steady(n: int) -> st.SearchStrategy[list[float]]:
    """Steady series of ``n`` values, where delta coding pays."""
    return st.tuples(st.floats(-1e3, 1e3), st.sampled_from([0.5, 0.001])).map(
        lambda a: [a[0] + a[1] * i for i in range(n)]
    )


@FAST
@given(float_columns(steady))
def test_float_columns_encoded_together_match_one_by_one(
    columns: list[list[float]],
) -> None:
    n = len(columns[0])
    metrics = {f"m{i}": (None, values) for i, values in enumerate(columns)}
    together = document(
        encode_chunk(build_chunk(1000, 0, range(n), [0.0] * n, metrics))
    )
    for name, values in metrics.items():
        alone = build_chunk(1000, 0, range(n), [0.0] * n, {name: values})
        expected = document(encode_chunk(alone))["columns"][name]
        assert pack(together["columns"][name]) == pack(expected)


@pytest.mark.parametrize(
    "values",
    [
        [0.0, -0.0],
        [-0.0, 0.0],
        [0.0, 1.0, -0.0],
        [-0.0, 1.0, 0.0] * 40,  # long enough for numpy's vectorised min
        [3, 0.0, -0.0, 0.0],  # ints and floats mixed (an obj column)
    ],
)
def test_digest_orders_negative_zero_below_zero(values: list[float]) -> None:
    # The bytes of a chunk may not depend on numpy's version or SIMD path,
    # which pick either zero for np.min([0.0, -0.0]).
    def digest(vals: list[float]) -> Digest:
        rows = range(len(vals))
        chunk = build_chunk(1000, 0, list(rows), [0.0] * len(vals), {"m": (rows, vals)})
        return chunk.digests()["m"]

    for order in (values, values[::-1]):
        d = digest(order)
        assert math.copysign(1.0, d.min) == -1.0  # type: ignore[arg-type]
        assert d.max == max(values) and math.copysign(1.0, d.max) == 1.0  # type: ignore[arg-type]

    # Merging digests of two halves gives the digest of the whole.
    half = len(values) // 2
    merged = digest(values[:half]).merged(digest(values[half:]))
    assert same(merged.min, digest(values).min)
    assert same(merged.max, digest(values).max)


def test_digest_rules_for_nan_bool_and_none() -> None:
    chunk = build_chunk(
        10,
        0,
        [0, 1, 2, 3, 4],
        [0.0] * 5,
        {
            "f": ([0, 1, 2], [math.nan, 2.0, -1.0]),
            "b": ([0, 1], [True, False]),
            "o": ([0, 1, 2, 3, 4], [None, True, 3, math.nan, "x"]),
            "n": ([4], [math.nan]),
        },
    )
    d = chunk.digests()
    assert (d["f"].count, d["f"].numeric_count, d["f"].min, d["f"].max) == (
        3,
        2,
        -1.0,
        2.0,
    )
    assert math.isnan(d["f"].first) and d["f"].sum == 1.0 and d["f"].mean() == 0.5  # type: ignore[arg-type]
    assert (d["b"].numeric_count, d["b"].min, d["b"].sum, d["b"].mean()) == (
        0,
        None,
        None,
        None,
    )
    assert d["b"].first is True and d["b"].last is False
    assert (d["o"].count, d["o"].numeric_count, d["o"].sum) == (5, 1, 3.0)
    assert d["o"].first is None and d["o"].last == "x"
    assert (d["n"].count, d["n"].numeric_count, d["n"].max, d["n"].mean()) == (
        1,
        0,
        None,
        None,
    )


@FAST
@given(chunk_args(), st.data())
def test_sliced_keeps_the_steps_up_to_max_step(
    args: dict[str, Any], data: st.DataObject
) -> None:
    chunk = decode_chunk(encode_chunk(build_chunk(**args)))
    max_step = data.draw(st.integers(args["start"] - 1, args["start"] + args["window"]))
    cut = chunk.sliced(max_step)

    expected = [r for r in chunk.rows() if r["_step"] <= max_step]  # type: ignore[operator]
    got = list(cut.rows())
    assert [sorted(r) for r in got] == [sorted(r) for r in expected]
    assert all(same(g[k], e[k]) for g, e in zip(got, expected, strict=True) for k in e)
    assert cut.prefix == chunk.prefix
    for name, col in cut.columns.items():
        assert col.rows is None or len(col.rows) < len(cut.steps)
        assert cut.digests()[name].last_step <= max_step
    # The slice is itself a valid chunk.
    assert decode_chunk(encode_chunk(cut)).steps.tolist() == [
        s for s in args["steps"] if s <= max_step
    ]


@FAST
@given(chunk_args())
def test_rows_hold_exactly_the_metrics_present(args: dict[str, Any]) -> None:
    chunk = decode_chunk(encode_chunk(build_chunk(**args)))
    expected: list[dict[str, Value]] = [
        {"_step": s, "_timestamp": t}
        for s, t in zip(args["steps"], args["times"], strict=True)
    ]
    for name, (rows, values) in args["metrics"].items():
        for row, value in zip(rows, values, strict=True):
            expected[row][name] = value
    got = list(chunk.rows())
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert set(g) == set(e)
        assert all(same(g[k], e[k]) for k in e)


@pytest.mark.parametrize("sparse", [False, True])
def test_rows_keep_the_key_order_of_their_chunk(sparse: bool) -> None:
    # JSON lines exports write rows as they come: _step, _timestamp, then the
    # metrics present in the chunk's (sorted) order, whatever is sparse.
    rows = [0, 2] if sparse else [0, 1, 2]
    chunk = build_chunk(
        10, 0, [0, 1, 2], [0.5, 1.5, 2.5],
        {"b": (rows, [1.0] * len(rows)), "a": ([0, 1, 2], [1, 2, 3]),
         "c": ([0, 1, 2], ["x", "y", "z"])},
    )  # fmt: skip
    got = list(decode_chunk(encode_chunk(chunk)).rows())
    assert [list(row) for row in got] == [
        ["_step", "_timestamp", "a", "b", "c"],
        ["_step", "_timestamp", "a", "c"] if sparse else [
            "_step", "_timestamp", "a", "b", "c"],
        ["_step", "_timestamp", "a", "b", "c"],
    ]  # fmt: skip
    assert got[1] == {"_step": 1, "_timestamp": 1.5, "a": 2, "c": "y"} | (
        {} if sparse else {"b": 1.0}
    )


def test_real_trainer_log_round_trips_with_its_gaps() -> None:
    # An HF Trainer log: loss every 50 steps, eval every 1000, one final record.
    state = json.loads(
        (REAL_RUNS / "hf-whisper-tiny-nb-resumed" / "trainer_state.json").read_text()
    )
    records: dict[int, dict[str, Value]] = {}
    for entry in state["log_history"]:
        records.setdefault(entry["step"], {}).update(
            {k: v for k, v in entry.items() if k != "step"}
        )
    window = 10_000
    windows: dict[int, list[int]] = {}
    for step in sorted(records):
        windows.setdefault(step // window * window, []).append(step)

    prefix: dict[str, Digest] = {}
    for start, steps in sorted(windows.items()):
        metrics: dict[str, tuple[list[int], list[Value]]] = {}
        for row, step in enumerate(steps):
            for key, value in records[step].items():
                metrics.setdefault(key, ([], []))
                metrics[key][0].append(row)
                metrics[key][1].append(value)
        chunk = build_chunk(
            window, start, steps, [1.7e9 + s for s in steps], metrics, prefix
        )
        decoded = decode_chunk(
            encode_chunk(chunk), source=f"window {start}", verify=True
        )
        for record in decoded.rows():
            want = records[record["_step"]]  # type: ignore[index]
            assert {k: v for k, v in record.items() if k[0] != "_"} == want
        prefix = decoded.totals()

    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert prefix["loss"].count == len(losses) == 2000
    assert prefix["loss"].min == min(losses) and prefix["loss"].max == max(losses)
    assert prefix["loss"].mean() == pytest.approx(sum(losses) / len(losses))
    assert prefix["eval_wer"].count == 100 and prefix["train_loss"].count == 1


def test_digests_document_round_trips() -> None:
    digests = {
        "loss": naive_digest([0, 5], [2.5, math.nan]),
        "note": naive_digest([3], ["ok"]),
    }
    data = encode_digests(digests)
    back = decode_digests(data, source=SOURCE)
    assert set(back) == set(digests)
    for name in digests:
        assert_digest(back[name], digests[name])
    assert encode_digests(back) == data
    with pytest.raises(ChunkFormatError) as info:
        decode_digests(data[:-3], source=SOURCE)
    assert type(info.value) is ChunkFormatError and SOURCE in str(info.value)
    with pytest.raises(ChunkFormatError) as info:
        decode_digests(encode_chunk(build_chunk(1, 0, [], [], {})), source=SOURCE)
    assert "gitruns.digests" in str(info.value)


# --------------------------------------------------------------------------
# build_chunk contract


def test_column_kind_follows_the_python_types() -> None:
    metrics: dict[str, Any] = {
        "f": ([0, 1], [1.0, np.float64(2.0)]),
        "i": ([0, 1], [1, np.int64(2)]),
        "b": ([0, 1], [True, np.bool_(False)]),
        "s": ([0, 1], ["a", "b"]),
        "mixed_num": ([0, 1], [1, 2.0]),
        "with_none": ([0, 1], [None, 1.0]),
        "arr": ([0, 1], np.array([3, 4], dtype=np.int32)),
        "np_mixed": (
            [0, 1, 2, 3],
            [None, np.bool_(True), np.int64(3), np.float32(0.5)],
        ),
    }
    chunk = build_chunk(10, 0, [0, 1, 2, 3], [0.0, 1.0, 2.0, 3.0], metrics)
    kinds = {name: col.kind for name, col in chunk.columns.items()}
    assert kinds == {
        "f": "f8", "i": "i8", "b": "bool", "s": "str",
        "mixed_num": "obj", "with_none": "obj", "arr": "i8", "np_mixed": "obj",
    }  # fmt: skip
    assert as_list(chunk.columns["mixed_num"].values) == [1, 2.0]
    assert type(as_list(chunk.columns["mixed_num"].values)[1]) is float
    # numpy scalars are stored as the Python values they stand for.
    decoded = decode_chunk(encode_chunk(chunk))
    got = as_list(decoded.columns["np_mixed"].values)
    assert [type(v) for v in got] == [type(None), bool, int, float]
    assert got == [None, True, 3, 0.5]


@pytest.mark.parametrize(
    "name", ["", "a\x00b", "tab\there", "\x7f", "x" * (MAX_NAME_CHARS + 1), "_step", 3]
)
def test_build_refuses_bad_metric_names(name: Any) -> None:
    with pytest.raises(InvalidNameError):
        build_chunk(10, 0, [0], [0.0], {name: ([0], [1.0])})
    with pytest.raises(InvalidNameError):
        check_metric_name(name)


def test_build_accepts_usual_metric_names() -> None:
    names = ["train/loss", "eval loss", "ü-λ", "x" * MAX_NAME_CHARS, "_runtime"]
    chunk = build_chunk(10, 0, [0], [0.0], {n: ([0], [1.0]) for n in names})
    assert list(decode_chunk(encode_chunk(chunk)).columns) == sorted(names)


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ([2**63], InvalidValueError),
        ([1, -(2**63) - 1], InvalidValueError),
        ([None, 2**70], InvalidValueError),
        ([object()], InvalidValueError),
        ([b"bytes"], InvalidValueError),
        ([[1, 2]], InvalidValueError),
    ],
)
def test_build_refuses_values_it_cannot_store(values: list[Any], error: type) -> None:
    rows = list(range(len(values)))
    with pytest.raises(error) as info:
        build_chunk(10, 0, rows, [0.0] * len(rows), {"m": (rows, values)})
    assert "'m'" in str(info.value)


def test_encode_refuses_unencodable_text() -> None:
    chunk = build_chunk(10, 0, [0], [0.0], {"m": ([0], ["bad \ud800"])})
    with pytest.raises(InvalidValueError):
        encode_chunk(chunk)


@pytest.mark.parametrize(
    ("window", "start", "steps", "rows"),
    [
        (0, 0, [0], [0]),  # window < 1
        (10, 5, [5], [0]),  # start not a multiple
        (10, 0, [1, 1], [0]),  # steps not increasing
        (10, 0, [3, 2], [0]),
        (10, 0, [10], [0]),  # step outside the window
        (10, 10, [9], [0]),
        (10, 0, [0, 1], [1, 0]),  # rows not increasing
        (10, 0, [0, 1], [2]),  # row out of range
        (10, 0, [0, 1], [-1]),
    ],
)
def test_build_refuses_a_broken_layout(
    window: int, start: int, steps: list[int], rows: list[int]
) -> None:
    with pytest.raises(ValueError):
        build_chunk(
            window, start, steps, [0.0] * len(steps), {"m": (rows, [1.0] * len(rows))}
        )


def test_encode_refuses_what_decode_would_refuse() -> None:
    first = build_chunk(10, 10, [10, 11], [0.0, 1.0], {"m": ([0, 1], [1.0, 2.0])})
    with pytest.raises(ValueError, match="prefix digest of 'm' reaches step 11"):
        build_chunk(10, 10, [11], [1.0], {"m": ([0], [3.0])}, prefix=first.totals())
    second = build_chunk(10, 10, [11], [1.0], {"m": ([0], [3.0])})
    overlapping = Chunk(
        10, 10, second.steps, second.times, second.columns, first.totals()
    )
    with pytest.raises(ValueError, match="prefix digest of 'm' reaches step 11"):
        encode_chunk(overlapping)
    by_hand = Chunk(
        10, 10, first.steps, first.times, {"m": Column("str", None, [1, 2])}, {}
    )
    with pytest.raises(ValueError, match="malformed"):
        encode_chunk(by_hand)
    # A later segment of the same window, after the first: fine.
    later = build_chunk(10, 10, [12], [2.0], {"m": ([0], [3.0])}, prefix=first.totals())
    assert decode_chunk(encode_chunk(later)).totals()["m"].count == 3


def test_empty_metrics_are_left_out_and_arrays_frozen() -> None:
    chunk = build_chunk(10, 0, [0, 1], [0.0, 1.0], {"m": ([], []), "k": ([1], [2.0])})
    assert list(chunk.columns) == ["k"]
    with pytest.raises(ValueError):
        chunk.steps[0] = 5
    assert chunk.column("k")[0].tolist() == [1]


# --------------------------------------------------------------------------
# Byte layout: contiguous steps, byte shuffling, delta coding


def test_contiguous_steps_are_stored_as_the_first_step() -> None:
    dense = build_chunk(100, 100, [100, 101, 102], [0.0] * 3, {"m": ([0], [1.0])})
    assert document(encode_chunk(dense))["steps"] == 100
    gappy = build_chunk(100, 100, [100, 102, 103], [0.0] * 3, {"m": ([0], [1.0])})
    stored = document(encode_chunk(gappy))["steps"]
    assert unframe(stored) == shuffled([100, 102, 103], delta=True)
    empty = document(encode_chunk(build_chunk(10, 0, [], [], {})))
    assert unframe(empty["steps"]) == b"" and unframe(empty["times"]) == b""


@pytest.mark.parametrize("offsets", [[0, 1, 2, 3, 4, 5, 6, 7], [0, 3, 7], [7]])
def test_steps_at_the_top_of_int64_round_trip(offsets: list[int]) -> None:
    start = INT64_MAX - 7  # the last window of 8 steps there is
    steps = [start + o for o in offsets]
    n = len(steps)
    chunk = build_chunk(8, start, steps, [0.0] * n, {"m": (range(n), [1] * n)})
    assert decode_chunk(encode_chunk(chunk), verify=True).steps.tolist() == steps


def test_a_bin_of_contiguous_steps_is_read_too() -> None:
    doc = document((GOLDEN / "dense_f8.msgpack").read_bytes())
    doc["steps"] = steps_bin([8, 9, 10, 11])
    assert decode_chunk(pack(doc), verify=True).steps.tolist() == [8, 9, 10, 11]


@pytest.mark.parametrize("first", [8, True, 8.0, None])
def test_steps_as_an_int_need_rows_an_int_and_the_window(first: Any) -> None:
    doc = document((GOLDEN / "dense_f8.msgpack").read_bytes())
    doc["steps"], doc["times"], doc["columns"] = first, frame(b""), {}
    refused(pack(doc))  # no rows, or not an int


@FAST
@given(
    st.sampled_from(["i8", "f8"]),
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(2, 40),
)
def test_steady_series_are_delta_coded_exactly(
    kind: str, first: int, step: int, n: int
) -> None:
    # An arithmetic series of bit patterns, wrapping around 64 bits: the
    # series delta coding is for, at its edges.
    patterns = [(first + i * step) % 2**64 for i in range(n)]
    if kind == "i8":
        values: list[Value] = [b - 2**64 if b >= 2**63 else b for b in patterns]
    else:
        values = [float_from_bits(b) for b in patterns]
    chunk = build_chunk(64, 0, list(range(n)), [0.0] * n, {"m": (range(n), values)})
    data = encode_chunk(chunk)
    got = as_list(decode_chunk(data, verify=True).columns["m"].values)
    assert all(same(a, b) for a, b in zip(got, values, strict=True))
    # Either way, the bytes are the ones docs/FORMAT.md describes.
    column = document(data)["columns"]["m"]
    delta = column.get("delta", False)
    assert unframe(column["values"]) == shuffled(patterns, delta=delta)


def test_noise_is_stored_plain_and_a_schedule_delta_coded() -> None:
    rng = np.random.default_rng(3)
    n = 500
    noise = (1.0 + rng.normal(0, 0.05, n)).tolist()
    schedule = (3e-4 * np.cos(np.linspace(0, np.pi / 2, n))).tolist()
    chunk = build_chunk(
        n, 0, list(range(n)), [0.0] * n,
        {"loss": (range(n), noise), "lr": (range(n), schedule)},
    )  # fmt: skip
    columns = document(encode_chunk(chunk))["columns"]
    assert "delta" not in columns["loss"] and columns["lr"]["delta"] is True
    bits_of = [struct.unpack("<Q", bits(x))[0] for x in noise]
    assert unframe(columns["loss"]["values"]) == shuffled(bits_of)


def test_delta_flag_changes_what_the_bytes_mean(valid: bytes) -> None:
    doc = document(valid)
    column = doc["columns"]["tokens"]
    flipped = not column.get("delta", False)
    if flipped:
        column["delta"] = True
    else:
        del column["delta"]
    tokens = decode_chunk(pack(doc)).columns["tokens"].value_list()
    planes = unframe(column["values"])
    expected = [as_number(i, "i8") for i in unshuffle(planes, 8, flipped)]
    assert tokens == expected != [INT64_MIN, -1, 0, 1, INT64_MAX]
    # The stored digest no longer matches: verify says so.
    refused(pack(doc), verify=True)


@pytest.mark.parametrize("folder", [GOLDEN, GOLDEN_V2], ids=["3.0", "2.0"])
def test_golden_bytes_mean_what_the_format_page_says(folder: Path) -> None:
    # unshuffle() reads the golden files one byte at a time, apart from the
    # codec, and zstandard alone opens the frames of 3.0; the codec must agree
    # with them on every value.
    for name in ("dense_f8", "sparse_kinds", "with_prefix", "float32_delta"):
        data = (folder / f"{name}.msgpack").read_bytes()
        doc, chunk = document(data), decode_chunk(data)

        def planes(blob: bytes) -> bytes:
            return unframe(blob) if folder == GOLDEN else blob

        steps: list[Value]
        times_planes = planes(doc["times"])
        if isinstance(doc["steps"], int):
            steps = list(range(doc["steps"], doc["steps"] + len(times_planes) // 8))
        else:
            items = unshuffle(planes(doc["steps"]), 8, True)
            steps = [as_number(i, "i8") for i in items]
        assert chunk.steps.tolist() == steps
        times = [float_from_bits(i) for i in unshuffle(times_planes, 8, True)]
        assert [bits(t) for t in chunk.times.tolist()] == [bits(t) for t in times]
        for metric, col in doc["columns"].items():
            if col["kind"] not in ("f8", "f4", "i8"):
                continue
            width = 4 if col["kind"] == "f4" else 8
            items = unshuffle(planes(col["values"]), width, col.get("delta", False))
            expected = [as_number(i, col["kind"]) for i in items]
            got = chunk.columns[metric].value_list()
            assert all(same(a, b) for a, b in zip(got, expected, strict=True))


def test_numbers_are_unpacked_once_whoever_reads_first() -> None:
    n = 2000
    values = np.random.default_rng(1).normal(size=n).tolist()
    data = encode_chunk(
        build_chunk(n, 0, list(range(n)), [0.0] * n, {"m": (range(n), values)})
    )
    column = decode_chunk(data).columns["m"]
    assert column.count == n and column.kind == "f8"

    seen: list[Any] = []
    threads = [
        threading.Thread(target=lambda: seen.append(column.values)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8
    assert all(np.array_equal(v, values) for v in seen)
    assert column.values is column.values  # unpacked once, then kept
    with pytest.raises(ValueError):
        column.values[0] = 1.0


def _chunk_of_every_shape(kind: str, n: int, count: int, seed: int = 7) -> bytes:
    """A chunk of ``count`` dense columns of ``kind``: random bit patterns,
    NaN payloads, -0.0, extremes, steady series (stored delta-coded)."""
    rng = np.random.default_rng(seed)
    special: list[Any] = (
        [float_from_bits(0x7FF8000000C0FFEE), -0.0, 0.0, math.inf, -math.inf]
        + [5e-324, float_from_bits(0xFFF0000000000001)]
        if kind == "f8"
        else [INT64_MIN, INT64_MAX, -1, 0, 1, 2**53 + 1, -(2**62)]
    )
    patterns = rng.integers(0, 2**64, size=(count, n), dtype=np.uint64)
    metrics: dict[str, tuple[None, list[Any]]] = {}
    for i in range(count):
        values: list[Any] = patterns[i].view(f"<{kind}").tolist()
        if i % 3 == 1:  # a steady series, which the writer delta-codes
            values = [x * 3 if kind == "i8" else x * 0.25 for x in range(n)]
        values[: len(special)] = special[:n]
        metrics[f"m{i}"] = (None, values)
    return encode_chunk(build_chunk(n, 0, list(range(n)), [0.0] * n, metrics))


@pytest.mark.parametrize("kind", ["f8", "i8"])
@pytest.mark.parametrize("count", [1, 2, 5])
def test_values_into_rows_places_every_bit_as_values_does(
    kind: str, count: int
) -> None:
    n = 300
    data = _chunk_of_every_shape(kind, n, count)
    deltas = [c.get("delta", False) for c in document(data)["columns"].values()]
    assert count < 2 or (any(deltas) and not all(deltas))
    want = np.stack([c.values for c in decode_chunk(data).columns.values()])

    # Into rows that are slices of longer ones, as a reader joins segments.
    columns = list(decode_chunk(data).columns.values())
    rows = np.zeros((count, 3 * n), dtype=want.dtype)
    values_into_rows([columns], rows[:, n : 2 * n])
    assert not rows[:, :n].any() and not rows[:, 2 * n :].any()
    assert rows[:, n : 2 * n].tobytes() == want.tobytes()

    # A column unpacked already is copied, the others unshuffled still.
    columns = list(decode_chunk(data).columns.values())
    columns[-1].values  # noqa: B018
    again = np.zeros((count, n), dtype=want.dtype)
    values_into_rows([columns], again)
    assert again.tobytes() == want.tobytes()


@pytest.mark.parametrize("kind", ["f8", "i8"])
def test_values_into_rows_places_several_segments_in_turn(kind: str) -> None:
    # Segments of one length, their columns delta-coded or not as each
    # writer chose, one already unpacked: row j holds column j of each.
    n, count = 200, 4
    chunks = [_chunk_of_every_shape(kind, n, count, seed) for seed in range(3)]
    doc = document(chunks[1])
    for col in doc["columns"].values():  # segment 1 codes the other way
        if col.get("delta"):
            del col["delta"]
        else:
            col["delta"] = True
    chunks[1] = pack(doc)
    want = np.concatenate(
        [
            np.stack([c.values for c in decode_chunk(d).columns.values()])
            for d in chunks
        ],
        axis=1,
    )

    segments = [list(decode_chunk(d).columns.values()) for d in chunks]
    rows = np.zeros((count, 5 * n), dtype=want.dtype)
    values_into_rows(segments, rows[:, n : 4 * n])
    assert not rows[:, :n].any() and not rows[:, 4 * n :].any()
    assert rows[:, n : 4 * n].tobytes() == want.tobytes()

    segments = [list(decode_chunk(d).columns.values()) for d in chunks]
    segments[2][1].values  # noqa: B018
    again = np.zeros((count, 3 * n), dtype=want.dtype)
    values_into_rows(segments, again)
    assert again.tobytes() == want.tobytes()


@pytest.mark.parametrize("sparse", [False, True])
def test_rows_hold_every_value_in_column_order(sparse: bool) -> None:
    # rows() unpacks dense float and int columns together; each row must hold
    # what each column's own values say, bit for bit, keys in column order.
    n = 50
    floats = document(_chunk_of_every_shape("f8", n, 3))["columns"]
    ints = document(_chunk_of_every_shape("i8", n, 2))["columns"]
    doc = document(_chunk_of_every_shape("f8", n, 1))
    doc["columns"] = {
        "a": floats["m0"], "b": ints["m0"], "c": floats["m1"], "d": ints["m1"],
        "e": floats["m2"], "z": doc["columns"]["m0"],
    }  # fmt: skip
    metrics: dict[str, Any] = {"flag": (None, [i % 3 == 0 for i in range(n)])}
    if sparse:
        metrics["note"] = ([1, 7, 30], ["x", "y", "z"])
    times = [1.7e9 + i / 7 for i in range(n)]
    times[3:6] = [float_from_bits(0x7FF8000000C0FFEE), -0.0, math.inf]
    extra = build_chunk(n, 0, list(range(n)), times, metrics)
    doc["columns"].update(document(encode_chunk(extra))["columns"])
    doc["times"] = document(encode_chunk(extra))["times"]
    data = pack(doc)

    want = []
    chunk = decode_chunk(data)
    for row in range(n):
        item: dict[str, Value] = {"_step": row, "_timestamp": times[row]}
        for name, col in chunk.columns.items():
            at = row if col.rows is None else np.searchsorted(col.rows, row)
            if col.rows is None or at < len(col.rows) and col.rows[at] == row:
                item[name] = col.value_list()[int(at)]
        want.append(item)
    got = list(decode_chunk(data).rows())
    assert [list(row) for row in got] == [list(row) for row in want]
    for a, b in zip(got, want, strict=True):
        assert all(same(a[key], b[key]) for key in b)


@pytest.mark.parametrize(
    "name",
    [
        '"}, __import__("os"), {"',
        'it\'s \\ "quoted"',
        "naïve ✓ 日本",
        "a\u2028b",
        "x" * 256,
    ],
)
def test_rows_of_dense_metrics_hold_their_names_as_they_are(name: str) -> None:
    # Rows of dense metrics are made by a function written for their names;
    # any name a chunk may hold is a key of those rows and nothing more.
    chunk = build_chunk(2, 0, [0, 1], [1.0, 2.0], {name: (None, [1.5, 2.5])})
    rows = list(decode_chunk(encode_chunk(chunk)).rows())
    assert rows == [
        {"_step": 0, "_timestamp": 1.0, name: 1.5},
        {"_step": 1, "_timestamp": 2.0, name: 2.5},
    ]


def test_times_are_unpacked_once_when_first_read() -> None:
    n = 1000
    times = np.random.default_rng(2).integers(0, 2**64, n, dtype=np.uint64)
    times = times.view(np.float64)
    built = build_chunk(n, 0, list(range(n)), times.tolist(), {})
    assert built.times_column().values is built.times
    chunk = decode_chunk(encode_chunk(built))

    # Packed until read; a reader of columns takes them as a column.
    packed = chunk.times_column()
    assert packed.kind == "f8" and packed.rows is None and packed.count == n
    assert "_times" in chunk.__dict__ and isinstance(chunk.__dict__["_times"], Column)
    seen: list[Any] = []
    threads = [
        threading.Thread(target=lambda: seen.append(chunk.times)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(t.tobytes() == times.tobytes() for t in seen)
    assert chunk.times is chunk.times and chunk.times_column().values is chunk.times
    with pytest.raises(ValueError):
        chunk.times[0] = 1.0
    with pytest.raises(AttributeError):
        chunk.times = times  # type: ignore[misc]


def test_values_into_rows_takes_only_columns_that_fit() -> None:
    f8 = list(decode_chunk(_chunk_of_every_shape("f8", 10, 2)).columns.values())
    i8 = list(decode_chunk(_chunk_of_every_shape("i8", 10, 1)).columns.values())
    with pytest.raises(ValueError, match="kinds"):
        values_into_rows([[f8[0], i8[0]]], np.zeros((2, 10)))
    with pytest.raises(ValueError, match="kinds"):
        values_into_rows([f8], np.zeros((2, 10), dtype=np.int64))
    words = build_chunk(1000, 0, range(10), [0.0] * 10, {"w": (None, ["a"] * 10)})
    with pytest.raises(ValueError, match="kinds"):
        values_into_rows([[words.columns["w"]]], np.zeros((1, 10)))
    halves = build_chunk(
        1000, 0, range(10), [0.0] * 10, {"h": (None, [0.5] * 10)}, float32=True
    )
    with pytest.raises(ValueError, match="kinds"):
        values_into_rows([[halves.columns["h"]]], np.zeros((1, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="do not fit"):
        values_into_rows([f8], np.zeros((2, 9)))
    with pytest.raises(ValueError, match="do not fit"):
        values_into_rows([f8], np.zeros((3, 10)))
    with pytest.raises(ValueError, match="do not fit"):
        values_into_rows([f8, f8], np.zeros((2, 30)))
    with pytest.raises(ValueError, match="do not fit"):
        values_into_rows([f8, f8[:1]], np.zeros((2, 20)))


# --------------------------------------------------------------------------
# float32 storage


def as_float32(x: float) -> float:
    """What float32 storage keeps of a float: rounded, and the one quiet NaN."""
    if math.isnan(x):
        return float_from_bits(0x7FF8000000000000)
    with np.errstate(over="ignore"):
        return float(np.float32(x))


@FAST
@given(chunk_args())
def test_float32_rounds_float_columns_and_keeps_the_rest_exact(
    args: dict[str, Any],
) -> None:
    chunk = build_chunk(**args, float32=True)
    data = encode_chunk(chunk)
    decoded = decode_chunk(data, source=SOURCE, verify=True)
    assert encode_chunk(decoded) == data
    assert [bits(t) for t in decoded.times.tolist()] == [bits(t) for t in args["times"]]

    for name, (rows, values) in args["metrics"].items():
        col = decoded.columns[name]
        got = as_list(col.values)
        if expected_kind(values) != "f8":
            assert col.kind == expected_kind(values)
            assert all(same(a, b) for a, b in zip(got, values, strict=True))
            continue
        overflows = any(math.isfinite(v) and math.isinf(as_float32(v)) for v in values)
        assert col.kind == ("f8" if overflows else "f4")
        want = values if overflows else [as_float32(v) for v in values]
        assert all(same(a, b) for a, b in zip(got, want, strict=True))
        assert isinstance(col.values, np.ndarray) and col.values.dtype == np.float64
        # The digest describes what is stored, not what was logged.
        steps = [args["steps"][r] for r in rows]
        assert_digest(decoded.digests()[name], naive_digest(steps, want))


def test_float32_special_values() -> None:
    logged = [
        -0.0, math.inf, -math.inf, float_from_bits(0xFFF8000000001234),
        float_from_bits(0x7FF0000000000001), 1e-50, -1e-50, 5e-324,
        1.401298464324817e-45, 3.4028234663852886e38, 0.1,
    ]  # fmt: skip
    n = len(logged)
    chunk = build_chunk(16, 0, list(range(n)), [0.0] * n,
                        {"m": (range(n), logged)}, float32=True)  # fmt: skip
    got = decode_chunk(encode_chunk(chunk)).columns["m"].value_list()
    nan = float_from_bits(0x7FF8000000000000)
    expected = [
        -0.0, math.inf, -math.inf, nan, nan, 0.0, -0.0, 0.0,
        1.401298464324817e-45, 3.4028234663852886e38, 0.10000000149011612,
    ]  # fmt: skip
    assert [bits(v) for v in got] == [bits(v) for v in expected]  # type: ignore[arg-type]


def test_float32_keeps_float64_where_a_value_would_become_infinite() -> None:
    chunk = build_chunk(
        10, 0, [0, 1], [0.0, 0.0],
        {"big": ([0, 1], [1.0, 3.5e38]), "fine": ([0, 1], [1.0, math.inf])},
        float32=True,
    )  # fmt: skip
    kinds = {n: c.kind for n, c in decode_chunk(encode_chunk(chunk)).columns.items()}
    assert kinds == {"big": "f8", "fine": "f4"}


def test_a_hand_made_f4_column_must_hold_float32_values() -> None:
    steps, times = np.array([0, 1]), np.zeros(2)
    good = Chunk(
        10, 0, steps, times, {"m": Column("f4", None, np.array([0.5, 2.0]))}, {}
    )
    assert decode_chunk(encode_chunk(good)).columns["m"].value_list() == [0.5, 2.0]
    bad = Chunk(
        10, 0, steps, times, {"m": Column("f4", None, np.array([0.1, 2.0]))}, {}
    )
    with pytest.raises(ValueError, match="not float32"):
        encode_chunk(bad)


# --------------------------------------------------------------------------
# Size on disk


def training_curves(n: int, start: int, seed: int = 7) -> dict[str, list[float]]:
    """Ten metrics of a run at steps start..start+n: noisy, smooth and scheduled."""
    rng = np.random.default_rng(seed)
    step = np.arange(start, start + n, dtype=np.float64)
    loss = (2.3 * np.exp(-step / 20_000) + 0.35) * (1 + rng.normal(0, 0.06, n))
    acc = rng.binomial(256, 0.95 - 0.85 * np.exp(-step / 15_000)) / 256.0
    curves = {
        "train/loss": loss,
        "train/loss_smooth": np.convolve(loss, np.ones(50) / 50, mode="same"),
        "train/acc": acc,
        "train/acc_smooth": np.convolve(acc, np.ones(50) / 50, mode="same"),
        "lr": 1.5e-4 * (1 + np.cos(np.pi * step / 100_000)),
        "grad_norm": np.exp(rng.normal(0, 0.3, n)) * (np.exp(-step / 30_000) + 0.3),
        "epoch": step / 390.625,
        "samples_per_sec": rng.normal(1200, 30, n),
        "perplexity": np.exp(loss),
        "weight_norm": 50 + 10 * np.sqrt(step / 100_000) + rng.normal(0, 1e-3, n),
    }
    return {name: values.tolist() for name, values in curves.items()}


@pytest.mark.parametrize(("float32", "most"), [(False, 6.0), (True, 3.0)])
def test_a_realistic_chunk_stays_under_the_storage_goals(
    float32: bool, most: float
) -> None:
    # Issue 5: at most 8 bytes a point on disk (4.4 with float32), where Git
    # stores each chunk zlib-compressed. Seeded data: the sizes are exact.
    n, start = 1000, 40_000
    times = 1.7e9 + np.cumsum(np.random.default_rng(2).normal(0.25, 0.01, n))
    curves = training_curves(n, start)
    chunk = build_chunk(
        n, start, list(range(start, start + n)), times.tolist(),
        {name: (range(n), values) for name, values in curves.items()},
        float32=float32,
    )  # fmt: skip
    # Chunks are stored at zlib level 0: their arrays are compressed already.
    stored = zlib.compress(encode_chunk(chunk), 0)
    assert len(stored) / (n * len(curves)) <= most


# --------------------------------------------------------------------------
# Golden files


def golden_chunks() -> dict[str, Callable[[], bytes]]:
    nan_payload = float_from_bits(0x7FF8000000C0FFEE)
    return {
        "dense_f8": lambda: encode_chunk(
            build_chunk(
                4, 8, [8, 9, 10, 11], [1.7e9, 1.7e9 + 0.5, 1.7e9 + 1, 1.7e9 + 1.5],
                {"loss": ([0, 1, 2, 3], [0.5, -0.0, math.inf, nan_payload])},
            )
        ),
        "sparse_kinds": lambda: encode_chunk(
            build_chunk(
                10, 0, [0, 2, 3, 7, 9], [1.0, 2.0, 3.0, 4.0, 5.0],
                {
                    "acc": ([1, 3], [0.25, 5e-324]),
                    "tokens": ([0, 1, 2, 3, 4], [INT64_MIN, -1, 0, 1, INT64_MAX]),
                    "best": ([4], [True]),
                    "note": ([0, 2], ["héllo", "✓ ok"]),
                    "mixed": ([0, 1, 2, 3], [None, 1, 2.5, "x"]),
                },
            )
        ),
        "with_prefix": lambda: encode_chunk(
            build_chunk(
                100, 200, [200, 201], [10.0, 11.0],
                {"loss": ([0, 1], [0.1, 0.2])},
                prefix={
                    "loss": Digest(200, 1.0, 0.15, 0, 199, 0.12, 1.0, 80.0, 200),
                    "lr": Digest(2, 0.001, 0.002, 0, 100, 0.001, 0.002, 0.003, 2),
                },
            )
        ),
        "float32_delta": lambda: encode_chunk(
            build_chunk(
                8, 16, list(range(16, 24)), [1.7e9 + 0.25 * i for i in range(8)],
                {
                    # Rounded to float32; the NaN loses its payload, 1e-50 its size.
                    "loss": (range(8), [2.5, 0.1, nan_payload, 1e-50, -0.0,
                                        math.inf, 1.1, 0.9]),
                    # Beyond float32's range: stays float64.
                    "scale": ([0, 7], [1e300, 2.0]),
                    # A steady count: stored delta-coded.
                    "tokens": (range(8), [4096 * (i + 1) for i in range(8)]),
                },
                float32=True,
            )
        ),
        "digests": lambda: encode_digests(
            {"loss": Digest(3, 1.0, math.nan, 0, 9, 0.5, 1.0, 1.5, 2)}
        ),
    }  # fmt: skip


def unshuffle(blob: bytes, width: int, delta: bool) -> list[int]:
    """The items of a byte-shuffled bin as unsigned ints, following docs/FORMAT.md.

    Written apart from gitruns.chunk, one byte at a time, so that the golden
    dumps check the codec against the format page rather than against itself.
    """
    n = len(blob) // width
    items = [
        int.from_bytes(bytes(blob[k * n + i] for k in range(width)), "little")
        for i in range(n)
    ]
    if delta:
        total = 0
        for i, item in enumerate(items):
            total = (total + item) % 2 ** (8 * width)
            items[i] = total
    return items


def as_number(item: int, kind: str) -> Value:
    """An unsigned item of a bin as the value of its kind."""
    if kind == "i8":
        return item - 2**64 if item >= 2**63 else item
    if kind == "f4":
        return float(struct.unpack("<f", item.to_bytes(4, "little"))[0])
    return float_from_bits(item)


def describe(data: bytes) -> str:
    """A readable dump of a msgpack document: bins in hex, floats with their bits.

    Byte-shuffled bins are shown one plane per line, then the values they hold;
    in a 3.x chunk, the zstd frame that holds them first.
    """
    framed = msgpack.unpackb(data, raw=False).get("gitruns.chunk", [0])[0] >= 3

    def hex_rows(blob: bytes, indent: str) -> Iterator[str]:
        for i in range(0, len(blob), 16):
            row = blob[i : i + 16]
            yield f"{indent}  {row[:8].hex()} {row[8:].hex()}".rstrip()

    def number(value: Value, kind: str) -> str:
        if not isinstance(value, float):
            return repr(value)
        if kind == "f4":
            return f"{value!r} (f4 0x{struct.pack('>f', value).hex()})"
        return f"{value!r} (0x{bits(value)[::-1].hex()})"

    def planes(blob: bytes, kind: str, delta: bool, indent: str) -> Iterator[str]:
        if framed:
            yield f"{indent}bin of {len(blob)}: one zstd frame"
            yield from hex_rows(blob, indent)
            blob = unframe(blob)
            indent += "  "
        width = 4 if kind == "f4" else 8
        n = len(blob) // width
        how = f"{n} {kind}, byte-shuffled" + (", delta-coded" if delta else "")
        yield f"{indent}{'holding' if framed else 'bin of'} {len(blob)}: {how}"
        for k in range(width):
            plane = blob[k * n : (k + 1) * n]
            for i in range(0, max(n, 1), 16):
                label = f"byte {k}:" if i == 0 else "       "
                yield f"{indent}  {label} {plane[i : i + 16].hex(' ')}".rstrip()
        yield f"{indent}  holding:"
        for item in unshuffle(blob, width, delta):
            yield f"{indent}    {number(as_number(item, kind), kind)}"

    def show(obj: Any, indent: str, role: str = "") -> Iterator[str]:
        if isinstance(obj, dict):
            if not obj:
                yield f"{indent}(empty map)"
            for key, value in obj.items():
                # Numbers sit byte-shuffled in bins; the values of str and obj
                # columns are a msgpack array in a bin; a digest is an array
                # whose fields have names.
                inner = ""
                if key == "steps" and isinstance(value, bytes):
                    inner = "i8 delta"
                elif key == "times":
                    inner = "f8 delta"
                elif key == "values" and obj.get("kind") in ("f8", "f4", "i8"):
                    inner = obj["kind"] + (" delta" if obj.get("delta") else "")
                elif key == "values" and obj.get("kind") in ("str", "obj"):
                    inner = "nested"
                elif key == "digest" or role == "digests":
                    inner = "digest"
                elif key in ("prefix", "digests"):
                    inner = "digests"
                lines = list(show(value, indent + "  ", inner))
                if len(lines) == 1 and not isinstance(value, (dict, list, bytes)):
                    yield f"{indent}{key!r}: {lines[0].strip()}"
                else:
                    yield f"{indent}{key!r}:"
                    yield from lines
        elif isinstance(obj, list):
            yield f"{indent}array of {len(obj)}"
            for i, item in enumerate(obj):
                label = f"{DIGEST_FIELDS[i]}: " if role == "digest" else ""
                for line in show(item, indent + "  "):
                    yield f"{indent}  {label}{line.strip()}"
        elif isinstance(obj, bytes) and role and role.split()[0] in ("f8", "f4", "i8"):
            kind, *delta = role.split()
            yield from planes(obj, kind, bool(delta), indent)
        elif isinstance(obj, bytes):
            yield f"{indent}bin of {len(obj)}"
            yield from hex_rows(obj, indent)
            if role == "nested":
                yield f"{indent}  holding:"
                yield from show(msgpack.unpackb(obj, raw=False), indent + "    ")
        elif isinstance(obj, float):
            yield f"{indent}{number(obj, 'f8')}"
        else:
            yield f"{indent}{obj!r}"

    return "\n".join(show(msgpack.unpackb(data, raw=False), "")) + "\n"


def write_golden() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for name, make in golden_chunks().items():
        data = make()
        (GOLDEN / f"{name}.msgpack").write_bytes(data)
        (GOLDEN / f"{name}.txt").write_text(describe(data), encoding="utf-8")


@pytest.mark.parametrize("name", sorted(golden_chunks()))
def test_golden_files_decode_and_reencode_byte_for_byte(name: str) -> None:
    if os.environ.get("GITRUNS_REGEN_GOLDEN"):
        write_golden()
    data = (GOLDEN / f"{name}.msgpack").read_bytes()

    # The encoder still writes exactly these bytes, and reads them back.
    assert golden_chunks()[name]() == data
    assert (GOLDEN / f"{name}.txt").read_text(encoding="utf-8") == describe(data)
    if name == "digests":
        assert encode_digests(decode_digests(data, source=name)) == data
    else:
        assert encode_chunk(decode_chunk(data, source=name, verify=True)) == data


@pytest.mark.parametrize("name", sorted(golden_chunks()))
def test_2_0_chunks_read_as_the_same_data_and_rewrite_as_3_0(name: str) -> None:
    # Repositories of released gitruns hold 2.0 chunks: the golden files as
    # 2.0 wrote them, plain numeric bins, still read, to the same values bit
    # for bit, and a rewrite of one (a fork's cut segment) is the 3.0 file.
    old = (GOLDEN_V2 / f"{name}.msgpack").read_bytes()
    new = (GOLDEN / f"{name}.msgpack").read_bytes()
    assert document(old)[next(iter(document(old)))][0] == 2
    assert (GOLDEN_V2 / f"{name}.txt").read_text(encoding="utf-8") == describe(old)
    if name == "digests":
        before, after = decode_digests(old), decode_digests(new)
        assert set(before) == set(after)
        for metric, digest in before.items():
            assert_digest(digest, after[metric])
        assert encode_digests(before) == new
        return

    before, after = decode_chunk(old, verify=True), decode_chunk(new, verify=True)
    assert (before.window, before.start) == (after.window, after.start)
    assert before.steps.tolist() == after.steps.tolist()
    assert before.times.tobytes() == after.times.tobytes()
    assert {n: c.kind for n, c in before.columns.items()} == {
        n: c.kind for n, c in after.columns.items()
    }
    for metric in before.columns:
        steps, values = before.column(metric)
        assert steps.tolist() == after.column(metric)[0].tolist()
        got, want = as_list(values), after.columns[metric].value_list()
        assert all(same(a, b) for a, b in zip(got, want, strict=True)), metric
    assert set(before.prefix) == set(after.prefix)
    for metric, digest in before.prefix.items():
        assert_digest(digest, after.prefix[metric])
    assert encode_chunk(before) == new


def test_golden_dense_f8_keeps_its_float_bits() -> None:
    chunk = decode_chunk((GOLDEN / "dense_f8.msgpack").read_bytes())
    got = [bits(v) for v in as_list(chunk.column("loss")[1])]  # type: ignore[arg-type]
    assert got == [
        bits(0.5),
        bits(-0.0),
        bits(math.inf),
        struct.pack("<Q", 0x7FF8000000C0FFEE),
    ]


def test_compressed_chunk_tells_3_x_chunks_by_their_first_bytes() -> None:
    # What RunStore uses to keep chunks out of zlib; a hint, so a cheap one.
    for name in ("dense_f8", "sparse_kinds", "with_prefix", "float32_delta"):
        assert compressed_chunk((GOLDEN / f"{name}.msgpack").read_bytes())
        assert not compressed_chunk((GOLDEN_V2 / f"{name}.msgpack").read_bytes())
    assert not compressed_chunk((GOLDEN / "digests.msgpack").read_bytes())
    assert not compressed_chunk(b"")
    assert not compressed_chunk(b'{"gitruns.chunk": [3, 0]}')


# --------------------------------------------------------------------------
# Versions


def document(data: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = msgpack.unpackb(data, raw=False)
    return doc


def pack(doc: dict[str, Any]) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]


@pytest.fixture
def valid() -> bytes:
    return (GOLDEN / "sparse_kinds.msgpack").read_bytes()


def test_newer_major_version_asks_for_an_upgrade(valid: bytes) -> None:
    doc = {"gitruns.chunk": [FORMAT_MAJOR + 1, 0], "something": "else entirely"}
    exc = refused(pack(doc), UnsupportedVersionError)
    assert "upgrade gitruns" in str(exc)
    assert f"{FORMAT_MAJOR + 1}.0" in str(exc)
    # Even when the rest of the document is beyond what this reader accepts.
    newer = pack({"gitruns.chunk": [FORMAT_MAJOR + 1, 3]}) + b"\xc1" * 10
    refused(newer, UnsupportedVersionError)


def test_newer_minor_version_is_read_and_unknown_fields_ignored(valid: bytes) -> None:
    doc = document(valid)
    doc["gitruns.chunk"] = [FORMAT_MAJOR, FORMAT_MINOR + 5]
    doc["future_field"] = {"anything": [1, 2, 3], "bin": b"\x00" * 100}
    for col in doc["columns"].values():
        col["future_encoding"] = "zstd-maybe"
        col["digest"].append(1.5)  # a field appended by a later minor version
    chunk = decode_chunk(pack(doc), source=SOURCE, verify=True)
    expected = decode_chunk(valid)
    assert [sorted(r.items(), key=str) for r in chunk.rows()] == [
        sorted(r.items(), key=str) for r in expected.rows()
    ]


@pytest.mark.parametrize("minor", [0, 1, 127, 128, 2**16, 2**40])
@pytest.mark.parametrize("wide", [False, True])
def test_any_minor_version_is_read_however_it_is_packed(
    valid: bytes, minor: int, wide: bool
) -> None:
    # The usual head is recognised by its bytes; anything else (a wide int,
    # a map 16 header) goes through the msgpack reader, with the same answer.
    doc = document(valid)
    doc["gitruns.chunk"] = [FORMAT_MAJOR, minor]
    data = pack(doc)
    if wide:
        data = b"\xde" + struct.pack(">H", len(doc)) + data[1:]
        major = msgpack.packb(FORMAT_MAJOR)
        data = data.replace(b"\x92" + major, b"\x92\xcc" + major, 1)
    assert decode_chunk(data).steps.tolist() == [0, 2, 3, 7, 9]


@pytest.mark.parametrize(
    "version", [[0, 9], [2], [2, 0, 0], [2, -1], ["2", 0], [2.0, 0], None, "2.0"]
)
def test_malformed_versions_are_refused(valid: bytes, version: Any) -> None:
    doc = document(valid)
    doc["gitruns.chunk"] = version
    refused(pack(doc))


def test_the_development_version_1_is_refused_as_older(valid: bytes) -> None:
    # 1.0 stored plain arrays where 2.0 stores shuffled ones: read as 2.0, its
    # bytes would be wrong numbers, so it is refused, never guessed at.
    doc = document(valid)
    doc["gitruns.chunk"] = [1, 0]
    exc = refused(pack(doc))
    assert "1.0 is older than any released gitruns wrote" in str(exc)


def test_version_entry_must_come_first(valid: bytes) -> None:
    doc = document(valid)
    doc["gitruns.chunk"] = doc.pop("gitruns.chunk")  # now last
    exc = refused(pack(doc))
    assert "first key" in str(exc)


# --------------------------------------------------------------------------
# Hostile input


def test_truncated_at_every_byte_is_refused(valid: bytes) -> None:
    for end in range(len(valid)):
        refused(valid[:end])
    refused(valid + b"\x00")


def test_not_bytes_and_oversize_are_refused() -> None:
    refused("a str")  # type: ignore[arg-type]
    exc = refused(b"\x00" * (MAX_CHUNK_BYTES + 1))
    assert "over the limit" in str(exc)


# Replacements of every type; a field keeps the ones its rule allows out.
WRONG = [None, True, -1, 2**64 - 1, 1.5, "x", b"x", [], {}, [1, 2], {"a": 1}]

TOP_FIELDS = ["window", "start", "steps", "times", "columns", "prefix"]
COLUMN_FIELDS = ["kind", "present", "delta", "values", "digest"]
DIGEST_FIELDS = [
    "count", "first", "last", "first_step", "last_step",
    "min", "max", "sum", "numeric_count",
]  # fmt: skip
DIGEST_INDEX = {name: i for i, name in enumerate(DIGEST_FIELDS)}


@pytest.mark.parametrize("field", TOP_FIELDS)
def test_wrong_types_in_top_fields_are_refused(valid: bytes, field: str) -> None:
    for wrong in WRONG:
        doc = document(valid)
        if field in ("columns", "prefix") and wrong == {}:
            continue  # no metric at all is valid
        doc[field] = wrong
        refused(pack(doc))
        del doc[field]
        refused(pack(doc))


@pytest.mark.parametrize("field", COLUMN_FIELDS)
def test_wrong_types_in_column_fields_are_refused(valid: bytes, field: str) -> None:
    for column in ["acc", "tokens", "best", "note", "mixed"]:
        for wrong in WRONG:
            doc = document(valid)
            col = doc["columns"][column]
            if field == "present" and "present" not in col and wrong is None:
                continue  # absent is how a dense column says it
            if field == "delta" and wrong is True and col["kind"] in ("f8", "i8"):
                continue  # valid: see test_delta_flag_changes_what_the_bytes_mean
            col[field] = wrong
            refused(pack(doc))


@pytest.mark.parametrize("field", DIGEST_FIELDS)
def test_wrong_types_in_digests_are_refused(valid: bytes, field: str) -> None:
    for wrong in WRONG:
        if field in ("first", "last") and (
            type(wrong) in (type(None), bool, float, str) or wrong == -1
        ):
            continue  # a value of a valid type: see the mismatch test
        if field in ("min", "max", "sum") and type(wrong) is float:
            continue
        for where in ("column", "prefix"):
            doc = document((GOLDEN / "with_prefix.msgpack").read_bytes())
            if where == "column":
                doc["columns"]["loss"]["digest"][DIGEST_INDEX[field]] = wrong
            else:
                doc["prefix"]["lr"][DIGEST_INDEX[field]] = wrong
            refused(pack(doc))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("window",), 0),
        (("window",), 2**63),
        (("start",), 7),  # not a multiple of the window
        (("start",), -10),
        (("start",), 2**63 - 10),  # window passes the int64 range
        (("steps",), b"\x00" * 7),
        (("steps",), steps_bin([0, 2, 2, 7, 9])),  # not increasing
        (("steps",), steps_bin([0, 2, 3, 7, 10])),  # outside the window
        (("steps",), steps_bin([0, 2, 3, 7])),  # 4 steps for 5 times
        (("steps",), 6),  # contiguous from 6: 6..10 passes the window
        (("steps",), -1),
        (("columns", "acc", "kind"), "f4"),  # 16 bytes are 4 float32, not 2
        (("columns", "best", "delta"), True),  # only numbers are delta-coded
        (("columns", "note", "delta"), True),
        (("columns", "acc", "delta"), 1),
        (("columns", "acc", "delta"), "yes"),
        (("times",), b"\x00" * 32),
        (("columns", "acc", "kind"), "i8"),  # kind no longer matches the digest
        (("columns", "acc", "present"), b"\x0a\x01"),  # bits past the rows
        (("columns", "acc", "present"), b"\x1f"),  # all rows: should be absent
        (("columns", "acc", "present"), b"\x00"),  # no value at all
        (("columns", "acc", "values"), b"\x00" * 8),
        (("columns", "best", "values"), b"\x02"),  # a bool byte that is not 0/1
        (("columns", "note", "values"), msgpack.packb(["a", "b", "c"])),
        (("columns", "note", "values"), msgpack.packb(["a", 1])),
        (("columns", "note", "values"), msgpack.packb(["a"]) + b"\xa1b"),
        (("columns", "note", "values"), msgpack.packb(["a", "b"]) + b"\xc0"),
        (("columns", "note", "values"), b"\x92\xa1a"),  # truncated inside
        (("columns", "mixed", "values"), msgpack.packb([None, 1, 2.5, [1]])),
        (("columns", "mixed", "values"), msgpack.packb([None, 1, 2.5, {"a": 1}])),
        (("columns", "mixed", "values"), msgpack.packb([None, 2**64 - 1, 2.5, "x"])),
        (("columns", "mixed", "values"), msgpack.packb([None, b"x", 2.5, "x"])),
        (("columns", "mixed", "values"), b"\x94\xc0\x01\xa1x\xd4\x01\x00"),  # ext
        (("columns", "acc", "digest", "count"), 3),
        (("columns", "acc", "digest", "count"), 0),
        (("columns", "acc", "digest", "first_step"), 1),
        (("columns", "acc", "digest", "last_step"), 2),
        (("columns", "acc", "digest", "first"), 1),  # an int for a float column
        (("columns", "tokens", "digest", "last"), 1.0),
        (("columns", "note", "digest", "first"), None),
        (("columns", "tokens", "digest", "numeric_count"), 4),
        (("columns", "note", "digest", "numeric_count"), 1),
        (("columns", "acc", "digest", "numeric_count"), 3),
        (("columns", "acc", "digest", "min"), None),
        (("columns", "acc", "digest", "min"), 1.0),  # min > max
        (("columns", "note", "digest", "min"), 1.0),  # stats without numbers
        (("columns", "acc", "digest", "max"), math.nan),
    ],
)  # fmt: skip
def test_inconsistent_fields_are_refused(
    valid: bytes, path: tuple[str, ...], value: Any
) -> None:
    doc = document(valid)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if isinstance(target, list):  # a digest
        target[DIGEST_INDEX[path[-1]]] = value
    else:
        target[path[-1]] = value
    refused(pack(doc))


@pytest.mark.parametrize(
    ("column", "field", "value"),
    [
        ("acc", "first", 0.5),
        ("acc", "last", -5e-324),  # the sign of a float's bits counts
        ("acc", "max", 0.5),
        ("acc", "sum", 1.25),
        ("tokens", "first", 0),
        ("tokens", "min", -1.0),
        ("best", "last", False),
        ("note", "last", "✓ ko"),
        ("mixed", "first", 1),
        ("mixed", "numeric_count", 1),
    ],
)
def test_digests_that_disagree_with_the_values_are_refused_by_verify(
    valid: bytes, column: str, field: str, value: Any
) -> None:
    doc = document(valid)
    doc["columns"][column]["digest"][DIGEST_INDEX[field]] = value
    exc = refused(pack(doc), verify=True)
    assert field in str(exc) or "first/last" in str(exc)
    # Without verify, a stored column digest is never used: the chunk's
    # digests come from its values.
    chunk = decode_chunk(pack(doc), source=SOURCE)
    assert_digest(chunk.digests()[column], decode_chunk(valid).digests()[column])


@pytest.mark.parametrize(
    "name",
    ["", "a\x00", "line\nbreak", "\x9b", "x" * (MAX_NAME_CHARS + 1), "_timestamp"],
)
def test_bad_metric_names_are_refused(valid: bytes, name: str) -> None:
    doc = document(valid)
    doc["columns"][name] = doc["columns"].pop("acc")
    refused(pack(doc))
    doc = document((GOLDEN / "with_prefix.msgpack").read_bytes())
    doc["prefix"][name] = doc["prefix"].pop("lr")
    refused(pack(doc))


def test_non_str_map_keys_are_refused(valid: bytes) -> None:
    raw = valid.replace(b"\xa3acc", b"\xc4\x03acc")  # the key "acc" as a bin
    assert raw != valid
    refused(raw)


def test_prefix_reaching_into_the_chunk_is_refused() -> None:
    doc = document((GOLDEN / "with_prefix.msgpack").read_bytes())
    doc["prefix"]["lr"][DIGEST_INDEX["last_step"]] = 200
    exc = refused(pack(doc))
    assert "prefix" in str(exc)


#: Ways a prefix digest can be malformed, each a rule decode_chunk enforces.
BAD_PREFIXES: dict[str, Callable[[dict[str, Any]], None]] = {
    "reaches into the chunk": lambda p: p["lr"].__setitem__(
        DIGEST_INDEX["last_step"], 200
    ),
    "not a digest": lambda p: p.__setitem__("lr", [1, 2]),
    "reserved name": lambda p: p.__setitem__("_step", p.pop("lr")),
    "min above max": lambda p: p["lr"].__setitem__(DIGEST_INDEX["min"], 1e9),
}


@pytest.mark.parametrize("case", sorted(BAD_PREFIXES))
def test_a_lazy_prefix_is_refused_when_first_read(case: str) -> None:
    # A reader of values never reads prefix digests; with lazy they
    # are checked when first read, and refused as decode_chunk refuses them.
    doc = document((GOLDEN / "with_prefix.msgpack").read_bytes())
    BAD_PREFIXES[case](doc["prefix"])
    data = pack(doc)
    eager = refused(data)
    refused(data, lazy=True, verify=True)  # verify checks all at once

    chunk = decode_chunk(data, source=SOURCE, lazy=True)
    good = decode_chunk((GOLDEN / "with_prefix.msgpack").read_bytes())
    assert chunk.steps.tolist() == good.steps.tolist()
    assert chunk.columns["loss"].value_list() == good.columns["loss"].value_list()
    assert repr(chunk.prefix) == "<prefix digests, not read yet>"
    for read in (
        lambda: chunk.prefix["lr"],
        lambda: len(chunk.prefix),
        lambda: list(chunk.prefix),
        lambda: "lr" in chunk.prefix,
        lambda: chunk.prefix == good.prefix,
        chunk.totals,
        lambda: encode_chunk(chunk),
    ):
        with pytest.raises(ChunkFormatError) as info:
            read()
        assert str(info.value) == str(eager)
        assert info.value.__cause__ is None


def test_a_lazy_prefix_holds_what_decode_chunk_checks_at_once() -> None:
    for name in ("with_prefix", "sparse_kinds"):
        data = (GOLDEN / f"{name}.msgpack").read_bytes()
        eager = decode_chunk(data)
        lazy = decode_chunk(data, lazy=True)
        assert set(lazy.prefix) == set(eager.prefix)
        for metric, digest in eager.prefix.items():
            assert_digest(lazy.prefix[metric], digest)
        assert repr(lazy.prefix) == repr(eager.prefix)
        assert encode_chunk(lazy) == encode_chunk(eager) == data


def test_lying_stats_are_caught_by_verify_and_never_used() -> None:
    doc = document((GOLDEN / "with_prefix.msgpack").read_bytes())
    doc["columns"]["loss"]["digest"][DIGEST_INDEX["min"]] = -100.0
    data = pack(doc)
    exc = refused(data, verify=True)
    assert "min" in str(exc)
    # Without verify the stored stats are not trusted: digests come from values.
    assert decode_chunk(data).digests()["loss"].min == 0.1


GIB = 2**30
HUGE_HEADERS = {
    "bin32": b"\xc6" + struct.pack(">I", GIB),
    "str32": b"\xdb" + struct.pack(">I", GIB),
    "array32": b"\xdd\xff\xff\xff\xff",
    "map32": b"\xdf\xff\xff\xff\xff",
    "ext32": b"\xc9" + struct.pack(">I", GIB) + b"\x01",
    "array16x1000": b"\xdc\xff\xff" * 1000,
    "array32x1000": b"\xdd\x00\x0f\x42\x40" * 1000,
    "map16x1000": b"\xde\xff\xff\xa1a" * 1000,
}


@pytest.mark.parametrize("header", sorted(HUGE_HEADERS))
@pytest.mark.parametrize("where", ["top", "field", "value", "nested"])
def test_huge_declared_lengths_allocate_nothing(
    valid: bytes, header: str, where: str
) -> None:
    raw = HUGE_HEADERS[header]
    doc = document(valid)
    if where == "top":
        data = raw
    elif where == "field":
        doc["window"] = b"@@HOLE@@"
        data = splice(doc, raw)
    elif where == "value":
        data = splice({"gitruns.chunk": [FORMAT_MAJOR, 0], "steps": b"@@HOLE@@"}, raw)
    else:  # inside the nested array of a str column
        doc["columns"]["note"]["values"] = b"\x92\xa1a" + raw
        data = pack(doc)

    tracemalloc.start()
    try:
        refused(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"{peak} bytes traced"


@pytest.mark.parametrize(
    "unit", [b"\x91", b"\x81\xa1a", b"\xdc\x00\x01", b"\x92\xc0"], ids=repr
)
def test_deep_nesting_is_refused(valid: bytes, unit: bytes) -> None:
    deep = unit * 100_000 + b"\xc0"
    tracemalloc.start()
    try:
        refused(deep)
        refused(
            splice({"gitruns.chunk": [FORMAT_MAJOR, 0], "prefix": b"@@HOLE@@"}, deep)
        )
        doc = document(valid)
        doc["columns"]["mixed"]["values"] = b"\x94" + deep
        refused(pack(doc))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


def _traced_peak(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# Entries that cost far more as Python objects than as msgpack: an array of
# 64 empty maps (a dict each), and a map of distinct short keys.
_EMPTY_MAPS = b"\xdc\x00\x40" + b"\x80" * 64
_MANY_KEYS = b"\xde\xff\xff" + b"".join(
    msgpack.packb(f"{i:x}") + b"\xc0" for i in range(0xFFFF)
)


def _junk(unit: bytes, count: int) -> bytes:
    # A map of ``count`` entries, each ``unit``: megabytes that would decode
    # to hundreds of megabytes of dicts.
    head = b"\xdf" + struct.pack(">I", count)
    return head + b"".join(msgpack.packb(f"k{i:05d}") + unit for i in range(count))


@pytest.mark.parametrize("unit", [_EMPTY_MAPS, _MANY_KEYS], ids=["maps", "keys"])
def test_unknown_entries_are_skipped_without_being_built(
    valid: bytes, unit: bytes
) -> None:
    # Keys of a later minor version are ignored: a value under an unknown key
    # of the document is skipped by the msgpack reader, so hostile bulk
    # there costs no memory.
    doc = document(valid)
    doc["future"] = b"@@HOLE@@"
    data = splice(doc, _junk(unit, 16_000 if unit == _EMPTY_MAPS else 40))
    assert len(data) > 2**20

    chunks = []
    peak = _traced_peak(lambda: chunks.append(decode_chunk(data, source=SOURCE)))
    assert chunks[0].steps.tolist() == [0, 2, 3, 7, 9]
    assert peak < 3 * len(data), f"{peak} bytes traced for {len(data)}"


@pytest.mark.parametrize("unit", [_EMPTY_MAPS, _MANY_KEYS], ids=["maps", "keys"])
def test_a_map_under_an_unknown_column_key_is_refused_unbuilt(
    valid: bytes, unit: bytes
) -> None:
    # A column is a small map holding no map (docs/FORMAT.md, sections 8 and
    # 10): a new key of a column holds a value, and bulk goes in a bin.
    doc = document(valid)
    doc["columns"]["acc"]["future"] = b"@@HOLE@@"
    data = splice(doc, _junk(unit, 16_000 if unit == _EMPTY_MAPS else 40))
    peak = _traced_peak(lambda: refused(data))
    assert peak < 3 * len(data), f"{peak} bytes traced for {len(data)}"

    doc = document(valid)
    doc["columns"]["acc"].update({f"future{i}": i for i in range(16)})
    assert "exceeds max_map_len(16)" in refused(pack(doc)).reason


def test_arrays_are_counted_where_they_are_built(valid: bytes) -> None:
    # Digests are the arrays a decode builds; extra elements (fields of a
    # later minor version) are built too, so arrays are counted in all.
    doc = document(valid)
    nest = b"\x90"  # 64 ** 3 empty arrays, three levels down
    for _ in range(3):
        nest = b"\xdc\x00\x40" + nest * 64
    doc["columns"]["acc"]["digest"].append(b"@@HOLE@@")
    data = splice(doc, nest)
    exc = refused(data)
    assert "arrays" in exc.reason
    # (Fewer bytes could not hold more arrays than the limit: not counted.)
    assert len(data) > 2 * MAX_METRICS + 64


@pytest.mark.parametrize(
    "field, value",
    [("window", {"a": 1}), ("steps", {"b": 2, "c": 3}), ("times", {"x": b""})],
)
def test_a_map_where_a_value_belongs_is_refused(
    valid: bytes, field: str, value: Any
) -> None:
    doc = document(valid)
    doc[field] = value
    assert "a map where the format has a value" in refused(pack(doc)).reason


def test_decoder_messages_say_what_is_wrong(valid: bytes) -> None:
    # Deep nesting: msgpack's own error has no text.
    deep = splice(
        {"gitruns.chunk": [FORMAT_MAJOR, 0], "prefix": b"@@HOLE@@"},
        b"\x81\xa1a" + b"\x91" * 100_000 + b"\xc0",
    )
    assert "nested more than 1024 deep" in refused(deep).reason

    # A nested values array whose header lies: wrapped once, not twice.
    doc = document(valid)
    doc["columns"]["note"]["values"] = b"\xdd\xff\xff\xff\xff"
    exc = refused(pack(doc))
    assert str(exc).count("bad metric chunk") == 1
    assert "present rows" in exc.reason

    assert refused(valid[: len(valid) // 2]).reason


# --------------------------------------------------------------------------
# Hostile zstd frames (format 3.0): every one is refused before it costs more
# memory than the array its chunk says it holds.

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_block(kind: int, size: int, payload: bytes, last: bool = True) -> bytes:
    """A zstd block: its 3-byte header (last flag, type, size), then its bytes."""
    return ((size << 3) | (kind << 1) | int(last)).to_bytes(3, "little") + payload


def zstd_header(
    content: int,
    *,
    window_log: int | None = None,
    dict_id: int | None = None,
    checksum: bool = False,
) -> bytes:
    """A zstd frame header, by hand (RFC 8878, section 3.1.1.1).

    Single-segment (no window descriptor) unless ``window_log`` is given; the
    content size takes 1 byte below 256 in a single segment, else 8.
    """
    small = window_log is None and content < 256
    descriptor = (0 if small else 3 << 6) | (window_log is None) << 5
    descriptor |= checksum << 2 | (0 if dict_id is None else 3)
    out = ZSTD_MAGIC + bytes([descriptor])
    if window_log is not None:
        out += bytes([(window_log - 10) << 3])
    if dict_id is not None:
        out += struct.pack("<I", dict_id)
    return out + (bytes([content]) if small else struct.pack("<Q", content))


def raw_frame(planes: bytes, declared: int | None = None, **header: Any) -> bytes:
    """One frame of one raw block holding ``planes``, declaring ``declared`` bytes."""
    size = len(planes) if declared is None else declared
    return zstd_header(size, **header) + zstd_block(0, len(planes), planes)


def skippable(payload: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A5F, len(payload)) + payload


#: name -> (the bin made of the planes it should hold, what the refusal says).
FRAME_ATTACKS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "bad magic": (lambda p: b"\x28\xb5\x2f\xfe" + frame(p)[4:],
                  "is not a zstd frame (it starts 28 b5 2f fe)"),
    "plain bin": (lambda p: p, "is not a zstd frame"),
    "empty bin": (lambda p: b"", "is not a zstd frame (it starts empty)"),
    "header cut short": (lambda p: frame(p)[:5], "not enough data for frame"),
    "size mismatch": (lambda p: frame(p + p[:8]),
                      "declares {more} bytes where the chunk holds {n}"),
    "no content size": (
        lambda p: zstandard.ZstdCompressor(write_content_size=False).compress(p),
        "the zstd frame does not declare its content size"),
    "truncated": (lambda p: frame(p)[:-1], "is not one valid zstd frame"),
    "trailing bytes": (lambda p: frame(p) + b"\x00", "1 bytes of unused data"),
    "skippable frame": (lambda p: skippable(p),
                        "is a skippable zstd frame, which holds no data"),
    "skippable, then data": (lambda p: skippable(b"") + frame(p),
                             "is a skippable zstd frame"),
    "dictionary id": (lambda p: raw_frame(p, dict_id=7),
                      "the zstd frame needs zstd dictionary 7; chunks use none"),
    "several frames": (lambda p: frame(p) + frame(b""), "of unused data"),
    "two frames of halves": (lambda p: frame(p[:8]) + frame(p[8:]),
                             "declares 8 bytes where the chunk holds {n}"),
    "content shorter than declared": (
        lambda p: zstd_header(len(p)) + zstd_block(0, 8, p[:8]),
        "is not one valid zstd frame (decompression error"),
    "content longer than declared": (
        lambda p: zstd_header(len(p)) + zstd_block(0, len(p) + 8, p + p[:8]),
        "is not one valid zstd frame (decompression error"),
    "no last block": (lambda p: zstd_header(len(p)) + zstd_block(0, len(p), p, False),
                      "did not decompress full frame"),
    "reserved block type": (lambda p: zstd_header(len(p)) + zstd_block(3, len(p), p),
                            "is not one valid zstd frame (decompression error"),
    "corrupt block": (lambda p: zstd_header(len(p)) + zstd_block(2, 10, b"\xff" * 10),
                      "is not one valid zstd frame (decompression error"),
    "bad checksum": (lambda p: raw_frame(p, checksum=True) + b"\x00" * 4,
                     "checksum"),
    "huge window": (lambda p: raw_frame(p, window_log=30),
                    "asks for a window of 1073741824 bytes, over 8388608"),
    # A few bytes that would inflate to a terabyte.
    "decompression bomb": (
        lambda p: zstd_header(2**40) + zstd_block(1, 2**17 - 1, b"\x00", last=False),
        f"declares {2**40} bytes where the chunk holds {{n}}"),
}  # fmt: skip


@pytest.mark.parametrize("attack", sorted(FRAME_ATTACKS))
@pytest.mark.parametrize("where", ["values", "steps", "times"])
def test_hostile_frames_are_refused_with_a_reason(
    valid: bytes, attack: str, where: str
) -> None:
    doc = document(valid)
    if where == "values":
        holder, key, what = doc["columns"]["acc"], "values", "metric 'acc': values"
    else:
        holder, key, what = doc, where, where
    planes = unframe(holder[key])
    n = len(planes)
    make, reason = FRAME_ATTACKS[attack]
    if where == "times" and "where the chunk holds" in reason:
        # Times say how many rows there are: a frame of another size means
        # another number of rows, which the steps then contradict.
        what, reason = {
            "size mismatch": ("steps", "where the chunk holds {more}"),
            "two frames of halves": ("times", "unused data"),
            "decompression bomb": ("times", "where the chunk holds at most 8000000"),
        }[attack]
    holder[key] = make(planes)

    peak = _traced_peak(lambda: refused(pack(doc)))
    exc = refused(pack(doc))
    assert what in exc.reason
    assert reason.format(n=n, more=n + 8) in exc.reason, exc.reason
    assert peak < 2**20, f"{peak} bytes traced"


#: The attacks a frame's header shows: a lazy decode refuses them at once.
HEADER_ATTACKS = {
    "bad magic", "plain bin", "empty bin", "header cut short", "size mismatch",
    "no content size", "skippable frame", "skippable, then data", "dictionary id",
    "two frames of halves", "huge window", "decompression bomb",
}  # fmt: skip


def test_every_header_attack_is_a_frame_attack() -> None:
    # A misspelt name would silently move an attack to the other branch.
    assert FRAME_ATTACKS.keys() >= HEADER_ATTACKS


@pytest.mark.parametrize("attack", sorted(FRAME_ATTACKS))
@pytest.mark.parametrize("where", ["values", "steps", "times"])
def test_a_lazy_decode_refuses_a_hostile_frame_when_it_is_read(
    valid: bytes, attack: str, where: str
) -> None:
    # decode_chunk(lazy=True) checks a frame's header and counts what it
    # declares; the rest of a frame of the values (or times) is checked when
    # they are first read, by any way of reading them, with the error an
    # eager decode raises. Steps are checked at once, as the layout needs.
    doc = document(valid)
    holder, key = (
        (doc["columns"]["acc"], "values") if where == "values" else (doc, where)
    )
    holder[key] = FRAME_ATTACKS[attack][0](unframe(holder[key]))
    data = pack(doc)
    eager = refused(data)
    if attack in HEADER_ATTACKS or where == "steps":
        lazily = refused(data, lazy=True)
        # (A times frame's header says how many rows there are, which the
        # steps may contradict first.)
        assert where == "times" or str(lazily) == str(eager)
        return

    chunk = decode_chunk(data, source=SOURCE, lazy=True)
    good = decode_chunk(valid)
    reads: list[Callable[[], object]] = [lambda: list(chunk.rows())]
    if where == "times":
        reads += [lambda: chunk.times, chunk.times_column().value_list]
        assert chunk.steps.tolist() == good.steps.tolist()
    else:
        col = chunk.columns["acc"]
        out = np.empty((1, col.count), dtype=col.dtype)
        reads += [lambda: col.values, lambda: col.values_into(out[0])]
        reads += [lambda: values_into_rows([[col]], out), chunk.digests]
        assert chunk.times.tobytes() == good.times.tobytes()
    for name, other in chunk.columns.items():
        if name != "acc":
            assert as_list(other.values) == as_list(good.columns[name].values)
    for read in reads:
        peak = _traced_peak(lambda: refused_by(read))  # noqa: B023
        assert str(refused_by(read)) == str(eager)  # noqa: B023
        assert peak < 2**20, f"{peak} bytes traced"


def refused_by(read: Callable[[], object]) -> ChunkFormatError:
    """Assert ``read()`` raises exactly ChunkFormatError, naming SOURCE."""
    with pytest.raises(ChunkFormatError) as info:
        read()
    assert type(info.value) is ChunkFormatError, info.value
    assert SOURCE in str(info.value) and info.value.__cause__ is None
    return info.value


def test_a_valid_frame_of_another_shape_reads_the_same() -> None:
    # The format asks for one frame of the right content, not zstandard's
    # bytes: a raw block, a frame with a window descriptor or a checksum, an
    # 8-byte content size, another level all read the same.
    data = (GOLDEN / "sparse_kinds.msgpack").read_bytes()
    expected = decode_chunk(data, verify=True).columns["acc"].value_list()
    planes = unframe(document(data)["columns"]["acc"]["values"])
    params = zstandard.ZstdCompressionParameters.from_level(
        19, window_log=20, write_checksum=True, write_content_size=True
    )
    for shape in (
        raw_frame(planes),
        raw_frame(planes, window_log=20),
        zstandard.ZstdCompressor(compression_params=params).compress(planes),
        zstandard.ZstdCompressor(level=-7, write_content_size=True).compress(planes),
    ):
        doc = document(data)
        doc["columns"]["acc"]["values"] = shape
        got = decode_chunk(pack(doc), verify=True).columns["acc"].value_list()
        assert [bits(v) for v in got] == [bits(v) for v in expected]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("times", "reason"),
    [
        (frame(b"\x00" * 41), "times is 41 bytes, not 8 * n"),
        (frame(b"") + b"junk", "times is not one complete zstd frame and nothing else"),
        (frame(b"")[:-1], "times is not one complete zstd frame and nothing else"),
        (frame(b"")[:-3] + b"\xff\xff\xff", "times is not one valid zstd frame"),
        (zstd_header(0) + zstd_block(0, 8, b"\x00" * 8), "not one valid zstd frame"),
    ],
)
def test_times_frames_say_how_many_rows_there_are(times: bytes, reason: str) -> None:
    # An empty frame is answered without being read by zstandard's one-shot
    # call: an empty chunk's frames are read as a stream, to the end.
    empty = document(encode_chunk(build_chunk(10, 0, [], [], {})))
    assert decode_chunk(pack(empty)).steps.tolist() == []
    empty["times"] = times
    assert reason in refused(pack(empty)).reason


def test_frames_that_inflate_past_the_chunk_limit_are_refused() -> None:
    # Each frame declares what its array needs (a million rows), so each
    # passes its own check; together they would inflate to 88 MB from a few
    # kilobytes. What a chunk's frames declare is counted before each is
    # inflated, so decoding stops at the limit a chunk's bytes have.
    n = 1_000_000
    zeros = frame(b"\x00" * 8 * n)
    digest = [n, 0.0, 0.0, 0, n - 1, 0.0, 0.0, 0.0, n]
    column = {"kind": "f8", "values": zeros, "digest": digest}
    doc = {
        "gitruns.chunk": [FORMAT_MAJOR, 0],
        "window": n,
        "start": 0,
        "steps": 0,
        "times": zeros,
        "columns": {f"m{i}": column for i in range(10)},
        "prefix": {},
    }
    data = pack(doc)
    assert len(data) < 20_000
    peak = _traced_peak(lambda: refused(data))
    assert (
        "inflate to over 67108864 bytes, the limit of a chunk" in refused(data).reason
    )
    assert peak < 100 * 2**20, f"{peak} bytes traced"
    # Under the limit, the same frames are a valid chunk.
    doc["columns"] = {f"m{i}": column for i in range(5)}
    chunk = decode_chunk(pack(doc), source=SOURCE, verify=True)
    assert chunk.columns["m4"].count == n


def test_the_version_says_how_numeric_bins_are_read() -> None:
    # A 3.0 chunk relabelled 2.0 holds frames where plain bins belong, and a
    # 2.0 chunk relabelled 3.0 plain bins where frames belong: neither is read
    # as numbers.
    new = document((GOLDEN / "sparse_kinds.msgpack").read_bytes())
    new["gitruns.chunk"] = [2, 0]
    assert "times is" in refused(pack(new)).reason
    old = document((GOLDEN_V2 / "sparse_kinds.msgpack").read_bytes())
    old["gitruns.chunk"] = [3, 0]
    assert "times is not a zstd frame" in refused(pack(old)).reason
    # Any 2.x minor version still reads as 2.0.
    old["gitruns.chunk"] = [2, 9]
    assert decode_chunk(pack(old)).steps.tolist() == [0, 2, 3, 7, 9]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["times", "tokens", "acc"]),
    st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=3
    ),
)
def test_fuzz_mutated_frames(where: str, edits: list[tuple[int, int]]) -> None:
    doc = document((GOLDEN / "sparse_kinds.msgpack").read_bytes())
    holder = doc if where == "times" else doc["columns"][where]
    key = "times" if where == "times" else "values"
    blob = bytearray(holder[key])
    for pos, byte in edits:
        blob[pos % len(blob)] = byte
    holder[key] = bytes(blob)
    decodes_or_refuses(pack(doc))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    decodes_or_refuses(data)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["dense_f8", "sparse_kinds", "with_prefix", "float32_delta"]),
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4
    ),
    st.sampled_from(["replace", "insert", "delete"]),
)
def test_fuzz_mutated_valid_chunks(
    name: str, edits: list[tuple[int, int]], how: str
) -> None:
    data = bytearray((GOLDEN / f"{name}.msgpack").read_bytes())
    for pos, byte in edits:
        pos %= len(data)
        if how == "replace":
            data[pos] = byte
        elif how == "insert":
            data.insert(pos, byte)
        else:
            del data[pos]
    assume(bytes(data) != (GOLDEN / f"{name}.msgpack").read_bytes())
    decodes_or_refuses(bytes(data))


if __name__ == "__main__":
    if "--regen" in sys.argv:
        write_golden()
        print(f"wrote {len(golden_chunks())} golden files to {GOLDEN}")
    else:
        print(__doc__)


def _with_a_key_twice(data: bytes, path: tuple[str, ...], key: str) -> bytes:
    """Re-pack a document with ``key`` of the map at ``path`` given a second time.

    The second copy is an empty map or zero, after the first: a reader that
    keeps the last value (msgpack's dicts) would read other data.
    """

    def pack_map(pairs: list[tuple[Any, Any]], where: tuple[str, ...]) -> bytes:
        count = len(pairs) + (where == path and any(k == key for k, _ in pairs))
        head = (
            bytes([0x80 | count]) if count < 16 else b"\xde" + struct.pack(">H", count)
        )
        out = [head]
        for k, v in pairs:
            out.append(msgpack.packb(k, use_bin_type=True))
            out.append(pack(v, (*where, k)))
            if where == path and k == key:
                out.append(msgpack.packb(k, use_bin_type=True))
                out.append(msgpack.packb({} if isinstance(v, list) else 0))
        return b"".join(out)

    def pack(value: Any, where: tuple[str, ...]) -> bytes:
        if isinstance(value, list) and all(
            isinstance(p, tuple) and len(p) == 2 for p in value
        ):
            return pack_map(value, where)
        return msgpack.packb(value, use_bin_type=True)

    doc = msgpack.unpackb(
        data,
        raw=False,
        object_pairs_hook=lambda pairs: list(pairs),
        strict_map_key=False,
    )
    return pack_map(doc, ())


@pytest.mark.parametrize(
    ("path", "key"),
    [((), "columns"), (("columns",), "loss"), (("columns", "loss"), "values")],
)
def test_a_map_holding_a_key_twice_is_refused(path: tuple[str, ...], key: str) -> None:
    chunk = build_chunk(10, 0, [0, 1, 2], [0.0] * 3, {"loss": ([0, 1, 2], [1.0] * 3)})
    data = encode_chunk(chunk)
    assert decode_chunk(_with_a_key_twice(data, (), "nothing-here"), source=SOURCE)
    error = refused(_with_a_key_twice(data, path, key))
    assert "holds a key twice" in str(error)
