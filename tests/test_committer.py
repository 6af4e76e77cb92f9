"""The committer process: it commits a live run's windows, and hands back on failure."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import gitruns
import gitruns.chunk as chunk_module
import gitruns.writer as writer_module
from gitruns.cli import main
from gitruns.errors import ChunkTooLargeError, RepositoryError
from gitruns.run import Run
from gitruns.store import RunStore
from tests.conftest import git

#: How long a test waits for a committer process to come up, at most.
BOOT_SECONDS = 60.0


def committed_last_step(repo: Path, path: str) -> int | None:
    """The last step the run's branch holds, read by a fresh store."""
    store = RunStore.open(repo, create=False)
    try:
        return gitruns.Api(store).run(path).last_step
    finally:
        store.close()


def log_until(run: Run, done: Callable[[], bool], start: int) -> int:
    """Log a step every few milliseconds until ``done()``; return the next step."""
    step = start
    deadline = time.monotonic() + BOOT_SECONDS
    while not done():
        assert time.monotonic() < deadline, "the committer process did not come up"
        run.log({"loss": float(step), "step": step})
        step += 1
        time.sleep(0.002)
    return step


def handed_over(run: Run) -> bool:
    """Whether the run's committer process commits it now."""
    link = run._writer._link
    return link is not None and link.active and run._writer._local is None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def ends(pid: int) -> bool:
    """Whether ``pid`` ends within :data:`BOOT_SECONDS`."""
    deadline = time.monotonic() + BOOT_SECONDS
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_long_run_is_committed_by_its_own_process_while_it_logs(repo: Path) -> None:
    run = gitruns.init(project="p", id="long", repo=repo, window=10)
    step = log_until(run, lambda: handed_over(run), 0)
    link = run._writer._link
    assert link is not None and link.pid != os.getpid() and alive(link.pid)

    # Windows are committed by the process while the writer goes on logging.
    step = log_until(
        run, lambda: (committed_last_step(repo, "p/long") or 0) >= step + 20, step
    )
    assert handed_over(run)
    run.finish()
    rows = list(gitruns.Api(repo).run("p/long").scan_history())
    assert [r["_step"] for r in rows] == list(range(step))
    assert all(r["loss"] == float(r["_step"]) and r["step"] == r["_step"] for r in rows)
    assert gitruns.Api(repo).run("p/long").state == "finished"
    assert ends(link.pid)


def test_a_run_shorter_than_boot_after_is_committed_by_finish(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many complete windows, but the run ends before BOOT_AFTER_SECONDS: booting a
    # process would only have slowed the loop.
    monkeypatch.setattr(writer_module, "BOOT_AFTER_SECONDS", 60.0)
    run = gitruns.init(project="p", id="quick", repo=repo, window=100)
    link = run._writer._link
    assert link is not None
    for i in range(5_000):
        run.log({"loss": float(i)})
    assert committed_last_step(repo, "p/quick") is None  # all in the journal
    run.finish()
    assert not link.booted
    assert committed_last_step(repo, "p/quick") == 4_999
    assert ends(link.pid)


def test_a_run_shorter_than_a_window_never_boots_its_process(repo: Path) -> None:
    run = gitruns.init(project="p", id="short", repo=repo)
    link = run._writer._link
    assert link is not None
    for i in range(5):
        run.log({"loss": float(i)})
    run.finish()
    assert not link.booted
    assert committed_last_step(repo, "p/short") == 4
    assert ends(link.pid)  # the bootstrap ended on its word


def test_flush_and_summary_ask_the_process(repo: Path) -> None:
    run = gitruns.init(project="p", id="ask", repo=repo, window=10)
    step = log_until(run, lambda: handed_over(run), 0)
    run.log({"loss": -5.0, "step": step})
    run.log({"acc": 0.25}, commit=False)  # an open step counts in the summary
    assert run.summary["loss"] == -5.0 and run.summary["acc"] == 0.25
    run._writer.flush()
    assert committed_last_step(repo, "p/ask") == step  # the finished steps
    run.finish()
    assert gitruns.Api(repo).run("p/ask").summary["acc"] == 0.25


def test_the_writer_takes_over_when_its_process_dies(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = gitruns.init(project="p", id="orphan", repo=repo, window=10)
    step = log_until(run, lambda: handed_over(run), 0)
    link = run._writer._link
    assert link is not None
    os.kill(link.pid, signal.SIGKILL)
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        step = log_until(run, lambda: run._writer._local is not None, step)
        for _ in range(50):  # and a few windows more, committed in log()
            run.log({"loss": float(step), "step": step})
            step += 1
    assert "the committer process ended (killed by signal 9)" in caplog.text
    assert (committed_last_step(repo, "p/orphan") or 0) >= step - 10
    run.finish()
    steps = [r["_step"] for r in gitruns.Api(repo).run("p/orphan").scan_history()]
    assert steps == list(range(step))


def test_the_process_logs_through_the_writers_loggers(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gitruns"):
        run = gitruns.init(project="p", id="talk", repo=repo, window=10)
        step = log_until(run, lambda: handed_over(run), 0)
        log_until(run, lambda: "committed steps" in caplog.text, step)
        run.finish()
    forwarded = [r for r in caplog.records if r.name == "gitruns.committer"]
    assert any(
        r.getMessage().startswith("run p/talk: committed steps") for r in forwarded
    )


_INTERRUPTED = """
    import signal, sys, time, gitruns
    # As at a terminal: a suite started in the background (`cmd &` in a
    # script) hands its children SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run = gitruns.init(project="p", id="ctrl", repo=sys.argv[1], window=10)
    step = 0
    while not (run._writer._link.active and run._writer._local is None):
        run.log({"loss": float(step)})
        step += 1
        time.sleep(0.002)
    print("up", step, flush=True)
    while True:
        run.log({"loss": float(step)})
        step += 1
        time.sleep(0.001)
"""


def test_ctrl_c_finishes_the_run_through_its_process(repo: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_INTERRUPTED), str(repo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    word, logged = child.stdout.readline().split()
    assert word == "up"
    child.send_signal(signal.SIGINT)  # reaches the writer, never its committer
    try:
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()  # (a no-op once it has ended)
    assert "KeyboardInterrupt" in err
    view = gitruns.Api(repo).run("p/ctrl")
    assert view.state == "crashed"
    steps = [r["_step"] for r in view.scan_history()]
    assert steps == list(range(len(steps))) and len(steps) >= int(logged)


def test_abandon_stops_the_process_and_the_journal_keeps_the_rows(repo: Path) -> None:
    run = gitruns.init(project="p", id="left", repo=repo, window=10)
    step = log_until(run, lambda: handed_over(run), 0)
    link = run._writer._link
    assert link is not None
    for _ in range(5):  # an open window the process has not committed
        run.log({"loss": float(step), "step": step})
        step += 1
    run._writer.abandon()
    assert ends(link.pid)
    assert (committed_last_step(repo, "p/left") or -1) < step - 1
    again = gitruns.init(project="p", id="left", repo=repo, resume="must")
    assert again.step == step  # the next open committed what was journaled
    again.finish()
    steps = [r["_step"] for r in gitruns.Api(repo).run("p/left").scan_history()]
    assert steps == list(range(step))


def test_a_window_too_large_for_one_chunk_is_committed_in_parts(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long strings are held with their digests: a window of them can encode
    # past the chunk limit, lowered here so a test can reach it.
    monkeypatch.setattr(chunk_module, "MAX_CHUNK_BYTES", 40_000)
    run = gitruns.init(project="p", id="strings", repo=repo)
    letters = random.Random(0).choices
    texts = ["".join(letters("abcdefghij", k=3_000)) for _ in range(40)]
    for text in texts:
        run.log({"text": text, "loss": 1.0})
    run.finish()

    view = gitruns.Api(repo).run("p/strings")
    assert view.history()["text"].tolist() == texts
    store = RunStore.open(repo, create=False)
    try:
        starts = store.read_snapshot(store.tip(view.ref)).history.starts
        assert len(starts) > 1  # cut into parts
    finally:
        store.close()
    git("fsck", "--strict", cwd=repo)


def test_a_step_too_large_for_any_chunk_is_refused_and_kept_in_the_journal(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunk_module, "MAX_CHUNK_BYTES", 2_000)
    run = gitruns.init(project="p", id="huge", repo=repo)
    run.log({"text": "y" * 3_000})
    with pytest.raises(RepositoryError, match="hold too much to commit") as failed:
        run.finish()
    cause = failed.value.__cause__
    assert isinstance(cause, ChunkTooLargeError)
    assert (cause.start, cause.steps, cause.limit) == (0, 1, 2_000)
    assert "journal folder" in str(cause) and "without steps 0 and after" in str(cause)
    refused = CliRunner().invoke(main, ["recover", "--repo", str(repo)])
    assert refused.exit_code == ChunkTooLargeError.exit_code
    assert "Error: p/huge:" in refused.output and "journals are kept" in refused.output
    monkeypatch.setattr(chunk_module, "MAX_CHUNK_BYTES", 64 * 2**20)
    done = CliRunner().invoke(main, ["recover", "--repo", str(repo)])
    assert done.exit_code == 0, done.output
    assert gitruns.Api(repo).run("p/huge").history()["text"].tolist() == ["y" * 3_000]
