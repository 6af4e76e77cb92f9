"""Benchmark gitruns against its peers and the raw floors; print and save results.

Usage::

    python bench/run.py [--quick] [--json bench/results.json]

Every case runs in a fresh Python process (bench/worker.py), so imports,
caches and memory of one case never leak into the next. Figures are medians
of repeats, and every ratio compares figures measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
from common import Result, Workload  # noqa: E402

TOOLS = ("gitruns", "floor-msgpack", "floor-dulwich")
PEERS = ("wandb", "tensorboardx", "mlflow")


@dataclass(frozen=True)
class Profile:
    """How big and how often: one per ``--quick`` / default / ``--tiny``."""

    name: str
    workloads: tuple[Workload, ...]
    repeats: int
    peer_repeats: int
    peer_max_points: int
    fork_steps: tuple[int, ...]
    fork_repeats: int
    read: Workload
    read_repeats: int
    memory: tuple[Workload, ...]
    list_runs: int
    list_repeats: int
    peer_workloads: int = 99
    timeout: float = 900.0


PROFILES = {
    "default": Profile(
        name="default",
        workloads=(
            Workload(10_000, 10),
            Workload(100_000, 10),
            Workload(1_000, 100),
            Workload(10_000, 0, sparse=True),
        ),
        repeats=5,
        peer_repeats=3,
        peer_max_points=100_000,
        fork_steps=(1_000, 10_000, 100_000, 1_000_000),
        fork_repeats=3,
        read=Workload(100_000, 10),
        read_repeats=3,
        # 10k steps stay below the committer's backlog bound (16 windows);
        # the longer two show whether memory keeps growing past it.
        memory=(Workload(10_000, 10), Workload(100_000, 10), Workload(300_000, 10)),
        list_runs=10_000,
        list_repeats=3,
    ),
    "quick": Profile(
        name="quick",
        workloads=(
            Workload(10_000, 10),
            Workload(1_000, 100),
            Workload(10_000, 0, sparse=True),
        ),
        repeats=2,
        peer_repeats=1,
        peer_max_points=100_000,
        peer_workloads=1,
        fork_steps=(1_000, 10_000, 100_000),
        fork_repeats=2,
        read=Workload(10_000, 10),
        read_repeats=1,
        memory=(Workload(2_000, 10), Workload(20_000, 10)),
        list_runs=1_000,
        list_repeats=2,
        timeout=120.0,
    ),
    "tiny": Profile(
        name="tiny",
        workloads=(Workload(300, 3), Workload(1_000, 0, sparse=True)),
        repeats=1,
        peer_repeats=1,
        peer_max_points=1_000,
        fork_steps=(100, 1_000),
        fork_repeats=1,
        read=Workload(500, 4),
        read_repeats=1,
        memory=(Workload(100, 3), Workload(1_000, 3)),
        list_runs=20,
        list_repeats=1,
        timeout=120.0,
    ),
}


class Harness:
    """Runs cases in fresh worker processes and keeps a progress line going."""

    def __init__(
        self, scratch: Path, timeout: float, verbose: bool, source: Path
    ) -> None:
        self.scratch = scratch
        self.timeout = timeout
        self.verbose = verbose
        self.count = 0
        root = str(source)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, self.env.get("PYTHONPATH", "")) if p
        )
        self.env["TMPDIR"] = str(scratch)
        self.env.setdefault("GIT_CONFIG_NOSYSTEM", "1")
        self.env.setdefault("GIT_AUTHOR_NAME", "bench")
        self.env.setdefault("GIT_AUTHOR_EMAIL", "bench@localhost")
        self.env.setdefault("GIT_COMMITTER_NAME", "bench")
        self.env.setdefault("GIT_COMMITTER_EMAIL", "bench@localhost")

    def case(self, name: str, params: dict[str, Any], what: str = "") -> Result:
        """Run one case in a new process; a crash or timeout is a result too."""
        self.count += 1
        out = self.scratch / f"result-{self.count}.json"
        log = self.scratch / f"case-{self.count}.log"
        cmd = [
            sys.executable,
            str(BENCH / "worker.py"),
            name,
            json.dumps(params),
            str(out),
        ]
        t0 = time.perf_counter()
        try:
            with log.open("wb") as sink:
                # Run in the scratch directory: gitruns records the code commit
                # of the working directory, and the bench's own checkout would
                # make that cost depend on where the bench was started.
                subprocess.run(
                    cmd,
                    cwd=self.scratch,
                    env=self.env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    timeout=self.timeout,
                    check=False,
                )
            if out.exists():
                result: Result = json.loads(out.read_text())
            else:
                tail = log.read_text(errors="replace")[-2000:]
                result = {"status": "error", "reason": f"worker died: {tail}"}
        except subprocess.TimeoutExpired:
            result = {"status": "timeout", "reason": f"over {self.timeout:.0f}s"}
        wall = time.perf_counter() - t0

        status = result.get("status")
        line = f"[{self.count:3d}] {name:18s} {what:28s} {status:8s} {wall:6.1f}s"
        if status not in ("ok", "missing"):
            line += f"  {str(result.get('reason', ''))[:300]}"
        print(line, file=sys.stderr, flush=True)
        if self.verbose and result.get("traceback"):
            print(result["traceback"], file=sys.stderr)
        return result


def _median_of(results: list[Result], key: str) -> float | None:
    values = [r[key] for r in results if r.get("status") == "ok" and key in r]
    return statistics.median(values) if values else None


def _merge_repeats(runs: list[Result], detail: Result | None) -> Result:
    """Median seconds over the clean repeats; latency/storage from ``detail``."""
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        failed = runs[0] if runs else (detail or {"status": "error"})
        return {
            "status": failed.get("status", "error"),
            "reason": failed.get("reason", ""),
        }
    seconds = statistics.median(r["seconds"] for r in ok)
    first = ok[0]
    merged: Result = {
        "status": "ok",
        "version": first.get("version", ""),
        "repeats": [r["seconds"] for r in ok],
        "seconds": seconds,
        "init_seconds": _median_of(ok, "init_seconds"),
        "us_per_call": 1e6 * seconds / first["calls"],
        "us_per_point": 1e6 * seconds / first["points"],
        "calls": first["calls"],
        "points": first["points"],
    }
    source = detail if detail and detail.get("status") == "ok" else None
    if source is None:
        # Peers time every call in each repeat: take the median run's extras.
        source = sorted(ok, key=lambda r: r["seconds"])[len(ok) // 2]
    for key in ("latency", "storage", "growth"):
        if source.get(key) is not None:
            merged[key] = source[key]
    return merged


def bench_logging(h: Harness, p: Profile, peers: tuple[str, ...]) -> list[Result]:
    """Each workload through gitruns, the two floors and every chosen peer."""
    rows: list[Result] = []
    for work in p.workloads:
        for tool in (*TOOLS, *peers):
            base = {**work.to_params(), "latency": False, "storage": False}
            what = f"{work.label} {tool}"
            if tool in PEERS:
                index = p.workloads.index(work)
                if work.points > p.peer_max_points or index >= p.peer_workloads:
                    rows.append(
                        {
                            "label": work.label,
                            "tool": tool,
                            "workload": work.to_params(),
                            "status": "skipped",
                            "reason": "over the profile's peer budget",
                        }
                    )
                    continue
                # A peer's call costs far more than two clock reads, so every
                # repeat is timed per call and no extra pass is needed.
                runs = [
                    h.case(f"log.{tool}", {**base, "latency": True}, what)
                    for _ in range(p.peer_repeats)
                ]
                detail = None
            else:
                runs = []
                for _ in range(p.repeats):
                    runs.append(h.case(f"log.{tool}", base, what))
                    if runs[-1].get("status") == "missing":
                        break
                detail = None
                if runs[-1].get("status") != "missing":
                    detail = h.case(
                        f"log.{tool}",
                        {**base, "latency": True, "storage": True},
                        what + " (latency)",
                    )
            rows.append(
                {
                    "label": work.label,
                    "tool": tool,
                    "workload": work.to_params(),
                    **_merge_repeats(runs, detail),
                }
            )
    return rows


def bench_float32(h: Harness, p: Profile) -> Result:
    """The first workload with gitruns' float32 storage, where it exists."""
    work = p.workloads[0]
    params = {**work.to_params(), "latency": False, "storage": True}
    result = h.case("log.gitruns-float32", params, f"{work.label} float32")
    return {"label": work.label, **result}


def bench_fork(h: Harness, p: Profile) -> list[Result]:
    """Fork runs of growing length at their middle; time and bytes added."""
    rows: list[Result] = []
    for steps in p.fork_steps:
        work = Workload(steps, 1)
        repo = h.scratch / f"fork-{steps}"
        built = h.case(
            "build",
            {**work.to_params(), "repo": str(repo), "id": f"src{steps}"},
            f"{work.label} source",
        )
        row: Result = {"label": work.label, "steps": steps}
        if built.get("status") != "ok":
            rows.append(
                {**row, "status": built["status"], "reason": built.get("reason", "")}
            )
            continue
        forks = [
            h.case(
                "fork",
                {
                    "repo": str(repo),
                    "source": built["path"],
                    "step": steps // 2 + i,
                    "id": f"fork{i}",
                },
                f"{work.label} at {steps // 2 + i}",
            )
            for i in range(p.fork_repeats)
        ]
        ok = [f for f in forks if f.get("status") == "ok"]
        if not ok:
            rows.append(
                {
                    **row,
                    "status": forks[0]["status"],
                    "reason": forks[0].get("reason", ""),
                }
            )
            continue
        rows.append(
            {
                **row,
                "status": "ok",
                "seconds": statistics.median(f["seconds"] for f in ok),
                "init_seconds": statistics.median(f["init_seconds"] for f in ok),
                # Each fork cuts a different step, so no fork reuses another's chunk.
                "bytes_added": statistics.median(f["bytes_added"] for f in ok),
                "objects_added": statistics.median(f["objects_added"] for f in ok),
                "build_seconds": built["seconds"],
                "rss_growth_bytes": built["rss_growth_bytes"],
            }
        )
    return rows


def bench_read(h: Harness, p: Profile) -> list[Result]:
    """Read one run whole and one metric of it, every way, against raw msgpack."""
    repo = h.scratch / "read"
    floor = h.scratch / "read-columns.msgpack"
    built = h.case(
        "build",
        {**p.read.to_params(), "repo": str(repo), "id": "read"},
        f"{p.read.label} to read",
    )
    written = h.case(
        "columns-file",
        {**p.read.to_params(), "path": str(floor)},
        f"{p.read.label} raw columns",
    )
    rows: list[Result] = []
    for one in (False, True):
        for variant in ("raw", "columns", "history", "scan_history"):
            base = {"variant": variant, "one": one, "key": "m0"}
            if variant == "raw":
                if written.get("status") != "ok":
                    rows.append(
                        {
                            **base,
                            "status": written["status"],
                            "reason": written.get("reason", ""),
                        }
                    )
                    continue
                params = {**base, "floor_file": str(floor)}
            elif built.get("status") != "ok":
                rows.append(
                    {
                        **base,
                        "status": built["status"],
                        "reason": built.get("reason", ""),
                    }
                )
                continue
            else:
                params = {**base, "repo": str(repo), "source": built["path"]}
            what = f"{variant} {'one' if one else 'all'}"
            runs = [h.case("read", params, what) for _ in range(p.read_repeats)]
            ok = [r for r in runs if r.get("status") == "ok"]
            if not ok:
                rows.append(
                    {
                        **base,
                        "status": runs[0]["status"],
                        "reason": runs[0].get("reason", ""),
                    }
                )
                continue
            rows.append(
                {
                    **base,
                    "status": "ok",
                    "seconds": statistics.median(r["seconds"] for r in ok),
                    "again_seconds": statistics.median(r["again_seconds"] for r in ok),
                    "open_seconds": statistics.median(r["open_seconds"] for r in ok),
                    "values": ok[0]["values"],
                }
            )
    return rows


def bench_memory(h: Harness, p: Profile) -> list[Result]:
    """Peak traced allocations while logging runs of growing length."""
    rows = []
    for work in p.memory:
        r = h.case("memory", work.to_params(), work.label)
        rows.append({"label": work.label, **work.to_params(), **r})
    return rows


def bench_listing(h: Harness, p: Profile) -> Result:
    """List many runs with gitruns and with ``git for-each-ref``."""
    repo = h.scratch / "listing"
    made = h.case(
        "make-runs", {"repo": str(repo), "runs": p.list_runs}, f"{p.list_runs} runs"
    )
    out: Result = {"runs": p.list_runs, "make": made}
    if made.get("status") != "ok":
        return out
    for how in ("gitruns", "git"):
        runs = [
            h.case(f"list.{how}", {"repo": str(repo)}, f"{p.list_runs} runs")
            for _ in range(p.list_repeats)
        ]
        ok = [r for r in runs if r.get("status") == "ok"]
        if not ok:
            out[how] = {"status": runs[0]["status"], "reason": runs[0].get("reason")}
            continue
        out[how] = {
            "status": "ok",
            "seconds": statistics.median(r["seconds"] for r in ok),
            "with_state_seconds": _median_of(ok, "with_state_seconds"),
            "runs": ok[0]["runs"],
        }
    return out


def gitruns_source(commit: str | None, scratch: Path) -> tuple[Path, Result]:
    """Where the workers import gitruns from, and which code that is.

    With ``commit``, the ``gitruns`` package of that commit (or, for
    ``worktree``, of the work tree as it is now) is copied into the scratch
    directory, so edits in progress cannot change the code under measurement
    halfway through a run.
    """
    root = BENCH.parent

    def rev(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True
        )
        return out.stdout.strip()

    if commit is None or commit == "worktree":
        dirty = bool(rev("status", "--porcelain", "--", "gitruns"))
        meta = {"path": str(root), "commit": rev("rev-parse", "HEAD"), "dirty": dirty}
        if commit is None:
            return root, meta
        # A copy of the work tree as it is now, edits in progress included.
        target = scratch / "gitruns-src" / "gitruns"
        shutil.copytree(
            root / "gitruns", target, ignore=shutil.ignore_patterns("__pycache__")
        )
        return target.parent, meta
    sha = rev("rev-parse", "--verify", f"{commit}^{{commit}}")
    if not sha:
        raise SystemExit(f"error: {commit!r} is not a commit of {root}")
    target = scratch / "gitruns-src"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", sha, "gitruns"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target, {"path": str(root), "commit": sha, "dirty": False}


def machine() -> Result:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for dist in (
        "dulwich",
        "msgpack",
        "numpy",
        "pandas",
        "wandb",
        "tensorboardX",
        "mlflow",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    git = subprocess.run(["git", "--version"], capture_output=True, text=True)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git.stdout.strip(),
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
    }


SECTIONS = ("logging", "fork", "read", "memory", "listing")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables; write JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, ~1 minute")
    size.add_argument(
        "--tiny", action="store_true", help="smallest sizes, for the smoke test"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=BENCH / "results.json",
        help="where to write the results (default bench/results.json)",
    )
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="comma-separated peers to run, or 'none'",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections of: {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--commit",
        help="benchmark the gitruns package of this commit (e.g. HEAD), or "
        "'worktree' for a copy of the work tree taken at the start, so edits in "
        "progress cannot change the code under measurement mid-run",
    )
    parser.add_argument("--repeats", type=int, help="override the profile's repeats")
    parser.add_argument(
        "--keep", type=Path, help="keep scratch repositories in this directory"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print tracebacks of failed cases"
    )
    args = parser.parse_args(argv)

    profile = PROFILES["quick" if args.quick else "tiny" if args.tiny else "default"]
    if args.repeats:
        profile = Profile(
            **{
                **profile.__dict__,
                "repeats": args.repeats,
                "peer_repeats": args.repeats,
            }
        )
    peers = tuple(p for p in args.peers.split(",") if p and p != "none")
    unknown = set(peers) - set(PEERS)
    sections = set(args.only.split(","))
    if unknown or not sections <= set(SECTIONS):
        parser.error(
            f"unknown peer or section: {sorted(unknown | (sections - set(SECTIONS)))}"
        )

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        scratch_ctx: Any = None
        scratch = args.keep.resolve()
    else:
        scratch_ctx = tempfile.TemporaryDirectory(prefix="gitruns-bench-")
        scratch = Path(scratch_ctx.name)

    t0 = time.perf_counter()
    source, source_meta = gitruns_source(args.commit, scratch)
    h = Harness(scratch, profile.timeout, args.verbose, source)
    results: Result = {
        "profile": profile.name,
        "meta": {**machine(), "gitruns": source_meta},
        "repeats_note": f"{profile.repeats} runs (peers {profile.peer_repeats}, "
        f"forks {profile.fork_repeats}, reads {profile.read_repeats})",
        "peers_requested": list(peers),
    }
    try:
        if "logging" in sections:
            results["logging"] = bench_logging(h, profile, peers)
            results["float32"] = bench_float32(h, profile)
        if "fork" in sections:
            results["fork"] = bench_fork(h, profile)
        if "read" in sections:
            results["read"] = bench_read(h, profile)
            results["read_label"] = (
                f"{profile.read.label} = {profile.read.points} points"
            )
        if "memory" in sections:
            results["memory"] = bench_memory(h, profile)
        if "listing" in sections:
            results["listing"] = bench_listing(h, profile)
    finally:
        if scratch_ctx is not None:
            scratch_ctx.cleanup()
    results["wall_seconds"] = time.perf_counter() - t0
    results["ratios"] = report.ratios(results)
    results["goals"] = report.goals(results)

    print(report.render(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(
            f"results written to {args.json} ({results['wall_seconds']:.0f}s)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
