"""The raw floors gitruns is held to: plain lists to msgpack, and dulwich commits."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from common import Call, Result, Workload, commit_growth, storage, time_calls
from dulwich.objects import ObjectID
from dulwich.refs import Ref

#: Steps per chunk in the dulwich floor, the window size the issue names.
WINDOW = 1_000

#: Chunks per fan-out directory in the dulwich floor's tree.
FANOUT = 256

FLOOR_REF = b"refs/heads/runs/bench/floor"


class Columns:
    """The least a logger can do: append each value to its metric's lists.

    A metric keeps its own steps so that sparse metrics keep their gaps; a
    second call at the same step merges into that step, as ``log()`` does.
    """

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.times: list[float] = []
        self.metrics: dict[str, tuple[list[int], list[float]]] = {}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one call's values."""
        if not self.steps or self.steps[-1] != step:
            self.steps.append(step)
            self.times.append(time.time())
        cols = self.metrics
        for key, value in metrics.items():
            col = cols.get(key)
            if col is None:
                col = cols[key] = ([], [])
            col[0].append(step)
            col[1].append(value)

    def encode(self) -> bytes:
        """The columns as one msgpack document of little-endian binary arrays.

        A metric logged at every step stores no steps of its own.
        """
        steps = np.asarray(self.steps, dtype="<i8")
        doc: dict[str, Any] = {
            "version": 1,
            "_step": steps.tobytes(),
            "_timestamp": np.asarray(self.times, dtype="<f8").tobytes(),
        }
        metrics: dict[str, dict[str, bytes]] = {}
        for key, (at, values) in self.metrics.items():
            col = {"values": np.asarray(values, dtype="<f8").tobytes()}
            if len(at) != len(steps) or not np.array_equal(at, steps):
                col["steps"] = np.asarray(at, dtype="<i8").tobytes()
            metrics[key] = col
        doc["metrics"] = metrics
        packed: bytes = msgpack.packb(doc)
        return packed


def decode_columns(
    path: Path, keys: list[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a file written by :meth:`Columns.encode` back into numpy columns."""
    doc = msgpack.unpackb(path.read_bytes())
    steps = np.frombuffer(doc["_step"], dtype="<i8")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, col in doc["metrics"].items():
        if keys is not None and key not in keys:
            continue
        at = np.frombuffer(col["steps"], dtype="<i8") if "steps" in col else steps
        out[key] = (at, np.frombuffer(col["values"], dtype="<f8"))
    return out


def write_columns(calls: list[Call], path: Path) -> int:
    """Log ``calls`` into plain columns and write them to ``path``; bytes."""
    cols = Columns()
    for step, metrics in calls:
        cols.log(step, metrics)
    data = cols.encode()
    path.write_bytes(data)
    return len(data)


def columns_file(params: dict[str, Any], workdir: Path) -> Result:
    """Write a dense workload's columns to ``params["path"]`` for the read case."""
    work = Workload.from_params(params)
    size = write_columns(list(work.iter_calls()), Path(params["path"]))
    return {"bytes": size, "points": work.points}


def log_msgpack(params: dict[str, Any], workdir: Path) -> Result:
    """Floor (a): append to lists, then write every column once to one file."""
    work = Workload.from_params(params)
    calls = work.calls()
    path = workdir / "columns.msgpack"
    cols = Columns()

    t0 = time.perf_counter()
    loop_s, latency = time_calls(calls, cols.log, params["latency"])
    path.write_bytes(cols.encode())
    total = time.perf_counter() - t0

    size = path.stat().st_size
    return {
        "seconds": total,
        "loop_seconds": loop_s,
        "init_seconds": 0.0,
        "calls": len(calls),
        "points": work.points,
        "latency": latency,
        "storage": {"bytes": size, "bytes_per_point": size / work.points},
    }


class DulwichWindows:
    """Floor (b): the columns committed with dulwich, one commit per window.

    Each window becomes one chunk blob under a two-level fan-out
    (``history/<k // 256>/<k>.msgpack``), so a commit writes one blob, one
    subtree, two upper trees and the commit, whatever the run's length.
    """

    def __init__(self, repo_path: Path) -> None:
        from dulwich.objects import Tree
        from dulwich.repo import Repo

        self.repo = Repo.init_bare(str(repo_path), mkdir=True)
        self.store = self.repo.object_store
        self.window = Columns()
        self.window_index = 0
        self.subtrees: dict[int, Tree] = {}
        self.head: ObjectID | None = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one call; commit the window it closes, if any."""
        index = step // WINDOW
        if index != self.window_index:
            self.commit()
            self.window_index = index
        self.window.log(step, metrics)

    def commit(self) -> None:
        """Write the current window as a chunk and commit it."""
        from dulwich.objects import Blob, Commit, Tree

        if not self.window.steps:
            return
        k = self.window_index
        blob = Blob.from_string(self.window.encode())
        self.window = Columns()

        sub = self.subtrees.setdefault(k // FANOUT, Tree())
        sub.add(f"{k:08d}.msgpack".encode(), 0o100644, blob.id)
        history = Tree()
        for fan, tree in self.subtrees.items():
            history.add(f"{fan:04d}".encode(), 0o040000, tree.id)
        root = Tree()
        root.add(b"history", 0o040000, history.id)

        commit = Commit()
        commit.tree = root.id
        commit.parents = [self.head] if self.head else []
        commit.author = commit.committer = b"bench <bench@localhost>"
        commit.author_time = commit.commit_time = int(time.time())
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = f"steps {k * WINDOW}..\n".encode()
        for obj in (blob, sub, history, root, commit):
            self.store.add_object(obj)
        self.repo.refs.set_if_equals(Ref(FLOOR_REF), self.head, commit.id)
        self.head = commit.id


def log_dulwich(params: dict[str, Any], workdir: Path) -> Result:
    """Floor (b): the same columns as dulwich commits per 1,000-step window."""
    work = Workload.from_params(params)
    calls = work.calls()
    repo = workdir / "floor.git"

    t0 = time.perf_counter()
    writer = DulwichWindows(repo)
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop_s, latency = time_calls(calls, writer.log, params["latency"])
    writer.commit()
    total = time.perf_counter() - t0

    result: Result = {
        "seconds": total,
        "loop_seconds": loop_s,
        "init_seconds": init_s,
        "calls": len(calls),
        "points": work.points,
        "latency": latency,
    }
    if params.get("storage"):
        result["growth"] = commit_growth(repo, FLOOR_REF)
        result["storage"] = storage(repo, work.points)
    return result
