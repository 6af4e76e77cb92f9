"""Crashes (SIGKILL, SIGTERM, exceptions, full or read-only disks) lose no step."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gitruns
from gitruns.errors import RepositoryError
from gitruns.fork import create_run
from gitruns.refs import RunRef
from gitruns.run import new_run_info
from gitruns.store import RunStore
from gitruns.writer import RunWriter, WriterOptions

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import torture  # noqa: E402

PROJECT = "crash"


def fsck_problem(repo: Path) -> str | None:
    """What ``git fsck --strict`` objects to, or None when it is clean."""
    problem: str | None = torture.fsck(repo)
    return problem


def history(repo: Path, run: str) -> dict[int, dict[str, Any]]:
    """Every stored step of a run, read by a fresh store."""
    store = RunStore.open(repo, create=False)
    try:
        view = gitruns.Api(store).run(run)
        rows = {}
        for row in view.scan_history():
            step = row.pop("_step")
            row.pop("_timestamp", None)
            rows[step] = row
        return rows
    finally:
        store.close()


def run_json(repo: Path, run: str) -> dict[str, Any]:
    """The run's run.json at its tip."""
    store = RunStore.open(repo, create=False)
    try:
        return dict(gitruns.Api(store).run(run).info)
    finally:
        store.close()


def journal_files(repo: Path, run: str) -> list[Path]:
    """Journal files left for a run."""
    project, run_id = run.split("/")
    return sorted((repo / "gitruns" / "journal" / project / run_id).glob("*.jnl"))


def python(code: str, *args: str) -> subprocess.Popen[str]:
    """Start a Python child running ``code``."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def recover_cli(repo: Path, *runs: str) -> subprocess.CompletedProcess[str]:
    """``gitruns recover`` in a process of its own."""
    code = "from gitruns.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "recover", "--repo", str(repo), *runs],
        capture_output=True,
        text=True,
        check=False,
    )


# -- SIGKILL -------------------------------------------------------------------


def test_sigkill_at_every_point_loses_no_acknowledged_step(tmp_path: Path) -> None:
    points = ("torn", "object", "ref", "commit", "retire", "pack", "timer")
    figures = torture.torture(tmp_path, len(points), seed=4, points=points, quick=True)

    assert figures.problems == []
    assert figures.ok
    assert sum(figures.kills.values()) == len(points)
    # Most targeted points were really reached (a miss is killed by the timer).
    assert len(set(figures.kills) - {"timer"}) >= 4, figures.kills
    assert figures.steps_checked > 100
    assert figures.steps_lost == 0 and figures.values_wrong == 0


# -- a writer stopped half-way, in process ------------------------------------


@pytest.fixture
def store(repo: Path) -> Iterator[RunStore]:
    """A fresh runs repository."""
    opened = RunStore.open(repo)
    try:
        yield opened
    finally:
        opened.close()


def new_writer(store: RunStore, run_id: str, **options: Any) -> RunWriter:
    """Create a run and open its writer (commits in log(), for determinism)."""
    ref = RunRef(PROJECT, run_id)
    opts = WriterOptions(background=False, **options)
    info = new_run_info(ref, opts)
    create_run(store, ref, info, {"lr": 0.1})
    return RunWriter.open(store, ref, opts)


def reopen(store: RunStore, run_id: str) -> RunWriter:
    """Open a run's writer again, which recovers its journal."""
    return RunWriter.open(
        store, RunRef(PROJECT, run_id), WriterOptions(background=False)
    )


def test_a_torn_journal_tail_is_skipped_and_logged(
    store: RunStore, repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = new_writer(store, "torn")
    for step in range(10):
        writer.log({"loss": step / 10})
    # A kill half-way through copying the next record: half its bytes lie
    # past the last frame, and its header (copied last) is still zero.
    journal = writer._journal
    record = journal.encode(10, 1.0, {"loss": 1.0})
    start = journal.size + 8
    assert journal._map is not None
    journal._map[start : start + len(record) // 2] = record[: len(record) // 2]
    writer.abandon()  # as a crash: nothing committed, the journal kept

    with caplog.at_level(logging.WARNING, logger="gitruns"):
        writer = reopen(store, "torn")
        writer.finish("crashed")

    assert history(repo, f"{PROJECT}/torn") == {s: {"loss": s / 10} for s in range(10)}
    assert "stopped after 10 records at a damaged one" in caplog.text
    assert "recovered 10 journaled steps (0..9)" in caplog.text
    assert journal_files(repo, f"{PROJECT}/torn") == []


@pytest.mark.parametrize(
    "tampered",
    [
        {"config_patch": 5},
        {"config_patch": {"set": [1, 2], "del": []}},
        {"extra": {b"f": (0o100644, b"\x00" * 20)}},
        {"window": 3},
        {"id": "other"},
        {"next_step": -5},
        {"tags": "one"},
        {"extra": {b"files": (0o040000, b"z" * 40)}},
        {"metrics": {"loss": 1}},
    ],
    ids=[
        "patch-int",
        "patch-list",
        "extra",
        "window",
        "id",
        "next_step",
        "tags",
        "extra-not-hex",
        "metrics",
    ],
)
def test_tampered_metadata_in_a_journal_is_left_out_loudly(
    store: RunStore,
    repo: Path,
    caplog: pytest.LogCaptureFixture,
    tampered: dict[str, Any],
) -> None:
    writer = new_writer(store, "meta")
    for step in range(3):
        writer.log({"loss": step / 10})
    writer.set_meta(name="kept")
    journal = writer._journal
    journal.write(journal.encode_meta(1.0, tampered))  # CRC-valid, made by hand
    writer.set_meta(notes="also kept")
    writer.abandon()

    with caplog.at_level(logging.ERROR, logger="gitruns"):
        reopen(store, "meta").finish("crashed")

    assert "journaled metadata left out" in caplog.text
    view = gitruns.Api(RunStore.open(repo, create=False)).run(f"{PROJECT}/meta")
    assert (view.name, view.notes, view.state) == ("kept", "also kept", "crashed")
    assert view.config == {"lr": 0.1} and view.info["window"] != 3
    assert history(repo, f"{PROJECT}/meta") == {s: {"loss": s / 10} for s in range(3)}


def test_metadata_open_rows_and_int_times_survive_a_crash(
    store: RunStore, repo: Path
) -> None:
    writer = new_writer(store, "meta")
    writer.set_meta(config={"lr": 0.5, "layers": [1, 2]}, name="tuned")
    writer.log({"loss": 1.0}, when=1_700_000_000)  # an int time stamp
    writer.log({"loss": 2.0, "acc": 0.5})
    writer.log({"loss": 3.0}, commit=False)
    writer.flush()  # hands the finished rows off while step 2 is open
    writer.log({"acc": 0.75}, commit=False)
    writer.abandon()

    writer = reopen(store, "meta")
    writer.finish("crashed")
    info = run_json(repo, f"{PROJECT}/meta")
    assert info["name"] == "tuned"
    assert info["state"] == "crashed"
    view = gitruns.Api(repo).run(f"{PROJECT}/meta")
    assert view.config == {"lr": 0.5, "layers": [1, 2]}
    assert history(repo, f"{PROJECT}/meta") == {
        0: {"loss": 1.0},
        1: {"loss": 2.0, "acc": 0.5},
        2: {"loss": 3.0, "acc": 0.75},
    }
    assert next(iter(view.scan_history()))["_timestamp"] == 1_700_000_000.0


def test_summary_and_config_set_key_by_key_journal_linearly_and_survive(
    repo: Path,
) -> None:
    # A summary key per class, set one by one (a W&B idiom): each call must
    # journal what changed, not the whole summary again, and a kill -9 after
    # them loses none.
    child = python(
        """
        import os, signal, sys
        import gitruns
        run = gitruns.init(project="p", id="keys", repo=sys.argv[1], config={"a": 1})
        run.log({"loss": 1.0})
        for i in range(2000):
            run.summary[f"class_{i:04d}_accuracy"] = i / 2000
        for i in range(500):
            run.config[f"c{i}"] = i
        run.config.update({"a": 2}, allow_val_change=True)
        del run.summary["class_0000_accuracy"]
        print("done", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        str(repo),
    )
    out, err = child.communicate(timeout=120)
    assert out.strip() == "done", err
    journaled = sum(path.stat().st_size for path in journal_files(repo, "p/keys"))

    assert recover_cli(repo, "p/keys").returncode == 0
    view = gitruns.Api(repo).run("p/keys")
    summary = {k: v for k, v in view.summary.items() if k.startswith("class_")}
    assert len(summary) == 1999 and summary["class_1999_accuracy"] == 1999 / 2000
    assert view.config == {"a": 2, **{f"c{i}": i for i in range(500)}}
    # Whole dicts each time would journal about 2000 * 2000 * 35 / 2 bytes.
    assert journaled < 2 * 1024 * 1024


@pytest.mark.parametrize("where", ["before the pack", "before its index"])
def test_sigkill_while_finish_writes_a_pack_loses_no_step(
    repo: Path, where: str
) -> None:
    # finish() of a short run commits all its windows in one pack. A kill as
    # the pack is moved in, or after it and before its index is written,
    # leaves the branch where it was and the journal whole, for the
    # committer process to commit.
    child = python(
        """
        import os, signal, sys
        import gitruns

        where = sys.argv[2]
        replace = os.replace

        def dying(src, dst, *args, **kwargs):
            dst = os.fsdecode(dst)
            if where == "before the pack" and dst.endswith(".pack"):
                os.kill(os.getpid(), signal.SIGKILL)
            replace(src, dst, *args, **kwargs)
            if where == "before its index" and dst.endswith(".pack"):
                os.kill(os.getpid(), signal.SIGKILL)

        run = gitruns.init(project="p", id="packed", repo=sys.argv[1], window=100)
        for i in range(3000):
            run.log({"loss": i / 3000, "step": i})
        print("logged", flush=True)
        os.replace = dying
        run.finish()
        print("not killed", flush=True)
        """,
        str(repo),
        where,
    )
    out, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL and out.split() == ["logged"], err

    # The committer process, never booted by the short run, boots when its
    # writer's pipe closes and commits the journal itself: no recover needed.
    deadline = time.monotonic() + 60
    while len(rows := history(repo, "p/packed")) < 3000:
        assert time.monotonic() < deadline, f"{len(rows)} steps committed"
        time.sleep(0.1)
    assert all(rows[i] == {"loss": i / 3000, "step": i} for i in range(3000))
    assert run_json(repo, "p/packed")["state"] == "crashed"
    assert recover_cli(repo, "p/packed").returncode == 0
    assert len(history(repo, "p/packed")) == 3000
    assert fsck_problem(repo) is None


def test_a_refused_call_leaves_no_trace(store: RunStore, repo: Path) -> None:
    writer = new_writer(store, "refused")
    writer.log({"loss": 1.0})
    with pytest.raises(gitruns.GitRunsError, match="lone surrogate"):
        writer.log({"note": "bad \udc80 text"})
    with pytest.raises(gitruns.GitRunsError, match="int64"):
        writer.log({"loss": 2.0}, step=2**63)
    writer.log({"loss": 3.0})
    writer.abandon()
    reopen(store, "refused").finish("crashed")
    assert history(repo, f"{PROJECT}/refused") == {0: {"loss": 1.0}, 1: {"loss": 3.0}}


def test_a_ctrl_c_inside_a_commit_loses_no_step(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gitruns.committer import Committer

    take = Committer._rows
    armed = {"left": 0}

    def interrupted(self: Committer, rows: Any) -> Any:
        if armed["left"]:
            armed["left"] -= 1
            raise KeyboardInterrupt  # where a Ctrl-C lands while log() reads back
        return take(self, rows)

    monkeypatch.setattr(Committer, "_rows", interrupted)
    run = gitruns.init(
        project=PROJECT, id="ctrl-c", repo=repo, window=10, background=False
    )
    interrupts = 0
    for step in range(40):
        armed["left"] = 1 if step in (9, 19, 25) else 0
        try:
            run.log({"x": float(step)})
        except KeyboardInterrupt:
            interrupts += 1
    run.finish()
    assert interrupts >= 2  # the commits at the window boundaries were cut short
    assert history(repo, f"{PROJECT}/ctrl-c") == {s: {"x": float(s)} for s in range(40)}
    assert fsck_problem(repo) is None


def test_a_ctrl_c_after_the_branch_moved_commits_no_step_twice(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gitruns.committer import Committer

    write = Committer._write
    armed = {"left": 0}

    def cut_short(self: Committer, *args: Any, **kwargs: Any) -> Any:
        sha = write(self, *args, **kwargs)  # the branch has moved
        if armed["left"]:
            armed["left"] -= 1
            raise KeyboardInterrupt  # before the committer took note of it
        return sha

    monkeypatch.setattr(Committer, "_write", cut_short)
    run = gitruns.init(
        project=PROJECT, id="cut", repo=repo, window=10, background=False
    )
    interrupts = 0
    for step in range(40):
        armed["left"] = 1 if step in (9, 29) else 0
        try:
            run.log({"x": float(step)})
        except KeyboardInterrupt:
            interrupts += 1
    run.finish()
    assert interrupts == 2
    assert history(repo, f"{PROJECT}/cut") == {s: {"x": float(s)} for s in range(40)}
    assert fsck_problem(repo) is None


# -- SIGTERM and exceptions ---------------------------------------------------

_LOGGER = """
    import os, sys, gitruns, msgpack
    repo, ack = sys.argv[1], sys.argv[2]
    fd = os.open(ack, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    run = gitruns.init(project="crash", id="victim", repo=repo, save_code=False,
                       window=64, flush_interval=0.05)
    run.config.update({"lr": 0.01})
    step = 0
    def log(data, **kw):
        global step
        run.log(data, **kw)
        os.write(fd, msgpack.packb([step, data]))
        if kw.get("commit") is not False:
            step += 1
"""


def acknowledged(ack: Path) -> dict[int, dict[str, Any]]:
    """What the child's log() calls returned for, merged per step."""
    import msgpack

    rows: dict[int, dict[str, Any]] = {}
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(ack.read_bytes())
    for step, data in unpacker:
        rows.setdefault(step, {}).update(data)
    return rows


def test_sigterm_keeps_every_step_and_finishes_the_run_crashed(
    repo: Path, tmp_path: Path
) -> None:
    ack = tmp_path / "ack"
    child = python(
        _LOGGER
        + """
    for i in range(300):
        log({"loss": i / 3, "nan": float("nan") if i % 7 else -0.0})
    log({"acc": 0.5}, commit=False)
    print("ready", flush=True)
    while True:
        import time; time.sleep(1)
    """,
        str(repo),
        str(ack),
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    child.communicate()
    # gitruns' SIGTERM handler exits as sys.exit(143) would: atexit finishes.
    assert child.returncode == 128 + signal.SIGTERM

    done = recover_cli(repo)
    assert done.returncode == 0, done.stderr
    assert "nothing to recover" in done.stdout
    stored = history(repo, "crash/victim")
    expected = acknowledged(ack)
    assert sorted(stored) == sorted(expected) == list(range(301))
    for step, row in expected.items():
        for key, value in row.items():
            assert torture._same(stored[step][key], value), (step, key)
    assert run_json(repo, "crash/victim")["state"] == "crashed"
    assert gitruns.Api(repo).run("crash/victim").config == {"lr": 0.01}
    assert journal_files(repo, "crash/victim") == []
    assert fsck_problem(repo) is None


#: gitruns' own SIGTERM handler ends the process through SystemExit, wherever
#: in log() it strikes, and atexit finishes the run as crashed.
_SIGTERM_HANDLER = """
    while True:
        log({"loss": step * 0.5, "tag": "t" * (step % 5)})
        if step == 200:
            print("ready", flush=True)
"""


@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_mid_log_finishes_the_run_as_crashed_from_the_journal(
    repo: Path, tmp_path: Path, attempt: int
) -> None:
    ack = tmp_path / "ack"
    child = python(_LOGGER + _SIGTERM_HANDLER, str(repo), str(ack))
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)  # lands anywhere in the logging loop
    _, err = child.communicate()
    assert child.returncode == 143, err

    stored = history(repo, "crash/victim")
    expected = acknowledged(ack)
    assert len(expected) >= 200
    # Every acknowledged step, exactly; at most the one call in flight beyond.
    assert set(expected) <= set(stored) <= set(expected) | {max(expected) + 1}
    for step, row in expected.items():
        assert stored[step] == row
    info = run_json(repo, "crash/victim")
    assert (info["state"], info["exit_code"]) == ("crashed", 143)
    assert journal_files(repo, "crash/victim") == []
    assert fsck_problem(repo) is None


def test_an_exception_in_the_training_loop_marks_the_run_crashed_and_keeps_data(
    repo: Path, tmp_path: Path
) -> None:
    ack = tmp_path / "ack"
    child = python(
        _LOGGER
        + """
    for i in range(150):
        log({"loss": 1 / (i + 1)})
    log({"grad": 3.5}, commit=False)
    run.summary["best"] = 0.25
    raise RuntimeError("diverged")
    """,
        str(repo),
        str(ack),
    )
    _, err = child.communicate()
    assert child.returncode == 1
    assert "RuntimeError: diverged" in err

    stored = history(repo, "crash/victim")
    assert stored == acknowledged(ack)
    assert stored[150] == {"grad": 3.5}
    info = run_json(repo, "crash/victim")
    assert info["state"] == "crashed"
    view = gitruns.Api(repo).run("crash/victim")
    assert view.summary["best"] == 0.25
    assert view.summary["loss"] == 1 / 150
    assert journal_files(repo, "crash/victim") == []
    assert fsck_problem(repo) is None


def test_a_forked_child_that_exits_leaves_its_parents_run_alone(
    repo: Path, tmp_path: Path
) -> None:
    ack = tmp_path / "ack"
    child = python(
        _LOGGER
        + """
    for i in range(5):
        log({"loss": float(i)})
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a worker's normal exit runs atexit in the child
    os.waitpid(pid, 0)
    try:
        gitruns.init(project="crash", id="victim", resume="must", repo=repo)
    except gitruns.GitRunsError as exc:
        print(type(exc).__name__, flush=True)
    for i in range(5, 10):
        log({"loss": float(i)})
    run.finish()
    """,
        str(repo),
        str(ack),
    )
    out, err = child.communicate()
    assert child.returncode == 0, err
    assert out.strip() == "RunLockedError"  # the parent still holds the run
    assert "not finished from a forked child" in err or err == ""
    assert history(repo, "crash/victim") == {s: {"loss": float(s)} for s in range(10)}
    assert run_json(repo, "crash/victim")["state"] == "finished"


# -- a full disk and a read-only repository -------------------------------------


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (a real full disk), unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    done = _mount("-t", "tmpfs", "-o", "size=1m", "gitruns-test", str(where))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` read-only for the block (a bind mount: root ignores modes)."""
    assert _mount("--bind", str(folder), str(folder)).returncode == 0
    try:
        assert _mount("-o", "remount,bind,ro", str(folder)).returncode == 0
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_refuses_loudly_keeps_the_journal_and_recovers(
    small_disk: Path,
) -> None:
    repo = small_disk / "runs.git"
    run = gitruns.init(
        project=PROJECT,
        id="full",
        repo=repo,
        save_code=False,
        window=8,
        flush_interval=30,
    )
    accepted: dict[int, dict[str, Any]] = {}
    with pytest.raises(RepositoryError) as refused:
        for step in range(10_000):
            # Random text, so that neither Git nor the journal can compress it.
            row = {"loss": step / 7, "text": os.urandom(6000).hex()}
            run.log(row)
            accepted[step] = row
    assert "Free some disk space" in str(refused.value)
    assert "was not recorded" in str(refused.value)
    assert len(accepted) > 8  # some windows were committed before it filled

    # With room again, the same run goes on and commits everything it accepted.
    assert _mount("-o", "remount,size=64m", str(small_disk)).returncode == 0
    run.log({"loss": -1.0})
    run.finish()
    stored = history(repo, f"{PROJECT}/full")
    assert len(stored) == len(accepted) + 1
    assert all(stored[s] == row for s, row in accepted.items())
    assert run_json(repo, f"{PROJECT}/full")["state"] == "finished"
    assert journal_files(repo, f"{PROJECT}/full") == []
    assert fsck_problem(repo) is None


def test_a_read_only_object_store_keeps_the_journal_for_recover(
    small_disk: Path,
) -> None:
    assert _mount("-o", "remount,size=64m", str(small_disk)).returncode == 0
    repo = small_disk / "runs.git"
    run = gitruns.init(
        project=PROJECT,
        id="ro",
        repo=repo,
        save_code=False,
        window=10,
        flush_interval=30,
    )
    for step in range(25):
        run.log({"loss": float(step)})
    run._writer.flush()  # steps 0..24 are committed

    # Git's objects become read-only under the live writer; its journal
    # stays writable.
    with read_only(repo / "objects"):
        for step in range(25, 60):
            run.log({"loss": float(step)})  # accepted: the journal takes it
        with pytest.raises(RepositoryError) as failed:
            run.finish()
        message = str(failed.value)
        assert "Read-only file system" in message
        assert f"gitruns recover {PROJECT}/ro" in message
        assert journal_files(repo, f"{PROJECT}/ro")
        assert max(history(repo, f"{PROJECT}/ro")) == 24

    done = recover_cli(repo)
    assert done.returncode == 0, done.stderr
    assert history(repo, f"{PROJECT}/ro") == {s: {"loss": float(s)} for s in range(60)}
    assert run_json(repo, f"{PROJECT}/ro")["state"] == "crashed"
    assert journal_files(repo, f"{PROJECT}/ro") == []
    assert fsck_problem(repo) is None


def test_a_read_only_object_store_fails_the_committer_process_and_finish(
    small_disk: Path,
) -> None:
    assert _mount("-o", "remount,size=64m", str(small_disk)).returncode == 0
    repo = small_disk / "runs.git"
    run = gitruns.init(project=PROJECT, id="ro2", repo=repo, save_code=False, window=10)
    step, deadline = 0, time.monotonic() + 60
    while not (run._writer._local is None and run._writer._link is not None):
        assert time.monotonic() < deadline, "the committer process did not come up"
        run.log({"loss": float(step)})  # until the committer process commits
        step += 1
        time.sleep(0.002)
    run._writer.flush()
    committed = step - 1

    with read_only(repo / "objects"):
        for _ in range(35):
            run.log({"loss": float(step)})  # accepted: the journal takes it
            step += 1
        # A flush the process cannot commit says so, as finish does.
        with pytest.raises(RepositoryError, match=f"gitruns recover {PROJECT}/ro2"):
            run._writer.flush()
        with pytest.raises(RepositoryError) as failed:
            run.finish()
        message = str(failed.value)
        assert "Read-only file system" in message
        assert f"gitruns recover {PROJECT}/ro2" in message
        assert journal_files(repo, f"{PROJECT}/ro2")
        assert max(history(repo, f"{PROJECT}/ro2")) == committed

    done = recover_cli(repo)
    assert done.returncode == 0, done.stderr
    stored = history(repo, f"{PROJECT}/ro2")
    assert stored == {s: {"loss": float(s)} for s in range(step)}
    assert journal_files(repo, f"{PROJECT}/ro2") == []
    assert fsck_problem(repo) is None


def test_a_read_only_repository_is_readable_and_refuses_writers_clearly(
    small_disk: Path, tmp_path: Path
) -> None:
    assert _mount("-o", "remount,size=64m", str(small_disk)).returncode == 0
    repo = small_disk / "runs.git"
    run = gitruns.init(project=PROJECT, id="kept", repo=repo, save_code=False)
    run.log({"loss": math.pi})
    run.finish()
    view = tmp_path / "ro-view"
    view.mkdir()
    assert _mount("--bind", str(repo), str(view)).returncode == 0
    try:
        assert _mount("-o", "remount,bind,ro", str(view)).returncode == 0
        assert history(view, f"{PROJECT}/kept") == {0: {"loss": math.pi}}
        with pytest.raises(RepositoryError, match="make the repository writable"):
            gitruns.init(project=PROJECT, id="kept", resume="must", repo=view)
        with pytest.raises(
            RepositoryError, match="Read-only.*make the repository writable"
        ):
            gitruns.init(project=PROJECT, id="new", repo=view, save_code=False)
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)
    assert run_json(repo, f"{PROJECT}/kept")["state"] == "finished"
    assert fsck_problem(repo) is None


# -- hostile chunks in a repository pulled from elsewhere ----------------------

_REAL = b"\x82\xadgitruns.chunk\x92\x01\x00"  # a plausible start, then nothing
HOSTILE = {
    "random bytes": bytes(range(256)) * 4,
    "empty": b"",
    "1 GB bin header": b"\xc6\xff\xff\xff\xff" + b"x" * 64,
    "4 G-entry map header": b"\xdf\xff\xff\xff\xff" + b"\xa1k" * 8,
    "deeply nested arrays": b"\x91" * 200_000,
    "a bare int": b"\x2a",
    "wrong magic": b"\x81\xa3foo\x92\x01\x00",
    "cut after the version": _REAL,
}


def evil_repository(tmp_path: Path, payload: bytes) -> Path:
    """A 'remote' whose run p/evil was edited to hold ``payload`` as a chunk."""
    remote = tmp_path / "remote.git"
    run = gitruns.init(project="p", id="evil", repo=remote, save_code=False)
    for step in range(10):
        run.log({"loss": float(step)})
    run.finish()
    store = RunStore.open(remote, create=False)
    try:
        ref = RunRef("p", "evil")
        tip = store.tip(ref)
        assert tip is not None
        snapshot = store.read_snapshot(tip)
        [start] = snapshot.history.starts
        snapshot.history.replace(start, store.blob(payload))
        sha = store.write_commit(snapshot, [tip], "p/evil: steps 0..9\n", "")
        assert store.update_ref(ref, tip, sha, "crafted")
    finally:
        store.close()
    return remote


@pytest.mark.parametrize("payload", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_chunk_fetched_from_a_remote_is_refused_on_read(
    repo: Path, tmp_path: Path, payload: bytes
) -> None:
    import tracemalloc

    from gitruns.errors import ChunkFormatError

    good = gitruns.init(project="p", id="good", repo=repo, save_code=False)
    for step in range(5):
        good.log({"loss": step * 0.5})
    good.finish()
    remote = evil_repository(tmp_path, payload)
    # Plain git moves the bytes, as any transport would; git sees nothing wrong.
    fetch = subprocess.run(
        ["git", "--git-dir", str(repo), "fetch", "-q", str(remote)]
        + ["refs/heads/runs/p/evil:refs/heads/runs/p/evil"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert fetch.returncode == 0, fetch.stderr

    tracemalloc.start()
    try:
        with pytest.raises(ChunkFormatError) as refused:
            list(gitruns.Api(repo).run("p/evil").scan_history())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # bounded: a 1 GB length header allocates nothing
    assert refused.value.source == "p/evil:history/0000/00/000000000000.msgpack"
    assert "p/evil:history/0000/00/000000000000.msgpack" in str(refused.value)

    # A writer refuses it the same way, and leaves the run unlocked.
    for _ in range(2):
        with pytest.raises(ChunkFormatError):
            gitruns.init(project="p", id="evil", resume="must", repo=repo)
    # The CLI says so with the chunk error's exit code.
    done = subprocess.run(
        [sys.executable, "-c", "from gitruns.cli import main; main()"]
        + ["history", "--repo", str(repo), "p/evil"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == ChunkFormatError.exit_code
    assert "bad metric chunk p/evil:history" in done.stderr

    # The local run is intact, and git itself finds nothing wrong.
    assert history(repo, "p/good") == {s: {"loss": s * 0.5} for s in range(5)}
    assert fsck_problem(repo) is None


def test_a_file_size_limit_is_named_with_what_to_raise(tmp_path: Path) -> None:
    # `ulimit -f` in a child: writing past it fails with EFBIG (SIGXFSZ is
    # ignored, as a shell that sets the limit for a job would leave it).
    script = textwrap.dedent(
        """
        import os, resource, signal, sys
        import gitruns
        from gitruns.errors import RepositoryError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        run = gitruns.init(project="p", id="limited", repo=sys.argv[1])
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
        try:
            for step in range(100_000):
                run.log({"text": os.urandom(3000).hex()})
        except RepositoryError as exc:
            print(exc)
            sys.exit(3)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "runs.git")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Raise the file-size limit (`ulimit -f`" in done.stdout
