"""Creating, forking and rewinding runs: the commits that start a branch of history."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dulwich.object_store import tree_lookup_path
from dulwich.objects import ShaFile

from gitruns.chunk import encode_chunk
from gitruns.commits import (
    TRAILER_FORK_OF,
    TRAILER_REWIND,
    commit_run,
    summary_overrides,
)
from gitruns.errors import (
    ForkPointError,
    GitRunsError,
    InvalidNameError,
    RepositoryError,
    RunExistsError,
    RunNotFoundError,
)
from gitruns.refs import RunRef, Sha
from gitruns.store import (
    FILE_MODE,
    RUN_JSON,
    History,
    RunStore,
    Snapshot,
    chunk_path,
    now_iso,
)
from gitruns.summary import summarize

logger = logging.getLogger(__name__)

_INT = re.compile(r"[+-]?[0-9]+")
CODE_PATCH = b"code.patch"


@dataclass(frozen=True)
class ForkPoint:
    """Where a fork or rewind starts: ``<run>?<key>=<value>``.

    Attributes:
        run: the run as the user named it (``id`` or ``project/id``).
        key: ``_step``, or a step metric declared with ``define_metric``.
        value: the value's text, checked against the run when it is read.
        spec: the whole point as written, for messages.
    """

    run: str
    key: str
    value: str
    spec: str

    @classmethod
    def parse(cls, spec: str) -> ForkPoint:
        """Split ``<run>?<key>=<value>``.

        Args:
            spec: the point as ``fork_from=`` or ``resume_from=`` give it.

        Returns:
            The point; its run and value are checked when it is used.

        Raises:
            ForkPointError: when the ``?key=value`` part is missing or empty.
        """
        run, sep, query = spec.partition("?")
        key, eq, value = query.partition("=")
        if not sep or not eq or not run or not key or not value:
            raise ForkPointError(
                spec, "write it as '<run>?_step=N' (or '<run>?<step metric>=V')"
            )
        return cls(run, key, value, spec)

    @classmethod
    def of(cls, run: str, where: str) -> ForkPoint:
        """The point ``where`` of ``run``: a step ``N``, or ``<step metric>=V``.

        Args:
            run: the run, as the CLI resolved it (``project/id``).
            where: what ``--step`` says.

        Returns:
            The point, as :meth:`parse` reads ``<run>?<key>=<value>``.

        Raises:
            ForkPointError: when ``where`` is empty or has an empty side.
        """
        query = where if "=" in where else f"_step={where}"
        return cls.parse(f"{run}?{query}")


def create_run(
    store: RunStore,
    run: RunRef,
    info: dict[str, Any],
    config: Mapping[str, Any],
    code_patch: bytes | None = None,
) -> Sha:
    """Write a new run's first commit (no steps yet) and create its branch.

    Args:
        code_patch: uncommitted changes of the code, kept as ``code.patch``.

    Raises:
        RunExistsError: if the branch already exists.
    """
    extra = {}
    if code_patch:
        extra[CODE_PATCH] = (FILE_MODE, store.blob(code_patch))
    snapshot = Snapshot(None, info, dict(config), {}, History(info["window"]), extra)
    sha = commit_run(
        store, run, snapshot, [], "new run", new_branch=True, reflog="gitruns: new run"
    )
    logger.info("created run %s", run.path)
    return sha


def last_committed_step(store: RunStore, run: RunRef, tip: Snapshot) -> int | None:
    """The last step the run's history holds: its last segment's last step.

    run.json's ``last_step`` says the same for a run gitruns wrote, but a fork
    or rewind point is checked against the history itself, which is what a
    fork would copy.

    Raises:
        ChunkFormatError: the last segment is malformed or misplaced.
    """
    starts = tip.history.starts
    if not starts:
        return None
    return int(store.read_segment(run.path, tip.history, starts[-1]).steps[-1])


def step_of(store: RunStore, source: RunRef, tip: Snapshot, point: ForkPoint) -> int:
    """The step a fork or rewind point names, checked against the source run.

    Args:
        store: the repository.
        source: the run the point is in.
        tip: the run's tip, whose history is searched.
        point: the point to find.

    Raises:
        ForkPointError: for a malformed, negative or out-of-range point, or a
            custom step metric that is undeclared or not monotonic.
        ChunkFormatError: a segment of the source is malformed or misplaced.
    """
    key, text, spec = point.key, point.value, point.spec
    if key == "_step":
        if len(text) > 24 or not _INT.fullmatch(text.strip()):
            raise ForkPointError(spec, f"_step must be an integer, not {text!r}")
        step = int(text)
        if step < 0:
            raise ForkPointError(spec, "_step must not be negative")
    else:
        step = _step_by_metric(store, source, tip, key, text, spec)
    last = last_committed_step(store, source, tip)
    if last is None:
        raise ForkPointError(spec, f"run {source.path} has no committed steps yet")
    if step > last:
        raise ForkPointError(
            spec,
            f"run {source.path} has committed steps up to {last}; "
            f"pick a step in 0..{last}"
            + (
                " (or let the source run commit more first)"
                if tip.info.get("state") == "running"
                else ""
            ),
        )
    return step


def _step_by_metric(
    store: RunStore, source: RunRef, tip: Snapshot, key: str, text: str, spec: str
) -> int:
    declared = tip.info.get("metrics", {})
    is_step_metric = key in declared or any(
        isinstance(rule, Mapping) and rule.get("step_metric") == key
        for rule in declared.values()
    )
    if not is_step_metric:
        raise ForkPointError(
            spec,
            f"{key!r} is not a step metric of the run; use _step, or declare it "
            f"with run.define_metric('*', step_metric={key!r})",
        )
    try:
        target = float(text)
    except ValueError:
        raise ForkPointError(spec, f"{key} must be a number, not {text!r}") from None
    found: int | None = None
    previous: tuple[int, float] | None = None
    for start in tip.history.starts:
        chunk = store.read_segment(source.path, tip.history, start)
        if key not in chunk.columns:
            continue
        steps, values = chunk.column(key)
        plain = values.tolist() if hasattr(values, "tolist") else list(values)
        for step, value in zip(steps.tolist(), plain):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ForkPointError(spec, f"{key} at step {step} is not a number")
            if value != value:  # NaN: no order to fork by
                raise ForkPointError(
                    spec,
                    f"{key} is NaN at step {step}, so it orders no steps; fork by "
                    "_step instead",
                )
            if previous is not None and value < previous[1]:
                raise ForkPointError(
                    spec,
                    f"{key} is not monotonic: {previous[1]} at step {previous[0]} "
                    f"then {value} at step {step}; fork by _step instead",
                )
            previous = (step, float(value))
            if value == target:
                found = step
    if found is None:
        span = "" if previous is None else f" (it runs up to {previous[1]:g})"
        raise ForkPointError(
            spec, f"no step has {key} == {text}{span}; pick a value it takes"
        )
    return found


def holding_commit(store: RunStore, run: RunRef, tip: Snapshot, step: int) -> Sha:
    """The earliest commit on the tip's first-parent line that holds ``step``.

    That is the earliest commit whose tree has the same segment blob for
    ``step`` as the tip, so its history up to ``step`` is the tip's. The
    segment index answers at once for runs written here; otherwise the
    first-parent line is walked and the answer recorded.
    """
    assert tip.commit is not None
    start = tip.history.segment_at(step)
    if start is None:
        return tip.commit
    blob = tip.history.blobs[start]
    path = chunk_path(start, tip.window).encode()

    def lookup(sha: bytes) -> ShaFile:
        # Trees only, each read within the store's size limit.
        return store.read_tree(Sha(sha), f"tree {sha.decode()} of {run.path}")

    def holds(commit: Sha) -> bool:
        try:
            tree = store.read_commit(commit).tree
            return bool(tree_lookup_path(lookup, tree, path)[1] == blob)
        except (KeyError, RepositoryError):
            return False

    for owner in _runs_sharing(store, run, tip):
        known = store.segment_creator(owner, start, blob)
        if known is not None and holds(known):
            return known

    earliest = tip.commit
    for sha, commit in store.first_parent_chain(tip.commit):
        try:
            _, found = tree_lookup_path(lookup, commit.tree, path)
        except (KeyError, RepositoryError):
            break
        if found != blob:
            break
        earliest = sha
    store.record_segment(run, start, blob, earliest)
    return earliest


def _runs_sharing(store: RunStore, run: RunRef, tip: Snapshot) -> list[RunRef]:
    # The run itself, then the runs it was forked from (they added shared segments).
    owners = [run]
    info = tip.info
    for _ in range(32):
        fork = info.get("fork_from")
        if not fork:
            break
        try:
            source = store.resolve(str(fork["run"]))
            source_tip = store.tip(source)
        except GitRunsError:
            break
        if source_tip is None or source in owners:
            break
        owners.append(source)
        try:
            info = store.read_json(source_tip, RUN_JSON, source) or {}
        except GitRunsError:
            break  # only a shortcut: the walk below finds the commit anyway
    return owners


def cut_history(
    store: RunStore, run: RunRef, snapshot: Snapshot, step: int
) -> tuple[History, dict[str, Any], int | None]:
    """The snapshot's history without steps after ``step``, its totals and last step.

    Segments wholly at or before ``step`` keep their blobs; only the segment
    that straddles ``step`` is written anew.

    Args:
        run: the run the snapshot is of, for messages.
    """
    history = snapshot.history.copy()
    history.drop_after(step)
    start = history.segment_at(step)
    if start is None:
        return history, {}, None
    # Read as it is stored in the snapshot, so that its end is checked
    # against the segment after it, which the cut drops.
    chunk = store.read_segment(run.path, snapshot.history, start)
    if int(chunk.steps[-1]) > step:
        chunk = chunk.sliced(step)
        history.replace(start, store.chunk_blob(encode_chunk(chunk)))
    return history, dict(chunk.totals()), int(chunk.steps[-1])


def fork_run(
    store: RunStore,
    source: RunRef,
    point: ForkPoint,
    new: RunRef,
    info: dict[str, Any],
    config: Mapping[str, Any],
) -> Sha:
    """Create ``new`` as a fork of ``source`` at ``point``.

    The fork's first commit has as parent the earliest source commit holding
    the fork step; its tree is that commit's tree without later steps.

    Args:
        store: the repository.
        source: the run to fork, resolved from ``point.run``.
        point: the last step (or step metric value) the fork inherits.
        new: the fork; its branch must not exist.
        info: the fork's run.json; window, metrics, lineage and steps are
            filled in from the source.
        config: config that overrides the source's.

    Returns:
        The fork's first commit.

    Raises:
        InvalidNameError: ``new`` is ``source``.
        RunExistsError: ``new`` exists.
        RunNotFoundError: ``source`` has no branch.
        ForkPointError: the point is malformed or not in the source.
        ChunkFormatError: a segment the fork reads is malformed.
    """
    if new == source:
        raise InvalidNameError("run id", new.run_id, "a fork needs an id of its own")
    if store.tip(new) is not None:
        raise RunExistsError(new.path)
    tip_sha = store.tip(source)
    if tip_sha is None:
        raise RunNotFoundError(source.path, str(store.git_dir))
    tip = store.read_snapshot(tip_sha, source)
    step = step_of(store, source, tip, point)
    parent = holding_commit(store, source, tip, step)
    base = tip if parent == tip_sha else store.read_snapshot(parent)
    history, totals, last = cut_history(store, source, base, step)

    merged_config = {**tip.config, **config}
    info = {
        **info,
        "window": base.window,
        "metrics": {**tip.info.get("metrics", {}), **info.get("metrics", {})},
        "fork_from": {"run": source.path, "step": step, "commit": parent.decode()},
        "last_step": last,
        "next_step": step + 1,
    }
    summary = summarize(totals, info["metrics"], {})
    snapshot = Snapshot(None, info, merged_config, summary, history, base.extra)
    sha = commit_run(
        store,
        new,
        snapshot,
        [parent],
        f"fork of {source.path} at step {step}",
        new_branch=True,
        trailers=[(TRAILER_FORK_OF, f"{source.path}?_step={step}")],
        reflog=f"gitruns: fork of {source.path}",
    )
    _record_cut(store, new, base, history, step, sha)
    logger.info("forked %s at step %d into %s", source.path, step, new.path)
    return sha


def rewind_run(store: RunStore, run: RunRef, point: ForkPoint) -> Sha:
    """Cut ``run`` back to a step with a new commit on its tip; nothing is lost.

    The caller holds the run's lock. The removed steps stay reachable in the
    branch's own history, and the branch only moves forward.

    Args:
        store: the repository.
        run: the run to rewind.
        point: the last step (or step metric value) to keep.

    Returns:
        The new tip (the old one when no step follows the point).

    Raises:
        RunNotFoundError: ``run`` has no branch.
        ForkPointError: the point is malformed or not in the run.
        ConflictError: the branch moved during the rewind.
        ChunkFormatError: a segment the rewind reads is malformed.
    """
    tip_sha = store.tip(run)
    if tip_sha is None:
        raise RunNotFoundError(run.path, str(store.git_dir))
    tip = store.read_snapshot(tip_sha, run)
    step = step_of(store, run, tip, point)
    if step == last_committed_step(store, run, tip):
        return tip_sha  # nothing after the step: no commit to make
    history, totals, last = cut_history(store, run, tip, step)
    info = dict(tip.info)
    info["rewinds"] = [
        *info.get("rewinds", []),
        {"step": step, "commit": tip_sha.decode(), "at": now_iso()},
    ]
    info["last_step"] = last
    info["next_step"] = step + 1
    info["updated"] = now_iso()
    summary = summarize(totals, info.get("metrics", {}), summary_overrides(tip))
    snapshot = Snapshot(None, info, tip.config, summary, history, tip.extra)
    sha = commit_run(
        store,
        run,
        snapshot,
        [tip_sha],
        f"rewind to step {step}",
        trailers=[(TRAILER_REWIND, str(step))],
        reflog=f"gitruns: rewind to step {step}",
    )
    _record_cut(store, run, tip, history, step, sha)
    logger.info("rewound %s to step %d", run.path, step)
    return sha


def _record_cut(
    store: RunStore,
    run: RunRef,
    base: Snapshot,
    history: History,
    step: int,
    commit: Sha,
) -> None:
    # A cut segment is a new blob that ``commit`` added.
    start = history.segment_at(step)
    if start is not None and history.blobs[start] != base.history.blobs.get(start):
        store.record_segment(run, start, history.blobs[start], commit)
