"""The gitruns cases: logging, storage, fork, read, memory and listing."""

from __future__ import annotations

import subprocess
import time
import tracemalloc
from pathlib import Path
from types import ModuleType
from typing import Any

from common import (
    MissingTool,
    Result,
    Workload,
    commit_growth,
    git_env,
    object_store_bytes,
    peak_rss_bytes,
    storage,
    time_calls,
)
from floors import decode_columns

PROJECT = "bench"


def _gitruns() -> ModuleType:
    try:
        import gitruns
    except ImportError as exc:
        raise MissingTool(f"gitruns is not importable ({exc})") from None
    if not hasattr(gitruns, "init") or not hasattr(gitruns, "Api"):
        raise MissingTool("gitruns.init / gitruns.Api do not exist yet")
    return gitruns


def log(params: dict[str, Any], workdir: Path) -> Result:
    """gitruns end to end: ``init``, one ``log()`` per call, ``finish()``."""
    gitruns = _gitruns()
    work = Workload.from_params(params)
    calls = work.calls()
    repo = workdir / "repo"
    extra = params.get("init", {})

    t0 = time.perf_counter()
    run = gitruns.init(project=PROJECT, id="run0", repo=str(repo), **extra)
    init_s = time.perf_counter() - t0

    def log_one(step: int, metrics: dict[str, float]) -> None:
        run.log(metrics, step=step)

    t0 = time.perf_counter()
    loop_s, latency = time_calls(calls, log_one, params["latency"])
    run.finish()
    total = time.perf_counter() - t0

    result: Result = {
        "version": str(getattr(gitruns, "__version__", "?")),
        "seconds": total,
        "loop_seconds": loop_s,
        "init_seconds": init_s,
        "calls": len(calls),
        "points": work.points,
        "latency": latency,
    }
    if params.get("storage"):
        result["growth"] = commit_growth(repo, run.ref.ref)
        result["storage"] = storage(repo, work.points)
    return result


def build_run(params: dict[str, Any], workdir: Path) -> Result:
    """Log a dense run of the given size into ``params["repo"]``.

    Reports how peak memory grew while logging, so the fork sources double as
    the memory-versus-run-length series.
    """
    gitruns = _gitruns()
    work = Workload.from_params(params)
    repo = Path(params["repo"])

    run = gitruns.init(project=PROJECT, id=params["id"], repo=str(repo))
    base_rss = peak_rss_bytes()
    t0 = time.perf_counter()
    for step, metrics in work.iter_calls():
        run.log(metrics, step=step)
    run.finish()
    seconds = time.perf_counter() - t0
    grown = peak_rss_bytes() - base_rss
    return {
        "path": run.path,
        "seconds": seconds,
        "points": work.points,
        "rss_growth_bytes": grown,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def fork(params: dict[str, Any], workdir: Path) -> Result:
    """Fork ``params["source"]`` at ``params["step"]``: time and bytes added.

    The fork is opened with ``init(fork_from=...)`` and closed with
    ``finish()`` without logging, so what is measured is the fork itself.
    """
    gitruns = _gitruns()
    repo = Path(params["repo"])
    before = object_store_bytes(repo)

    t0 = time.perf_counter()
    run = gitruns.init(
        project=PROJECT,
        id=params["id"],
        repo=str(repo),
        fork_from=f"{params['source']}?_step={params['step']}",
    )
    init_s = time.perf_counter() - t0
    run.finish()
    seconds = time.perf_counter() - t0

    after = object_store_bytes(repo)
    return {
        "seconds": seconds,
        "init_seconds": init_s,
        "bytes_added": after["bytes"] - before["bytes"],
        "objects_added": after["loose_objects"] - before["loose_objects"],
    }


READ_VARIANTS = (
    "scan_history",
    "history",
    "columns",
    "raw",
)


def read(params: dict[str, Any], workdir: Path) -> Result:
    """Read a run back one way (``params["variant"]``), twice.

    ``one`` restricts the read to one metric. The first read is what a fresh
    process pays; the second shows what caching inside gitruns saves.
    """
    variant = params["variant"]
    keys = [params["key"]] if params["one"] else None

    if variant == "raw":
        path = Path(params["floor_file"])

        def once() -> int:
            return sum(len(v) for _, v in decode_columns(path, keys).values())

        return _twice(once, 0.0)

    gitruns = _gitruns()
    t0 = time.perf_counter()
    view = gitruns.Api(repo=params["repo"]).run(params["source"])
    open_s = time.perf_counter() - t0

    def read_once() -> int:
        if variant == "scan_history":
            return sum(len(row) - 2 for row in view.scan_history(keys=keys))
        if variant == "history":
            frame = view.history(keys=keys)
            return int(frame.count().sum()) - 2 * len(frame)
        if variant == "columns":
            cols = view.columns(keys=keys)
            return sum(len(v[1]) for k, v in cols.items() if not k.startswith("_"))
        raise ValueError(f"unknown read variant {variant!r}")

    return _twice(read_once, open_s)


def _twice(once: Any, open_s: float) -> Result:
    t0 = time.perf_counter()
    values = once()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    once()
    again = time.perf_counter() - t0
    return {
        "seconds": first,
        "again_seconds": again,
        "open_seconds": open_s,
        "values": values,
    }


def memory(params: dict[str, Any], workdir: Path) -> Result:
    """Peak Python allocations (tracemalloc) while logging a dense run."""
    gitruns = _gitruns()
    work = Workload.from_params(params)
    run = gitruns.init(project=PROJECT, id="mem", repo=str(workdir / "repo"))

    tracemalloc.start()
    for step, metrics in work.iter_calls():
        run.log(metrics, step=step)
    run.finish()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"traced_peak_bytes": peak, "points": work.points}


def make_runs(params: dict[str, Any], workdir: Path) -> Result:
    """Create ``params["runs"]`` small runs across ten projects."""
    gitruns = _gitruns()
    repo = str(params["repo"])
    t0 = time.perf_counter()
    for i in range(params["runs"]):
        run = gitruns.init(project=f"p{i % 10}", id=f"r{i:06d}", repo=repo)
        run.log({"loss": 1.0 / (i + 1)}, step=0)
        run.finish()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "per_run_ms": 1e3 * seconds / params["runs"]}


def list_runs(params: dict[str, Any], workdir: Path) -> Result:
    """List every run with ``Api.runs()``, then touch each one's state."""
    gitruns = _gitruns()
    t0 = time.perf_counter()
    views = gitruns.Api(repo=params["repo"]).runs()
    listed = time.perf_counter() - t0
    states = {view.state for view in views}
    with_state = time.perf_counter() - t0
    return {
        "seconds": listed,
        "with_state_seconds": with_state,
        "runs": len(views),
        "states": sorted(states),
    }


def list_refs(params: dict[str, Any], workdir: Path) -> Result:
    """The floor: ``git for-each-ref`` over the run refs, process start included."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            "git",
            "-C",
            params["repo"],
            "for-each-ref",
            "--format=%(refname)",
            "refs/heads/runs/",
        ],
        check=True,
        capture_output=True,
        env=git_env(),
    ).stdout
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "runs": out.count(b"\n")}
