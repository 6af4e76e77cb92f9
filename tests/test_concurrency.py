"""Many writers: a sweep into one repository, one writer per run, stale locks."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gitruns
from gitruns.errors import GitRunsError, RunLockedError
from gitruns.store import RunStore
from tests.conftest import git

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import sweep  # noqa: E402


def test_a_sweep_of_ten_writers_and_three_forks_keeps_every_step(
    tmp_path: Path,
) -> None:
    outcome = sweep.sweep(tmp_path, runs=10, forks=3, steps=300)

    assert outcome.failed == []
    assert outcome.missing_runs == []
    assert outcome.steps_wrong == 0
    # 10 runs of 300, 3 forks of the 300-step source plus 75 each, and the source.
    fork_steps = sum((i + 1) * sweep.SOURCE_STEPS // 4 + 1 + 75 for i in range(3))
    assert outcome.steps_checked == 10 * 300 + fork_steps + sweep.SOURCE_STEPS
    assert outcome.fsck is None
    assert len(outcome.timings) == 13


_HOLDER = """
    import sys, time, gitruns
    run = gitruns.init(project="p", id="held", repo=sys.argv[1], save_code=False,
                       resume="allow")
    for i in range(20):
        run.log({"loss": float(i)})
    print("holding", run._writer._link.pid, flush=True)
    time.sleep(120)
"""


class Holder:
    """A process that opens run p/held, logs 20 steps and keeps it open.

    Attributes:
        child: the writer's process.
        committer: the pid of its committer process.
    """

    def __init__(self, repo: Path) -> None:
        self.child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_HOLDER), str(repo)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.child.stdout is not None
        word, pid = self.child.stdout.readline().split()
        assert word == "holding"
        self.committer = int(pid)
        self.pid = self.child.pid

    def kill(self, *, committer_too: bool = False) -> None:
        """SIGKILL the writer (and first its committer process, if asked)."""
        if committer_too:
            os.kill(self.committer, signal.SIGKILL)
            _wait_gone(self.committer)
        self.child.send_signal(signal.SIGKILL)
        self.child.wait()


def _wait_gone(pid: int) -> None:
    for _ in range(500):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return  # a zombie of the killed writer: gone for locks
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} is still alive")


def test_a_second_writer_is_told_the_host_and_pid_of_the_first(repo: Path) -> None:
    holder = Holder(repo).child
    try:
        with pytest.raises(RunLockedError) as refused:
            gitruns.init(project="p", id="held", resume="allow", repo=repo)
    finally:
        holder.kill()
        holder.wait()
    error = refused.value
    assert (error.host, error.pid) == (socket.gethostname(), holder.pid)
    assert f"pid {holder.pid} on {socket.gethostname()}" in str(error)
    assert "finish that writer first" in str(error)


def test_a_second_writer_in_the_same_process_is_refused(repo: Path) -> None:
    first = gitruns.init(project="p", id="twice", repo=repo, save_code=False)
    with pytest.raises(RunLockedError) as refused:
        gitruns.init(project="p", id="twice", resume="allow", repo=repo)
    assert refused.value.pid == os.getpid()
    first.log({"loss": 1.0})
    first.finish()
    again = gitruns.init(project="p", id="twice", resume="must", repo=repo)
    assert again.step == 1
    again.finish()


def test_a_killed_writers_committer_commits_its_steps_and_marks_it_crashed(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = Holder(repo)
    holder.kill()

    # The next writer waits for the committer process, which commits the
    # 20 journaled steps and lets the lock go; nothing is left to recover.
    with caplog.at_level(logging.INFO, logger="gitruns"):
        run = gitruns.init(project="p", id="held", resume="must", repo=repo)
    assert "recovered" not in caplog.text
    assert run.step == 20
    log = git_log(repo, "runs/p/held")
    assert log[0] == "p/held: steps 0..19" and log[1] == "p/held: new run"
    run.log({"loss": 20.0})
    run.finish()
    view = gitruns.Api(repo).run("p/held")
    assert [row["loss"] for row in view.scan_history()] == [float(i) for i in range(21)]
    _wait_gone(holder.committer)


def test_the_lock_of_a_killed_writer_and_committer_is_recovered_and_logged(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = Holder(repo)
    holder.kill(committer_too=True)

    with caplog.at_level(logging.WARNING, logger="gitruns"):
        run = gitruns.init(project="p", id="held", resume="must", repo=repo)
    assert (
        f"recovered the lock left by pid {holder.pid} on {socket.gethostname()}"
        in caplog.text
    )
    assert "recovered 20 journaled steps (0..19)" in caplog.text
    assert run.step == 20
    run.log({"loss": 20.0})
    run.finish()
    view = gitruns.Api(repo).run("p/held")
    assert [row["loss"] for row in view.scan_history()] == [float(i) for i in range(21)]


@pytest.mark.parametrize("committer_too", [False, True])
def test_a_ref_lock_left_by_a_killed_writer_is_removed(
    repo: Path, caplog: pytest.LogCaptureFixture, committer_too: bool
) -> None:
    holder = Holder(repo)
    # As if it died while moving its branch: the ref's lock file stays.
    ref_lock = repo / "refs" / "heads" / "runs" / "p" / "held.lock"
    ref_lock.write_text("0" * 40 + "\n")
    holder.kill(committer_too=committer_too)

    with caplog.at_level(logging.WARNING, logger="gitruns"):
        run = gitruns.init(project="p", id="held", resume="must", repo=repo)
        run.log({"loss": 20.0})
        run.finish()
    assert not ref_lock.exists()
    if committer_too:
        # Nobody else could remove it: the next writer did, and said so.
        assert "held.lock, left" in caplog.text
    assert gitruns.Api(repo).run("p/held").last_step == 20


def git_log(repo: Path, branch: str) -> list[str]:
    """The subjects of a branch's commits, newest first."""
    done = subprocess.run(
        ["git", "--git-dir", str(repo), "log", "--format=%s", branch],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def test_forks_and_finishes_survive_a_git_gc_running_alongside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `git gc --auto` may start in a code repository at any time: pack-refs
    # and prune remove the folders a writer is about to use.

    repo = tmp_path / "runs.git"
    src = gitruns.init(project="p", id="src", repo=repo, window=50)
    for i in range(600):
        src.log({"x": float(i)})
    src.finish()
    stop = threading.Event()
    collected = []

    def collect() -> None:
        while not stop.is_set():
            done = subprocess.run(["git", "-C", str(repo), "gc", "-q"], check=False)
            collected.append(done.returncode)

    collector = threading.Thread(target=collect)
    collector.start()
    made = []
    try:
        with caplog.at_level(logging.WARNING, logger="gitruns"):
            for n in range(40):
                fork = gitruns.init(
                    project="p", repo=repo, fork_from=f"p/src?_step={n * 13}"
                )
                for i in range(60):
                    fork.log({"y": float(i)})
                fork.finish()
                made.append((fork.path, n * 13 + 1 + 60))
    finally:
        stop.set()
        collector.join()

    # git gc really ran alongside, and never failed for our writes.
    assert len(collected) >= 2 and set(collected) == {0}
    assert [r.getMessage() for r in caplog.records] == []
    api = gitruns.Api(repo)
    assert [(p, len(list(api.run(p).scan_history()))) for p, _ in made] == made
    assert subprocess.run(["git", "-C", str(repo), "fsck", "--strict"]).returncode == 0


def test_a_pack_that_git_gc_removed_is_passed_over_for_its_replacement(
    tmp_path: Path,
) -> None:
    # A reader's list of packs can hold one that `git gc` has just replaced
    # (dulwich lists the packs it had, then the new ones, closing the gone):
    # a lookup goes on to the pack that holds the object now.
    from gitruns.objects import ObjectReader
    from gitruns.store import RunStore

    repo = tmp_path / "runs.git"
    run = gitruns.init(project="p", id="r", repo=repo, window=5)
    for i in range(12):
        run.log({"x": float(i)})
    run.finish()
    subprocess.run(["git", "-C", str(repo), "gc", "-q"], check=True)
    store = RunStore.open(repo)
    tip = store.tip(gitruns.Api(repo).run("p/r").ref)
    assert tip is not None

    reader = ObjectReader(store.repo.object_store)
    assert reader.read(tip, 2**20)[0] == 1  # its pack is now in the list
    before = reader._packs
    # Another run, so that the next pack holds other objects, under another name.
    with gitruns.init(project="p", id="more", repo=repo) as more:
        more.log({"y": 1.0})
    subprocess.run(["git", "-C", str(repo), "gc", "-q"], check=True)
    reader._refresh()  # the old pack first, closed, then the new one
    assert reader._packs is not None and len(reader._packs) > len(before or [])
    found = reader._locate(tip)
    assert found is not None and all(found[0] is not old for old in before or [])
    assert reader.read(tip, 2**20)[0] == 1
    reader.close()
    store.close()


def test_two_threads_logging_to_one_run_lose_nothing(repo: Path) -> None:
    run = gitruns.init(project="p", id="threads", repo=repo, window=100)
    count = 20_000

    def log(key: str) -> None:
        for i in range(count):
            run.log({key: i})

    threads = [threading.Thread(target=log, args=(key,)) for key in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.finish()

    rows = list(gitruns.Api(repo=repo).run("p/threads").scan_history())
    assert len(rows) == 2 * count  # one step per call
    for key in ("a", "b"):
        assert [r[key] for r in rows if key in r] == list(range(count))


def answer_of_forked_child(
    ask: Callable[[], bytes], held: contextlib.AbstractContextManager[Any] | None = None
) -> bytes:
    """What ``ask()`` returns in a forked child, within 30 seconds.

    With ``held``, a thread of this process is inside it at the fork, as a
    thread inside log() or config.update() would be.
    """
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        assert held is not None
        with held:
            inside.set()
            release.wait()

    holder = threading.Thread(target=hold)
    if held is not None:
        holder.start()
        inside.wait()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer, and leave at once
        os.close(reader)
        try:
            os.write(writer, ask())
        finally:
            os._exit(0)
    os.close(writer)
    try:
        ready, _, _ = select.select([reader], [], [], 30)
        assert ready, "the forked child did not answer (waiting for a lock?)"
        with os.fdopen(reader, "rb") as child:
            return child.read()
    finally:
        release.set()
        if held is not None:
            holder.join()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_child_forked_while_a_thread_logs_is_refused_not_hung(repo: Path) -> None:
    run = gitruns.init(project="p", id="forked-child", repo=repo)
    run.log({"loss": 1.0})

    def log() -> bytes:
        try:
            run.log({"loss": 2.0})
        except GitRunsError:
            return b"refused"
        return b"logged"

    assert answer_of_forked_child(log, held=run._writer._guard) == b"refused"
    run.finish()
    assert gitruns.Api(repo=repo).run("p/forked-child").history()["loss"].tolist() == [
        1.0
    ]


def test_config_changes_of_two_threads_are_both_committed(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Thread A is held up between changing the config and journaling it; B
    # changes it meanwhile. A's snapshot, journaled last, must not undo B's.
    run = gitruns.init(project="p", id="cfg-threads", repo=repo)
    set_meta = run._writer.set_meta
    a_inside, b_started, b_done = (threading.Event() for _ in range(3))

    def held_up(**meta: Any) -> None:
        if threading.current_thread().name == "A":
            a_inside.set()
            b_started.wait()
            b_done.wait(0.3)  # B, if it is not kept waiting, is done by then
        set_meta(**meta)

    def b() -> None:
        a_inside.wait()
        b_started.set()
        run.config.update({"b": 2})
        b_done.set()

    monkeypatch.setattr(run._writer, "set_meta", held_up)
    threads = [
        threading.Thread(target=lambda: run.config.update({"a": 1}), name="A"),
        threading.Thread(target=b, name="B"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.finish()
    assert gitruns.Api(repo).run("p/cfg-threads").config == {"a": 1, "b": 2}


def test_summary_read_while_metrics_are_defined_from_another_thread(
    repo: Path,
) -> None:
    run = gitruns.init(project="p", id="rules", repo=repo)
    # Each read matches every one of 50 metrics against the rules.
    run.log({f"m{j}": float(j) for j in range(50)})
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                dict(run.summary)
            except BaseException as exc:  # noqa: BLE001 - any is the failure
                errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(800):
        run.define_metric(f"m{i}/*", summary="max")
    stop.set()
    reader.join()
    run.finish()
    assert errors == []
    store = RunStore.open(repo, create=False)
    try:
        view = gitruns.Api(store).run("p/rules")
        info = store.read_snapshot(store.tip(view.ref)).info
    finally:
        store.close()
    assert len(info["metrics"]) == 800


def test_a_forked_child_reading_the_summary_commits_nothing(repo: Path) -> None:
    run = gitruns.init(project="p", id="child-reads", repo=repo, window=10)
    for i in range(40):
        run.log({"x": i})
    run._writer.flush()
    committed = git("rev-parse", "runs/p/child-reads", cwd=repo)
    for i in range(40, 45):  # journaled, not committed
        run.log({"x": i})
    answer = answer_of_forked_child(lambda: repr(run.summary.get("x")).encode())
    assert answer == b"39"  # what the branch holds
    assert git("rev-parse", "runs/p/child-reads", cwd=repo) == committed
    run.finish()
    rows = gitruns.Api(repo).run("p/child-reads").scan_history()
    assert [r["x"] for r in rows] == list(range(45))


def test_a_child_forked_while_a_thread_changes_the_config_is_not_hung(
    repo: Path,
) -> None:
    run = gitruns.init(project="p", id="child-config", repo=repo, config={"a": 1})
    answer = answer_of_forked_child(
        lambda: repr((dict(run.config), "x" in run.summary)).encode(),
        held=run._meta_lock,
    )
    assert answer == b"({'a': 1}, False)"
    run.finish()
