"""The packs gitruns writes: one per large commit, merged when they are many."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from dulwich.objects import Blob

import gitruns
import gitruns.packs as packs_module
import gitruns.store as store_module
from gitruns.packs import _KEEP_REASON, PackRecord, merge_packs, release, write_pack
from gitruns.store import RunStore
from tests.conftest import git


def blobs(*texts: str) -> list[Blob]:
    return [Blob.from_string(text.encode()) for text in texts]


def packs(repo: Path) -> list[str]:
    return sorted(p.stem for p in (repo / "objects" / "pack").glob("pack-*.idx"))


def readable(repo: Path, objects: list[Blob]) -> bool:
    store = RunStore.open(repo)
    try:
        return all(store.objects.contains(obj.id) for obj in objects)
    finally:
        store.close()


def test_many_runs_leave_few_packs_and_every_run_reads(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_PACKS", 4)
    monkeypatch.setattr(store_module, "PACK_MIN_OBJECTS", 1)
    for k in range(7):
        with gitruns.init(project="p", id=f"r{k}", repo=repo) as run:
            for i in range(300 * (k + 1)):
                run.log({"m": float(i)})
        # Each finish() wrote a pack; past four, the smallest were merged.
        assert len(packs(repo)) <= 4

    pack_dir = repo / "objects" / "pack"
    assert not list(pack_dir.glob("tmp_*"))
    assert set(PackRecord(repo / "gitruns" / "packs").names()) == set(packs(repo))
    git("fsck", "--strict", cwd=repo)
    api = gitruns.Api(repo=repo)
    for k in range(7):
        assert len(api.run(f"p/r{k}").columns()["m"][1]) == 300 * (k + 1)


def test_only_the_packs_gitruns_wrote_are_merged(repo: Path) -> None:
    store = RunStore.open(repo)
    objects = store.repo.object_store
    tmp = repo / "gitruns" / "packs"
    record = PackRecord(tmp)
    ours = [blobs(f"ours {k}", f"ours {k}!") for k in range(3)]
    for group in ours:
        record.add(write_pack(objects, iter(group), len(group)))
    # A pack of Git's own (written here without being recorded), and a
    # pack gitruns wrote that Git keeps.
    theirs = blobs("theirs", "theirs!")
    foreign = write_pack(objects, iter(theirs), 2)
    kept = blobs("kept", "kept!")
    kept_name = write_pack(objects, iter(kept), 2)
    record.add(kept_name)
    (repo / "objects" / "pack" / (kept_name + ".keep")).write_text("")
    store.close()

    merged = merge_packs(objects, record, max_packs=2)
    assert len(merged) == 3 and foreign not in merged and kept_name not in merged
    after = packs(repo)
    assert foreign in after and kept_name in after and len(after) == 3
    assert record.names() == set(after) - {foreign}
    assert readable(repo, [b for group in ours for b in group] + theirs + kept)
    git("fsck", "--strict", cwd=repo)


def test_a_merge_that_makes_a_pack_already_there_keeps_it(repo: Path) -> None:
    # The merge of a pack and a pack holding one of its objects can be that
    # pack, byte for byte: it must not be removed as one of those merged.
    store = RunStore.open(repo)
    objects = store.repo.object_store
    record = PackRecord(repo / "gitruns" / "packs")
    four = sorted(blobs("a", "b", "c", "d"), key=lambda b: b.id)
    whole = write_pack(objects, iter(four), 4)
    part = write_pack(objects, iter(four[:1]), 1)
    record.add(whole)
    record.add(part)
    store.close()

    assert sorted(merge_packs(objects, record, max_packs=0)) == sorted([whole, part])
    assert packs(repo) == [whole]
    assert readable(repo, four)
    git("fsck", "--strict", cwd=repo)


def test_no_merge_while_git_owns_the_packs(repo: Path) -> None:
    store = RunStore.open(repo)
    objects = store.repo.object_store
    record = PackRecord(repo / "gitruns" / "packs")
    for k in range(3):
        group = blobs(f"x{k}", f"y{k}")
        record.add(write_pack(objects, iter(group), 2))
    store.close()
    before = packs(repo)

    # A multi-pack index names these packs: removing one would break it.
    git("multi-pack-index", "write", cwd=repo)
    assert merge_packs(objects, record, max_packs=0) == []
    (repo / "objects" / "pack" / "multi-pack-index").unlink()
    # A git gc at work (its pid file is fresh).
    (repo / "gc.pid").write_text("1 host\n")
    assert merge_packs(objects, record, max_packs=0) == []
    assert packs(repo) == before


def test_a_batch_holds_only_its_own_threads_objects(repo: Path) -> None:

    store = RunStore.open(repo)
    try:
        with pytest.raises(RuntimeError), store.batched_objects():
            mine = store.blob(b"held by the batch")
            # Another thread (Run.save() beside a commit) writes at once.
            other: list[bytes] = []
            thread = threading.Thread(target=lambda: other.append(store.blob(b"x")))
            thread.start()
            thread.join()
            assert store.objects.contains(other[0])
            assert not store.objects.contains(mine)
            raise RuntimeError("the commit failed")
        assert store.objects.contains(other[0]) and not store.objects.contains(mine)
    finally:
        store.close()


def test_a_git_repack_before_the_branch_moves_keeps_the_new_pack(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The objects of a commit being written are in no ref yet: `git repack
    # -ad` deletes an unkept pack of them, and the branch would then name a
    # missing commit. Its .keep holds it until the branch moves.
    write_held = RunStore.write_held

    def repacked(self: RunStore) -> None:
        write_held(self)
        git("repack", "-adq", cwd=repo)

    run = gitruns.init(project="p", id="short", repo=repo, window=100)
    for step in range(5000):
        run.log({"loss": 1.0 / (step + 1)})
    monkeypatch.setattr(RunStore, "write_held", repacked)
    run.finish()
    monkeypatch.undo()

    git("fsck", "--strict", cwd=repo)
    rows = list(gitruns.Api(repo=repo).run("p/short").scan_history())
    assert [r["loss"] for r in rows] == [1.0 / (s + 1) for s in range(5000)]
    assert not list((repo / "objects" / "pack").glob("*.keep"))  # released


def test_the_record_keeps_packs_written_while_a_merge_ran(repo: Path) -> None:
    store = RunStore.open(repo)
    objects = store.repo.object_store
    record = PackRecord(repo / "gitruns" / "packs")
    a, b, c = (write_pack(objects, iter(blobs(f"{k}1", f"{k}2")), 2) for k in "abc")
    for name in (a, b):
        record.add(name)
    merged = write_pack(objects, iter(blobs("a1", "a2", "b1", "b2")), 4)
    record.add(c)  # another writer, after the merge listed the packs
    for name in (a, b):
        for suffix in (".idx", ".pack"):
            (repo / "objects" / "pack" / (name + suffix)).unlink()
    record.merged([a, b], merged, repo / "objects" / "pack")
    store.close()
    assert record.names() == {c, merged}


def test_a_multi_pack_index_written_during_a_merge_is_removed(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    store = RunStore.open(repo)
    objects = store.repo.object_store
    record = PackRecord(repo / "gitruns" / "packs")
    contents = [blobs(f"x{k}", f"y{k}") for k in range(3)]
    for group in contents:
        record.add(write_pack(objects, iter(group), 2))
    store.close()

    def git_maintenance_meanwhile(pack_dir: Path) -> bool:
        git("multi-pack-index", "write", cwd=repo)
        return False

    monkeypatch.setattr(packs_module, "_git_owns_packs", git_maintenance_meanwhile)
    assert len(merge_packs(objects, record, max_packs=0)) == 3
    assert not (repo / "objects" / "pack" / "multi-pack-index").exists()
    git("fsck", "--strict", cwd=repo)
    assert readable(repo, [b for group in contents for b in group])


def test_a_pack_added_while_a_merge_waits_for_the_record_is_kept(repo: Path) -> None:
    store = RunStore.open(repo)
    objects = store.repo.object_store
    pack_dir = repo / "objects" / "pack"
    record = PackRecord(repo / "gitruns" / "packs")
    a = write_pack(objects, iter(blobs("a1", "a2")), 2)
    record.add(a)
    merged = write_pack(objects, iter(blobs("a1", "a2", "m")), 3)
    done = threading.Event()
    with record._locked() as held:
        # Another writer holds the record: the merge waits for it...
        merging = threading.Thread(
            target=lambda: (record.merged([a], merged, pack_dir), done.set())
        )
        merging.start()
        time.sleep(0.2)
        assert not done.is_set()
        # ...while that writer writes a pack and notes it.
        late = write_pack(objects, iter(blobs("late")), 1)
        held.seek(0, os.SEEK_END)
        held.write(late.encode() + b"\n")
    merging.join()
    store.close()
    assert record.names() == {merged, late}


def test_a_keep_gitruns_did_not_write_is_left_alone(repo: Path) -> None:
    store = RunStore.open(repo)
    objects = store.repo.object_store
    group = blobs("held", "by", "someone")
    name = write_pack(objects, iter(group), 3)
    keep = repo / "objects" / "pack" / (name + ".keep")
    keep.write_bytes(b"kept by the user\n")
    # The same pack again, kept by gitruns until its branch moves.
    assert write_pack(objects, iter(group), 3, keep=True) == name
    release(objects, name)
    store.close()
    assert keep.read_bytes() == b"kept by the user\n"


def test_keeps_a_killed_writer_left_are_released_after_a_day(repo: Path) -> None:
    store = RunStore.open(repo)
    objects = store.repo.object_store
    pack_dir = repo / "objects" / "pack"
    stale, fresh, foreign = (
        write_pack(objects, iter(blobs(k)), 1, keep=True) for k in "sfx"
    )
    (pack_dir / (foreign + ".keep")).write_bytes(b"the user's\n")
    day_ago = time.time() - store_module.STALE_KEEP_SECONDS - 60
    for name in (stale, foreign):
        os.utime(pack_dir / (name + ".keep"), (day_ago, day_ago))
    store.tidy()  # as every finish() does, with few packs
    store.close()
    assert not (pack_dir / (stale + ".keep")).exists()
    assert (pack_dir / (fresh + ".keep")).read_bytes() == _KEEP_REASON
    assert (pack_dir / (foreign + ".keep")).read_bytes() == b"the user's\n"


def test_a_stale_keep_of_the_same_pack_is_made_fresh_by_a_new_write(
    repo: Path,
) -> None:
    store = RunStore.open(repo)
    objects = store.repo.object_store
    group = blobs("written", "twice")
    name = write_pack(objects, iter(group), 2, keep=True)
    keep = repo / "objects" / "pack" / (name + ".keep")
    day_ago = time.time() - store_module.STALE_KEEP_SECONDS - 60
    os.utime(keep, (day_ago, day_ago))  # as a killed writer left it
    # Another commit writes the same objects, and its branch has not moved.
    assert write_pack(objects, iter(group), 2, keep=True) == name
    store.tidy()
    store.close()
    assert keep.read_bytes() == _KEEP_REASON
    assert not list(keep.parent.glob("tmp_*"))
