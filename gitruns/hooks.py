"""The checks behind hooks/pre-receive and hooks/pre-push: shared runs stay valid."""

from __future__ import annotations

import json
import logging
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dulwich.errors import ChecksumMismatch, ObjectFormatException
from dulwich.object_store import BaseObjectStore, DiskObjectStore
from dulwich.objects import Blob, Commit, ObjectID, ShaFile, Tree
from dulwich.refs import Ref
from dulwich.repo import BaseRepo, Repo

from gitruns.chunk import MAX_CHUNK_BYTES, Chunk, decode_chunk
from gitruns.errors import (
    ChunkFormatError,
    GitRunsError,
    InvalidArgumentError,
    InvalidNameError,
    RepositoryError,
    mapped_errors,
)
from gitruns.objects import ObjectReader
from gitruns.refs import RUNS_PREFIX, RunRef, Sha
from gitruns.store import (
    CHUNK_SUFFIX,
    FILE_MODE,
    HISTORY,
    MAX_OBJECT_BYTES,
    RUN_JSON,
    TREE_MODE,
    chunk_dirs,
    chunk_name,
    loads_json,
    read_object,
)

logger = logging.getLogger(__name__)

ZERO_SHA = Sha(b"0" * 40)

#: The server's (or, for pre-push, the local) config key that lets runs be rewritten.
ALLOW_REWRITE = (b"gitruns", b"allowRewrite")

#: How each side lifts the append-only rule, said where a check enforces it.
SERVER_LIFT = "the server's `git config gitruns.allowRewrite true` lifts this rule"
CLIENT_LIFT = (
    "`git config gitruns.allowRewrite true` in this repository lifts this "
    "pre-push check (a guarded server still refuses it)"
)

#: What a pushed object that cannot be read at all is refused for.
_UNREADABLE = (ObjectFormatException, ChecksumMismatch, zlib.error, ValueError)

#: Hook names gitruns ships, with what each one guards.
HOOKS = {
    "pre-receive": "keep a shared run store valid and append-only",
    "pre-push": "check run branches before `git push` sends them",
}


@dataclass(frozen=True)
class RefUpdate:
    """One ref a push moves: from ``old`` to ``new`` (None: absent)."""

    ref: bytes
    old: Sha | None
    new: Sha | None


@dataclass(frozen=True)
class Rejection:
    """Why one ref of a push is refused: at which commit, and what is wrong."""

    ref: bytes
    commit: Sha | None
    reason: str

    def __str__(self) -> str:
        at = self.commit[:10].decode() if self.commit else "-"
        return f"{self.ref.decode(errors='replace')} {at}: {self.reason}"


class _Refused(Exception):
    """A check failed at one commit; caught per ref and turned into a Rejection."""

    def __init__(self, commit: Sha | None, reason: str) -> None:
        super().__init__(reason)
        self.commit = commit
        self.reason = reason


# -- reading the pushed objects ---------------------------------------------------


def open_quarantined(
    git_dir: str | os.PathLike[str], environ: Mapping[str, str]
) -> Repo:
    """Open the repository a hook runs in, seeing the objects of the push too.

    During pre-receive git keeps the pushed objects in a quarantine directory
    (``GIT_OBJECT_DIRECTORY``) and lists the real object store in
    ``GIT_ALTERNATE_OBJECT_DIRECTORIES``; dulwich takes both as arguments.
    """
    object_dir = environ.get("GIT_OBJECT_DIRECTORY") or None
    alternates_var = environ.get("GIT_ALTERNATE_OBJECT_DIRECTORIES", "")
    alternates = [p for p in alternates_var.split(os.pathsep) if p] or None
    return Repo(
        controldir=os.fspath(git_dir),
        object_directory=object_dir,
        alternates=alternates,
    )


def _read(
    store: BaseObjectStore,
    sha: bytes,
    kind: type[Any],
    what: str,
    limit: int = MAX_OBJECT_BYTES,
) -> Any:
    # Within a size limit, checked before the object is inflated: a pushed
    # zlib bomb costs the server nothing.
    if not _has(store, sha):
        raise _Refused(None, f"{what} {sha[:10].decode()} is missing from the push")
    try:
        raw = read_object(store, sha, what, limit=limit)
        obj = ShaFile.from_raw_string(raw[0], raw[1], sha=ObjectID(sha))
    except GitRunsError as exc:
        raise _Refused(None, str(exc)) from None
    except (ValueError, AssertionError) as exc:
        raise _Refused(
            None, f"{what} {sha[:10].decode()} is malformed ({exc})"
        ) from None
    except _UNREADABLE as exc:
        raise _Refused(
            None, f"{what} {sha[:10].decode()} cannot be read ({exc or type(exc)})"
        ) from None
    if not isinstance(obj, kind):
        raise _Refused(
            None, f"{what} {sha[:10].decode()} is not a {kind.__name__.lower()}"
        )
    return obj


@dataclass
class _RunCommit:
    """What the checks need of one commit of a run."""

    sha: Sha
    parents: list[Sha]
    info: dict[str, Any]
    history: Sha | None

    @property
    def run(self) -> str:
        return f"{self.info.get('project')}/{self.info.get('id')}"

    @property
    def window(self) -> int:
        window = self.info.get("window")
        return window if type(window) is int and window >= 1 else 0

    @property
    def last_step(self) -> int | None:
        last = self.info.get("last_step")
        return last if type(last) is int else None

    @property
    def fork_from(self) -> dict[str, Any] | None:
        value = self.info.get("fork_from")
        return value if isinstance(value, dict) else None


def _has(store: BaseObjectStore, sha: bytes) -> bool:
    # Not ``sha in store``: dulwich reads a loose object whole to answer it.
    if len(sha) != 40 or not set(sha) <= set(b"0123456789abcdef"):
        return False
    with ObjectReader(store) as reader:
        return reader.contains(sha)


def _get_commit(store: BaseObjectStore, sha: bytes) -> Commit | None:
    """A commit within the size limit, or None if it is missing or is none."""
    try:
        return _read(store, sha, Commit, "commit")  # type: ignore[no-any-return]
    except _Refused:
        return None


def _load_commit(store: BaseObjectStore, sha: Sha) -> _RunCommit:
    commit: Commit = _read(store, sha, Commit, "commit")
    tree: Tree = _read(store, commit.tree, Tree, "tree")
    entries = {name: (mode, Sha(s)) for name, mode, s in tree.iteritems()}
    if RUN_JSON not in entries:
        raise _Refused(
            sha, "the commit has no run.json; it is not a gitruns run commit"
        )
    blob: Blob = _read(store, entries[RUN_JSON][1], Blob, "run.json")
    try:
        info = loads_json(blob.as_raw_string(), "run.json")
    except RepositoryError as exc:
        raise _Refused(sha, str(exc)) from None
    except RecursionError:
        raise _Refused(sha, "run.json nests too deeply to be a run's") from None
    if not isinstance(info, dict):
        raise _Refused(sha, "run.json is not a JSON object")
    history = None
    if HISTORY in entries:
        mode, history = entries[HISTORY]
        if mode != TREE_MODE:
            raise _Refused(sha, "history is not a directory")
    return _RunCommit(sha, [Sha(p) for p in commit.parents], info, history)


# -- the history tree, compared level by level ------------------------------------


@dataclass
class _Segments:
    """Segments (first step -> blob) that differ between two history trees."""

    added: dict[int, Sha] = field(default_factory=dict)
    removed: dict[int, Sha] = field(default_factory=dict)


def _tree_entries(
    store: BaseObjectStore, sha: Sha | None, where: str
) -> dict[bytes, tuple[int, Sha]]:
    if sha is None:
        return {}
    tree: Tree = _read(store, sha, Tree, where)
    return {name: (mode, Sha(s)) for name, mode, s in tree.iteritems()}


def _path(*parts: bytes) -> str:
    return "/".join(["history", *(p.decode(errors="replace") for p in parts)])


def _segment_start(name: bytes, l1: bytes, l2: bytes, window: int) -> int:
    stem = name[: -len(CHUNK_SUFFIX)]
    if (
        not name.endswith(CHUNK_SUFFIX)
        or not stem.isdigit()
        or len(stem) > 19
        or name != chunk_name(int(stem))
    ):
        # As readers refuse it: a second name for a start doubles a segment.
        raise _Refused(None, f"{_path(l1, l2, name)} is not a segment file name")
    start = int(stem)
    if chunk_dirs(start, window) != (l1, l2):
        raise _Refused(
            None,
            f"segment {_path(l1, l2, name)} is outside its fan-out directory "
            f"{_path(*chunk_dirs(start, window))}",
        )
    return start


def _compare_history(
    store: BaseObjectStore, old: Sha | None, new: Sha | None, window: int
) -> _Segments:
    """The segments ``new`` adds or drops against ``old``, reading only what differs."""
    found = _Segments()
    if old == new:
        return found
    old_l1 = _tree_entries(store, old, "history tree")
    new_l1 = _tree_entries(store, new, "history tree")
    for l1 in old_l1.keys() | new_l1.keys():
        a, b = old_l1.get(l1), new_l1.get(l1)
        if a == b:
            continue
        for entry in (a, b):
            if entry is not None and entry[0] != TREE_MODE:
                raise _Refused(
                    None, f"history/{l1.decode(errors='replace')} is not a directory"
                )
        old_l2 = _tree_entries(store, a[1] if a else None, "history tree")
        new_l2 = _tree_entries(store, b[1] if b else None, "history tree")
        for l2 in old_l2.keys() | new_l2.keys():
            c, d = old_l2.get(l2), new_l2.get(l2)
            if c == d:
                continue
            for entry in (c, d):
                if entry is not None and entry[0] != TREE_MODE:
                    raise _Refused(
                        None,
                        "history/{}/{} is not a directory".format(
                            l1.decode(errors="replace"), l2.decode(errors="replace")
                        ),
                    )
            before = _tree_entries(store, c[1] if c else None, "history tree")
            after = _tree_entries(store, d[1] if d else None, "history tree")
            for name in before.keys() | after.keys():
                e, f = before.get(name), after.get(name)
                if e == f:
                    continue
                start = _segment_start(name, l1, l2, window)
                if e is not None:
                    found.removed[start] = e[1]
                if f is not None:
                    if f[0] != FILE_MODE:
                        # As readers refuse it (store.History.load).
                        raise _Refused(
                            None,
                            f"segment {name.decode(errors='replace')} must be a "
                            f"plain file (mode 100644), not mode {f[0]:o}",
                        )
                    found.added[start] = f[1]
    return found


def _all_segments(
    store: BaseObjectStore, history: Sha | None, window: int
) -> dict[int, Sha]:
    return _compare_history(store, None, history, window).added


def _decode(store: BaseObjectStore, start: int, blob_sha: Sha, window: int) -> Chunk:
    """Decode one segment in full (digests verified), within the codec's limits."""
    l1, l2 = chunk_dirs(start, window)
    source = f"history/{l1.decode()}/{l2.decode()}/{start:012d}.msgpack"
    blob: Blob = _read(store, blob_sha, Blob, source, MAX_CHUNK_BYTES)
    data = blob.as_raw_string()
    if len(data) > MAX_CHUNK_BYTES:
        raise _Refused(
            None, f"{source} is {len(data)} bytes, over the {MAX_CHUNK_BYTES} limit"
        )
    try:
        chunk = decode_chunk(data, source=source, verify=True)
    except ChunkFormatError as exc:
        raise _Refused(None, f"malformed chunk {source}: {exc.reason}") from None
    if chunk.window != window:
        raise _Refused(
            None, f"{source} has window {chunk.window}, the run has {window}"
        )
    if not len(chunk.steps):
        raise _Refused(None, f"{source} holds no steps")
    if int(chunk.steps[0]) != start:
        raise _Refused(
            None,
            f"{source} starts at step {int(chunk.steps[0])}, not at {start} "
            "as its name says",
        )
    return chunk


# -- the checks --------------------------------------------------------------------


class Checker:
    """Checks the ref updates of one push against the gitruns rules.

    Args:
        store: an object store that sees the pushed objects (and the old ones).
        is_known: whether a commit (naming the given run) was accepted before,
            so the walk back from a pushed tip can stop there.
        allow_rewrite: let deletions and non-fast-forward updates through.
        lift: how this side lifts the append-only rule (:data:`SERVER_LIFT`,
            :data:`CLIENT_LIFT`), said in the refusal of a deletion or rewrite.
    """

    def __init__(
        self,
        store: BaseObjectStore,
        is_known: Callable[[Sha, RunRef], bool],
        *,
        allow_rewrite: bool = False,
        lift: str | None = None,
    ) -> None:
        self.store = store
        self.is_known = is_known
        self.allow_rewrite = allow_rewrite
        self.lift = lift
        self._checked: dict[Sha, str] = {}
        # The commit being read, so an error from deep inside names it.
        self._at: Sha | None = None

    def check(self, updates: Iterable[RefUpdate]) -> list[Rejection]:
        """Return one rejection per refused run ref; refs outside runs/ pass."""
        rejections = []
        for update in updates:
            if not update.ref.startswith(RUNS_PREFIX):
                continue
            self._at = None
            try:
                self._check_update(update)
            except _Refused as refused:
                at = refused.commit or self._at or update.new
                rejections.append(Rejection(update.ref, at, refused.reason))
            except GitRunsError as exc:
                at = self._at or update.new
                rejections.append(Rejection(update.ref, at, _reason(exc)))
            except RecursionError:
                at = self._at or update.new
                reason = "a file of the commit nests too deeply to be checked"
                rejections.append(Rejection(update.ref, at, reason))
        return rejections

    def _lifted(self, reason: str) -> str:
        return f"{reason}; {self.lift}" if self.lift else reason

    def _check_update(self, update: RefUpdate) -> None:
        try:
            run = RunRef.from_ref(update.ref)
        except GitRunsError as exc:
            raise _Refused(
                update.new, f"not a valid run branch: {_reason(exc)}"
            ) from None

        if update.new is None:
            if not self.allow_rewrite:
                raise _Refused(
                    update.old,
                    self._lifted(
                        "run branches cannot be deleted: runs are append-only "
                        "(fork or rewind instead)"
                    ),
                )
            return
        rewrites = update.old is not None and not self._is_ancestor(
            update.old, update.new
        )
        if rewrites and not self.allow_rewrite:
            raise _Refused(
                update.new,
                self._lifted(
                    "not a fast-forward: it would rewrite the run's "
                    "history; rewind with a new commit (resume_from) or fork "
                    "the run instead of forcing"
                ),
            )

        for child, parent in self._new_commits(run, update):
            self._check_commit(child, parent)

    def _is_ancestor(self, ancestor: Sha, descendant: Sha) -> bool:
        seen = {descendant}
        todo = [descendant]
        while todo:
            sha = todo.pop()
            if sha == ancestor:
                return True
            commit = _get_commit(self.store, sha)
            if commit is not None:
                for parent in commit.parents:
                    if parent not in seen:
                        seen.add(Sha(parent))
                        todo.append(Sha(parent))
        return False

    def _new_commits(
        self, run: RunRef, update: RefUpdate
    ) -> list[tuple[_RunCommit, _RunCommit | None]]:
        """The pushed commits not accepted before, oldest first, with their parents.

        Walks first parents from the new tip, naming the run each commit must
        belong to (a fork's first commit hands over to its source run), until a
        commit that is already known.
        """
        assert update.new is not None
        chain: list[_RunCommit] = []
        sha: Sha | None = update.new
        expected = run
        boundary: _RunCommit | None = None
        while sha is not None:
            if sha in self._checked and self._checked[sha] != expected.path:
                raise _Refused(
                    sha,
                    f"run.json names run {self._checked[sha]}, but this commit "
                    f"belongs to {expected.path}",
                )
            if sha == update.old or sha in self._checked:
                boundary = _load_commit(self.store, sha)
                break
            commit = self._load(sha)
            if commit.run != expected.path:
                raise _Refused(
                    sha,
                    f"run.json names run {commit.run}, but this commit "
                    f"belongs to {expected.path}",
                )
            if self.is_known(sha, expected):
                boundary = commit
                break
            if len(commit.parents) > 1:
                raise _Refused(sha, "a merge commit; run histories are linear")
            chain.append(commit)
            if not commit.parents:
                break
            parent = Sha(commit.parents[0])
            fork = commit.fork_from
            if fork is not None and str(fork.get("commit")).encode() == parent:
                expected = _fork_source(sha, fork)
            sha = parent

        chain.reverse()
        pairs: list[tuple[_RunCommit, _RunCommit | None]] = []
        previous = boundary
        for commit in chain:
            pairs.append((commit, previous))
            previous = commit
        return pairs

    def _load(self, sha: Sha) -> _RunCommit:
        self._at = sha
        try:
            return _load_commit(self.store, sha)
        except _Refused as refused:
            raise _Refused(refused.commit or sha, refused.reason) from None

    def _check_commit(self, commit: _RunCommit, parent: _RunCommit | None) -> None:
        self._at = commit.sha
        try:
            self._check_commit_body(commit, parent)
        except _Refused as refused:
            raise _Refused(refused.commit or commit.sha, refused.reason) from None
        self._checked[commit.sha] = commit.run

    def _check_commit_body(self, commit: _RunCommit, parent: _RunCommit | None) -> None:
        window = commit.window
        if not window:
            raise _Refused(commit.sha, "run.json has no valid window")
        fork = commit.fork_from
        if fork is not None:
            target = str(fork.get("commit", ""))
            if not _is_commit(self.store, target):
                raise _Refused(
                    commit.sha,
                    f"fork_from.commit {target[:10] or '(none)'} "
                    "does not exist here; push the source run first",
                )

        # What kind of commit: a fork's first, a rewind, or one that appends.
        forked = (
            parent is not None
            and fork is not None
            and str(fork.get("commit")).encode() == parent.sha
            and parent.run != commit.run
        )
        rewind = None
        if parent is not None and not forked:
            rewind = _rewinds_to(commit, parent)
        if parent is not None and not forked and parent.window != window:
            raise _Refused(
                commit.sha, f"window changed from {parent.window} to {window}"
            )

        base_window = parent.window if parent is not None else window
        if forked and base_window != window:
            raise _Refused(
                commit.sha, f"a fork must keep its source's window {base_window}"
            )
        changes = _compare_history(
            self.store, parent.history if parent else None, commit.history, window
        )
        if forked:
            assert fork is not None and parent is not None
            step = fork.get("step")
            if type(step) is not int or step < 0:
                raise _Refused(commit.sha, f"fork_from.step {step!r} is not a step")
            if fork.get("run") != parent.run:
                raise _Refused(
                    commit.sha,
                    f"fork_from.run {fork.get('run')!r} is not the "
                    f"run of its parent commit, {parent.run}",
                )
            last = self._check_cut(commit, changes, step)
        elif rewind is not None:
            last = self._check_cut(commit, changes, rewind)
        else:
            last = self._check_append(commit, parent, changes)

        if commit.last_step != last:
            raise _Refused(
                commit.sha,
                f"run.json says last_step {commit.last_step}, "
                f"the history ends at {last}",
            )

    def _check_append(
        self, commit: _RunCommit, parent: _RunCommit | None, changes: _Segments
    ) -> int | None:
        """An ordinary commit only adds segments, after every step it had."""
        if changes.removed:
            first = min(changes.removed)
            raise _Refused(
                commit.sha,
                f"rewrites or removes the committed segment at step "
                f"{first} without recording a rewind",
            )
        last = parent.last_step if parent is not None else None
        # TODO: compare each new chunk's prefix digests with the totals of the
        # history before it; a forged prefix now passes and skews summaries.
        for start in sorted(changes.added):
            chunk = _decode(self.store, start, changes.added[start], commit.window)
            if last is not None and int(chunk.steps[0]) <= last:
                raise _Refused(
                    commit.sha,
                    f"step order: a segment starts at step "
                    f"{int(chunk.steps[0])}, not after the run's step {last}",
                )
            last = int(chunk.steps[-1])
        return last

    def _check_cut(
        self, commit: _RunCommit, changes: _Segments, step: int
    ) -> int | None:
        """A rewind or a fork's first commit only cuts the history after ``step``."""
        window = commit.window
        for start in sorted(changes.added):
            if start not in changes.removed or start > step:
                raise _Refused(
                    commit.sha, f"a cut to step {step} adds the segment at step {start}"
                )
        for start in changes.removed:
            if start <= step and start not in changes.added:
                raise _Refused(
                    commit.sha,
                    f"a cut to step {step} drops the segment at step {start}",
                )

        # Every segment now ends by ``step``: the cut ones and the last one kept.
        segments = _all_segments(self.store, commit.history, window)
        if not segments:
            return None
        last_start = max(segments)
        for start in sorted({*changes.added, last_start}):
            chunk = _decode(self.store, start, segments[start], window)
            if int(chunk.steps[-1]) > step:
                raise _Refused(
                    commit.sha,
                    f"a cut to step {step} keeps step {int(chunk.steps[-1])}",
                )
        return int(chunk.steps[-1])


def _reason(exc: GitRunsError) -> str:
    """What a gitruns error says is wrong, without the advice meant for readers."""
    if isinstance(exc, ChunkFormatError):
        return f"malformed chunk {exc.source}: {exc.reason}"
    if isinstance(exc, InvalidNameError):
        if isinstance(exc.name, bytes):
            return exc.reason
        return f"{exc.kind} {exc.name!r}: {exc.reason}"
    return str(exc)


def _fork_source(sha: Sha, fork: Mapping[str, Any]) -> RunRef:
    source = fork.get("run")
    parts = source.split("/") if isinstance(source, str) else []
    if len(parts) != 2:
        raise _Refused(sha, f"fork_from.run {source!r} is not <project>/<run_id>")
    try:
        return RunRef(parts[0], parts[1])
    except GitRunsError as exc:
        raise _Refused(sha, f"fork_from.run: {_reason(exc)}") from None


def _rewinds_to(commit: _RunCommit, parent: _RunCommit) -> int | None:
    """The step a rewind commit cuts to, or None if it is no rewind of ``parent``."""
    rewinds = commit.info.get("rewinds")
    before = parent.info.get("rewinds") or []
    if not isinstance(rewinds, list) or not isinstance(before, list):
        return None
    if len(rewinds) != len(before) + 1 or not isinstance(rewinds[-1], dict):
        return None
    entry = rewinds[-1]
    step = entry.get("step")
    if entry.get("commit") != parent.sha.decode() or type(step) is not int or step < 0:
        return None
    return step


def _is_commit(store: BaseObjectStore, sha: str) -> bool:
    if len(sha) != 40 or not _has(store, sha.encode()):
        return False
    return _get_commit(store, sha.encode()) is not None


# -- what counts as accepted before -------------------------------------------------


class _KnownRuns:
    """Commits reachable from a set of run tips, built per run when first asked."""

    def __init__(
        self, store: BaseObjectStore, tip_of: Callable[[RunRef], Sha | None]
    ) -> None:
        self.store = store
        self.tip_of = tip_of
        self._reachable: dict[RunRef, set[Sha]] = {}

    def contains(self, sha: Sha, run: RunRef) -> bool:
        if run not in self._reachable:
            self._reachable[run] = self._walk(self.tip_of(run))
        return sha in self._reachable[run]

    def _walk(self, tip: Sha | None) -> set[Sha]:
        seen: set[Sha] = set()
        todo = [tip] if tip is not None else []
        while todo:
            sha = todo.pop()
            if sha in seen:
                continue
            seen.add(sha)
            commit = _get_commit(self.store, sha)
            if commit is not None:
                todo.extend(Sha(p) for p in commit.parents)
        return seen


def _read_ref(repo: BaseRepo, ref: bytes) -> Sha | None:
    try:
        return Sha(repo.refs[Ref(ref)])
    except KeyError:
        return None


def server_checker(
    repo: Repo, main_objects: str | None, *, allow_rewrite: bool
) -> Checker:
    """A checker for pre-receive: known means on a run branch before this push.

    Args:
        repo: the repository opened with the quarantine (:func:`open_quarantined`).
        main_objects: the real object directory, without the quarantine.
        allow_rewrite: the server's ``gitruns.allowRewrite``.
    """
    main = DiskObjectStore(main_objects) if main_objects else repo.object_store
    known = _KnownRuns(main, lambda run: _read_ref(repo, run.ref))

    def is_known(sha: Sha, run: RunRef) -> bool:
        # Objects only in the quarantine are new by definition; an old object
        # counts only if a run branch reaches it (a push to another branch
        # must not smuggle unchecked run commits in).
        return _has(main, sha) and known.contains(sha, run)

    return Checker(
        repo.object_store, is_known, allow_rewrite=allow_rewrite, lift=SERVER_LIFT
    )


def client_checker(
    repo: BaseRepo, remote: str | None, *, allow_rewrite: bool
) -> Checker:
    """A checker for pre-push: known means the remote had it when we last looked.

    Args:
        repo: the local repository.
        remote: the remote's name, whose ``refs/remotes/<remote>/runs/...`` say
            what it has; None checks every commit that leads to a pushed tip.
        allow_rewrite: the local ``gitruns.allowRewrite``.
    """

    def tracking_tip(run: RunRef) -> Sha | None:
        if remote is None:
            return None
        name = (
            b"refs/remotes/" + remote.encode() + b"/" + run.ref[len(b"refs/heads/") :]
        )
        return _read_ref(repo, name)

    known = _KnownRuns(repo.object_store, tracking_tip)
    return Checker(
        repo.object_store,
        known.contains,
        allow_rewrite=allow_rewrite,
        lift=CLIENT_LIFT,
    )


def pull_checker(repo: BaseRepo) -> Checker:
    """A checker for pull: known means on a local run branch before the pull.

    The fetched objects are already in ``repo``; what the local run branches
    reach was accepted before, so only the commits a pull would add are read.
    A pull only fast-forwards, so the rewrite rule has nothing to lift.
    """
    known = _KnownRuns(repo.object_store, lambda run: _read_ref(repo, run.ref))
    return Checker(repo.object_store, known.contains)


# -- hook input -------------------------------------------------------------------


def _sha(text: str) -> Sha | None:
    sha = text.strip().encode()
    if len(sha) != 40:
        raise GitRunsError(
            f"malformed hook input: {text!r} is not an object id; "
            "run this script only as a Git hook"
        )
    return None if sha == ZERO_SHA else Sha(sha)


def parse_pre_receive(lines: Iterable[str]) -> list[RefUpdate]:
    """Parse pre-receive's ``<old> <new> <ref>`` lines."""
    updates = []
    for line in lines:
        if not line.strip():
            continue
        old, new, ref = line.split(maxsplit=2)
        updates.append(RefUpdate(ref.strip().encode(), _sha(old), _sha(new)))
    return updates


def parse_pre_push(lines: Iterable[str]) -> list[RefUpdate]:
    """Parse pre-push's ``<local ref> <local sha> <remote ref> <remote sha>`` lines."""
    updates = []
    for line in lines:
        if not line.strip():
            continue
        _local_ref, local_sha, remote_ref, remote_sha = line.split()
        updates.append(
            RefUpdate(remote_ref.encode(), _sha(remote_sha), _sha(local_sha))
        )
    return updates


def rewrites_allowed(repo: BaseRepo) -> bool:
    """Whether the repository's ``gitruns.allowRewrite`` lifts the append-only rule."""
    try:
        return bool(
            repo.get_config().get_boolean(ALLOW_REWRITE[0], ALLOW_REWRITE[1], False)
        )
    except KeyError:
        return False


def _report(rejections: Sequence[Rejection], err: IO[str]) -> int:
    """One line per refused ref, naming it, the commit and the cause; 1 if any."""
    for rejection in rejections:
        err.write(f"gitruns: refused {rejection}\n")
    return 1 if rejections else 0


def run_hook(
    kind: str,
    argv: Sequence[str],
    stdin: IO[bytes],
    stderr: IO[str],
    environ: Mapping[str, str],
) -> int:
    """Run a hook as git calls it; return its exit status.

    Args:
        kind: ``"pre-receive"`` or ``"pre-push"``.
        argv: the hook's arguments (pre-push: remote name and URL).
        stdin: the ref lines git writes to the hook.
        stderr: where rejections go (git shows them to the pusher).
        environ: the hook's environment (GIT_DIR and the quarantine).
    """
    lines = stdin.read().decode("utf-8", "replace").splitlines()
    git_dir = environ.get("GIT_DIR") or "."
    try:
        if kind == "pre-receive":
            updates = parse_pre_receive(lines)
            if not any(u.ref.startswith(RUNS_PREFIX) for u in updates):
                return 0
            with open_quarantined(git_dir, environ) as repo:
                main = environ.get("GIT_ALTERNATE_OBJECT_DIRECTORIES", "").split(
                    os.pathsep
                )[0]
                checker = server_checker(
                    repo,
                    main if environ.get("GIT_OBJECT_DIRECTORY") else None,
                    allow_rewrite=rewrites_allowed(repo),
                )
                return _report(checker.check(updates), stderr)
        if kind == "pre-push":
            updates = parse_pre_push(lines)
            if not any(u.ref.startswith(RUNS_PREFIX) for u in updates):
                return 0
            with Repo(git_dir) if "GIT_DIR" in environ else Repo.discover() as repo:
                remote = argv[0] if argv else None
                configured = remote is not None and _has_remote(repo, remote)
                checker = client_checker(
                    repo,
                    remote if configured else None,
                    allow_rewrite=rewrites_allowed(repo),
                )
                return _report(checker.check(updates), stderr)
    except GitRunsError as exc:
        stderr.write(f"gitruns: {exc}\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - a hook fails closed, in one line
        logger.debug("hook %s failed", kind, exc_info=True)
        stderr.write(
            f"gitruns: the {kind} check itself failed ({type(exc).__name__}: {exc}); "
            "the push is refused until it runs; report this with the gitruns version\n"
        )
        return 1
    stderr.write(f"gitruns: unknown hook {kind!r}; use pre-receive or pre-push\n")
    return 2


def _has_remote(repo: BaseRepo, name: str) -> bool:
    try:
        repo.get_config().get((b"remote", name.encode()), b"url")
    except KeyError:
        return False
    return True


# -- installing ---------------------------------------------------------------------

_SCRIPT = """#!{python}
\"\"\"gitruns {kind} hook: {purpose}.

Installed by `gitruns hooks install`; the checks live in gitruns/hooks.py.
\"\"\"

import os
import sys

# The gitruns that installed this hook goes ahead of any other on the path.
PACKAGE_PARENT = {package_parent}
sys.path.insert(0, PACKAGE_PARENT)

from gitruns.hooks import run_hook  # noqa: E402

hook_args = sys.argv[1:]
sys.exit(run_hook("{kind}", hook_args, sys.stdin.buffer, sys.stderr, os.environ))
"""

#: How the scripts in the source tree's hooks/ find the package next to them.
_BESIDE_SCRIPT = 'os.path.join(os.path.dirname(os.path.realpath(__file__)), "..")'


def hook_script(
    kind: str, python: str | None = None, package_parent: str | None = None
) -> str:
    """The text of a hook script.

    Args:
        kind: ``"pre-receive"`` or ``"pre-push"``.
        python: the interpreter for the shebang; None writes ``/usr/bin/env python3``.
        package_parent: the folder holding the ``gitruns`` package; None finds
            it beside the script, as in the source tree's ``hooks/``.
    """
    if kind not in HOOKS:
        raise InvalidArgumentError("hook", kind, f"use one of {', '.join(HOOKS)}")
    return _SCRIPT.format(
        python=python or "/usr/bin/env python3",
        kind=kind,
        purpose=HOOKS[kind],
        package_parent=json.dumps(package_parent) if package_parent else _BESIDE_SCRIPT,
    )


def hooks_dir(repo: Repo) -> Path:
    """Where git looks for this repository's hooks (``core.hooksPath`` or hooks/)."""
    try:
        configured = repo.get_config().get((b"core",), b"hooksPath")
    except KeyError:
        return Path(repo.controldir()) / "hooks"
    path = Path(os.fsdecode(configured)).expanduser()
    return path if path.is_absolute() else Path(repo.path) / path


def installed(repo: Repo, kind: str) -> bool:
    """Whether the repository has the gitruns hook ``kind`` installed."""
    target = hooks_dir(repo) / kind
    try:
        return "gitruns.hooks" in target.read_text(errors="replace")
    except OSError:
        return False


def install_hook(repo: Repo, kind: str, *, force: bool = False) -> Path:
    """Write the hook into the repository, running this interpreter and this gitruns.

    The hook goes where git looks for hooks (``core.hooksPath`` or hooks/),
    written beside and renamed into place so git never runs half of it.

    Args:
        repo: the repository.
        kind: ``"pre-receive"`` or ``"pre-push"``.
        force: replace a hook that gitruns did not write.

    Returns:
        The path of the installed hook.

    Raises:
        InvalidArgumentError: for an unknown ``kind``.
        RepositoryError: if a hook of another origin is there and ``force`` is
            off, or if the hooks folder cannot be written.
    """
    target = hooks_dir(repo) / kind
    if target.exists() and not force:
        current = target.read_text(errors="replace")
        if "gitruns.hooks" not in current:
            raise RepositoryError(
                f"{target} exists and is not a gitruns hook; move it away, call "
                "gitruns from it, or pass --force to replace it",
                path=str(target),
            )
    package_parent = str(Path(__file__).resolve().parent.parent)
    text = hook_script(kind, sys.executable, package_parent)
    partial = target.with_name(target.name + ".gitruns-tmp")
    with mapped_errors(f"installing the {kind} hook in {target.parent}"):
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(text)
        partial.chmod(0o755)
        partial.replace(target)
    logger.info("installed %s hook in %s", kind, target)
    return target
