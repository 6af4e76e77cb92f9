"""Turn benchmark results into ratios, goal verdicts and plain-text tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common import Result

#: Bytes of one float64 value: the raw storage floor the goals refer to.
FLOAT64_BYTES = 8

PEERS = ("wandb", "tensorboardx", "mlflow")
FLOORS = ("floor-msgpack", "floor-dulwich")


def logging_rows(results: Result) -> dict[tuple[str, str], Result]:
    """Index the logging results by (workload label, tool)."""
    return {(row["label"], row["tool"]): row for row in results.get("logging", [])}


def _ok(row: Result | None) -> bool:
    return row is not None and row.get("status") == "ok"


def ratios(results: Result) -> list[Result]:
    """Per workload: gitruns against each floor and each peer, same run.

    A ratio above 1 means gitruns is faster (or smaller) than the other tool
    for the peer rows, and slower (or larger) for the floor rows.
    """
    rows = logging_rows(results)
    out: list[Result] = []
    for label in dict.fromkeys(label for label, _ in rows):
        ours = rows.get((label, "gitruns"))
        if not _ok(ours):
            continue
        assert ours is not None
        for tool in (*FLOORS, *PEERS):
            other = rows.get((label, tool))
            if not _ok(other):
                continue
            assert other is not None
            entry: Result = {"workload": label, "tool": tool}
            if tool in FLOORS:
                entry["time_gitruns_over_tool"] = (
                    ours["us_per_point"] / other["us_per_point"]
                )
            else:
                entry["time_tool_over_gitruns"] = (
                    other["us_per_point"] / ours["us_per_point"]
                )
                ours_b = ours.get("storage", {}).get("bytes_per_point")
                theirs = other.get("storage", {}).get("bytes_per_point")
                if ours_b and theirs:
                    entry["bytes_tool_over_gitruns"] = theirs / ours_b
            out.append(entry)
    return out


def _goal(
    name: str, measured: float | None, target: str, met: bool | None, note: str = ""
) -> Result:
    return {
        "goal": name,
        "measured": measured,
        "target": target,
        "met": met if measured is not None else None,
        "note": note,
    }


def goals(results: Result) -> list[Result]:
    """The issue's goals, each with the figure measured in this run."""
    rows = logging_rows(results)
    ours = {
        label: r for (label, tool), r in rows.items() if tool == "gitruns" and _ok(r)
    }
    out: list[Result] = []

    def worst(
        values: Sequence[tuple[str, float]], high: bool = True
    ) -> tuple[float | None, str]:
        if not values:
            return None, "not measured"
        label, value = (max if high else min)(values, key=lambda kv: kv[1])
        return value, f"worst case: {label}"

    # Logging speed against the msgpack floor and W&B offline.
    floor = [
        (label, r["us_per_point"] / rows[(label, "floor-msgpack")]["us_per_point"])
        for label, r in ours.items()
        if _ok(rows.get((label, "floor-msgpack")))
    ]
    value, note = worst(floor)
    out.append(
        _goal(
            "logging time vs raw msgpack floor",
            value,
            "<= 2x",
            value is not None and value <= 2,
            note,
        )
    )
    wandb = [
        (label, rows[(label, "wandb")]["us_per_point"] / r["us_per_point"])
        for label, r in ours.items()
        if _ok(rows.get((label, "wandb")))
    ]
    value, note = worst(wandb, high=False)
    out.append(
        _goal(
            "logging speed-up over W&B offline",
            value,
            ">= 50x",
            value is not None and value >= 50,
            note,
        )
    )
    # The goal is about window boundaries, where a writer that commits per
    # window pauses; the slowest call anywhere is shown beside it, with the
    # plain-list floor's, which measures the machine's own noise (scheduling,
    # other tenants, the allocator) that no writer controls.
    edges = [
        (label, r["latency"]["boundary_max_us"] / r["latency"]["median_us"])
        for label, r in ours.items()
        if r.get("latency")
        and r["latency"].get("boundary_max_us")
        and r["latency"].get("median_us")
    ]
    value, note = worst(edges)
    pauses = [
        (label, r["latency"]["max_over_median"])
        for label, r in ours.items()
        if r.get("latency") and r["latency"].get("max_over_median")
    ]
    anywhere, where = worst(pauses)
    floor_pauses = [
        r["latency"]["max_over_median"]
        for (label, tool), r in rows.items()
        if tool == "floor-msgpack"
        and label == where.removeprefix("worst case: ")
        and _ok(r)
        and r.get("latency")
        and r["latency"].get("max_over_median")
    ]
    if anywhere is not None:
        note += f"; slowest call anywhere {anywhere:.3g}x ({where.split(': ')[-1]}"
        if floor_pauses:
            note += f", floor-msgpack there {floor_pauses[0]:.3g}x"
        note += ")"
    out.append(
        _goal(
            "longest pause at a window boundary vs median call",
            value,
            "<= 10x",
            value is not None and value <= 10,
            note,
        )
    )

    # Storage against the float64 floor and the peers.
    for key, what in (
        ("bytes_per_point", "as written"),
        ("gc_bytes_per_point", "after git gc"),
    ):
        sizes = [
            (label, r["storage"][key] / FLOAT64_BYTES)
            for label, r in ours.items()
            if r.get("storage", {}).get(key)
        ]
        value, note = worst(sizes)
        out.append(
            _goal(
                f"bytes/point vs float64, {what}",
                value,
                "<= 1.0x",
                value is not None and value <= 1.0,
                note,
            )
        )
    f32 = results.get("float32", {})
    if _ok(f32):
        value = f32["storage"]["bytes_per_point"] / FLOAT64_BYTES
        out.append(
            _goal(
                "bytes/point vs float64, float32 mode",
                value,
                "<= 0.55x",
                value <= 0.55,
                f32.get("label", ""),
            )
        )
    else:
        out.append(
            _goal(
                "bytes/point vs float64, float32 mode",
                None,
                "<= 0.55x",
                None,
                f32.get("reason", "not measured"),
            )
        )
    smaller = [
        (
            f"{label}, {tool}",
            rows[(label, tool)]["storage"]["bytes_per_point"]
            / r["storage"]["bytes_per_point"],
        )
        for label, r in ours.items()
        for tool in PEERS
        if _ok(rows.get((label, tool))) and r.get("storage")
    ]
    value, note = worst(smaller, high=False)
    out.append(
        _goal(
            "peer bytes/point over gitruns",
            value,
            ">= 5x",
            value is not None and value >= 5,
            note,
        )
    )

    # Fork cost at 1M steps against 1k steps.
    forks = {f["steps"]: f for f in results.get("fork", []) if _ok(f)}
    if len(forks) >= 2:
        small, large = forks[min(forks)], forks[max(forks)]
        span = f"{large['label']} vs {small['label']}"
        t = large["seconds"] / small["seconds"]
        b = large["bytes_added"] / max(1, small["bytes_added"])
        out.append(
            _goal("fork time, longest vs shortest run", t, "<= 2x", t <= 2, span)
        )
        out.append(
            _goal("fork bytes, longest vs shortest run", b, "<= 2x", b <= 2, span)
        )
    else:
        out.append(_goal("fork time, longest vs shortest run", None, "<= 2x", None))
        out.append(_goal("fork bytes, longest vs shortest run", None, "<= 2x", None))

    # Reads: columnar vs raw decode, scan_history vs columnar.
    read = {(r["variant"], r["one"]): r for r in results.get("read", []) if _ok(r)}
    for one, what in ((False, "full history"), (True, "one metric")):
        raw, cols, scan = (
            read.get((v, one)) for v in ("raw", "columns", "scan_history")
        )
        value = cols["seconds"] / raw["seconds"] if cols and raw else None
        out.append(
            _goal(
                f"columnar read vs raw msgpack decode, {what}",
                value,
                "<= 2x",
                value is not None and value <= 2,
            )
        )
        value = scan["seconds"] / cols["seconds"] if scan and cols else None
        out.append(
            _goal(
                f"scan_history() vs columnar read, {what}",
                value,
                "<= 5x",
                value is not None and value <= 5,
            )
        )

    # Memory: traced peak of the longest run against the next longest, past
    # the writer's backlog bound; the shortest shows the ramp up to it.
    mem = [m for m in results.get("memory", []) if _ok(m)]
    if len(mem) >= 2:
        small, large = mem[-2], mem[-1]
        value = large["traced_peak_bytes"] / small["traced_peak_bytes"]
        ramp = large["traced_peak_bytes"] / mem[0]["traced_peak_bytes"]
        note = f"{large['label']} vs {small['label']}"
        if len(mem) > 2:
            note += f"; vs {mem[0]['label']}: {ramp:.3g}x"
        out.append(
            _goal(
                "logging memory, longest vs next longest run",
                value,
                "<= 1.5x",
                value <= 1.5,
                note,
            )
        )
    else:
        out.append(
            _goal("logging memory, longest vs next longest run", None, "<= 1.5x", None)
        )

    # Listing against git for-each-ref.
    listing = results.get("listing", {})
    if _ok(listing.get("gitruns")) and _ok(listing.get("git")):
        value = listing["gitruns"]["seconds"] / listing["git"]["seconds"]
        out.append(
            _goal(
                "listing runs vs git for-each-ref",
                value,
                "<= 2x",
                value <= 2,
                f"{listing['runs']} runs",
            )
        )
    else:
        out.append(_goal("listing runs vs git for-each-ref", None, "<= 2x", None))
    return out


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain, aligned text table (markdown-compatible)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    # Numbers align right so their magnitudes line up; words align left.
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
        for i in range(len(header))
    ]

    def line(row: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if num else c.ljust(w)
                for c, w, num in zip(row, widths, numeric, strict=True)
            )
            + " |"
        )

    lines = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines.extend(line(row) for row in cells)
    return "\n".join(lines)


def render(results: Result) -> str:
    """Every section of the results as text, in the order the issue lists them."""
    parts: list[str] = []
    meta = results.get("meta", {})
    parts.append(
        f"gitruns benchmark ({results.get('profile')}), {meta.get('cpu')}, "
        f"{meta.get('cores')} cores, Python {meta.get('python')}, "
        f"{meta.get('date')}; medians of {results.get('repeats_note')}"
    )
    source = meta.get("gitruns") or {}
    if source:
        dirty = " + uncommitted edits" if source.get("dirty") else ""
        parts[-1] += f"\ngitruns at {str(source.get('commit'))[:10]}{dirty}"

    logs = results.get("logging", [])
    ok = [r for r in logs if r["status"] == "ok"]
    parts.append(
        "## logging: end to end (log calls + commits + close)\n"
        + table(
            ["workload", "tool", "version", "µs/call", "µs/point", "init s", "status"],
            [
                [
                    r["label"],
                    r["tool"],
                    r.get("version", ""),
                    r.get("us_per_call"),
                    r.get("us_per_point"),
                    r.get("init_seconds"),
                    r["status"]
                    + (f": {r['reason'][:60]}" if r["status"] != "ok" else ""),
                ]
                for r in logs
            ],
        )
    )
    parts.append(
        "## log() latency per call (edge: a call that opens or closes a window, "
        "after the first; first: the run's first call)\n"
        + table(
            [
                "workload",
                "tool",
                "p50 µs",
                "p99 µs",
                "p99.9 µs",
                "first µs",
                "max edge µs",
                "edge/p50",
                "max other µs",
                "max/p50",
            ],
            [
                [
                    r["label"],
                    r["tool"],
                    lat.get("median_us"),
                    lat.get("p99_us"),
                    lat.get("p999_us"),
                    lat.get("first_us"),
                    lat.get("boundary_max_us"),
                    (lat.get("boundary_max_us") or 0) / lat["median_us"]
                    if lat.get("median_us")
                    else None,
                    lat.get("other_max_us"),
                    lat.get("max_over_median"),
                ]
                for r in ok
                if (lat := r.get("latency"))
            ],
        )
    )
    parts.append(
        "## storage after the run (gc: after `git gc`; float64 floor = 8 B/point)\n"
        + table(
            ["workload", "tool", "B/point", "B/point gc", "bytes", "files/loose"],
            [
                [
                    r["label"],
                    r["tool"],
                    st.get("bytes_per_point"),
                    st.get("gc_bytes_per_point"),
                    st.get("bytes"),
                    st.get("loose_objects", st.get("files")),
                ]
                for r in ok
                if (st := r.get("storage"))
            ],
        )
    )
    f32 = results.get("float32")
    if f32:
        if _ok(f32):
            parts[-1] += (
                f"\nfloat32 mode ({f32.get('setting')}), {f32['label']}: "
                f"{f32['storage']['bytes_per_point']:.3g} B/point"
            )
        else:
            parts[-1] += f"\nfloat32 mode: {f32['status']}: {f32.get('reason', '')}"

    rat = ratios(results)
    if rat:
        parts.append(
            "## ratios (same run)\n"
            + table(
                [
                    "workload",
                    "vs",
                    "gitruns time / floor",
                    "peer time / gitruns",
                    "peer bytes / gitruns",
                ],
                [
                    [
                        r["workload"],
                        r["tool"],
                        r.get("time_gitruns_over_tool"),
                        r.get("time_tool_over_gitruns"),
                        r.get("bytes_tool_over_gitruns"),
                    ]
                    for r in rat
                ],
            )
        )

    growth = [
        [
            r["label"],
            r["tool"],
            g["commits"],
            g.get("early_median_bytes"),
            g.get("late_median_bytes"),
            g.get("late_over_early"),
            g.get("max_bytes"),
            g.get("overhead_early_bytes"),
            g.get("overhead_late_bytes"),
        ]
        for r in results.get("logging", [])
        if r["status"] == "ok" and (g := r.get("growth"))
    ]
    if growth:
        parts.append(
            "## bytes written per committed window as the run grows "
            "(a commit's bytes over the windows it holds; overhead: its "
            "commit, trees and JSON)\n"
            + table(
                [
                    "workload",
                    "tool",
                    "commits",
                    "early B",
                    "late B",
                    "late/early",
                    "max B",
                    "overhead early B",
                    "overhead late B",
                ],
                growth,
            )
        )

    forks = results.get("fork", [])
    if forks:
        parts.append(
            "## fork at the middle of a run\n"
            + table(
                [
                    "source run",
                    "status",
                    "fork ms",
                    "init ms",
                    "bytes added",
                    "objects added",
                    "source build s",
                    "RSS growth MB",
                ],
                [
                    [
                        f["label"],
                        f["status"],
                        _ms(f.get("seconds")),
                        _ms(f.get("init_seconds")),
                        f.get("bytes_added"),
                        f.get("objects_added"),
                        f.get("build_seconds"),
                        _mb(f.get("rss_growth_bytes")),
                    ]
                    for f in forks
                ],
            )
        )

    reads = results.get("read", [])
    if reads:
        raw = {r["one"]: r for r in reads if r["variant"] == "raw" and _ok(r)}
        parts.append(
            f"## read ({results.get('read_label', '')})\n"
            + table(
                [
                    "read",
                    "what",
                    "status",
                    "first ms",
                    "again ms",
                    "open ms",
                    "values",
                    "vs raw",
                ],
                [
                    [
                        r["variant"],
                        "one metric" if r["one"] else "all",
                        r["status"],
                        _ms(r.get("seconds")),
                        _ms(r.get("again_seconds")),
                        _ms(r.get("open_seconds")),
                        r.get("values"),
                        (r["seconds"] / raw[r["one"]]["seconds"])
                        if _ok(r) and r["one"] in raw
                        else None,
                    ]
                    for r in reads
                ],
            )
        )

    mem = results.get("memory", [])
    if mem:
        parts.append(
            "## memory while logging (finish: packing the run's loose objects)\n"
            + table(
                ["run", "status", "traced peak MB", "finish peak MB"],
                [
                    [
                        m["label"],
                        m["status"],
                        _mb(m.get("traced_peak_bytes")),
                        _mb(m.get("finish_traced_peak_bytes")),
                    ]
                    for m in mem
                ],
            )
        )

    rss = [f for f in results.get("fork", []) if _ok(f)]
    if rss:
        parts.append(
            "## peak RSS growth while logging the fork sources (1 metric)\n"
            + table(
                ["run", "RSS growth MB", "log s"],
                [
                    [f["label"], _mb(f["rss_growth_bytes"]), f["build_seconds"]]
                    for f in rss
                ],
            )
        )

    listing = results.get("listing", {})
    if listing:
        make = listing.get("make", {})
        note = ""
        if _ok(make):
            note = (
                f"\n{make['real_runs']} runs made by gitruns at "
                f"{make['per_run_ms']:.1f} ms each, the rest copied from them; "
                f"{make['packs']} pack files in the repository"
            )
        rows = [
            ["gitruns Api.runs()", listing.get("gitruns")],
            ["git for-each-ref", listing.get("git")],
        ]
        parts.append(
            f"## listing {listing.get('runs')} runs{note}\n"
            + table(
                ["how", "status", "ms", "ms with .state", "runs"],
                [
                    [
                        name,
                        r.get("status"),
                        _ms(r.get("seconds")),
                        _ms(r.get("with_state_seconds")),
                        r.get("runs"),
                    ]
                    for name, r in rows
                    if r
                ],
            )
        )
        if not _ok(make):
            parts[-1] += (
                f"\nmaking the runs: {make.get('status')} {make.get('reason', '')}"
            )

    parts.append(
        "## goals\n"
        + table(
            ["goal", "measured", "target", "met", "note"],
            [
                [
                    g["goal"],
                    g["measured"],
                    g["target"],
                    {True: "yes", False: "NO", None: "-"}[g["met"]],
                    g["note"],
                ]
                for g in results.get("goals", [])
            ],
        )
    )
    return "\n\n".join(parts) + "\n"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _mb(n: float | None) -> float | None:
    return None if n is None else n / 2**20
