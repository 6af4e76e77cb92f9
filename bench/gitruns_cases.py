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


def float32_setting() -> tuple[str, Any] | None:
    """The ``init()`` setting that stores floats as float32, if gitruns has one.

    gitruns ignores settings it does not know, so passing a guessed name would
    measure float64 and call it float32; only a declared setting is used.
    """
    try:
        from gitruns.settings import WRITER_SETTINGS
    except ImportError:
        return None
    for name, kind in WRITER_SETTINGS.items():
        if "float32" in name or "dtype" in name or "precision" in name:
            return name, True if kind is bool else "float32"
    return None


def log_float32(params: dict[str, Any], workdir: Path) -> Result:
    """The logging case with gitruns' opt-in float32 storage, if it exists."""
    _gitruns()
    setting = float32_setting()
    if setting is None:
        raise MissingTool("gitruns has no float32 storage setting in init()")
    name, value = setting
    result = log({**params, "storage": True, "init": {name: value}}, workdir)
    result["setting"] = f"{name}={value!r}"
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
    if variant == "history":
        # history() builds a DataFrame; pandas' import is not the read's cost.
        import pandas  # noqa: F401

    t0 = time.perf_counter()
    view = gitruns.Api(repo=params["repo"]).run(params["source"])
    open_s = time.perf_counter() - t0

    def read_once() -> int:
        # Count metric values (not _step/_timestamp) so every way of reading
        # can be checked to have returned the same data.
        if variant == "scan_history":
            return _count_values(view.scan_history(keys=keys))
        if variant == "history":
            frame = view.history(keys=keys)
            metrics = [c for c in frame.columns if not str(c).startswith("_")]
            return int(frame[metrics].count().sum())
        if variant == "columns":
            cols = view.columns(keys=keys)
            return sum(len(v[1]) for k, v in cols.items() if not k.startswith("_"))
        raise ValueError(f"unknown read variant {variant!r}")

    return _twice(read_once, open_s)


def _count_values(rows: Any) -> int:
    """Metric values in ``rows`` (not ``_step``/``_timestamp``), at C speed.

    Every row of a scan holds the same ``_`` fields, so counting keys per row
    in Python (about 0.1 us a key) is not needed: it would time this loop,
    three times the read itself at a million values, not the scan.
    """
    it = iter(rows)
    first = next(it, None)
    if first is None:
        return 0
    fields = sum(1 for k in first if k.startswith("_"))
    sizes = [len(first), *map(len, it)]
    return sum(sizes) - fields * len(sizes)


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

    # Logging and finishing apart: finishing packs the run's loose objects,
    # a bounded batch at a time, which the loop itself never does.
    tracemalloc.start()
    for step, metrics in work.iter_calls():
        run.log(metrics, step=step)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    run.finish()
    _, finish_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "traced_peak_bytes": peak,
        "finish_traced_peak_bytes": finish_peak,
        "points": work.points,
    }


def make_runs(params: dict[str, Any], workdir: Path) -> Result:
    """Create ``params["runs"]`` small finished runs across ten projects.

    The first ``params["real"]`` runs are made by gitruns itself, which gives
    the cost of creating a run. The rest are copies of those: each copy is a
    commit on top of a real run's tip whose ``run.json`` names the copy, with
    its own branch. Making 10,000 runs through ``init()`` would take longer
    than the whole benchmark, and listing only reads refs and tip trees.
    """
    gitruns = _gitruns()
    repo = Path(params["repo"])
    total = int(params["runs"])
    real = min(total, int(params.get("real", 50)))

    t0 = time.perf_counter()
    templates = []
    for i in range(real):
        run = gitruns.init(project=f"p{i % 10}", id=f"r{i:06d}", repo=str(repo))
        run.log({"loss": 1.0 / (i + 1)}, step=0)
        run.finish()
        templates.append(run.ref)
    real_s = time.perf_counter() - t0
    packs_after_real = _count_packs(repo)

    t0 = time.perf_counter()
    _copy_runs(repo, templates, range(real, total))
    copy_s = time.perf_counter() - t0
    return {
        "seconds": real_s + copy_s,
        "real_runs": real,
        "per_run_ms": 1e3 * real_s / max(1, real),
        "copy_seconds": copy_s,
        "packs": _count_packs(repo),
        "packs_per_real_run": packs_after_real / max(1, real),
    }


def _count_packs(repo: Path) -> int:
    from common import git_dir

    return len(list((git_dir(repo) / "objects" / "pack").glob("*.pack")))


def _copy_runs(repo: Path, templates: list[Any], indexes: range) -> None:
    import json

    from dulwich.objects import Blob, Commit, ShaFile, Tree
    from dulwich.refs import Ref
    from dulwich.repo import Repo

    git_repo = Repo(str(repo))
    store = git_repo.object_store
    tips = []
    for template in templates:
        tip = git_repo.refs[Ref(template.ref)]
        parent = store[tip]
        assert isinstance(parent, Commit)
        tree = store[parent.tree]
        assert isinstance(tree, Tree)
        info = json.loads(store[tree[b"run.json"][1]].as_raw_string())
        tips.append((tip, parent, tree, info))

    objects: list[tuple[ShaFile, None]] = []
    refs: list[tuple[bytes, bytes]] = []
    for i in indexes:
        tip, parent, tree, template_info = tips[i % len(tips)]
        project, run_id = f"p{i % 10}", f"r{i:06d}"
        info = {**template_info, "id": run_id, "name": run_id, "project": project}
        blob = Blob.from_string(
            (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
        )
        copy = Tree()
        for entry in tree.iteritems():
            copy.add(entry.path, entry.mode, entry.sha)
        copy.add(b"run.json", 0o100644, blob.id)

        commit = Commit()
        commit.tree = copy.id
        commit.parents = [tip]
        commit.author = commit.committer = parent.committer
        commit.author_time = commit.commit_time = parent.commit_time
        commit.author_timezone = commit.commit_timezone = 0
        path = f"{project}/{run_id}"
        commit.message = f"{path}: copied\n\nGitruns-Run: {path}\n".encode()
        objects += [(blob, None), (copy, None), (commit, None)]
        refs.append((b"refs/heads/runs/" + path.encode(), commit.id))

    # One pack for all copies, as a repository after `git gc` would have;
    # one `git update-ref` transaction for the refs, which stay loose files
    # as gitruns leaves them.
    store.add_objects(objects)
    lines = b"".join(b"create %s %s\n" % (ref, sha) for ref, sha in refs)
    subprocess.run(
        ["git", "-C", str(repo), "update-ref", "--stdin"],
        input=lines,
        check=True,
        env=git_env(),
    )


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
