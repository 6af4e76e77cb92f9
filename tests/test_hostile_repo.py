"""Hostile repositories: every reader refuses a damaged run clearly, in bounded memory.

Each test builds a bad run in ``tmp_path`` beside a good one, with dulwich
objects written by hand (trees, loose objects, a pack), and reads it the way a
user would: ``Api``, ``RunView``, the CLI, fork and rewind, textconv, the hooks'
checker. Where memory is the point, the read runs in a child interpreter and
the test asserts how far its peak resident memory grew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner
from dulwich.objects import Blob, Commit, Tree
from dulwich.pack import write_pack_index_v2
from dulwich.repo import Repo

import gitruns
from gitruns import hooks, lineage, textconv
from gitruns.chunk import MAX_CHUNK_BYTES, build_chunk, decode_chunk, encode_chunk
from gitruns.cli.main import main as cli
from gitruns.errors import ChunkFormatError, ForkPointError, RepositoryError
from gitruns.fork import ForkPoint, fork_run, rewind_run
from gitruns.reader import RunView
from gitruns.refs import RunRef, Sha
from gitruns.store import MAX_OBJECT_BYTES, RunStore

ROOT = Path(__file__).resolve().parents[1]
GOOD = "refs/heads/runs/demo/good"
SEGMENT_10 = b"history/0000/00/000000000010.msgpack"

#: A zlib bomb: a few hundred kilobytes on disk, half a gigabyte inflated.
BOMB_BYTES = 512 * 2**20


# -- building hostile runs ---------------------------------------------------------


@dataclass(frozen=True)
class Existing:
    """A tree entry for an object already in the repository."""

    sha: bytes
    mode: int = 0o100644


@pytest.fixture
def repo(tmp_path: Path, git_env: dict[str, str]) -> Path:
    """A bare repository holding ``demo/good``: steps 0..24, window 10."""
    path = tmp_path / "runs.git"
    run = gitruns.init(
        project="demo", id="good", repo=str(path), window=10, config={"lr": 0.1}
    )
    for i in range(25):
        run.log({"loss": 1.0 / (i + 1), "acc": i})
    run.finish()
    return path


def run_json(repo: Path, run_id: str, **changes: Any) -> bytes:
    """``demo/good``'s run.json, naming ``demo/<run_id>``, with ``changes``."""
    with closing(Repo(str(repo))) as r:
        tree = r[r[r.refs[GOOD.encode()]].tree]
        info = json.loads(r[tree[b"run.json"][1]].data)
    info.update(id=run_id, **changes)
    return json.dumps(info).encode()


def craft(
    repo: Path,
    run_id: str,
    files: Mapping[bytes, bytes | Existing | None],
    *,
    same_run_json: bool = False,
) -> Sha:
    """Commit ``demo/good``'s tree with ``files`` replaced as branch ``demo/<run_id>``.

    Args:
        files: path -> new content (a blob), an existing object, or None to
            remove the file. Paths are bytes: they need not be UTF-8.
        same_run_json: keep good's run.json (which names demo/good) as it is.
    """
    files = dict(files)
    if b"run.json" not in files and not same_run_json:
        files[b"run.json"] = run_json(repo, run_id)
    with closing(Repo(str(repo))) as r:
        base = r[r.refs[GOOD.encode()]]
        assert isinstance(base, Commit)
        root = _edit(r, base.tree, files)
        commit = Commit()
        commit.tree = root
        commit.parents = [base.id]
        commit.author = commit.committer = b"hostile <hostile@example.invalid>"
        commit.commit_time = commit.author_time = base.commit_time + 1
        commit.commit_timezone = commit.author_timezone = 0
        commit.message = b"hostile\n"
        r.object_store.add_object(commit)
        r.refs[f"refs/heads/runs/demo/{run_id}".encode()] = commit.id
        return Sha(commit.id)


def _edit(r: Repo, tree_id: bytes | None, files: Mapping[bytes, Any]) -> bytes:
    tree = Tree()
    if tree_id is not None:
        old = r[tree_id]
        assert isinstance(old, Tree)
        for name, mode, sha in old.iteritems():
            tree.add(name, mode, sha)
    below: dict[bytes, dict[bytes, Any]] = {}
    for path, content in files.items():
        head, _, rest = path.partition(b"/")
        if rest:
            below.setdefault(head, {})[rest] = content
        elif content is None:
            if head in tree:
                del tree[head]
        elif isinstance(content, Existing):
            tree.add(head, content.mode, content.sha)
        else:
            blob = Blob.from_string(content)
            r.object_store.add_object(blob)
            tree.add(head, 0o100644, blob.id)
    for name, inner in below.items():
        current = tree[name][1] if name in tree else None
        tree.add(name, 0o040000, _edit(r, current, inner))
    r.object_store.add_object(tree)
    return bytes(tree.id)


def chunk(steps: list[int], window: int = 10, start: int | None = None) -> bytes:
    """A well-formed chunk of ``steps``, wherever it will be stored."""
    first = steps[0] // window * window if start is None else start
    return encode_chunk(
        build_chunk(
            window,
            first,
            steps,
            [1.7e9 + s for s in steps],
            {"loss": (list(range(len(steps))), [float(s) for s in steps])},
        )
    )


def loose_zeros(repo: Path, size: int, kind: bytes = b"blob") -> bytes:
    """Write a loose object of ``size`` zero bytes, compressed as it streams."""
    header = b"%s %d\0" % (kind, size)
    digest = hashlib.sha1(header)
    compressor = zlib.compressobj(1)
    tmp = repo / "objects" / "tmp_hostile"
    piece = bytes(2**20)
    with open(tmp, "wb") as f:
        f.write(compressor.compress(header))
        for _ in range(size // len(piece)):
            digest.update(piece)
            f.write(compressor.compress(piece))
        f.write(compressor.flush())
    sha = digest.hexdigest()
    (repo / "objects" / sha[:2]).mkdir(exist_ok=True)
    tmp.rename(repo / "objects" / sha[:2] / sha[2:])
    return sha.encode()


def _entry_header(type_num: int, size: int) -> bytes:
    out = bytearray([(type_num << 4) | (size & 0x0F)])
    size >>= 4
    while size:
        out[-1] |= 0x80
        out.append(size & 0x7F)
        size >>= 7
    return bytes(out)


def _ofs(distance: int) -> bytes:
    out = [distance & 0x7F]
    distance >>= 7
    while distance:
        distance -= 1
        out.append(0x80 | (distance & 0x7F))
        distance >>= 7
    return bytes(reversed(out))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _zeros_stream(size: int) -> bytes:
    compressor = zlib.compressobj(9)
    piece = bytes(2**20)
    out = [compressor.compress(piece) for _ in range(size // len(piece))]
    return b"".join(out) + compressor.flush()


def write_pack(repo: Path) -> dict[str, bytes]:
    """A pack of hostile entries; their ids by name.

    ``small`` is a plain 5-byte blob and ``zeros`` a plain 512 MiB blob of
    zeros; ``ofs_big`` and ``ref_big`` are deltas against ``small`` whose
    headers say they make 512 MiB; ``ofs_on_zeros`` is a delta making 5 bytes
    from ``zeros``. The deltas' own bytes are garbage after their headers: a
    reader must refuse them on the sizes alone.
    """
    ids = {
        name: hashlib.sha1(name.encode()).digest() for name in ("ofs_big", "ref_big")
    }
    ids["ofs_on_zeros"] = hashlib.sha1(b"ofs_on_zeros").digest()
    small = b"hello"
    ids["small"] = hashlib.sha1(b"blob 5\0" + small).digest()
    ids["zeros"] = hashlib.sha1(b"zeros").digest()  # a stand-in: never hashed

    entries: list[tuple[bytes, bytes]] = []  # name, entry bytes
    offsets: dict[str, int] = {}
    at = 12

    def add(name: str, entry: bytes) -> None:
        nonlocal at
        offsets[name] = at
        entries.append((name.encode(), entry))
        at += len(entry)

    add("small", _entry_header(3, 5) + zlib.compress(small))
    add("zeros", _entry_header(3, BOMB_BYTES) + _zeros_stream(BOMB_BYTES))
    bogus = _varint(5) + _varint(BOMB_BYTES) + b"\x05hello" * 4
    add(
        "ofs_big",
        _entry_header(6, len(bogus))
        + _ofs(at - offsets["small"])
        + zlib.compress(bogus),
    )
    add("ref_big", _entry_header(7, len(bogus)) + ids["small"] + zlib.compress(bogus))
    on_zeros = _varint(BOMB_BYTES) + _varint(5) + b"\x05hello"
    add(
        "ofs_on_zeros",
        _entry_header(6, len(on_zeros))
        + _ofs(at - offsets["zeros"])
        + zlib.compress(on_zeros),
    )

    body = b"PACK" + struct.pack(">LL", 2, len(entries))
    body += b"".join(entry for _, entry in entries)
    checksum = hashlib.sha1(body).digest()
    pack_dir = repo / "objects" / "pack"
    pack_dir.mkdir(exist_ok=True)
    name = f"pack-{checksum.hex()}"
    (pack_dir / f"{name}.pack").write_bytes(body + checksum)
    index = sorted(
        (ids[n.decode()], offsets[n.decode()], zlib.crc32(e)) for n, e in entries
    )
    with open(pack_dir / f"{name}.idx", "wb") as f:
        write_pack_index_v2(f, index, checksum)
    return {n: i.hex().encode() for n, i in ids.items()}


def child(repo: Path, body: str) -> dict[str, Any]:
    """Run ``body`` in a fresh interpreter on ``repo``; what it reports.

    The child imports gitruns first, then notes its peak resident memory, runs
    ``body`` (with ``repo`` and ``Api`` defined) and reports the exception it
    raised (type and message) and how far its peak memory grew, in bytes.
    """
    script = textwrap.dedent(
        """
        import json, resource, sys
        import gitruns, gitruns.cli.main, gitruns.hooks
        from gitruns import Api
        repo = sys.argv[1]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report = {"error": None, "message": ""}
        try:
        {body}
        except Exception as exc:
            report = {"error": type(exc).__name__, "message": str(exc)}
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report["grew"] = (after - before) * 1024
        print(json.dumps(report))
        """
    ).replace("{body}", textwrap.indent(textwrap.dedent(body), "    ").strip("\n"))
    done = subprocess.run(
        [sys.executable, "-c", script, str(repo)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


@pytest.fixture
def store(repo: Path) -> Iterator[RunStore]:
    opened = RunStore.open(repo, create=False)
    yield opened
    opened.close()


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


# -- #3: deeply nested JSON --------------------------------------------------------

DEEP = {
    "arrays": b"[" * 100_000 + b"]" * 100_000,
    "objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "parseable": b"[" * 150 + b"]" * 150,  # parses, but deeper than any run's
}


@pytest.mark.parametrize("name", ["run.json", "config.json", "summary.json"])
@pytest.mark.parametrize("shape", sorted(DEEP))
def test_deep_json_is_a_repository_error_naming_file_and_commit(
    repo: Path, store: RunStore, name: str, shape: str
) -> None:
    sha = craft(repo, "deep", {name.encode(): DEEP[shape]})

    with pytest.raises(RepositoryError) as info:
        store.read_snapshot(sha, RunRef("demo", "deep"))
    assert name in str(info.value) and sha.decode()[:10] in str(info.value)
    assert "fetch the run again" in str(info.value)

    for read in _reads_of(gitruns.Api(str(repo)).run("demo/deep"), name):
        with pytest.raises(RepositoryError, match=name):
            read()
    for command in ("show", "history", "export"):
        result = invoke(command, "--repo", str(repo), "demo/deep")
        assert result.exit_code == 6 and name in result.output, result.output


def _reads_of(view: RunView, name: str) -> list[Any]:
    # What a user reads that touches the file ``name`` (run.json: everything).
    reads = [lambda: view.history(pandas=False), lambda: view.columns()]
    if name in ("run.json", "summary.json"):
        reads.append(lambda: view.summary)
    if name in ("run.json", "config.json"):
        reads.append(lambda: view.config)
    if name == "run.json":
        reads += [lambda: view.fork_from, lambda: view.tags, lambda: view.state]
    return reads


def test_listings_skip_a_run_whose_metadata_is_unreadable(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    craft(repo, "evil", {b"run.json": DEEP["arrays"]})
    craft(repo, "badconfig", {b"config.json": b"[1, 2, 3]"})
    craft(repo, "copied", {}, same_run_json=True)  # run.json names demo/good

    # A plain listing reads nothing (it costs what listing branches does): a
    # damaged run is listed, and using it says what is wrong.
    listed_runs = gitruns.Api(str(repo)).runs()
    assert [r.path for r in listed_runs] == [
        "demo/badconfig",
        "demo/copied",
        "demo/evil",
        "demo/good",
    ]
    with pytest.raises(RepositoryError, match="demo/evil"):
        listed_runs[2].summary  # noqa: B018
    # A listing that reads the runs (a filter, an order) leaves them out.
    with caplog.at_level(logging.WARNING, logger="gitruns"):
        runs = gitruns.Api(str(repo)).runs(filters={"summary.acc": {"$gte": 0}})
    assert [(r.path, r.summary["acc"]) for r in runs] == [("demo/good", 24)]
    warned = " ".join(r.getMessage() for r in caplog.records)
    for path in ("demo/evil", "demo/badconfig", "demo/copied"):
        assert f"skipping run {path}" in warned

    listed = invoke("runs", "--repo", str(repo))
    assert listed.exit_code == 0, listed.output
    assert "demo/good" in listed.stdout and "demo/evil" not in listed.stdout
    assert "skipped run demo/evil" in listed.stderr
    for run in ("demo/good", "demo/badconfig"):
        result = invoke("lineage", "--repo", str(repo), run)
        assert result.exit_code == 0, result.output
    assert lineage.fork_edges(RunStore.open(repo, create=False)) == []


def test_lineage_stops_at_an_unreadable_source(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    craft(repo, "src", {b"summary.json": b"{}"})
    with closing(Repo(str(repo))) as r:
        src = r.refs[b"refs/heads/runs/demo/src"].decode()
    fork_from = {"run": "demo/src", "step": 5, "commit": src}
    craft(repo, "child", {b"run.json": run_json(repo, "child", fork_from=fork_from)})
    craft(repo, "src", {b"run.json": DEEP["objects"]})  # the source, damaged since

    with caplog.at_level(logging.WARNING, logger="gitruns"):
        edges = lineage.ancestors(
            RunStore.open(repo, create=False), RunRef("demo", "child")
        )
    assert [(e.parent, e.step) for e in edges] == [("demo/src", 5)]
    result = invoke("lineage", "--repo", str(repo), "demo/child")
    assert result.exit_code == 0 and "demo/src (forked at step 5)" in result.output


# -- #4: zlib bombs ----------------------------------------------------------------


READ_HISTORY = """
    Api(repo).run("demo/bomb").history(pandas=False)
"""


def test_a_loose_zlib_bomb_chunk_is_refused_before_it_is_inflated(repo: Path) -> None:
    sha = loose_zeros(repo, BOMB_BYTES)
    loose = repo / "objects" / sha[:2].decode() / sha[2:].decode()
    assert os.path.getsize(loose) < 4 * 2**20
    craft(repo, "bomb", {SEGMENT_10: Existing(sha)})

    report = child(repo, READ_HISTORY)
    assert report["error"] == "ChunkFormatError", report
    assert "demo/bomb:history/0000/00/000000000010.msgpack" in report["message"]
    assert (
        f"{BOMB_BYTES} bytes, over the limit of {MAX_CHUNK_BYTES}" in report["message"]
    )
    assert report["grew"] < 32 * 2**20, report

    for command in (["history"], ["export"], ["fork", "--id", "f", "--step", "15"]):
        result = invoke(command[0], "--repo", str(repo), *command[1:], "demo/bomb")
        assert result.exit_code == 5, result.output
        assert "over the limit" in result.output


@pytest.mark.parametrize(
    "entry, part",
    [
        ("zeros", "the blob is"),
        ("ofs_big", "the blob is"),
        ("ref_big", "the blob is"),
        ("ofs_on_zeros", "its delta base is"),
    ],
)
def test_packed_bombs_are_refused_on_their_declared_sizes(
    repo: Path, entry: str, part: str
) -> None:
    ids = write_pack(repo)
    craft(repo, "bomb", {SEGMENT_10: Existing(ids[entry])})

    report = child(repo, READ_HISTORY)
    assert report["error"] == "ChunkFormatError", report
    assert "demo/bomb:history/0000/00/000000000010.msgpack" in report["message"]
    assert f"{part} {BOMB_BYTES} bytes, over the limit" in report["message"]
    assert report["grew"] < 32 * 2**20, report


def test_a_packed_small_blob_still_reads(repo: Path, store: RunStore) -> None:
    ids = write_pack(repo)
    assert store.read_blob(Sha(ids["small"]), "small") == b"hello"


def stored_stream(content: bytes, blocks: list[int], *, empty_after: int = 0) -> bytes:
    """A zlib stream of stored blocks of these sizes, by hand (RFC 1950, 1951).

    The rest of ``content`` follows in blocks of 65535 bytes at most, then
    ``empty_after`` empty stored blocks: valid, but longer than zlib writes.
    """
    out, at = [b"\x78\x01"], 0
    rest = len(content) - sum(blocks)
    sizes = [*blocks, *[min(65535, rest - i) for i in range(0, rest, 65535)]]
    sizes += [0] * empty_after
    for i, size in enumerate(sizes):
        final = i == len(sizes) - 1
        out.append(bytes([final]) + struct.pack("<HH", size, size ^ 0xFFFF))
        out.append(content[at : at + size])
        at += size
    return b"".join(out) + struct.pack(">I", zlib.adler32(content))


def loose_file(repo: Path, stream: bytes) -> Sha:
    """Store a zlib stream as a loose object under a made-up id."""
    sha = hashlib.sha1(stream).hexdigest()
    folder = repo / "objects" / sha[:2]
    folder.mkdir(exist_ok=True)
    (folder / sha[2:]).write_bytes(stream)
    return Sha(sha.encode())


def _flip(stream: bytes, at: int) -> bytes:
    return stream[:at] + bytes([stream[at] ^ 0xFF]) + stream[at + 1 :]


def _lying_bomb(says: int) -> bytes:
    # A loose object's header saying ``says`` bytes, then 512 MiB of zeros.
    compressor = zlib.compressobj(9)
    out = [compressor.compress(b"blob %d\0" % says)]
    piece = bytes(2**20)
    out += [compressor.compress(piece) for _ in range(BOMB_BYTES // len(piece))]
    return b"".join(out) + compressor.flush()


CONTENT = os.urandom(70_000) + bytes(30_000)
OBJECT = b"blob %d\0" % len(CONTENT) + CONTENT


@pytest.mark.parametrize(
    "stream",
    [
        zlib.compress(OBJECT, 0),
        zlib.compress(OBJECT, 1),
        zlib.compress(OBJECT, 6),
        stored_stream(OBJECT, [3]),  # the header split across two blocks
        stored_stream(OBJECT, [65535, 7]),
        stored_stream(OBJECT, [], empty_after=40_000),  # 200 kB of empty blocks
    ],
    ids=["level0", "level1", "level6", "split-header", "three-blocks", "padded"],
)
def test_loose_objects_of_every_zlib_shape_read_back(
    repo: Path, store: RunStore, stream: bytes
) -> None:
    # Chunks are stored at level 0 and read block by block, without zlib;
    # any other stream zlib reads. Either way the size limit holds.
    sha = loose_file(repo, stream)
    assert store.read_blob(sha, "a blob", limit=len(CONTENT)) == CONTENT
    with pytest.raises(RepositoryError, match="over the limit"):
        store.read_blob(sha, "a blob", limit=len(CONTENT) - 1)


@pytest.mark.parametrize(
    ("stream", "limit"),
    [
        (_flip(zlib.compress(OBJECT, 0), -1), len(CONTENT)),  # the checksum
        (_flip(zlib.compress(OBJECT, 0), 5), len(CONTENT)),  # NLEN, first block
        (_flip(zlib.compress(OBJECT, 0), 50_000), len(CONTENT)),  # content
        (zlib.compress(OBJECT, 0)[:-10], len(CONTENT)),
        (zlib.compress(OBJECT, 0)[:80_000], len(CONTENT)),
        (stored_stream(OBJECT + b"more", [1000]), len(CONTENT)),  # longer
        (stored_stream(OBJECT[:-1], [1000]), len(CONTENT)),  # shorter
        (zlib.compress(OBJECT[:-1], 1), len(CONTENT)),
        # Says 100 kB, inflates to 512 MiB: never inflated past its size.
        (_lying_bomb(len(CONTENT)), MAX_OBJECT_BYTES),
    ],
    ids=[
        "checksum", "nlen", "content", "truncated", "half", "longer", "shorter",
        "shorter-level1", "lying-bomb",
    ],
)  # fmt: skip
def test_corrupt_and_lying_loose_objects_are_refused(
    repo: Path, stream: bytes, limit: int
) -> None:
    sha = loose_file(repo, stream)
    report = child(
        repo,
        f"""
        from gitruns.store import RunStore
        RunStore.open(repo).read_blob({sha!r}, "a blob", limit={limit})
        """,
    )
    assert report["error"] == "RepositoryError", report
    assert "a blob" in report["message"] and "is corrupt" in report["message"]
    assert report["grew"] < 32 * 2**20, report


@pytest.mark.parametrize("name", ["run.json", "config.json", "summary.json"])
def test_a_json_bomb_is_refused_within_the_files_limit(repo: Path, name: str) -> None:
    sha = loose_zeros(repo, BOMB_BYTES)
    craft(repo, "bomb", {name.encode(): Existing(sha)})

    report = child(repo, READ_HISTORY)
    assert report["error"] == "RepositoryError", report
    assert f"{name} of " in report["message"]
    assert f"over the limit of {MAX_OBJECT_BYTES}" in report["message"]
    assert report["grew"] < 32 * 2**20, report


def test_a_tree_bomb_is_refused(repo: Path) -> None:
    sha = loose_zeros(repo, BOMB_BYTES, b"tree")
    craft(repo, "bomb", {b"history/0000": Existing(sha, 0o040000)})
    report = child(repo, READ_HISTORY)
    assert report["error"] == "RepositoryError", report
    assert "over the limit" in report["message"]
    assert report["grew"] < 32 * 2**20, report


def test_the_hooks_checker_reads_a_pushed_bomb_in_bounded_memory(repo: Path) -> None:
    # The bomb appended to demo/good, as a push of it would bring it.
    sha = loose_zeros(repo, BOMB_BYTES)
    segment = b"history/0000/00/000000000030.msgpack"
    new = craft(repo, "good", {segment: Existing(sha)}, same_run_json=True)

    report = child(
        repo,
        f"""
        from dulwich.repo import Repo
        from gitruns import hooks
        checker = hooks.client_checker(Repo(repo), None, allow_rewrite=False)
        update = hooks.RefUpdate({GOOD.encode()!r}, None, {new!r})
        raise RuntimeError(" | ".join(map(str, checker.check([update]))))
        """,
    )
    assert "000000000030.msgpack" in report["message"], report
    assert "over the limit" in report["message"]
    assert report["grew"] < 32 * 2**20, report


def test_a_malformed_prefix_is_refused_where_it_is_used(
    repo: Path, store: RunStore
) -> None:
    # Segment 10 with a prefix digest reaching into its own steps. Reading
    # history uses no prefix digest, so it reads the segment's values; what
    # starts from the digests (a fork's summary, a chunk's totals) and what
    # checks a push refuse it, naming the file.
    before = decode_chunk(chunk(list(range(10)))).totals()
    good = build_chunk(
        10,
        10,
        list(range(10, 20)),
        [1.7e9 + s for s in range(10, 20)],
        {"loss": (None, [float(s) for s in range(10, 20)])},
        prefix=before,
    )
    doc = msgpack.unpackb(encode_chunk(good))
    doc["prefix"]["loss"][4] = 15  # its last step, inside this segment
    data = msgpack.packb(doc, use_bin_type=True)
    craft(repo, "prefix", {SEGMENT_10: data})
    view = gitruns.Api(str(repo)).run("demo/prefix")

    assert view.columns(["loss"])["loss"][1].tolist()[10:20] == list(range(10, 20))
    assert [row["_step"] for row in view.scan_history()] == list(range(25))
    segment = list(view.chunks(10, 20))[0]
    for use in (lambda: segment.prefix["loss"], segment.totals):
        with pytest.raises(ChunkFormatError, match="prefix digest of 'loss'") as info:
            use()
        assert "demo/prefix:history/0000/00/000000000010.msgpack" in str(info.value)

    point = ForkPoint.parse("demo/prefix?_step=15")
    info_json = {"id": "forked", "project": "demo", "window": 10}
    with pytest.raises(ChunkFormatError, match="prefix digest of 'loss'"):
        fork_run(
            store, RunRef("demo", "prefix"), point, RunRef("demo", "f"), info_json, {}
        )
    # Such a segment pushed onto demo/good, after its last one.
    doc = msgpack.unpackb(chunk([30, 31, 32]))
    doc["prefix"] = {"loss": [25, 1.0, 0.04, 0, 31, 0.04, 1.0, 3.8, 25]}
    segment = b"history/0000/00/000000000030.msgpack"
    pushed = {segment: msgpack.packb(doc, use_bin_type=True)}
    new = craft(repo, "good", pushed, same_run_json=True)
    checker = hooks.client_checker(Repo(str(repo)), None, allow_rewrite=False)
    update = hooks.RefUpdate(GOOD.encode(), None, new)
    assert "prefix digest of 'loss'" in " | ".join(map(str, checker.check([update])))


def test_a_frame_that_does_not_inflate_is_refused_when_its_metric_is_read(
    repo: Path,
) -> None:
    # Segment 10 with a frame of acc's values that has a byte after it: its
    # header is sound, so a read of loss alone never inflates it; any read
    # of acc's values refuses the segment, naming it and why.
    doc = msgpack.unpackb(
        encode_chunk(
            build_chunk(
                10,
                10,
                list(range(10, 20)),
                [1.7e9 + s for s in range(10, 20)],
                {
                    "loss": (None, [1.0 / (s + 1) for s in range(10, 20)]),
                    "acc": (None, list(range(10, 20))),
                },
            )
        )
    )
    doc["columns"]["acc"]["values"] += b"\x00"
    craft(repo, "frame", {SEGMENT_10: msgpack.packb(doc, use_bin_type=True)})
    view = gitruns.Api(str(repo)).run("demo/frame")

    loss = view.columns(["loss"])["loss"][1].tolist()
    assert loss == [1.0 / (s + 1) for s in range(25)]
    assert len(list(view.scan_history(keys=["loss"]))) == 25
    for read in (
        lambda: view.columns(),
        lambda: view.columns(["acc"]),
        lambda: list(view.scan_history()),
        lambda: list(view.scan_history(keys=["acc"])),
        lambda: view.history(),
    ):
        with pytest.raises(ChunkFormatError, match="1 bytes of unused data") as info:
            read()
        assert "demo/frame:history/0000/00/000000000010.msgpack" in str(info.value)
        assert "metric 'acc': values" in str(info.value)


# -- #5: chunks that amplify when decoded ------------------------------------------


def _amplifying_chunk(maps: int) -> bytes:
    # A valid chunk of steps 10..19 with an unknown key holding ``maps`` maps
    # of 100 000 distinct short keys: small on disk, huge as Python dicts.
    doc = msgpack.unpackb(chunk(list(range(10, 20))))
    doc["future"] = b"@@HOLE@@"
    one = b"\xdf" + struct.pack(">I", 100_000)
    one += b"".join(msgpack.packb(f"{i:x}") + b"\xc0" for i in range(100_000))
    junk = b"\xdc" + struct.pack(">H", maps) + one * maps
    data: bytes = msgpack.packb(doc, use_bin_type=True)
    return data.replace(msgpack.packb(b"@@HOLE@@", use_bin_type=True), junk)


def test_an_amplifying_chunk_decodes_in_memory_near_its_size(repo: Path) -> None:
    data = _amplifying_chunk(maps=24)
    assert 10 * 2**20 < len(data) < MAX_CHUNK_BYTES
    craft(repo, "amplify", {SEGMENT_10: data})

    report = child(
        repo,
        """
        rows = Api(repo).run("demo/amplify").history(pandas=False)
        raise RuntimeError(str([r["_step"] for r in rows]))
        """,
    )
    assert report["message"] == str(list(range(25))), report
    # Decoded whole, these maps would take well over a gigabyte.
    assert report["grew"] < 4 * len(data), report


# -- #6: segments stored where their steps do not belong ---------------------------

MISPLACED = {
    # file 10 holds steps 20..24 (a copy of the last segment): a chunk of the
    # window from 20, stored in the window from 10
    "later-steps": (
        SEGMENT_10,
        chunk([20, 21, 22, 23, 24]),
        "stored in the window from step 10",
    ),
    # a window of 5 in a run of window 10
    "window-5": (SEGMENT_10, chunk([10, 11, 12], window=5), "window 5"),
    # file 10 starts at 11: its name says 10
    "shifted": (SEGMENT_10, chunk([11, 12, 13]), "not at 10 as its file name says"),
    # a second segment in window 0, starting inside the first one
    "overlap": (
        b"history/0000/00/000000000005.msgpack",
        chunk([5, 6, 7]),
        "not before the next segment's first step 5",
    ),
}

#: The fork step of each case whose segment is the misplaced one. (A fork at
#: 3 of "overlap" starts from the commit that added segment 0, before the
#: overlapping segment was committed: it is well formed.)
MISPLACED_AT = {"later-steps": 15, "window-5": 15, "shifted": 15, "overlap": None}


@pytest.mark.parametrize("case", sorted(MISPLACED))
def test_a_misplaced_segment_is_refused_by_every_reader(
    repo: Path, case: str, tmp_path: Path
) -> None:
    path, data, reason = MISPLACED[case]
    craft(repo, case, {path: data})
    view = gitruns.Api(str(repo)).run(f"demo/{case}")

    for read in (
        lambda: view.history(),
        lambda: view.columns(),
        lambda: list(view.scan_history()),
        lambda: list(view.scan_history(keys=["loss"])),
    ):
        with pytest.raises(ChunkFormatError) as info:
            read()
        assert f"demo/{case}:history/" in str(info.value)
        assert reason in str(info.value)
    for command in ("history", "export"):
        result = invoke(command, "--repo", str(repo), f"demo/{case}")
        assert result.exit_code == 5 and reason in result.output, result.output

    # textconv sees the file under its own name, as git hands it over.
    file = tmp_path / "XXXXXX_" / path.decode()
    file.parent.mkdir(parents=True)
    file.write_bytes(data)
    # A file alone shows neither the run's window nor the next segment.
    if case in ("later-steps", "shifted"):
        assert textconv.file_text(file).startswith("# not a readable gitruns chunk")


@pytest.mark.parametrize("step", [3, 5, 15, 24])
@pytest.mark.parametrize("case", sorted(MISPLACED))
def test_fork_of_a_misplaced_run_is_a_chunk_error_not_a_crash(
    repo: Path, store: RunStore, case: str, step: int
) -> None:
    # A fork reads the source's last segment (for its real last step) and the
    # one holding the fork step; it shares the others unread, by design.
    path, data, reason = MISPLACED[case]
    craft(repo, case, {path: data})
    spec = f"demo/{case}?_step={step}"
    point = ForkPoint.parse(spec)
    info = {"id": "forked", "project": "demo", "window": 10}
    new = RunRef("demo", "forked")

    if step == MISPLACED_AT[case]:
        with pytest.raises(ChunkFormatError, match=reason) as refused:
            fork_run(store, RunRef("demo", case), point, new, info, {})
        assert f"demo/{case}:history/" in str(refused.value)
        args = ["--repo", str(repo), f"demo/{case}", "--step", str(step)]
        result = invoke("fork", *args)
        assert result.exit_code == 5 and reason in result.output, result.output
    else:
        fork_run(store, RunRef("demo", case), point, new, info, {})
        fork = RunView(store, new).fork_from
        assert fork is not None and fork["step"] == step


def test_the_writer_refuses_to_resume_after_a_misplaced_last_segment(
    repo: Path,
) -> None:
    craft(
        repo,
        "lastbad",
        {b"history/0000/00/000000000020.msgpack": chunk([0, 1, 2], window=10)},
    )
    with pytest.raises(ChunkFormatError, match="demo/lastbad:history/0000/00/"):
        gitruns.init(project="demo", id="lastbad", repo=str(repo), resume="must")


# -- #7: wrong-typed fields and odd tree names ----------------------------------------

FORK = {"run": "demo/good", "step": 3, "commit": "0" * 40}
WRONG_TYPES = [
    ("config.json", b"[1, 2, 3]", "a list, not a JSON object"),
    ("config.json", b'"abc"', "a string, not a JSON object"),
    ("config.json", b"5", "a number, not a JSON object"),
    ("summary.json", b"[1]", "a list, not a JSON object"),
    ("summary.json", b'"abc"', "a string, not a JSON object"),
    ("run.json", {"fork_from": "demo/good?_step=3"}, "fork_from must be"),
    ("run.json", {"fork_from": [1, 2]}, "fork_from must be"),
    ("run.json", {"fork_from": {**FORK, "step": "x"}}, "fork_from step must be"),
    ("run.json", {"fork_from": {**FORK, "step": True}}, "fork_from step must be"),
    ("run.json", {"fork_from": {**FORK, "run": 5}}, "fork_from run must be"),
    ("run.json", {"fork_from": {**FORK, "run": "../x"}}, "fork_from run must be"),
    ("run.json", {"fork_from": {**FORK, "commit": "zz"}}, "fork_from commit must be"),
    ("run.json", {"rewinds": "x"}, "rewinds must be a list"),
    ("run.json", {"rewinds": [{"step": "x"}]}, "each rewind must be"),
    ("run.json", {"metrics": ["loss"]}, "metrics must map"),
    ("run.json", {"tags": "abc"}, "tags must be a list of text"),
    ("run.json", {"tags": [1, 2]}, "tags must be a list of text"),
    ("run.json", {"window": True}, "window must be"),
    ("run.json", {"window": 10**30}, "window must be"),
    ("run.json", {"last_step": "24"}, "last_step must be"),
    ("run.json", {"name": [1, 2]}, "name must be text"),
    ("run.json", {"code": {"commit": 5}}, "code must hold"),
    ("run.json", {"float32": "yes"}, "float32 must be"),
]


@pytest.mark.parametrize(
    "name, content, reason", WRONG_TYPES, ids=[f"{w[0]}-{w[2]}" for w in WRONG_TYPES]
)
def test_wrong_typed_fields_are_refused_when_a_snapshot_is_read(
    repo: Path, store: RunStore, name: str, content: Any, reason: str
) -> None:
    data = run_json(repo, "typed", **content) if isinstance(content, dict) else content
    sha = craft(repo, "typed", {name.encode(): data})

    with pytest.raises(RepositoryError) as info:
        store.read_snapshot(sha)
    message = str(info.value)
    assert f"{name} of {sha.decode()[:10]}" in message and reason in message
    assert "fetch the run again from a good copy, or repair the file" in message

    for read in _reads_of(gitruns.Api(str(repo)).run("demo/typed"), name):
        with pytest.raises(RepositoryError, match=reason):
            read()
    commands = [["show"], ["diff", "demo/good"], ["history"], ["fork", "--step", "3"]]
    if name == "run.json":
        commands.append(["lineage"])
    for command in commands:
        result = invoke(command[0], "--repo", str(repo), *command[1:], "demo/typed")
        assert result.exit_code == 6, result.output
        assert reason in result.output


@pytest.mark.parametrize(
    "path",
    [
        b"history/\xff\xfe/00/000000000000.msgpack",
        b"history/0000/\xff/000000000000.msgpack",
        b"history/0000/00/\xff.msgpack",
    ],
)
def test_tree_names_that_are_not_utf8_are_a_chunk_error(
    repo: Path, path: bytes
) -> None:
    craft(repo, "names", {path: chunk([0, 1, 2])})
    view = gitruns.Api(str(repo)).run("demo/names")
    with pytest.raises(ChunkFormatError) as info:
        view.history()
    assert "demo/names:history/" in str(info.value) and "\\xff" in str(info.value)
    for command in (["history"], ["fork", "--step", "5"]):
        result = invoke(command[0], "--repo", str(repo), *command[1:], "demo/names")
        assert result.exit_code == 5, result.output


@pytest.mark.parametrize("mode", [0o100755, 0o120000])
def test_a_segment_that_is_not_a_plain_file_is_named_as_such(
    repo: Path, mode: int
) -> None:
    with closing(Repo(str(repo))) as r:
        segment = r[r[r.refs[GOOD.encode()]].tree].lookup_path(
            r.__getitem__, b"history/0000/00/000000000000.msgpack"
        )[1]
    craft(
        repo, "mode", {b"history/0000/00/000000000000.msgpack": Existing(segment, mode)}
    )
    with pytest.raises(ChunkFormatError, match=f"not mode {mode:o}") as info:
        gitruns.Api(str(repo)).run("demo/mode").history()
    assert "demo/mode:history/0000/00/000000000000.msgpack" in str(info.value)


# -- #8: run.json trusted over the history -----------------------------------------


def test_fork_points_are_checked_against_the_history_not_run_json(
    repo: Path, store: RunStore
) -> None:
    craft(repo, "lies", {b"run.json": run_json(repo, "lies", last_step=1_000_000)})
    result = invoke("fork", "--repo", str(repo), "demo/lies", "--step", "500")
    assert result.exit_code == 2, result.output
    assert "committed steps up to 24" in result.output

    spec = "demo/lies?_step=500"
    with pytest.raises(ForkPointError, match="up to 24"):
        rewind_run(store, RunRef("demo", "lies"), ForkPoint.parse(spec))
    args = ["--repo", str(repo), "demo/lies", "--step", "24", "--id", "f"]
    result = invoke("fork", *args)
    assert result.exit_code == 0, result.output
    forked = gitruns.Api(str(repo)).run("demo/f")
    assert forked.last_step == 24 and forked.fork_from["step"] == 24  # type: ignore[index]


def test_a_run_json_naming_another_run_is_refused(repo: Path) -> None:
    craft(repo, "stolen", {b"run.json": run_json(repo, "other", project="elsewhere")})
    view = RunView(RunStore.open(repo, create=False), RunRef("demo", "stolen"))
    with pytest.raises(RepositoryError, match="names run 'elsewhere/other'") as info:
        view.info  # noqa: B018
    assert "runs/demo/stolen" in str(info.value)
    with pytest.raises(RepositoryError, match="elsewhere/other"):
        view.history()


def test_a_sha256_repository_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    # dulwich names objects by SHA-1 only: written into a SHA-256 repository,
    # they would be what git calls corrupt.
    repo = tmp_path / "sha256.git"
    made = subprocess.run(
        ["git", "init", "--quiet", "--bare", "--object-format=sha256", str(repo)],
        capture_output=True,
        text=True,
        check=False,
    )
    # Git has made SHA-256 repositories since 2.29; an older one may not.
    version = subprocess.run(
        ["git", "version"], capture_output=True, text=True, check=True
    ).stdout
    if made.returncode != 0 and tuple(map(int, re.findall(r"\d+", version)[:2])) < (
        2,
        29,
    ):
        pytest.skip(f"{version.strip()} cannot make a SHA-256 repository")
    assert made.returncode == 0, made.stderr
    with pytest.raises(RepositoryError, match="SHA-1 repositories only"):
        gitruns.init(project="p", repo=repo)
    assert not (repo / "gitruns").exists()
    assert list((repo / "refs" / "heads").iterdir()) == []
    done = CliRunner().invoke(cli, ["runs", "--repo", str(repo)])
    assert done.exit_code == RepositoryError.exit_code
    assert "SHA-1 repositories only" in done.output
