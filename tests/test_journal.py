"""The mapped journal: records survive a kill, torn ones are found, files grow."""

from __future__ import annotations

import logging
import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from gitruns import journal as journal_module
from gitruns.journal import (
    INITIAL_ROOM,
    MAGIC,
    Journal,
    JournalReader,
    Record,
    Rows,
    read_records,
)

ROW = {"loss": 0.5, "acc": 1.0, "note": "héllo", "nan": math.nan}


def records(folder: Path) -> list[Record]:
    """Every record a fresh Journal replays from ``folder``."""
    return list(Journal(folder).replay())


def kill_after(code: str, folder: Path) -> None:
    """Run ``code`` (with ``journal`` open on ``folder``) and SIGKILL the child."""
    script = (
        textwrap.dedent(
            """
        import os, signal, sys
        from pathlib import Path
        from gitruns.journal import Journal
        journal = Journal(Path(sys.argv[1]))
        """
        )
        + textwrap.dedent(code)
        + "\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True
    )
    assert child.returncode == -signal.SIGKILL, child.stderr


def test_records_written_before_a_sigkill_are_all_replayed(tmp_path: Path) -> None:
    # No close, no flush, no fsync: the mapping is the page cache. Rows of a
    # declared schema and plain records alike.
    kill_after(
        """
        journal.declare({"loss": 0.0, "n": 0})
        for step in range(20000):
            if step % 3:
                assert journal.write_row(step, 1.5, {"loss": step / 3, "n": step})
            else:
                journal.write(journal.encode(step, 1.5, {"loss": step / 3, "n": step}))
        journal.write(journal.encode_meta(2.0, {"name": "kept"}))
        """,
        tmp_path,
    )
    replayed = records(tmp_path)
    assert [r.step for r in replayed[:-1]] == list(range(20000))
    assert all(r.data == {"loss": r.step / 3, "n": r.step} for r in replayed[:-1])
    assert all(type(r.data["n"]) is int for r in replayed[:-1])
    assert replayed[-1] == Record(None, 2.0, {"name": "kept"})
    # 20000 records outgrew the first room: the file grew while mapped.
    [path] = Journal(tmp_path).files()
    assert path.stat().st_size > INITIAL_ROOM


def test_a_record_cut_by_a_kill_mid_copy_ends_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A kill half-way through copying a record: its bytes are partly there,
    # its header (written after the record) is not.
    kill_after(
        """
        for step in range(3):
            journal.write(journal.encode(step, 1.0, {"loss": 1.0}))
        record = journal.encode(3, 1.0, {"loss": 2.0})
        start = journal.size + 8
        journal._map[start : start + len(record) // 2] = record[: len(record) // 2]
        """,
        tmp_path,
    )
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        replayed = records(tmp_path)
    assert [r.step for r in replayed] == [0, 1, 2]
    assert "stopped after 3 records at a damaged one (bytes past" in caplog.text


def test_a_torn_record_fails_its_checksum_and_ends_the_replay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    for step in range(4):
        journal.write(journal.encode(step, 1.0, ROW))
    # As a power cut could leave a page: the last record's tail is not what
    # was written (flipped, since ROW's NaN already ends in zero bytes).
    end = journal.size
    assert journal._map is not None
    tail = bytes(b ^ 0xFF for b in journal._map[end - 6 : end])
    journal._map[end - 6 : end] = tail
    journal.close()

    with caplog.at_level(logging.WARNING, logger="gitruns"):
        replayed = records(tmp_path)
    assert [r.step for r in replayed] == [0, 1, 2]
    assert replayed[0].data["note"] == "héllo"
    assert math.isnan(replayed[0].data["nan"])
    assert "stopped after 3 records at a damaged one (a record fails its checksum)" in (
        caplog.text
    )


def test_a_closed_file_holds_exactly_its_records_and_warns_of_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    for step in range(10):
        journal.write(journal.encode(step, float(step), {"x": step}))
    journal.close()
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        assert [r.data["x"] for r in records(tmp_path)] == list(range(10))
    assert caplog.text == ""
    [path] = Journal(tmp_path).files()
    assert path.read_bytes().startswith(MAGIC)


def test_a_gitruns_0_1_journal_of_bare_records_is_still_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = b"".join(msgpack.packb([s, 1.0, {"loss": s * 0.5}]) for s in range(3))
    (tmp_path / "00000000.jnl").write_bytes(old + msgpack.packb([3, 1.0, {}])[:2])
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        replayed = records(tmp_path)
    assert [(r.step, r.data) for r in replayed] == [
        (s, {"loss": s * 0.5}) for s in range(3)
    ]
    assert "stopped after 3 records" in caplog.text


def test_an_empty_file_left_by_a_kill_holds_no_records(tmp_path: Path) -> None:
    (tmp_path / "00000000.jnl").write_bytes(b"")
    (tmp_path / "00000001.jnl").write_bytes(MAGIC + bytes(4096))
    assert records(tmp_path) == []


@pytest.mark.parametrize("fsync", [False, True])
def test_a_full_file_ends_and_the_next_goes_on_in_name_order(
    tmp_path: Path, fsync: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "MAX_ROOM", 2 * INITIAL_ROOM)
    journal = Journal(tmp_path, fsync=fsync)
    reader = JournalReader(tmp_path)
    seen: list[int] = []
    for step in range(60_000):
        row = {"a": float(step), "b": step}
        if not journal.write_row(step, 1.0, row):
            journal.declare(row)  # again in every new file
            assert journal.write_row(step, 1.0, row)
        if step % 7000 == 0:
            seen += steps_of(reader.read())  # a reader keeps up as it goes
    journal.close()
    seen += steps_of(reader.read(final=True))

    names = [p.name for p in Journal(tmp_path).files()]
    assert names[:3] == ["00000000.jnl", "00000001.jnl", "00000002.jnl"]
    assert all(p.stat().st_size <= 2 * INITIAL_ROOM for p in Journal(tmp_path).files())
    assert seen == list(range(60_000))
    assert reader.done == Journal(tmp_path).files()
    replayed = records(tmp_path)
    assert [r.data["b"] for r in replayed] == list(range(60_000))


def steps_of(items: list[Rows | Record]) -> list[int]:
    """The steps of what a reader returned, rows and records alike."""
    out: list[int] = []
    for item in items:
        if isinstance(item, Rows):
            out += item.steps.tolist()
        elif item.step is not None:
            out.append(item.step)
    return out


def test_rows_come_back_as_columns_bit_for_bit(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    nan = struct.unpack("<d", struct.pack("<Q", 0x7FF80000_00C0FFEE))[0]
    values = [0.5, -0.0, math.inf, -math.inf, nan, 5e-324]
    for step, value in enumerate(values):
        row = {
            "f": value,
            "i": [2**63 - 1, -(2**63), 0, 7, -1, 3][step],
            "b": step % 2 == 0,
        }
        if not journal.write_row(step, 10.0 + step, row):
            assert journal.declare(row)
            assert journal.write_row(step, 10.0 + step, row)
    journal.write(journal.encode(6, 16.0, {"f": "text"}))
    journal.close()

    items = JournalReader(tmp_path).read(final=True)
    rows, record = items
    assert isinstance(rows, Rows) and isinstance(record, Record)
    assert rows.schema.keys == ("f", "i", "b") and rows.schema.codes == "dq?"
    assert rows.steps.tolist() == list(range(6))
    assert rows.times.tolist() == [10.0 + s for s in range(6)]
    f, i, b = rows.columns
    assert f.view("<u8").tolist() == [
        struct.unpack("<Q", struct.pack("<d", v))[0] for v in values
    ]
    assert i.tolist() == [2**63 - 1, -(2**63), 0, 7, -1, 3]
    assert b.dtype == bool and b.tolist() == [True, False] * 3
    assert record == Record(6, 16.0, {"f": "text"})


def test_a_row_whose_int_does_not_fit_goes_another_way(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    assert journal.declare({"n": 1})
    assert journal.write_row(0, 1.0, {"n": 2**63 - 1})
    assert journal.write_row(1, 1.0, {"n": 2**63}) == 0  # too wide: not written
    assert journal.write_row(2, 1.0, {"n": 1.5}) == 0  # another type: no schema
    journal.close()
    assert [r.data for r in records(tmp_path)] == [{"n": 2**63 - 1}]


def test_a_reader_waits_for_a_frame_being_written(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.declare({"x": 0.0})
    for step in range(3):
        journal.write_row(step, 1.0, {"x": float(step)})
    reader = JournalReader(tmp_path)
    assert steps_of(reader.read()) == [0, 1, 2]
    # A frame whose payload is in but whose header is not: the writer is
    # still at it, so a live reader leaves it for the next look.
    payload = journal._schemas[(("x",), (float,))].pack(0xC1, 2, 0, 3, 1.0, 3.0)
    start = journal.size
    assert journal._map is not None
    journal._map[start + 8 : start + 8 + len(payload)] = payload
    assert reader.read() == []
    journal._append(payload)  # now whole
    assert steps_of(reader.read()) == [3]
    journal.close()


def test_a_row_of_a_schema_never_declared_is_damage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    journal.declare({"x": 0.0})
    journal.write_row(0, 1.0, {"x": 0.0})
    packed = journal._schemas[(("x",), (float,))].pack(0xC1, 2, 9, 1, 1.0, 1.0)
    journal.write(packed)  # schema 9 was never declared
    journal.write(journal.encode(2, 1.0, {"x": 2.0}))
    journal.close()
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        assert steps_of(JournalReader(tmp_path).read(final=True)) == [0, 2]
    assert "undeclared schema (9)) were skipped" in caplog.text


def damage(path: Path, at: int) -> None:
    """Flip one bit of the byte at ``at`` (bad storage)."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_damage_inside_a_file_is_skipped_and_reading_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    journal.declare({"x": 0.0})
    starts = []
    for step in range(6):
        starts.append(journal.size)
        journal.write_row(step, 1.0, {"x": float(step)})
    for step in range(6, 9):  # records, not rows
        starts.append(journal.size)
        journal.write(journal.encode(step, 1.0, {"note": f"n{step}"}))
    path = journal.current
    journal.close()
    assert path is not None
    damage(path, starts[2] + 20)  # in step 2's row
    damage(path, starts[7] + 12)  # in step 7's record
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        read = JournalReader(tmp_path).read(final=True)
    assert steps_of(read) == [0, 1, 3, 4, 5, 6, 8]
    assert caplog.text.count("were skipped and reading went on") == 2
    assert "never acknowledged" not in caplog.text


@pytest.mark.parametrize(
    "last", [{"loss": 0.5, "epoch": 3}, {"loss": 0.0}], ids=["row", "record"]
)
def test_a_whole_last_frame_ending_in_zero_bytes_is_found_past_damage(
    tmp_path: Path, last: dict[str, Any]
) -> None:
    journal = Journal(tmp_path)
    journal.declare({"loss": 0.0, "epoch": 0})
    starts = []
    for step in range(3):  # a small int last: its high bytes are zero
        starts.append(journal.size)
        if "epoch" in last:
            journal.write_row(step, 1.0, last)
        else:
            journal.write(journal.encode(step, 1.0, last))
    path = journal.current
    journal.close()
    assert path is not None
    damage(path, starts[1] + 20)
    assert steps_of(JournalReader(tmp_path).read(final=True)) == [0, 2]


@pytest.mark.parametrize("how", ["zeroed", "too-long"])
def test_a_broken_header_inside_a_file_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    journal = Journal(tmp_path)
    journal.declare({"x": 0.0})
    starts = []
    for step in range(6):
        starts.append(journal.size)
        journal.write_row(step, 1.0, {"x": float(step)})
    path = journal.current
    journal.close()
    assert path is not None
    data = bytearray(path.read_bytes())
    if how == "zeroed":
        data[starts[2] : starts[2] + 8] = bytes(8)
    else:  # a length past the end of the file, yet under any record's limit
        struct.pack_into("<I", data, starts[2], len(data))
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        read = JournalReader(tmp_path).read(final=True)
    assert steps_of(read) == [0, 1, 3, 4, 5]
    assert "a frame header that is zero or runs past the end" in caplog.text


def test_rows_of_a_damaged_schema_are_passed_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    journal.declare({"x": 0.0})
    for step in range(3):
        journal.write_row(step, 1.0, {"x": float(step)})
    schema_at = journal.size
    journal.declare({"y": 0})
    for step in range(3, 6):
        journal.write_row(step, 1.0, {"y": step})
    journal.write_row(6, 1.0, {"x": 6.0})
    path = journal.current
    journal.close()
    assert path is not None
    damage(path, schema_at + 12)
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        assert steps_of(JournalReader(tmp_path).read(final=True)) == [0, 1, 2, 6]
    assert "were skipped" in caplog.text


def test_a_frame_length_past_any_record_is_damage_not_a_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    journal.write(journal.encode(0, 1.0, {"a": 1}))
    at = journal.size
    journal.write(journal.encode(1, 1.0, {"a": 2}))
    path = journal.current
    journal.close()
    assert path is not None
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, at, 2**31)  # a length no writer writes
    path.write_bytes(bytes(data))
    reader = JournalReader(tmp_path)
    assert steps_of(reader.read()) == [0]  # a live reader does not wait for 2 GiB
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        assert steps_of(JournalReader(tmp_path).read(final=True)) == [0]
    assert "a frame longer than any record" in caplog.text


def test_a_schema_naming_a_key_twice_is_damage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    journal.write(journal.encode(0, 1.0, {"a": 1}))
    # A CRC-valid schema frame for keys ("a", "a"): a row of it has no one reading.
    journal.write(bytes([0xC1, 1]) + msgpack.packb([0, ["a", "a"], "dd"]))
    journal.close()
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        assert steps_of(JournalReader(tmp_path).read(final=True)) == [0]
    assert "a malformed schema" in caplog.text


def test_records_that_cross_pages_sync_with_fsync_always(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync=True)
    sizes = [10, 5000, 3, 70_000, 1]  # across pages and past the first room
    for step, size in enumerate(sizes):
        journal.write(journal.encode(step, 1.0, {"s": "x" * size}))
    journal.close()
    assert [len(r.data["s"]) for r in records(tmp_path)] == sizes


def test_a_file_that_cannot_be_created_refuses_the_record(tmp_path: Path) -> None:
    from gitruns.errors import RepositoryError

    folder = tmp_path / "journal"
    folder.write_text("not a folder")
    journal = Journal(folder)
    with pytest.raises(RepositoryError, match="was not recorded"):
        journal.write(journal.encode(0, 1.0, {}))
    assert journal.current is None


def test_a_file_grows_by_at_most_a_quarter_of_the_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = 4 << 20  # a nearly full disk: growing fourfold would fill it
    real = os.statvfs(tmp_path)

    class Disk:
        f_frsize = real.f_frsize
        f_bavail = free // real.f_frsize

    monkeypatch.setattr(journal_module.os, "statvfs", lambda _: Disk)
    journal = Journal(tmp_path / "journal")
    row = {"x": 0.0, "s": "y" * 100}
    for step in range(20_000):  # about 2.6 MB of records
        journal.write(journal.encode(step, 1.0, row))
    used, path = journal.size, journal.current
    journal.close()
    assert path is not None
    assert used > 2 << 20
    assert path.stat().st_size <= used + free // 2 + 4 * journal_module._ROOM_STEP
    assert [r.step for r in records(tmp_path / "journal")][-1] == 19_999


def test_a_new_file_takes_a_number_no_entry_has(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    folder.mkdir()
    os.mkfifo(folder / "00000000.jnl")  # not a journal file, but its name
    journal = Journal(folder)
    journal.write(journal.encode(0, 1.0, {"a": 1}))
    assert journal.current == folder / "00000001.jnl"
    journal.close()


def test_a_file_closed_without_a_frame_is_deleted(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    journal = Journal(folder)
    journal.open()  # a writer opened and left before logging (a refused resume)
    assert journal.current is not None and journal.current.exists()
    journal.close()
    assert list(folder.iterdir()) == []
    kept = Journal(folder)
    kept.write(kept.encode(0, 1.0, {"a": 1}))
    kept.close()
    assert [r.step for r in records(folder)] == [0]


def test_a_journal_name_that_is_not_a_regular_file_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    journal.write(journal.encode(0, 1.0, {"a": 1}))
    journal.close()
    os.mkfifo(tmp_path / "00000007.jnl")  # reading it would block for good
    (tmp_path / "00000008.jnl").symlink_to("/dev/zero")
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        assert steps_of(JournalReader(tmp_path).read(final=True)) == [0]
    assert caplog.text.count("is not a regular file") >= 2


def test_read_records_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert list(read_records(tmp_path / "gone.jnl")) == []


def test_a_stray_write_on_the_descriptor_lands_past_the_records(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.write(journal.encode(0, 1.0, {"a": 1}))
    file = journal._file
    assert file is not None
    os.write(file.fd, b"junk")  # O_APPEND: past the mapped room, not over it
    journal.write(journal.encode(1, 1.0, {"a": 2}))
    journal.close()
    assert [r.data["a"] for r in records(tmp_path)] == [1, 2]


def test_steps_stop_where_the_window_leaves_int64(tmp_path: Path) -> None:
    import gitruns
    from gitruns.committer import last_step_for
    from gitruns.errors import InvalidValueError

    last = last_step_for(10)
    assert last == 2**63 - 9 and (last + 1) % 10 == 0
    run = gitruns.init(project="p", id="big", repo=tmp_path / "r", window=10)
    run.log({"loss": 0.0})
    run.log({"loss": 1.0}, step=last)
    with pytest.raises(InvalidValueError, match=f"can hold is {last}"):
        run.log({"loss": 2.0}, step=last + 1)
    run.log({"acc": 0.5})  # the open last step takes it, and ends
    # The step after it is refused too, as it would be given, before anything
    # is kept.
    with pytest.raises(InvalidValueError, match=f"can hold is {last}"):
        run.log({"loss": 2.0})
    run.finish()
    rows = list(gitruns.Api(tmp_path / "r").run("p/big").scan_history())
    for row in rows:
        del row["_timestamp"]
    assert rows == [
        {"_step": 0, "loss": 0.0},
        {"_step": last, "loss": 1.0, "acc": 0.5},
    ]


def test_a_record_that_cannot_be_stored_is_left_out_and_the_rest_recovered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import gitruns
    from gitruns.store import RunStore

    # A tampered journal: a step beyond int64's last window and a bad key,
    # between good records of a run whose writer was killed.
    run = gitruns.init(project="p", id="r", repo=tmp_path / "r", window=10)
    run.log({"loss": 0.0})
    run.finish()
    store = RunStore.open(tmp_path / "r")
    journal = Journal(store.data_dir / "journal" / "p" / "r")
    journal.write(journal.encode(1, 1.0, {"loss": 1.0}))
    journal.write(journal.encode(2**63 - 1, 1.0, {"loss": 2.0}))
    journal.write(journal.encode(2, 1.0, {"bad\x00key": 3.0}))
    journal.write(journal.encode(3, 1.0, {"loss": 4.0}))
    journal.close()

    with caplog.at_level(logging.ERROR, logger="gitruns.writer"):
        again = gitruns.init(project="p", id="r", repo=tmp_path / "r", resume="must")
    again.finish()
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(left_out) == 2 and "outside" in left_out[0] and "control" in left_out[1]
    rows = list(gitruns.Api(tmp_path / "r").run("p/r").scan_history())
    assert [(r["_step"], r["loss"]) for r in rows] == [(0, 0.0), (1, 1.0), (3, 4.0)]


def test_a_file_grows_into_room_made_ahead_by_the_journal_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path)
    journal.open()
    # Less than INITIAL_ROOM on a full disk.
    path, first = journal.current, journal._room
    assert path is not None
    asked = rooms_asked_of_the_thread(journal, monkeypatch)
    journal.declare({"x": 0.0})
    # A short run never has a next room made for it...
    half = first // 2 // 40
    for step in range(half - 100):
        assert journal.write_row(step, 1.0, {"x": float(step)})
    assert asked == [] and path.stat().st_size == first
    # ...past half the room, the thread makes it (four times the first).
    for step in range(half - 100, half + 100):
        assert journal.write_row(step, 1.0, {"x": float(step)})
    assert len(asked) == 1 and asked[0] > first  # the spy sees what is asked
    for _ in range(1000):
        if path.stat().st_size > first:
            break
        time.sleep(0.01)
    ahead = path.stat().st_size
    assert ahead > first
    rows = 2 * first // 40  # past the first room
    for step in range(half + 100, rows):
        assert journal.write_row(step, 1.0, {"x": float(step)})
    # The writer took that mapping: it grew the file no further itself.
    assert path.stat().st_size == ahead == journal._room
    journal.close()
    assert steps_of(JournalReader(tmp_path).read(final=True)) == list(range(rows))


def rooms_asked_of_the_thread(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """The rooms the journal asks its thread to make from now on, as a list."""
    asked: list[int] = []
    ahead = journal._ahead
    switched = ahead.switched

    def spied(old: Any, file: Any, room: int | None) -> None:
        if room is not None:
            asked.append(room)
        switched(old, file, room)

    monkeypatch.setattr(ahead, "switched", spied)
    return asked


def test_a_frame_past_the_middle_and_the_end_grows_the_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The helper thread must not be asked for the next room while the writer
    # grows the file itself: two growers of one file disagree on its size.
    growers: list[str] = []
    append_zeros = journal_module._append_zeros

    def counted(fd: int, count: int) -> int:
        growers.append(threading.current_thread().name)
        return append_zeros(fd, count)

    journal = Journal(tmp_path)
    journal.open()
    path, room = journal.current, journal._room
    assert path is not None
    asked = rooms_asked_of_the_thread(journal, monkeypatch)
    monkeypatch.setattr(journal_module, "_append_zeros", counted)
    journal.write(journal.encode(0, 1.0, {"text": "x" * (room * 5 // 4)}))
    journal.write(journal.encode(1, 1.0, {"text": "y"}))

    assert asked == [] and growers == [threading.current_thread().name]
    assert path.stat().st_size == journal._room > room
    journal.close()
    assert steps_of(JournalReader(tmp_path).read(final=True)) == [0, 1]
