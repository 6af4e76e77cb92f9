"""The Git layer: repositories, run trees, commits and compare-and-swap refs."""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import logging
import math
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dulwich.config import StackedConfig
from dulwich.errors import NotGitRepository, ObjectFormatException
from dulwich.file import FileLocked
from dulwich.object_store import BaseObjectStore
from dulwich.objects import Blob, Commit, ObjectID, ShaFile, Tree
from dulwich.pack import PackFileDisappeared
from dulwich.refs import Ref
from dulwich.repo import Repo

from gitruns.chunk import MAX_CHUNK_BYTES, Chunk, decode_chunk
from gitruns.errors import (
    AmbiguousRunError,
    ChunkFormatError,
    ConflictError,
    GitRunsError,
    InvalidArgumentError,
    RepositoryError,
    RunNotFoundError,
    mapped_errors,
)
from gitruns.objects import CorruptObject, ObjectReader, ObjectTooLarge
from gitruns.packs import (
    CHUNK_COMPRESSION,
    PackRecord,
    merge_packs,
    release,
    release_stale,
    write_pack,
)
from gitruns.refs import RUNS_PREFIX, RunRef, Sha, check_name
from gitruns.values import SURROGATE, check_unicode

logger = logging.getLogger(__name__)

FILE_MODE = 0o100644
TREE_MODE = 0o040000

RUN_JSON = b"run.json"
CONFIG_JSON = b"config.json"
SUMMARY_JSON = b"summary.json"
README = b"README.md"
GITATTRIBUTES = b".gitattributes"
HISTORY = b"history"
CHUNK_SUFFIX = b".msgpack"

#: What every run tree carries so `git diff` shows chunks through textconv.
GITATTRIBUTES_TEXT = b"history/**/*.msgpack diff=gitruns\n"

#: Tree entries the run store owns; anything else at the root is a saved file.
RESERVED_NAMES = {RUN_JSON, CONFIG_JSON, SUMMARY_JSON, README, GITATTRIBUTES, HISTORY}

#: zlib level of the loose objects gitruns writes, but chunks. Level 6 spends
#: far longer than level 1 for a little more gain on text.
LOOSE_COMPRESSION = 1

#: Loose objects past which finishing a run packs them (as `git gc --auto`).
PACK_THRESHOLD = 1000

#: Object data one packing batch holds in memory at most (about).
PACK_BATCH_BYTES = 8 << 20

#: Packs past which finishing a run merges the smallest of gitruns' packs.
MAX_PACKS = 50

#: New objects from which a commit writes them as one pack and its index
#: rather than as loose objects: a commit of many windows (a short run's
#: finish, a committer catching up) then creates two files, not dozens (a new
#: file costs ~0.3 ms on ext4), and leaves nothing to repack later.
PACK_MIN_OBJECTS = 16

#: A pack gitruns kept for a commit this long ago lost its writer (killed
#: before it moved its branch): the keep goes, so that Git may repack it.
STALE_KEEP_SECONDS = 24 * 3600.0

#: Bytes of objects a commit holds in memory at most before writing them (a
#: commit of a long backlog writes several packs rather than one large one).
MAX_HELD_BYTES = 64 << 20

#: A ref lock file older than this is left over, even if no run lock says so.
STALE_REF_LOCK_SECONDS = 60.0

#: The default embedded repository, a bare one in the working directory.
DEFAULT_REPO_DIR = ".gitruns"

#: The largest JSON file, tree or commit of a run that gitruns reads. Chunks
#: have their own limit, :data:`gitruns.chunk.MAX_CHUNK_BYTES`.
MAX_OBJECT_BYTES = 16 * 2**20

#: How deeply a run's JSON files may nest lists and objects (init() and
#: config updates refuse deeper values, see run_config.plain_value).
MAX_JSON_DEPTH = 100

# What a reader can do about a run file it refuses.
_FIX = "fetch the run again from a good copy, or repair the file in a new commit"

_INT64_MAX = 2**63 - 1
_HEX = frozenset(b"0123456789abcdef")
# run.json fields that hold text or nothing.
_TEXT_FIELDS = (
    "id",
    "project",
    "name",
    "state",
    "created",
    "updated",
    "notes",
    "group",
    "job_type",
    "entity",
    "host",
)


def locate_repository(
    explicit: str | os.PathLike[str] | None, env_value: str | None, cwd: Path
) -> tuple[Path, bool]:
    """Pick the repository for a run, in DESIGN.md's resolution order.

    Args:
        explicit: the repository the caller named (``repo=``, ``--repo``).
        env_value: the value of ``GITRUNS_REPO``, read by the caller.
        cwd: the folder to search upwards from for an enclosing repository.

    Returns:
        The path and whether it may be created: an explicit or environment
        path may, an enclosing repository already exists, and the embedded
        default (``./.gitruns``) may.
    """
    if explicit is not None:
        return Path(explicit), True
    if env_value:
        return Path(env_value), True
    for folder in (cwd, *cwd.parents):
        if (folder / ".git").exists():
            return folder, False
        if (folder / "HEAD").is_file() and (folder / "objects").is_dir():
            return folder, False
    return cwd / DEFAULT_REPO_DIR, True


def now_iso(ts: float | None = None) -> str:
    """A UTC ISO-8601 time stamp, to the second, as run.json's times are."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps_json(value: Any, what: str = "run metadata") -> bytes:
    """Sorted, indented JSON that reads well in a pull request's diff.

    Args:
        value: what the file holds.
        what: what it is, for an error (``config``, ``summary``).

    Returns:
        The file's UTF-8 bytes.

    Raises:
        InvalidArgumentError: a str in ``value`` has no UTF-8 form.
    """
    plain = _jsonable(value)
    text = json.dumps(plain, indent=2, sort_keys=True, ensure_ascii=False)
    try:
        data = (text + "\n").encode()
    except UnicodeEncodeError:
        check_unicode(plain, what)  # names where the bad str is
        raise InvalidArgumentError(what, text, SURROGATE) from None
    if len(data) > MAX_OBJECT_BYTES:
        # Readers refuse an object this large, so the run could not be read.
        raise InvalidArgumentError(
            what,
            f"<{len(data) >> 20} MiB of JSON>",
            f"a run's {what} may take {MAX_OBJECT_BYTES >> 20} MiB; keep large "
            "things (a vocabulary, a dataset list) in a file with gitruns.save()",
        )
    return data


def _jsonable(value: Any) -> Any:
    # JSON has no NaN or infinities; spell them as Python's json module reads them.
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def loads_json(data: bytes, source: str) -> Any:
    """Parse a JSON file of a run tree, naming it in the error.

    Raises:
        RepositoryError: the file is not JSON, or nests lists and objects
            more than :data:`MAX_JSON_DEPTH` deep.
    """
    try:
        value = json.loads(data)
    except RecursionError:
        too_deep = True
    except ValueError as exc:
        raise RepositoryError(f"{source} is not valid JSON: {exc}; {_FIX}") from exc
    else:
        # Only a file with that many brackets can nest that deep.
        brackets = data.count(b"[") + data.count(b"{")
        too_deep = brackets > MAX_JSON_DEPTH and _nests_deeper(value, MAX_JSON_DEPTH)
    if too_deep:
        raise RepositoryError(
            f"{source} nests lists and objects more than {MAX_JSON_DEPTH} deep, "
            f"which no gitruns writes; {_FIX}"
        )
    return value


def _nests_deeper(value: Any, limit: int) -> bool:
    # Without recursion: the point is to refuse what would exhaust the stack.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _a_json(value: Any) -> str:
    # What a JSON file holds instead of an object, in JSON's words.
    names = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.40}"


def _is_step(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _INT64_MAX


def check_run_json(info: Any, where: str, run: RunRef | None = None) -> dict[str, Any]:
    """Return run.json's content if its fields have the types readers rely on.

    Args:
        info: the parsed file.
        where: the file and commit, for messages (``run.json of 1a2b3c4d5e``).
        run: the run whose branch holds the commit, if known; run.json must
            name it.

    Raises:
        RepositoryError: naming the field, what it holds and what to do.
    """
    problem = _run_json_problem(info, run)
    if problem:
        raise RepositoryError(f"{where}: {problem}; {_FIX}")
    assert isinstance(info, dict)
    return info


def _run_json_problem(info: Any, run: RunRef | None) -> str:
    if not isinstance(info, dict):
        return f"it holds {_a_json(info)}, not a JSON object"
    window = info.get("window")
    if type(window) is not int or not 1 <= window <= _INT64_MAX:
        return f"window must be a whole number of steps >= 1, not {_describe(window)}"
    for name in _TEXT_FIELDS:
        value = info.get(name)
        if value is not None and type(value) is not str:
            return f"{name} must be text, not {_describe(value)}"
    if run is not None and (info.get("project"), info.get("id")) != (
        run.project,
        run.run_id,
    ):
        named = f"{info.get('project')}/{info.get('id')}"
        return f"it names run {named!r:.80}, but the commit is on {run.branch}"
    for name in ("last_step", "next_step"):
        value = info.get(name)
        if value is not None and not _is_step(value):
            return f"{name} must be a step (an int >= 0), not {_describe(value)}"

    fork = info.get("fork_from")
    if fork is not None:
        problem = _fork_from_problem(fork)
        if problem:
            return f"fork_from {problem}"
    rewinds = info.get("rewinds", [])
    if not isinstance(rewinds, list):
        return f"rewinds must be a list, not {_describe(rewinds)}"
    for rewind in rewinds:
        if not (
            isinstance(rewind, dict)
            and _is_step(rewind.get("step"))
            and type(rewind.get("commit")) is str
            and type(rewind.get("at", "")) is str
        ):
            return f"each rewind must be {{step, commit, at}}, not {_describe(rewind)}"

    metrics = info.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
        isinstance(rule, dict) for rule in metrics.values()
    ):
        return f"metrics must map names to rules, not {_describe(metrics)}"
    for name in ("tags", "summary_set"):
        value = info.get(name, [])
        if not isinstance(value, list) or not all(type(v) is str for v in value):
            return f"{name} must be a list of text, not {_describe(value)}"
    for name in ("code", "source"):
        value = info.get(name)
        if value is not None and not isinstance(value, dict):
            return f"{name} must be an object or null, not {_describe(value)}"
    code = info.get("code") or {}
    if not isinstance(code.get("commit", ""), str) or not isinstance(
        code.get("dirty", False), bool
    ):
        return (
            f"code must hold a commit and whether it was dirty, not {_describe(code)}"
        )
    if "float32" in info and type(info["float32"]) is not bool:
        return f"float32 must be true or false, not {_describe(info['float32'])}"
    return ""


def _fork_from_problem(fork: Any) -> str:
    if not isinstance(fork, dict):
        return f"must be {{run, step, commit}} or null, not {_describe(fork)}"
    source = fork.get("run")
    parts = source.split("/") if isinstance(source, str) else []
    try:
        if len(parts) != 2:
            raise ValueError
        RunRef(parts[0], parts[1])
    except (ValueError, GitRunsError):
        return f"run must be <project>/<run_id>, not {_describe(source)}"
    if not _is_step(fork.get("step")):
        return f"step must be a step (an int >= 0), not {_describe(fork.get('step'))}"
    commit = fork.get("commit")
    if not (
        isinstance(commit, str) and len(commit) == 40 and set(commit.encode()) <= _HEX
    ):
        return f"commit must be a commit id, not {_describe(commit)}"
    return ""


def check_json_object(value: Any, where: str) -> dict[str, Any]:
    """Return ``value`` if it is a JSON object (config.json, summary.json).

    Raises:
        RepositoryError: naming the file and what it holds instead.
    """
    if not isinstance(value, dict):
        raise RepositoryError(
            f"{where}: it holds {_a_json(value)}, not a JSON object; {_FIX}"
        )
    return value


def chunk_name(first_step: int) -> bytes:
    """The file name of a history segment that starts at ``first_step``."""
    return b"%012d" % first_step + CHUNK_SUFFIX


def chunk_dirs(first_step: int, window: int) -> tuple[bytes, bytes]:
    """The two fan-out directories of a segment, so no tree lists every chunk."""
    k = first_step // window
    return b"%04x" % (k >> 16), b"%02x" % ((k >> 8) & 0xFF)


def chunk_path(first_step: int, window: int) -> str:
    """The path of a segment inside the run tree, for messages and textconv."""
    l1, l2 = chunk_dirs(first_step, window)
    return b"/".join([HISTORY, l1, l2, chunk_name(first_step)]).decode()


class History:
    """A run's history tree: segment first step -> blob, written with fan-out.

    Only the fan-out directories touched since the last write are rebuilt, so
    the bytes a commit writes do not grow with the length of the run.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.starts: list[int] = []
        self.blobs: dict[int, Sha] = {}
        self._dir_trees: dict[tuple[bytes, bytes], Sha] = {}
        self._l1_trees: dict[bytes, Sha] = {}
        self._dirty: set[tuple[bytes, bytes]] = set()
        self._tree: Sha | None = None

    def copy(self) -> History:
        """An independent copy that shares the written trees."""
        other = History(self.window)
        other.starts = list(self.starts)
        other.blobs = dict(self.blobs)
        other._dir_trees = dict(self._dir_trees)
        other._l1_trees = dict(self._l1_trees)
        other._dirty = set(self._dirty)
        other._tree = self._tree
        return other

    def add(self, first_step: int, blob: Sha) -> None:
        """Add a segment; it must start after every segment already there."""
        if self.starts and first_step <= self.starts[-1]:
            raise ValueError(f"segment {first_step} is not after {self.starts[-1]}")
        self.starts.append(first_step)
        self.blobs[first_step] = blob
        self._touch(first_step)

    def replace(self, first_step: int, blob: Sha) -> None:
        """Point an existing segment at a new blob (a cut segment)."""
        self.blobs[first_step] = blob
        self._touch(first_step)

    def drop_after(self, step: int) -> list[int]:
        """Remove the segments that start after ``step``; return their starts."""
        cut = bisect.bisect_right(self.starts, step)
        dropped = self.starts[cut:]
        del self.starts[cut:]
        for start in dropped:
            del self.blobs[start]
            self._touch(start)
        return dropped

    def segment_at(self, step: int) -> int | None:
        """The first step of the segment that would hold ``step``."""
        i = bisect.bisect_right(self.starts, step)
        return self.starts[i - 1] if i else None

    def next_start(self, first_step: int) -> int | None:
        """The first step of the segment after the one at ``first_step``, if any."""
        i = bisect.bisect_right(self.starts, first_step)
        return self.starts[i] if i < len(self.starts) else None

    def segments(
        self, min_step: int | None = None, max_step: int | None = None
    ) -> list[tuple[int, Sha]]:
        """(first step, blob) of the segments that may hold steps in range."""
        lo = 0
        if min_step is not None:
            first = self.segment_at(min_step)
            lo = self.starts.index(first) if first is not None else 0
        hi = len(self.starts)
        if max_step is not None:
            hi = bisect.bisect_left(self.starts, max_step)
        return [(s, self.blobs[s]) for s in self.starts[lo:hi]]

    def _touch(self, first_step: int) -> None:
        self._dirty.add(chunk_dirs(first_step, self.window))
        self._tree = None

    def write(self, add: Any) -> Sha:
        """Write the changed trees with ``add(obj)``; return the history tree id."""
        if self._tree is not None:
            return self._tree
        by_dir: dict[tuple[bytes, bytes], list[int]] = {}
        for d in self._dirty:
            by_dir[d] = []
        for start in self.starts:
            d = chunk_dirs(start, self.window)
            if d in by_dir:
                by_dir[d].append(start)
        touched_l1: set[bytes] = set()
        for d, starts in by_dir.items():
            touched_l1.add(d[0])
            if not starts:
                self._dir_trees.pop(d, None)
                continue
            tree = Tree()
            for start in starts:
                tree.add(chunk_name(start), FILE_MODE, self.blobs[start])
            add(tree)
            self._dir_trees[d] = Sha(tree.id)
        for l1 in touched_l1:
            tree = Tree()
            for (a, b), sha in self._dir_trees.items():
                if a == l1:
                    tree.add(b, TREE_MODE, sha)
            if len(tree):
                add(tree)
                self._l1_trees[l1] = Sha(tree.id)
            else:
                self._l1_trees.pop(l1, None)
        root = Tree()
        for l1, sha in self._l1_trees.items():
            root.add(l1, TREE_MODE, sha)
        add(root)
        self._dirty.clear()
        self._tree = Sha(root.id)
        return self._tree

    @classmethod
    def load(
        cls, store: RunStore, tree_id: Sha | None, window: int, where: str
    ) -> History:
        """Read a history tree, checking every name on the way.

        Args:
            where: what errors name the files by (a run, or a commit).

        Raises:
            ChunkFormatError: a file that is not a segment where it is stored.
            RepositoryError: a tree that is missing or malformed.
        """
        history = cls(window)
        if tree_id is None:
            return history
        root = store.read_tree(tree_id, f"the history tree of {where}")
        found: list[tuple[int, Sha]] = []
        for l1, mode1, sha1 in root.iteritems():
            _expect_dir(mode1, where, l1)
            history._l1_trees[l1] = Sha(sha1)
            level1 = store.read_tree(Sha(sha1), f"tree {_history_path(l1)} of {where}")
            for l2, mode2, sha2 in level1.iteritems():
                _expect_dir(mode2, where, l1, l2)
                history._dir_trees[(l1, l2)] = Sha(sha2)
                level2 = store.read_tree(
                    Sha(sha2), f"tree {_history_path(l1, l2)} of {where}"
                )
                for name, mode, sha in level2.iteritems():
                    start = _parse_chunk_name(name, where, l1, l2)
                    if mode != FILE_MODE:
                        raise ChunkFormatError(
                            f"{where}:{_history_path(l1, l2, name)}",
                            f"a segment must be a plain file (mode 100644), "
                            f"not mode {mode:o}; repair the tree in a new commit",
                        )
                    if chunk_dirs(start, window) != (l1, l2):
                        raise ChunkFormatError(
                            f"{where}:{_history_path(l1, l2, name)}",
                            "segment stored outside its fan-out directory "
                            f"{_history_path(*chunk_dirs(start, window))}",
                        )
                    found.append((start, Sha(sha)))
        found.sort()
        history.starts = [s for s, _ in found]
        history.blobs = dict(found)
        history._tree = tree_id
        return history


def _history_path(*parts: bytes) -> str:
    # Tree names are bytes and need not be UTF-8; show them as they are.
    return "/".join(["history", *(p.decode(errors="backslashreplace") for p in parts)])


def _parse_chunk_name(name: bytes, where: str, l1: bytes, l2: bytes) -> int:
    stem = name[: -len(CHUNK_SUFFIX)]
    # One name per start (no "10.msgpack" beside "000000000010.msgpack"):
    # two names would hold one segment twice.
    if (
        not name.endswith(CHUNK_SUFFIX)
        or not stem.isdigit()
        or len(stem) > 19
        or name != chunk_name(int(stem))
    ):
        raise ChunkFormatError(
            f"{where}:{_history_path(l1, l2, name)}",
            "not a segment file name (12 or more digits, the first step, as "
            "gitruns names them)",
        )
    return int(stem)


def _expect_dir(mode: int, where: str, *parts: bytes) -> None:
    if mode != TREE_MODE:
        raise ChunkFormatError(
            f"{where}:{_history_path(*parts)}", "expected a directory"
        )


def read_object(
    objects: ObjectReader | BaseObjectStore,
    sha: bytes,
    what: str,
    *,
    limit: int = MAX_OBJECT_BYTES,
    chunk: bool = False,
) -> tuple[int, bytes]:
    """Read an object's type number and bytes, refusing one over ``limit``.

    The size an object declares is checked before anything else of it is
    inflated (see :mod:`gitruns.objects`), so a compressed bomb costs nothing.

    Args:
        objects: a reader, or an object store to read with a new one.
        what: how messages name the object (``run.json of 1a2b3c4d5e``).
        limit: the most bytes the object may have.
        chunk: the object is a metric chunk: too large is a ChunkFormatError.

    Raises:
        RepositoryError: the object is missing, corrupt or too large.
        ChunkFormatError: with ``chunk``, a blob over ``limit``.
    """
    reader = objects if isinstance(objects, ObjectReader) else ObjectReader(objects)
    hexsha = sha.decode(errors="replace")
    try:
        return reader.read(sha, limit)
    except KeyError:
        raise RepositoryError(
            f"{what} ({hexsha}) is missing from the repository; fetch the run again"
        ) from None
    except ObjectTooLarge as exc:
        reason = (
            f"{exc.part or 'the blob'} is {exc.size} bytes, over the limit of {limit}"
        )
        if chunk:
            raise ChunkFormatError(what, reason) from None
        raise RepositoryError(
            f"{what} ({hexsha[:10]}): {reason}, so it was not read; {_FIX}"
        ) from None
    except CorruptObject as exc:
        raise RepositoryError(
            f"{what} ({hexsha}) is corrupt: {exc}; `git fsck` tells what else is, "
            "then fetch the run again"
        ) from None
    finally:
        if reader is not objects:
            reader.close()


def _parse(raw: tuple[int, bytes], sha: Sha, what: str) -> ShaFile:
    try:
        return ShaFile.from_raw_string(raw[0], raw[1], sha=sha)
    except (ObjectFormatException, ValueError, AssertionError) as exc:
        raise RepositoryError(f"{what} is malformed ({exc}); {_FIX}") from None


def _where(commit: Sha, run: RunRef | None) -> str:
    # How messages name a commit: with its run when that is known.
    short = commit.decode()[:10]
    return f"{run.path} at {short}" if run else short


def segment_problem(
    chunk: Chunk, start: int, window: int, next_start: int | None
) -> str:
    """What is wrong with ``chunk`` stored as the segment at ``start``, or "".

    Args:
        chunk: the decoded segment.
        start: its first step, as its file name says.
        window: the run's window size.
        next_start: the first step of the segment after it, if any.
    """
    if chunk.window != window:
        return f"it has window {chunk.window}, but the run's window is {window}"
    if chunk.start != start - start % window:
        return (
            f"it is a chunk of the window from step {chunk.start}, but it is "
            f"stored in the window from step {start - start % window}"
        )
    if not len(chunk.steps):
        return "it holds no steps"
    first, last = int(chunk.steps[0]), int(chunk.steps[-1])
    if first != start:
        return f"it starts at step {first}, not at {start} as its file name says"
    if next_start is not None and last >= next_start:
        return (
            f"it ends at step {last}, not before the next segment's first "
            f"step {next_start}"
        )
    return ""


@dataclass
class Snapshot:
    """What one commit of a run holds, read back from its tree."""

    commit: Sha | None
    info: dict[str, Any]
    config: dict[str, Any]
    summary: dict[str, Any]
    history: History
    extra: dict[bytes, tuple[int, Sha]] = field(default_factory=dict)

    @property
    def last_step(self) -> int | None:
        """The run's last committed step at this commit, or None if it has none."""
        value = self.info.get("last_step")
        return value if isinstance(value, int) else None

    @property
    def window(self) -> int:
        """The run's window size in steps."""
        return self.history.window


def _check_object_format(repo: Repo, target: Path) -> None:
    """Refuse a repository whose objects are not named by SHA-1.

    Raises:
        RepositoryError: for a SHA-256 repository (``git init
            --object-format=sha256``), which dulwich would fill with SHA-1
            objects that git then calls corrupt.
    """
    try:
        found = repo.get_config().get((b"extensions",), b"objectformat")
    except KeyError:
        return
    if found.lower() != b"sha1":
        repo.close()
        raise RepositoryError(
            f"{target} names its objects by {found.decode(errors='replace')}; "
            "gitruns writes SHA-1 repositories only: keep runs in one made by "
            "a plain `git init` (or let gitruns create it)"
        )


class RunStore:
    """A Git repository that holds runs as branches under ``refs/heads/runs/``."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        #: Reads objects within a size limit (see :mod:`gitruns.objects`).
        self.objects = ObjectReader(repo.object_store)
        self.git_dir = Path(repo.controldir())
        #: Where gitruns keeps what Git does not: journals, locks, caches.
        self.data_dir = self.git_dir / "gitruns"
        # Per thread: the objects added inside batched_objects() and not
        # written yet (with the zlib level each is written at loose), and
        # their bytes.
        self._batch = threading.local()
        #: The packs gitruns wrote here, which tidy() may merge.
        self.pack_record = PackRecord(self.data_dir / "packs")

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True) -> RunStore:
        """Open the repository at ``path``; create a bare one there if allowed.

        Raises:
            RepositoryError: if ``path`` is not a Git repository and may not
                be created, or is one whose objects are not named by SHA-1.
        """
        target = Path(os.path.abspath(path))  # a later chdir must not move it
        with mapped_errors(f"opening repository {target}"):
            try:
                repo = Repo(str(target))
            except NotGitRepository:
                if not create:
                    raise RepositoryError(
                        f"{target} is not a Git repository; run `git init` there "
                        "or pass --repo with the path of one"
                    ) from None
            else:
                _check_object_format(repo, target)
                return cls(repo)
            if target.exists() and any(target.iterdir()):
                raise RepositoryError(
                    f"{target} exists and is not a Git repository; pass --repo "
                    "with an empty or new folder"
                )
            target.mkdir(parents=True, exist_ok=True)
            logger.info("created bare repository %s", target)
            return cls(Repo.init_bare(str(target)))

    def close(self) -> None:
        """Release the repository's open files."""
        self.objects.close()
        self.repo.close()

    # -- refs ---------------------------------------------------------------

    def tip(self, run: RunRef) -> Sha | None:
        """The commit the run's branch points at, or None if there is no run."""
        with mapped_errors(f"reading {run.branch}"):
            try:
                return Sha(self.repo.refs[Ref(run.ref)])
            except KeyError:
                return None

    def list_runs(self, project: str | None = None) -> list[RunRef]:
        """Every run in the repository (or in one project), sorted."""
        base = RUNS_PREFIX
        if project is not None:
            base += check_name("project", project).encode() + b"/"
        with mapped_errors("listing runs"):
            names = self.repo.refs.keys(base=Ref(base.rstrip(b"/")))
        runs = []
        for name in names:
            full = base + name if project is not None else RUNS_PREFIX + name
            try:
                runs.append(RunRef.from_ref(full))
            except ValueError:
                logger.debug("skipping ref that is not a run: %r", full)
        return sorted(runs)

    def resolve(self, path: str) -> RunRef:
        """Turn ``id``, ``project/id`` or ``entity/project/id`` into a RunRef.

        Raises:
            RunNotFoundError: if no run matches.
            AmbiguousRunError: if a bare id names runs in several projects.
        """
        parts = path.strip("/").split("/")
        if len(parts) == 3:
            parts = parts[1:]
        if len(parts) == 2:
            run = RunRef(parts[0], parts[1])
            if self.tip(run) is None:
                raise RunNotFoundError(path, str(self.git_dir))
            return run
        if len(parts) != 1:
            raise RunNotFoundError(path, str(self.git_dir))
        run_id = check_name("run id", parts[0])
        matches = [r for r in self.list_runs() if r.run_id == run_id]
        if not matches:
            raise RunNotFoundError(path, str(self.git_dir))
        if len(matches) > 1:
            raise AmbiguousRunError(run_id, [m.path for m in matches])
        return matches[0]

    def update_ref(
        self, run: RunRef, old: Sha | None, new: Sha, message: str | None
    ) -> bool:
        """Move the run's branch from ``old`` to ``new`` if nobody moved it.

        Objects this thread's :meth:`batched_objects` holds are written first,
        so the branch never names an object that is not on disk.

        Args:
            message: the reflog entry; None writes none (window commits).

        Returns:
            False when the branch is no longer at ``old`` (compare-and-swap lost).

        Raises:
            ConflictError: the ref's lock stayed taken through every retry.
            RepositoryError: the ref cannot be written (disk, permissions).
        """
        # The objects the new commit names are on disk before the branch is.
        self.write_held()
        try:
            return self._update_ref(run, old, new, message)
        finally:
            self._release_kept()

    def _update_ref(
        self, run: RunRef, old: Sha | None, new: Sha, message: str | None
    ) -> bool:
        reflog = None if message is None else message.encode()
        with mapped_errors(f"updating {run.branch}"):
            for attempt in range(50):
                try:
                    if old is None:
                        return bool(
                            self.repo.refs.add_if_new(Ref(run.ref), new, message=reflog)
                        )
                    return bool(
                        self.repo.refs.set_if_equals(
                            Ref(run.ref), old, new, message=reflog
                        )
                    )
                except (FileExistsError, FileLocked):
                    # Another process holds the ref's lock file for a moment.
                    time.sleep(min(0.002 * 2**attempt, 0.1))
                except FileNotFoundError:
                    # `git pack-refs` (run by `git gc`) removed the ref's empty
                    # folder between dulwich making it and locking the ref.
                    if not self.git_dir.is_dir():
                        raise
                    time.sleep(0.001 * attempt)
        raise ConflictError(run.branch, 50)

    def clear_stale_ref_lock(self, run: RunRef, holder_died: bool) -> None:
        """Remove the lock file of the run's ref if a dead writer left it behind.

        A writer killed while moving the branch leaves ``<ref>.lock``, and no
        later update of the branch can succeed while it is there. The caller
        holds the run's lock, so only a dead writer (or committer process, or
        a stuck foreign tool, after a minute) can own it.

        Args:
            run: the run.
            holder_died: the run lock's last holder is known to be gone.
        """
        path = self.git_dir / (run.ref.decode() + ".lock")
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return
        if holder_died or age > STALE_REF_LOCK_SECONDS:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            logger.warning(
                "run %s: removed %s, left %.0f s ago by a writer that is gone",
                run.path,
                path,
                age,
            )

    # -- objects ------------------------------------------------------------

    def add(self, obj: Blob | Tree | Commit) -> None:
        """Store an object after dulwich has checked it (or hold it, in a batch)."""
        obj.check()
        self._store(obj, LOOSE_COMPRESSION)

    def _store(self, obj: Blob | Tree | Commit, level: int) -> None:
        held: _Held | None = getattr(self._batch, "held", None)
        if held is None:
            _write_loose(self.repo.object_store, obj, level)
            return
        held.objects[obj.id] = (obj, level)
        held.bytes += obj.raw_length()
        if held.bytes >= MAX_HELD_BYTES:
            self.write_held()

    @contextlib.contextmanager
    def batched_objects(self) -> Iterator[None]:
        """Hold the objects this thread adds inside until a ref moves or the block ends.

        They are then written together: as one pack when they are
        :data:`PACK_MIN_OBJECTS` or more, else loose. :meth:`update_ref`
        writes what is held before it moves a branch, so no ref ever names an
        object that is not on disk. What is held when the block raises is
        dropped (no ref names it). Nested blocks are one block. An object
        held cannot be read back until it is written.

        Raises:
            RepositoryError: the objects cannot be written (disk full,
                read-only repository).
        """
        if getattr(self._batch, "held", None) is not None:
            yield
            return
        self._batch.held = _Held()
        try:
            yield
            self.write_held()
        finally:
            self._batch.held = None
            self._release_kept()

    def write_held(self) -> None:
        """Write the objects :meth:`batched_objects` holds for this thread, now.

        Objects that are there already are written again (a pack holding a
        copy is harmless), which refreshes them as Git does, so that a
        concurrent ``git gc --prune`` cannot take one the new commit names.

        Raises:
            RepositoryError: as :meth:`batched_objects`.
        """
        held: _Held | None = getattr(self._batch, "held", None)
        if held is None or not held.objects:
            return
        entries = list(held.objects.values())
        self._batch.held = _Held()
        objects = self.repo.object_store
        with mapped_errors("writing objects"):
            if len(entries) < PACK_MIN_OBJECTS:
                for obj, level in entries:
                    _write_loose(objects, obj, level)
            else:
                # Kept until the ref that names them moves (see update_ref).
                name = self._write_pack((o for o, _ in entries), len(entries), True)
                self._batch.kept = [*getattr(self._batch, "kept", []), name]

    def _release_kept(self) -> None:
        for name in getattr(self._batch, "kept", []):
            release(self.repo.object_store, name)
        self._batch.kept = []

    def _write_pack(
        self, objects: Iterable[ShaFile], count: int, keep: bool = False
    ) -> str:
        """Write ``objects`` as a pack, and note it as one of gitruns' packs."""
        name = write_pack(self.repo.object_store, objects, count, keep=keep)
        try:
            self.pack_record.add(name)
        except OSError as exc:
            # Only tidy() reads the record: git gc merges this pack instead.
            logger.debug("pack %s not recorded: %s", name, exc)
        return name

    def blob(self, data: bytes) -> Sha:
        """Store bytes as a blob and return its id."""
        blob = Blob.from_string(data)
        self.add(blob)
        return Sha(blob.id)

    def chunk_blob(self, data: bytes) -> Sha:
        """Store an encoded chunk (what ``encode_chunk`` returns) as a blob.

        Written (loose, or in a batch's pack) at :data:`CHUNK_COMPRESSION`:
        the chunk's numbers are compressed already, and zlib would only slow
        down the writer and every read of it.

        Returns:
            The blob's id.
        """
        blob = Blob.from_string(data)
        blob.check()
        self._store(blob, CHUNK_COMPRESSION)
        return Sha(blob.id)

    def read_blob(self, sha: Sha, what: str, limit: int = MAX_OBJECT_BYTES) -> bytes:
        """Read a blob's bytes, naming ``what`` if it is missing or not a blob.

        Raises:
            RepositoryError: the blob is missing, not a blob, corrupt, or
                declares more than ``limit`` bytes (then nothing of it is
                inflated).
        """
        kind, data = read_object(self.objects, sha, what, limit=limit)
        if kind != Blob.type_num:
            raise RepositoryError(f"{what} ({sha.decode()}) is not a file; {_FIX}")
        return data

    def read_tree(self, sha: Sha, what: str) -> Tree:
        """Read a tree object, within :data:`MAX_OBJECT_BYTES`.

        Raises:
            RepositoryError: the tree is missing, not a tree, or malformed.
        """
        tree = _parse(read_object(self.objects, sha, what), sha, what)
        if not isinstance(tree, Tree):
            raise RepositoryError(f"{what} {sha.decode()} is not a tree; {_FIX}")
        return tree

    def read_commit(self, sha: Sha) -> Commit:
        """Read a commit object, within :data:`MAX_OBJECT_BYTES`.

        Raises:
            RepositoryError: the commit is missing, not a commit, or malformed.
        """
        what = f"commit {sha.decode()}"
        commit = _parse(read_object(self.objects, sha, "commit"), sha, what)
        if not isinstance(commit, Commit):
            raise RepositoryError(f"{sha.decode()} is not a commit; {_FIX}")
        return commit

    def read_segment(
        self,
        run: str,
        history: History,
        start: int,
        *,
        verify: bool = False,
        lazy: bool = False,
    ) -> Chunk:
        """Decode the segment stored at ``start``, checking it belongs there.

        A chunk is only read where it is stored: its window must be the run's,
        its window's start the one its first step is in, its first step the
        one its file name says, and its last step before the next segment's
        first. A well-formed chunk under the wrong name would otherwise read
        as duplicated or backward steps.

        Args:
            run: the run, for messages (``<project>/<run_id>``).
            history: the run's history at the commit being read.
            start: the segment's first step, as its file name says.
            verify: check every stored digest against the values too.
            lazy: check what a read may not use when it is first used (see
                :func:`gitruns.chunk.decode_chunk`): for reading values.

        Raises:
            ChunkFormatError: naming the run and the file.
            RepositoryError: the blob is missing or corrupt.
        """
        window = history.window
        source = f"{run}:{chunk_path(start, window)}"
        kind, data = read_object(
            self.objects,
            history.blobs[start],
            source,
            limit=MAX_CHUNK_BYTES,
            chunk=True,
        )
        if kind != Blob.type_num:
            raise ChunkFormatError(source, "the segment is not a file")
        chunk = decode_chunk(data, source=source, verify=verify, lazy=lazy)
        problem = segment_problem(chunk, start, window, history.next_start(start))
        if problem:
            raise ChunkFormatError(source, problem)
        return chunk

    def read_snapshot(self, commit_id: Sha, run: RunRef | None = None) -> Snapshot:
        """Read the run as it was at ``commit_id``.

        Args:
            run: the run whose branch holds the commit, if known: run.json
                must name it, and messages name it.

        Raises:
            RepositoryError: a file of the commit is missing, malformed, too
                large, or holds fields of the wrong type.
            ChunkFormatError: the history tree holds a file that is not a
                segment where it is stored.
        """
        where = _where(commit_id, run)
        with mapped_errors(f"reading commit {commit_id.decode()}"):
            commit = self.read_commit(commit_id)
            root = self.read_tree(Sha(commit.tree), f"the tree of {where}")
            entries = {name: (mode, Sha(sha)) for name, mode, sha in root.iteritems()}

            def json_file(name: bytes) -> Any:
                if name not in entries:
                    return None
                what = f"{name.decode()} of {where}"
                return loads_json(self.read_blob(entries[name][1], what), what)

            info = json_file(RUN_JSON)
            if info is None:
                raise RepositoryError(
                    f"commit {where} has no run.json; it is not a gitruns run commit"
                )
            info = check_run_json(info, f"run.json of {where}", run)
            config = json_file(CONFIG_JSON)
            summary = json_file(SUMMARY_JSON)
            history_id = entries[HISTORY][1] if HISTORY in entries else None
            if history_id is not None and entries[HISTORY][0] != TREE_MODE:
                raise RepositoryError(f"history of {where} is not a directory; {_FIX}")
            return Snapshot(
                commit=commit_id,
                info=info,
                config=check_json_object(
                    {} if config is None else config, f"config.json of {where}"
                ),
                summary=check_json_object(
                    {} if summary is None else summary, f"summary.json of {where}"
                ),
                history=History.load(
                    self, history_id, info["window"], run.path if run else where
                ),
                extra={k: v for k, v in entries.items() if k not in RESERVED_NAMES},
            )

    def read_json(self, commit_id: Sha, name: bytes, run: RunRef | None = None) -> Any:
        """One JSON file at the root of a commit's tree, or None if absent.

        run.json, config.json and summary.json are checked as
        :meth:`read_snapshot` checks them.

        Raises:
            RepositoryError: the file is malformed, too large or wrongly typed.
        """
        where = _where(commit_id, run)
        with mapped_errors(f"reading commit {commit_id.decode()}"):
            commit = self.read_commit(commit_id)
            root = self.read_tree(Sha(commit.tree), f"the tree of {where}")
            try:
                _, sha = root[name]
            except KeyError:
                return None
            what = f"{name.decode()} of {where}"
            value = loads_json(self.read_blob(Sha(sha), what), what)
            if name == RUN_JSON:
                return check_run_json(value, what, run)
            if name in (CONFIG_JSON, SUMMARY_JSON):
                return check_json_object(value, what)
            return value

    def write_commit(
        self,
        snapshot: Snapshot,
        parents: Iterable[Sha],
        message: str,
        readme: str,
    ) -> Sha:
        """Write ``snapshot`` as a full run tree and a commit; return its id.

        The branch is not moved; :meth:`update_ref` does that.

        Args:
            snapshot: the run's files; ``snapshot.commit`` is not read.
            parents: the commit's parents, first parent first.
            message: the commit message.
            readme: the text of the run's README.md.

        Returns:
            The id of the new commit.

        Raises:
            RepositoryError: if an object cannot be written (disk full,
                read-only repository) or fails dulwich's checks.
        """
        with mapped_errors("writing a run commit"):
            root = Tree()
            for name, value, what in (
                (RUN_JSON, snapshot.info, "run"),
                (CONFIG_JSON, snapshot.config, "config"),
                (SUMMARY_JSON, snapshot.summary, "summary"),
            ):
                root.add(name, FILE_MODE, self.blob(dumps_json(value, what)))
            root.add(README, FILE_MODE, self.blob(readme.encode()))
            root.add(GITATTRIBUTES, FILE_MODE, self.blob(GITATTRIBUTES_TEXT))
            if snapshot.history.starts:
                root.add(HISTORY, TREE_MODE, snapshot.history.write(self.add))
            for name, (mode, sha) in snapshot.extra.items():
                root.add(name, mode, sha)
            self.add(root)

            commit = Commit()
            commit.tree = root.id
            commit.parents = list(parents)
            commit.author = commit.committer = self.identity()
            commit.commit_time = commit.author_time = int(time.time())
            commit.commit_timezone = commit.author_timezone = 0
            commit.encoding = b"UTF-8"
            commit.message = message.encode()
            self.add(commit)
            return Sha(commit.id)

    def identity(self) -> bytes:
        """``Name <email>`` from the repository's Git config, else a gitruns one."""
        if not hasattr(self, "_identity"):
            config = self.repo.get_config_stack()
            name = _config_value(config, b"name") or b"gitruns"
            email = _config_value(config, b"email")
            email = email or b"gitruns@" + socket.gethostname().encode()
            self._identity = name + b" <" + email + b">"
        return self._identity

    def first_parent_chain(self, start: Sha) -> Iterator[tuple[Sha, Commit]]:
        """Walk first parents from ``start`` back to the root commit."""
        sha: Sha | None = start
        while sha is not None:
            commit = self.read_commit(sha)
            yield sha, commit
            sha = Sha(commit.parents[0]) if commit.parents else None

    # -- the segment index: which commit added a segment ------------------------

    def _index_path(self, run: RunRef) -> Path:
        return self.data_dir / "index" / run.project / f"{run.run_id}.seg"

    def record_segment(
        self, run: RunRef, first_step: int, blob: Sha, commit: Sha
    ) -> None:
        """Note that ``commit`` added the segment ``blob`` at ``first_step``.

        A cache, so that finding the commit that holds a step (for a fork)
        costs the same for a run of any length; losing it only costs a walk.
        """
        self.record_segments(run, [(first_step, blob)], commit)

    def record_segments(
        self, run: RunRef, segments: Iterable[tuple[int, Sha]], commit: Sha
    ) -> None:
        """Note that ``commit`` added each ``(first step, blob)`` of ``segments``."""
        path = self._index_path(run)
        lines = b"".join(
            b"%d %s %s\n" % (first, blob, commit) for first, blob in segments
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.write(lines)
        except OSError as exc:
            logger.debug("segment index not written: %s", exc)

    def segment_creator(self, run: RunRef, first_step: int, blob: Sha) -> Sha | None:
        """The commit recorded as adding ``blob`` at ``first_step``, if any."""
        try:
            data = self._index_path(run).read_bytes()
        except OSError:
            return None
        found = None
        for line in data.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] == blob and parts[0] == b"%d" % first_step:
                found = Sha(parts[2])
        return found

    def count_loose_objects(self) -> int:
        """How many loose objects the repository holds (one listdir per fan-out)."""
        return sum(1 for _ in self._loose_ids())

    def estimate_loose_objects(self) -> int:
        """About how many loose objects there are, from two fan-out folders.

        Object ids are uniform, so 256 times a folder's share is a fair
        estimate (``git gc --auto`` counts one folder the same way); listing
        every folder costs a few milliseconds a run would pay at each finish.
        """
        found = 0
        for name in ("17", "e2"):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                found += sum(1 for e in os.scandir(self.git_dir / "objects" / name))
        return found * 128

    def tidy(self) -> int:
        """Pack loose objects once they are many, as ``git gc --auto`` would.

        A finished run then leaves at most :data:`PACK_THRESHOLD` loose
        objects behind; past :data:`MAX_PACKS` packs, the smallest packs
        gitruns wrote are merged (see :func:`gitruns.packs.merge_packs`), so
        that object lookups do not slow down with every run. Every call also
        releases the ``.keep`` files killed writers left, once a day old.

        Returns:
            How many objects were packed.

        Raises:
            RepositoryError: the objects or packs could not be read or written.
        """
        with mapped_errors("packing objects"):
            packed = 0
            if self.estimate_loose_objects() > PACK_THRESHOLD:
                packed = self.pack_loose_objects()
            # Keeps that killed writers left: whatever the count of packs,
            # Git would never repack theirs.
            released = release_stale(self.repo.object_store, STALE_KEEP_SECONDS)
            if released:
                logger.info("released %d packs a killed writer had kept", released)
            if len(self.repo.object_store.packs) > MAX_PACKS:
                with self._pack_lock():
                    merge_packs(self.repo.object_store, self.pack_record, MAX_PACKS)
            return packed

    def pack_loose_objects(self) -> int:
        """Pack the repository's loose objects now, a bounded batch at a time.

        dulwich's own ``pack_loose_objects`` holds every loose object in memory
        at once, which grows with the length of the run that left them; a
        batch holds at most :data:`PACK_BATCH_BYTES` of object data.
        """
        objects = self.repo.object_store
        packed = 0
        with mapped_errors("packing objects"), self._pack_lock():
            batch: list[tuple[Any, None]] = []
            size = 0
            try:
                for sha in self._loose_ids():
                    try:
                        obj = objects[sha]
                    except KeyError:
                        continue  # packed by another writer since it was listed
                    batch.append((obj, None))
                    size += len(obj.as_raw_string())
                    if size >= PACK_BATCH_BYTES:
                        packed += self._pack_batch(batch)
                        batch, size = [], 0
                if batch:
                    packed += self._pack_batch(batch)
            except (FileNotFoundError, PackFileDisappeared) as exc:
                # A `git gc` running meanwhile repacked and pruned under our
                # feet; it packs whatever loose objects are left itself.
                logger.info("packing stopped, git gc is at work: %s", exc)
        return packed

    def _loose_ids(self) -> Iterator[ObjectID]:
        root = self.git_dir / "objects"
        for folder in os.scandir(root):
            if len(folder.name) == 2 and folder.is_dir():
                try:
                    names = [e.name for e in os.scandir(folder) if len(e.name) == 38]
                except FileNotFoundError:
                    continue  # `git gc` packed these and removed the folder
                for name in names:
                    yield ObjectID((folder.name + name).encode())

    def _pack_batch(self, batch: list[tuple[Any, None]]) -> int:
        objects = self.repo.object_store
        self._write_pack((obj for obj, _ in batch), len(batch))
        for obj, _ in batch:
            with contextlib.suppress(FileNotFoundError):
                # `git gc` may have packed and pruned it meanwhile.
                objects.delete_loose_object(obj.id)
        return len(batch)

    @contextlib.contextmanager
    def _pack_lock(self) -> Iterator[None]:
        # The runs of a sweep finish together, and a packer deletes the loose
        # objects it packed under the feet of another that listed them too:
        # packing takes a repository-wide lock (``.`` starts no project name).
        lock = self.data_dir / "locks" / ".pack.lk"
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


@dataclass
class _Held:
    """The objects a thread's batched_objects() block holds, and their bytes."""

    objects: dict[ObjectID, tuple[Blob | Tree | Commit, int]] = field(
        default_factory=dict
    )
    bytes: int = 0


def _write_loose(
    objects: Any, obj: Blob | Tree | Commit, level: int = LOOSE_COMPRESSION
) -> None:
    """Write one loose object as Git does: a temporary file renamed into place.

    dulwich's ``add_object`` takes ``<object>.lock`` first, which fails when
    another process stores the same object at that moment (a sweep's runs
    share blobs) and forever after a writer is killed holding it. Objects are
    named by their content, so renaming one copy over another is harmless,
    and Git ignores (and prunes) the ``tmp_obj_*`` file a killed writer leaves.
    """
    hexsha = obj.id.decode()
    folder = os.path.join(objects.path, hexsha[:2])
    path = os.path.join(folder, hexsha[2:])
    with contextlib.suppress(FileNotFoundError, PermissionError):
        # Already there: refresh its time so that a concurrent gc keeps it.
        os.utime(path)
        return
    for attempt in range(10):
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="tmp_obj_", dir=folder)
            break
        except (FileNotFoundError, FileExistsError):
            # `git gc` (prune) removed the empty folder while it was made.
            if attempt == 9:
                raise
            time.sleep(0.001 * attempt)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(obj.as_legacy_object(compression_level=level))
            if objects.fsync_object_files:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _config_value(config: StackedConfig, key: bytes) -> bytes | None:
    """``user.<key>`` from Git config, or None where it is not set."""
    try:
        return config.get((b"user",), key) or None
    except KeyError:
        return None
