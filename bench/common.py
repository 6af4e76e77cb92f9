"""Workloads, clocks and disk accounting shared by every benchmark case."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: One ``log()`` call of a workload: the step and the metrics logged at it.
Call = tuple[int, dict[str, float]]

#: A case's result, written as JSON by the worker.
Result = dict[str, Any]

#: How often the sparse workload logs its eval metrics, in steps.
EVAL_EVERY = 500

#: Train metrics per step in the sparse workload; eval metrics per eval step.
SPARSE_TRAIN_METRICS = 5
SPARSE_EVAL_METRICS = 3


class MissingTool(Exception):
    """A peer (or gitruns itself) is not importable; reported, never faked."""


@dataclass(frozen=True)
class Workload:
    """What a logging case logs: ``steps`` steps of ``metrics`` float metrics.

    A sparse workload logs ``SPARSE_TRAIN_METRICS`` train metrics every step
    and, every ``EVAL_EVERY`` steps, a second ``log()`` call at the same step
    with ``SPARSE_EVAL_METRICS`` eval metrics, as a training script with a
    periodic evaluation does.
    """

    steps: int
    metrics: int
    sparse: bool = False

    @property
    def label(self) -> str:
        """A short name such as ``10k x 10`` or ``10k sparse``."""
        if self.sparse:
            return f"{_short(self.steps)} sparse"
        return f"{_short(self.steps)} x {self.metrics}"

    def calls(self, seed: int = 0) -> list[Call]:
        """Build every ``log()`` call up front, so no case pays for the data.

        Values follow a decaying loss curve plus noise: realistic float64 bits
        that compress no better than real training metrics do.
        """
        rng = np.random.default_rng(seed)
        if not self.sparse:
            names = [f"m{j}" for j in range(self.metrics)]
            values = _curves(rng, self.steps, self.metrics).tolist()
            return [
                (i, dict(zip(names, row, strict=True))) for i, row in enumerate(values)
            ]

        train = [f"train/m{j}" for j in range(SPARSE_TRAIN_METRICS)]
        evals = [f"eval/m{j}" for j in range(SPARSE_EVAL_METRICS)]
        train_rows = _curves(rng, self.steps, len(train)).tolist()
        eval_rows = _curves(rng, self.steps, len(evals)).tolist()
        calls: list[Call] = []
        for i, row in enumerate(train_rows):
            calls.append((i, dict(zip(train, row, strict=True))))
            if i % EVAL_EVERY == 0:
                calls.append((i, dict(zip(evals, eval_rows[i], strict=True))))
        return calls

    def iter_calls(self, seed: int = 0, block: int = 10_000) -> Iterator[Call]:
        """Yield the calls of a dense workload a block at a time.

        Memory cases use this so the workload itself does not grow with the
        run length they measure.
        """
        rng = np.random.default_rng(seed)
        names = [f"m{j}" for j in range(self.metrics)]
        for start in range(0, self.steps, block):
            n = min(block, self.steps - start)
            for k, row in enumerate(_curves(rng, n, self.metrics, start).tolist()):
                yield start + k, dict(zip(names, row, strict=True))

    @property
    def points(self) -> int:
        """How many (step, metric) values the workload logs."""
        if not self.sparse:
            return self.steps * self.metrics
        evals = (self.steps + EVAL_EVERY - 1) // EVAL_EVERY
        return self.steps * SPARSE_TRAIN_METRICS + evals * SPARSE_EVAL_METRICS

    def to_params(self) -> dict[str, Any]:
        """The workload as worker parameters."""
        return {"steps": self.steps, "metrics": self.metrics, "sparse": self.sparse}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Workload:
        """Rebuild a workload from worker parameters."""
        return cls(int(params["steps"]), int(params["metrics"]), bool(params["sparse"]))


def _curves(
    rng: np.random.Generator, steps: int, metrics: int, start: int = 0
) -> np.ndarray:
    t = np.arange(start, start + steps, dtype=np.float64)[:, None]
    scale = rng.uniform(0.5, 2.0, size=(1, metrics))
    return np.exp(-t / 20_000.0) * scale + rng.normal(0.0, 0.01, (steps, metrics))


def _short(n: int) -> str:
    for div, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{suffix}"
    return str(n)


#: The window size the latency summary splits calls by (gitruns' default).
WINDOW = 1_000


class Stopwatch:
    """Per-call latencies of a loop, kept in a preallocated list."""

    def __init__(self, n: int) -> None:
        self.ns = [0] * n

    def summary(self, steps: Sequence[int]) -> dict[str, Any]:
        """Latency percentiles in µs, split at window boundaries.

        A boundary call is one whose step opens or closes a window of
        ``WINDOW`` steps (after the first call): where a writer that commits
        per window pauses. The slowest other call shows the noise (garbage
        collection, the shared machine) that no writer controls.
        """
        ns = np.asarray(self.ns, dtype=np.int64)
        steps_arr = np.asarray(steps, dtype=np.int64)
        at = steps_arr % WINDOW
        # Step 0 opens the first window, but no window ends there: it is the
        # run's first call, shown apart (a logger's first call sets itself up).
        edge = ((at == 0) | (at == WINDOW - 1)) & (steps_arr > 0)
        median = float(np.median(ns)) / 1e3
        peak = int(np.argmax(ns))
        top = float(ns[peak]) / 1e3
        edge_max = float(ns[edge].max()) / 1e3 if edge.any() else None
        rest_max = float(ns[~edge].max()) / 1e3 if (~edge).any() else None
        return {
            "median_us": median,
            "p99_us": float(np.percentile(ns, 99)) / 1e3,
            "p999_us": float(np.percentile(ns, 99.9)) / 1e3,
            "max_us": top,
            "max_at_step": int(steps[peak]),
            "max_over_median": top / median if median else None,
            "boundary_max_us": edge_max,
            "boundary_p99_us": (
                float(np.percentile(ns[edge], 99)) / 1e3 if edge.any() else None
            ),
            "other_max_us": rest_max,
            "first_us": float(ns[0]) / 1e3 if len(ns) else None,
            "calls_over_10x_median": int(np.count_nonzero(ns > 10_000 * median)),
        }


def time_calls(
    calls: Sequence[Call],
    log: Callable[[int, dict[str, float]], object],
    latency: bool,
) -> tuple[float, dict[str, Any] | None]:
    """Run ``log`` over ``calls``; return seconds and, if asked, latencies.

    The plain loop carries no clock reads, so the end-to-end figure is not
    inflated by the instrumentation; the latency loop is a separate pass.
    """
    if not latency:
        t0 = time.perf_counter()
        for step, metrics in calls:
            log(step, metrics)
        return time.perf_counter() - t0, None

    watch = Stopwatch(len(calls))
    ns = watch.ns
    clock = time.perf_counter_ns
    t0 = time.perf_counter()
    for i, (step, metrics) in enumerate(calls):
        c0 = clock()
        log(step, metrics)
        ns[i] = clock() - c0
    return time.perf_counter() - t0, watch.summary([step for step, _ in calls])


def tree_bytes(path: Path) -> dict[str, int]:
    """Apparent bytes, allocated bytes and file count under ``path``.

    Symbolic links are not followed (W&B keeps a ``latest-run`` link).
    """
    apparent = allocated = files = 0
    for root, dirs, names in os.walk(path, followlinks=False):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in names:
            st = os.lstat(os.path.join(root, name))
            if os.path.islink(os.path.join(root, name)):
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return {"bytes": apparent, "allocated": allocated, "files": files}


def git_dir(repo: Path) -> Path:
    """The directory holding ``objects/`` for a bare or non-bare repository."""
    return repo / ".git" if (repo / ".git").is_dir() else repo


def object_store_bytes(repo: Path) -> dict[str, int]:
    """Bytes and file counts of a repository's objects, loose and packed."""
    objects = git_dir(repo) / "objects"
    total = tree_bytes(objects)
    loose = sum(
        1
        for d in objects.iterdir()
        if len(d.name) == 2 and d.is_dir()
        for _ in d.iterdir()
    )
    total["loose_objects"] = loose
    return total


def git(repo: Path, *args: str) -> str:
    """Run the real ``git`` in ``repo`` and return its stdout."""
    out = subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env=git_env(),
    )
    return out.stdout


def git_env() -> dict[str, str]:
    """The environment for ``git``: no user or system config leaks in."""
    env = dict(os.environ)
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME="bench",
        GIT_AUTHOR_EMAIL="bench@localhost",
        GIT_COMMITTER_NAME="bench",
        GIT_COMMITTER_EMAIL="bench@localhost",
    )
    return env


def storage(repo: Path, points: int, gc: bool = True) -> Result:
    """Bytes per point of a repository as left by the writer, then after gc."""
    before = object_store_bytes(repo)
    result: Result = {
        "bytes": before["bytes"],
        "allocated": before["allocated"],
        "loose_objects": before["loose_objects"],
        "bytes_per_point": before["bytes"] / points,
    }
    if gc:
        git(repo, "gc", "--quiet")
        after = object_store_bytes(repo)
        result["gc_bytes"] = after["bytes"]
        result["gc_bytes_per_point"] = after["bytes"] / points
    return result


def commit_growth(repo: Path, ref: bytes) -> Result:
    """Bytes each commit of a branch adds, walking first parents from the tip.

    An object counts for a commit when its parent's tree does not reach it;
    unchanged subtrees are skipped by id, as Git itself would. Sizes are the
    zlib-compressed loose-object sizes, which is what a writer puts on disk.
    A commit's bytes are split into its new metric chunks (``*.msgpack``) and
    the rest (commit, trees, JSON): the rest is what would grow if a commit
    rewrote an index of the whole history. A writer that groups several
    windows into one commit is judged per window, not per commit.
    """
    from dulwich.objects import Commit, ObjectID, Tree
    from dulwich.refs import Ref
    from dulwich.repo import Repo

    git_repo = Repo(str(repo))
    store = git_repo.object_store
    sha: ObjectID | None = git_repo.refs[Ref(ref)]
    chain: list[Commit] = []
    while sha is not None:
        commit = store[sha]
        assert isinstance(commit, Commit)
        chain.append(commit)
        sha = commit.parents[0] if commit.parents else None
    chain.reverse()

    def walk(tree_id: ObjectID, seen: set[ObjectID]) -> Iterable[tuple[ObjectID, bool]]:
        if tree_id in seen:
            return
        seen.add(tree_id)
        yield tree_id, False
        tree = store[tree_id]
        assert isinstance(tree, Tree)
        for entry in tree.iteritems():
            if entry.mode == 0o40000:
                yield from walk(entry.sha, seen)
            elif entry.sha not in seen:
                seen.add(entry.sha)
                yield entry.sha, entry.path.endswith(b".msgpack")

    def size(oid: ObjectID) -> int:
        return len(store[oid].as_legacy_object())

    per_commit: list[int] = []
    per_window: list[float] = []
    overhead: list[int] = []
    seen: set[ObjectID] = set()
    for commit in chain:
        new = [(commit.id, False), *walk(commit.tree, seen)]
        chunks = [size(oid) for oid, is_chunk in new if is_chunk]
        rest = sum(size(oid) for oid, is_chunk in new if not is_chunk)
        per_commit.append(sum(chunks) + rest)
        if chunks:
            per_window.append((sum(chunks) + rest) / len(chunks))
            overhead.append(rest)
    return growth_summary(per_commit, per_window, overhead)


def growth_summary(
    per_commit: list[int],
    per_window: list[float] | None = None,
    overhead: list[int] | None = None,
) -> Result:
    """Summarise bytes per committed window: early vs late, so growth shows.

    Args:
        per_commit: bytes each commit added, in order.
        per_window: for each commit that added chunks, its bytes divided by
            the chunks it added; defaults to ``per_commit``.
        overhead: for those commits, the bytes that were not chunks.
    """
    n = len(per_commit)
    if n == 0:
        return {"commits": 0}
    windows = list(per_commit if per_window is None else per_window)
    # Skip the first and last data commits (a partial window plus the final
    # summary) when there are enough of them.
    body = windows[1:-1] if len(windows) > 4 else windows
    tenth = max(1, len(body) // 10)
    early = statistics.median(body[:tenth])
    late = statistics.median(body[-tenth:])
    result: Result = {
        "commits": n,
        "first_bytes": per_commit[0],
        "early_median_bytes": early,
        "late_median_bytes": late,
        "late_over_early": late / early if early else None,
        "max_bytes": max(body),
        "per_commit": per_commit,
    }
    if overhead:
        result["overhead_early_bytes"] = overhead[0]
        result["overhead_late_bytes"] = overhead[-1]
        result["overhead_max_bytes"] = max(overhead)
    return result


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
