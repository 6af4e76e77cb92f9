"""SIGKILL torture: kill a logger at chosen moments; check no accepted step is lost.

Usage::

    python bench/torture.py [--trials 60] [--seed 0] [--workdir DIR] [--json FILE]

Every trial starts a worker (this file in ``worker`` mode) that resumes one run
and logs random rows: plain steps, ``commit=False`` merges, jumps across
windows, nested dicts and every kind of value. Before each ``log()`` call the
worker appends the row to an acknowledgement file as a *try*, and after the
call returns it appends an *ok*. Then the worker dies by SIGKILL, at one of
these points:

- ``timer``: the parent kills it after a random delay;
- ``journal``: right after a journal record is written, before log() returns;
- ``torn``: half-way through a journal record (as a power cut could leave it);
- ``object``: just before a Git object is renamed into place;
- ``ref``: just before the run's ref is renamed into place;
- ``commit``: after a commit is written, before the ref moves;
- ``retire``: after the ref moved, before the journal file is deleted;
- ``pack``: half-way through packing the loose objects at finish;
- ``committer``: the parent kills the worker's committer process after a
  random delay (the worker takes over its commits), and later the worker;
- ``both``: the parent kills the worker and its committer process at once.

Workers killed at the points inside committing (object, ref, commit, retire,
pack) commit in their own process (``background=False``), so that the points
are reached where the patches are; the others have a committer process,
which commits what a killed worker journaled and marks the run crashed (with
``both``, nobody does until the recovery).

After each kill the run is recovered, alternately by ``gitruns recover`` and
by reopening it with ``gitruns.init(resume="must")``, then checked: every
acknowledged value is there, bit for bit; nothing that was never logged is
there; ``git fsck --strict`` is clean. The next worker resumes the same run,
so each trial also proves that a recovered run keeps going.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

PROJECT = "torture"
RUN_ID = "victim"
POINTS = (
    "timer",
    "journal",
    "torn",
    "object",
    "ref",
    "commit",
    "retire",
    "pack",
    "committer",
    "both",
)
#: The points reached while committing, which a worker commits itself to reach.
_COMMIT_POINTS = frozenset({"object", "ref", "commit", "retire", "pack"})

#: How many hits of a point a worker lets pass before it kills itself, at most.
_REACH = {
    "journal": 2500,
    "torn": 2500,
    "object": 150,
    "ref": 25,
    "commit": 25,
    "retire": 25,
    "pack": 200,
}
#: The parent kills any worker still alive after this long.
_CAP_SECONDS = 4.0

#: In quick mode (the test suite) points are reached sooner and runs finish
#: more often, so that a handful of short trials reach every point.
_QUICK_REACH = {k: max(2, v // 12) for k, v in _REACH.items()}
_QUICK_CAP_SECONDS = 2.5

_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "torture",
    "GIT_AUTHOR_EMAIL": "torture@gitruns.invalid",
    "GIT_COMMITTER_NAME": "torture",
    "GIT_COMMITTER_EMAIL": "torture@gitruns.invalid",
}


# -- the worker ----------------------------------------------------------------


#: The worker's acknowledgement file, where it notes where it killed itself.
_ACK_FD = -1


def _die(point: str) -> None:
    os.write(_ACK_FD, msgpack.packb(["died", point]))
    os.kill(os.getpid(), signal.SIGKILL)


class _Countdown:
    """Kill this process on the n-th call of tick()."""

    def __init__(self, n: int) -> None:
        self.n = n

    def tick(self) -> bool:
        self.n -= 1
        return self.n <= 0


def _inject(point: str, countdown: _Countdown) -> None:
    """Patch the worker so that it SIGKILLs itself at ``point``.

    The patches only decide *when* the process dies; everything else runs
    the real code against the real files.
    """
    from dulwich.object_store import DiskObjectStore

    from gitruns.journal import Journal
    from gitruns.store import RunStore

    if point in ("journal", "torn"):
        original_append = Journal._append

        def append(self: Journal, record: bytes) -> None:
            if countdown.tick():
                if point == "torn":
                    # The record's frame lands but only half its bytes do,
                    # as a power cut could leave the mapped page.
                    original_append(self, record)
                    end, half, mapping = self.size, len(record) // 2, self._map
                    assert mapping is not None
                    mapping[end - len(record) + half : end] = bytes(len(record) - half)
                    _die(point)
                original_append(self, record)
                _die(point)
            original_append(self, record)

        Journal._append = append  # type: ignore[method-assign]
        original_row = Journal.write_row

        def write_row(self: Journal, step: int, when: float, row: Any) -> int:
            # Rows of a known schema are copied by write_row itself.
            written = original_row(self, step, when, row)
            if written and countdown.tick():
                if point == "torn":
                    half = (written - 8) // 2
                    mapping = self._map
                    assert mapping is not None
                    mapping[self.size - half : self.size] = bytes(half)
                _die(point)
            return written

        Journal.write_row = write_row  # type: ignore[method-assign]

    elif point in ("object", "ref", "pack"):
        needle = {
            "object": os.sep + "objects" + os.sep,
            "ref": os.sep + "refs" + os.sep + "heads" + os.sep + "runs" + os.sep,
            "pack": os.sep + "pack" + os.sep,
        }[point]

        def guard(original: Any) -> Any:
            def renamed(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                if needle in os.fsdecode(dst) and countdown.tick():
                    _die(point)
                return original(src, dst, *args, **kwargs)

            return renamed

        os.replace = guard(os.replace)
        os.rename = guard(os.rename)
        if point == "pack":
            original_delete = DiskObjectStore.delete_loose_object

            def delete(self: DiskObjectStore, sha: Any) -> None:
                if countdown.tick():
                    _die(point)
                original_delete(self, sha)

            DiskObjectStore.delete_loose_object = delete  # type: ignore[method-assign]

    elif point == "commit":
        original_update = RunStore.update_ref

        def update_ref(self: RunStore, *args: Any, **kwargs: Any) -> bool:
            if countdown.tick():
                _die(point)
            return original_update(self, *args, **kwargs)

        RunStore.update_ref = update_ref  # type: ignore[method-assign]

    elif point == "retire":
        original_retire = Journal.retire

        def retire(paths: list[Path]) -> None:
            if paths and countdown.tick():
                _die(point)
            original_retire(paths)

        Journal.retire = staticmethod(retire)  # type: ignore[method-assign]


_FLOATS = (
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    0.0,
    5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
)
_INTS = (0, -1, 2**63 - 1, -(2**63), 2**31, 7)
_STRS = ("", "ok", "héllo wörld", "日本語", "tab\tin", "x" * 300)


def _value(rng: random.Random, key: str) -> Any:
    kind = {"loss": "f", "acc": "f", "lr": "f", "count": "i", "flag": "b"}.get(key)
    if kind is None:
        kind = rng.choice("ffffiibsn")
    if kind == "f":
        if rng.random() < 0.2:
            return rng.choice(_FLOATS)
        return rng.uniform(-1e6, 1e6) if rng.random() < 0.5 else rng.random()
    if kind == "i":
        return (
            rng.choice(_INTS) if rng.random() < 0.3 else rng.randrange(-(10**9), 10**9)
        )
    if kind == "b":
        return rng.random() < 0.5
    if kind == "s":
        return rng.choice(_STRS)
    return None


_KEYS = ("loss", "acc", "lr", "count", "flag", "eval/wer", "note", "sparse", "mixed")


def _row(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """A payload for log() and the same payload flattened as gitruns stores it."""
    keys = rng.sample(_KEYS, rng.randint(1, 4))
    flat = {k: _value(rng, k) for k in keys}
    data: dict[str, Any] = {k: v for k, v in flat.items() if "/" not in k}
    nested = {k: v for k, v in flat.items() if "/" in k}
    for key, value in nested.items():
        outer, inner = key.split("/", 1)
        data.setdefault(outer, {})[inner] = value
    if rng.random() < 0.1:
        data["grad"] = {"norm": rng.random(), "clip": {"max": 1.0}}
        flat["grad/norm"] = data["grad"]["norm"]
        flat["grad/clip/max"] = 1.0
    return data, flat


def worker(repo: str, ack: str, seed: int, point: str, fsync: str, quick: bool) -> None:
    """Resume the run and log until killed (see the module docstring)."""
    import gitruns

    rng = random.Random(seed)
    reach = (_QUICK_REACH if quick else _REACH).get(point, 1)
    countdown = _Countdown(rng.randint(1, reach))
    finish_odds = 0.01 if quick else 0.002
    _inject(point, countdown)
    global _ACK_FD
    fd = _ACK_FD = os.open(ack, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(*record: Any) -> None:
        os.write(fd, msgpack.packb(list(record), use_bin_type=True))

    def open_run() -> gitruns.Run:
        return gitruns.init(
            project=PROJECT,
            id=RUN_ID,
            resume="allow",
            repo=repo,
            save_code=False,
            # A run keeps its window for life: one per trial's repository.
            window=(7, 50, 64)[zlib.crc32(str(repo).encode()) % 3],
            flush_interval=rng.choice((0.01, 0.05, 30.0)),
            fsync=fsync,
            background=point not in _COMMIT_POINTS,
        )

    def opened() -> gitruns.Run:
        run = open_run()
        link = run._writer._link
        if link is not None:
            note("committer", link.pid)
        return run

    run = opened()
    while True:
        roll = rng.random()
        data, flat = _row(rng)
        kwargs: dict[str, Any]
        if roll < 0.65:
            step, kwargs = run.step, {}
        elif roll < 0.8:
            step, kwargs = run.step, {"commit": False}
        elif roll < 0.9:
            step = run.step + rng.randint(0, 90)
            kwargs = {"step": step}
        else:
            step, kwargs = run.step, {"step": run.step}
        note("try", step, flat)
        run.log(data, **kwargs)
        note("ok")
        if rng.random() < finish_odds:
            run.finish()
            run = opened()
        if rng.random() < 0.01:
            time.sleep(0.02)


# -- the parent ----------------------------------------------------------------


@dataclass
class Figures:
    """What the torture measured."""

    trials: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    steps_checked: int = 0
    distinct_steps: int = 0
    values_checked: int = 0
    steps_lost: int = 0
    values_wrong: int = 0
    unlogged_seen: int = 0
    fsck_failures: int = 0
    recover_failures: int = 0
    in_flight_kept: int = 0
    in_flight_dropped: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready data."""
        return {
            "trials": self.trials,
            "kills": dict(self.kills),
            "steps_checked": self.steps_checked,
            "distinct_steps": self.distinct_steps,
            "values_checked": self.values_checked,
            "steps_lost": self.steps_lost,
            "values_wrong": self.values_wrong,
            "unlogged_seen": self.unlogged_seen,
            "fsck_failures": self.fsck_failures,
            "recover_failures": self.recover_failures,
            "in_flight_kept": self.in_flight_kept,
            "in_flight_dropped": self.in_flight_dropped,
            "seconds": round(self.seconds, 1),
            "problems": self.problems[:20],
        }

    @property
    def ok(self) -> bool:
        """Whether nothing was lost, wrong or broken."""
        return not (
            self.steps_lost
            or self.values_wrong
            or self.unlogged_seen
            or self.fsck_failures
            or self.recover_failures
        )


def _acks(path: Path) -> Iterator[tuple[int, dict[str, Any], bool]]:
    """(step, flat row, acknowledged) per log() call the worker started."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(path.read_bytes() if path.exists() else b"")
    pending: tuple[int, dict[str, Any]] | None = None
    try:
        for record in unpacker:
            if record[0] == "try":
                if pending is not None:
                    yield pending[0], pending[1], False
                pending = (record[1], record[2])
            elif record[0] == "ok" and pending is not None:
                yield pending[0], pending[1], True
                pending = None
    except (ValueError, msgpack.UnpackException):
        pass  # a torn last acknowledgement: the call is treated as in flight
    if pending is not None:
        yield pending[0], pending[1], False


def _acks_raw(path: Path) -> list[list[Any]]:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(path.read_bytes() if path.exists() else b"")
    records: list[list[Any]] = []
    with contextlib.suppress(ValueError, msgpack.UnpackException):
        records.extend(unpacker)
    return records


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return bool(a == b)


def _stored(repo: Path) -> tuple[dict[int, dict[str, Any]], str]:
    """Every stored step of the run, and its state, read by a fresh store."""
    from gitruns.reader import RunView
    from gitruns.refs import RunRef
    from gitruns.store import RunStore

    store = RunStore.open(repo, create=False)
    try:
        view = RunView(store, RunRef(PROJECT, RUN_ID))
        rows: dict[int, dict[str, Any]] = {}
        for row in view.scan_history():
            step = row.pop("_step")
            row.pop("_timestamp", None)
            rows[step] = row
        return rows, view.state
    finally:
        store.close()


def fsck(repo: Path) -> str | None:
    """None if ``git fsck --strict`` is clean, else what it said."""
    env = {**os.environ, **_GIT_ENV}
    done = subprocess.run(
        ["git", "--git-dir", str(repo), "fsck", "--strict", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    said = done.stdout + done.stderr
    bad = [
        line
        for line in said.splitlines()
        if not line.startswith(("dangling ", "notice: "))
    ]
    if done.returncode != 0 or bad:
        return f"rc={done.returncode}: " + "; ".join(bad[:5])
    return None


def _kill_committer(ack: Path) -> None:
    """SIGKILL the committer process the worker last started, if it lives."""
    pids = [c[1] for c in _acks_raw(ack) if c[0] == "committer"]
    if pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pids[-1]), signal.SIGKILL)


def _recover(repo: Path, how: str) -> str | None:
    """Recover the run in a fresh process; None on success, else its stderr."""
    if how == "cli":
        code = "from gitruns.cli import main; main()"
        argv = [sys.executable, "-c", code, "recover", "--repo", str(repo)]
    else:
        code = (
            "import gitruns, sys; "
            f"r = gitruns.init(project={PROJECT!r}, id={RUN_ID!r}, resume='must', "
            "repo=sys.argv[1], save_code=False); r.finish()"
        )
        argv = [sys.executable, "-c", code, str(repo)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return done.stderr.strip().splitlines()[-1] if done.stderr else "failed"
    return None


class Torture:
    """The parent: runs trials against one repository and keeps the figures."""

    def __init__(self, workdir: Path, seed: int, quick: bool = False) -> None:
        self.quick = quick
        self.repo = workdir / "runs.git"
        self.ack_dir = workdir / "acks"
        self.ack_dir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.expected: dict[int, dict[str, Any]] = {}
        self.figures = Figures()

    def trial(self, point: str) -> None:
        """One worker, one kill, one recovery, one check."""
        figures = self.figures
        index = figures.trials
        figures.trials += 1
        ack = self.ack_dir / f"{index:04d}.ack"
        fsync = self.rng.choice(("never", "never", "commit", "always"))
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "worker",
            str(self.repo),
            str(ack),
            str(self.rng.randrange(2**32)),
            point,
            fsync,
            "quick" if self.quick else "full",
        ]
        child = subprocess.Popen(argv, stderr=subprocess.PIPE)
        cap = _QUICK_CAP_SECONDS if self.quick else _CAP_SECONDS
        timed = point in ("timer", "committer", "both")
        delay = self.rng.uniform(0.4, 1.6) if timed else cap
        try:
            child.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            if point in ("committer", "both"):
                _kill_committer(ack)
            if point == "committer":
                # The worker commits in its place; kill it a moment later.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=self.rng.uniform(0.1, 0.6))
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert child.stderr is not None
        err = child.stderr.read().decode(errors="replace")
        child.stderr.close()
        if child.returncode == -signal.SIGKILL:
            died = [c for c in _acks_raw(ack) if c[0] == "died"]
            timer = point if point in ("committer", "both") else "timer"
            figures.kills[died[0][1] if died else timer] += 1
        else:
            figures.recover_failures += 1
            last = err.strip().splitlines()[-1:] or ["no output"]
            figures.problems.append(
                f"trial {index}: worker exited {child.returncode}: {last[0]}"
            )

        how = "cli" if index % 2 else "reopen"
        failure = _recover(self.repo, how)
        if failure is not None:
            figures.recover_failures += 1
            figures.problems.append(f"trial {index}: {how} recovery failed: {failure}")
            return
        self.check(ack, index)
        problem = fsck(self.repo)
        if problem is not None:
            figures.fsck_failures += 1
            figures.problems.append(f"trial {index}: fsck: {problem}")

    def check(self, ack: Path, index: int) -> None:
        """Compare the stored run with everything the worker acknowledged."""
        figures = self.figures
        calls = list(_acks(ack))
        stored, _ = _stored(self.repo)
        in_flight = [(s, r) for s, r, ok in calls if not ok]
        acked: dict[int, dict[str, Any]] = {}
        for step, row, ok in calls:
            if ok:
                acked.setdefault(step, {}).update(row)
        for step, row in acked.items():
            self.expected.setdefault(step, {}).update(row)

        # The one call that never returned may or may not have made it.
        maybe: dict[int, dict[str, Any]] = {}
        for step, row in in_flight:
            maybe.setdefault(step, {}).update(row)
            kept = step in stored and all(
                k in stored[step] and _same(stored[step][k], v) for k, v in row.items()
            )
            if kept:
                figures.in_flight_kept += 1
                self.expected.setdefault(step, {}).update(row)
            else:
                figures.in_flight_dropped += 1

        figures.distinct_steps = len(self.expected)
        for step, row in self.expected.items():
            figures.steps_checked += 1
            got = stored.get(step)
            if got is None:
                figures.steps_lost += 1
                figures.problems.append(f"trial {index}: step {step} lost")
                continue
            for key, value in row.items():
                figures.values_checked += 1
                if key not in got or not _same(got[key], value):
                    figures.values_wrong += 1
                    figures.problems.append(
                        f"trial {index}: step {step} {key}: "
                        f"{got.get(key)!r} != {value!r}"
                    )
        for step, got in stored.items():
            known = {**self.expected.get(step, {})}
            for key in got:
                if key not in known and key not in maybe.get(step, {}):
                    figures.unlogged_seen += 1
                    figures.problems.append(
                        f"trial {index}: step {step} {key} was never logged"
                    )


def torture(
    workdir: Path,
    trials: int,
    seed: int = 0,
    points: tuple[str, ...] = POINTS,
    quick: bool = False,
) -> Figures:
    """Run ``trials`` kill-and-recover trials, cycling through ``points``."""
    started = time.perf_counter()
    bench = Torture(workdir, seed, quick)
    for index in range(trials):
        bench.trial(points[index % len(points)])
    bench.figures.seconds = time.perf_counter() - started
    return bench.figures


def main() -> None:
    """Parse the command line and run the worker or the parent."""
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        repo, ack, seed, point, fsync, mode = sys.argv[2:8]
        worker(repo, ack, int(seed), point, fsync, mode == "quick")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gitruns-torture-") as tmp:
        workdir = args.workdir or Path(tmp)
        figures = torture(workdir, args.trials, args.seed)
    result = figures.as_dict()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if figures.ok else 1)


if __name__ == "__main__":
    main()
