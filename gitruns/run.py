"""The Run a training script holds, and ``init`` that starts, resumes or forks one.

This is the top layer: it alone reads environment variables (``GITRUNS_*``)
and process-wide state (the current run, atexit, the exception hook).
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import socket
import sys
import threading
import weakref
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from types import TracebackType
from typing import Any

from gitruns.errors import (
    GitRunsError,
    InvalidValueError,
    RunExistsError,
    RunNotFoundError,
)
from gitruns.fork import create_run, fork_run, rewind_run, split_spec
from gitruns.refs import RunRef, check_name, new_run_id
from gitruns.store import RunStore, locate_repository
from gitruns.summary import SUMMARY_MODES, summarize
from gitruns.values import clean_row
from gitruns.writer import RunWriter, WriterOptions, now_iso

logger = logging.getLogger(__name__)

DEFAULT_PROJECT = "uncategorized"
MAX_PATCH = 1 << 20

#: Settings init() takes as keywords (or GITRUNS_<NAME> in the environment).
WRITER_SETTINGS = {"window": int, "flush_interval": float, "fsync": str, "background": bool}


class Config(MutableMapping[str, Any]):
    """A run's hyper-parameters: a dict with attribute access, as W&B's config."""

    def __init__(self, data: Mapping[str, Any], on_change: Any) -> None:
        object.__setattr__(self, "_data", dict(data))
        object.__setattr__(self, "_on_change", on_change)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value
        self._on_change(dict(self._data))

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._on_change(dict(self._data))

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __repr__(self) -> str:
        return f"Config({self._data!r})"

    def update(self, data: Any = (), allow_val_change: bool | None = None, **kw: Any) -> None:  # type: ignore[override]
        """Merge keys in; argparse Namespaces and dicts both work."""
        if hasattr(data, "__dict__") and not isinstance(data, Mapping):
            data = vars(data)
        self._data.update(dict(data), **kw)
        self._on_change(dict(self._data))

    def as_dict(self) -> dict[str, Any]:
        """A plain copy."""
        return dict(self._data)


class Summary(MutableMapping[str, Any]):
    """A run's summary: derived from its history; values set here win."""

    def __init__(self, run: Run, overrides: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_run", run)
        object.__setattr__(self, "_overrides", dict(overrides))

    def _current(self) -> dict[str, Any]:
        run = self._run
        return summarize(run._writer.live_totals(), run._definitions, self._overrides)

    def __getitem__(self, key: str) -> Any:
        return self._current()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._overrides[key] = value
        self._run._writer.set_meta(summary_overrides=dict(self._overrides))

    def __delitem__(self, key: str) -> None:
        del self._overrides[key]
        self._run._writer.set_meta(summary_overrides=dict(self._overrides))

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"summary has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __repr__(self) -> str:
        return f"Summary({self._current()!r})"


class Run:
    """A run being written: log metrics, then finish.

    Use it as a context manager to finish it (as ``crashed`` on an exception).
    """

    def __init__(self, store: RunStore, ref: RunRef, writer: RunWriter) -> None:
        self._store = store
        self._ref = ref
        self._writer = writer
        self._known: set[str] = set()
        snapshot = writer.snapshot
        self._info = dict(snapshot.info)
        self._definitions: dict[str, dict[str, Any]] = dict(self._info.get("metrics", {}))
        self.config = Config(snapshot.config, lambda data: writer.set_meta(config=data))
        overrides = {k: snapshot.summary.get(k) for k in self._info.get("summary_set", [])}
        self.summary = Summary(self, overrides)
        self._finished = False

    def __repr__(self) -> str:
        return f"<Run {self.path} step={self.step}>"

    @property
    def id(self) -> str:
        """The run id."""
        return self._ref.run_id

    @property
    def project(self) -> str:
        """The run's project."""
        return self._ref.project

    @property
    def path(self) -> str:
        """``<project>/<run_id>``."""
        return self._ref.path

    @property
    def ref(self) -> RunRef:
        """The run's address."""
        return self._ref

    @property
    def branch(self) -> str:
        """The run's branch, as ``git log`` takes it."""
        return self._ref.branch

    @property
    def repo(self) -> Path:
        """The Git directory the run lives in."""
        return self._store.git_dir

    @property
    def name(self) -> str:
        """The display name."""
        return str(self._info.get("name") or self.id)

    @name.setter
    def name(self, value: str) -> None:
        self._info["name"] = value
        self._writer.set_meta(name=value)

    @property
    def fork_from(self) -> dict[str, Any] | None:
        """The fork's source ``{"run", "step", "commit"}``, or None."""
        value = self._info.get("fork_from")
        return dict(value) if value else None

    @property
    def step(self) -> int:
        """The step the next plain log() call writes to."""
        return self._writer.step

    @property
    def finished(self) -> bool:
        """Whether finish() ran."""
        return self._finished

    def log(
        self,
        data: Mapping[str, Any],
        step: int | None = None,
        commit: bool | None = None,
        sync: bool | None = None,
        *,
        timestamp: float | None = None,
    ) -> None:
        """Log metrics at a step.

        Args:
            data: metric name -> number, bool, str or None.
            step: the step; None uses the current one. Below the current step
                is an error (rewind with ``resume_from`` instead).
            commit: False keeps the step open for more keys; True ends it.
                By default a call without ``step`` ends its step.
            sync: accepted for W&B compatibility; ignored.
            timestamp: wall-clock time of the step (imports), default now.
        """
        row = clean_row(data, self._known)
        if step is not None and type(step) is not int:
            step = _as_step(step)
        self._writer.log(row, step, commit, timestamp)

    def define_metric(
        self,
        name: str,
        step_metric: str | None = None,
        summary: str | None = None,
        hidden: bool | None = None,
        goal: str | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        """Declare how a metric (or a glob such as ``val/*``) is summarized.

        Args:
            name: metric name or glob.
            step_metric: a metric to use as this one's x axis (``epoch``).
            summary: comma-separated aggregates: last, first, min, max, mean, none.
            hidden: hide from summaries shown to people.
            goal: ``minimize`` or ``maximize``, recorded.
        """
        if summary:
            for mode in str(summary).split(","):
                if mode and mode not in SUMMARY_MODES:
                    raise InvalidValueError(
                        "summary", summary, f"use some of {', '.join(SUMMARY_MODES)}"
                    )
        rule = {
            k: v
            for k, v in (
                ("step_metric", step_metric),
                ("summary", summary),
                ("hidden", hidden),
                ("goal", goal),
            )
            if v is not None
        }
        self._definitions[name] = rule
        self._writer.set_meta(metrics=dict(self._definitions))
        return rule

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        """Commit everything and close the run (``crashed`` if exit_code != 0)."""
        if self._finished:
            return
        self._finished = True
        code = exit_code or 0
        state = "finished" if code == 0 else "crashed"
        try:
            self._writer.finish(state, exit_code=code)
        finally:
            _forget(self)
        logger.info("run %s %s", self.path, state)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exit_code=1 if kind is not None else 0)


def _as_step(step: Any) -> int:
    if isinstance(step, bool) or not hasattr(step, "__index__"):
        raise InvalidValueError("step", step, "a step must be a non-negative int")
    value = int(step.__index__())
    if value < 0:
        raise InvalidValueError("step", step, "a step must be a non-negative int")
    return value


# -- process-wide state -------------------------------------------------------

_active: list[Run] = []
_active_lock = threading.Lock()
_crashed = False
_hooks_installed = False


def _remember(run: Run) -> None:
    global _hooks_installed
    with _active_lock:
        _active.append(run)
        if not _hooks_installed:
            _hooks_installed = True
            atexit.register(_finish_all)
            previous = sys.excepthook

            def hook(kind: Any, exc: Any, tb: Any) -> None:
                global _crashed
                _crashed = True
                previous(kind, exc, tb)

            sys.excepthook = hook


def _forget(run: Run) -> None:
    with _active_lock:
        if run in _active:
            _active.remove(run)


def _finish_all() -> None:
    for run in list(_active):
        try:
            run.finish(exit_code=1 if _crashed else 0)
        except GitRunsError as exc:
            logger.error("could not finish run %s at exit: %s", run.path, exc)


def active_runs() -> list[Run]:
    """Runs of this process that are not finished yet."""
    with _active_lock:
        return list(_active)


# -- init ---------------------------------------------------------------------


def _setting(settings: dict[str, Any], name: str) -> Any:
    if name in settings:
        return settings.pop(name)
    text = os.environ.get(f"GITRUNS_{name.upper()}")
    if text is None:
        return None
    kind = WRITER_SETTINGS[name]
    if kind is bool:
        return text.lower() not in ("0", "false", "no", "")
    return kind(text)


_open_stores: weakref.WeakSet[RunStore] = weakref.WeakSet()


def open_store(repo: str | os.PathLike[str] | None = None) -> RunStore:
    """Open the repository by DESIGN.md's order: repo=, GITRUNS_REPO, enclosing, ./.gitruns."""
    path, create = locate_repository(repo, os.environ.get("GITRUNS_REPO"), Path.cwd())
    store = RunStore.open(path, create=create)
    if not _open_stores:
        atexit.register(_close_stores)
    _open_stores.add(store)
    return store


def _close_stores() -> None:
    # Close packs before interpreter teardown, when dulwich can no longer.
    for store in list(_open_stores):
        store.close()


def code_state(start: Path) -> tuple[dict[str, Any] | None, bytes | None]:
    """The code commit a run starts from, and a patch of uncommitted changes."""
    from dulwich import porcelain
    from dulwich.errors import NotGitRepository
    from dulwich.repo import Repo

    try:
        repo = Repo.discover(str(start))
    except NotGitRepository:
        return None, None
    try:
        head = repo.head()
    except KeyError:
        repo.close()
        return None, None
    try:
        branch: str | None = porcelain.active_branch(repo).decode()
    except (KeyError, ValueError, IndexError):
        branch = None
    if repo.bare:
        repo.close()
        return {"commit": head.decode(), "branch": branch, "dirty": False}, None
    patch = io.BytesIO()
    try:
        porcelain.diff(repo, commit=b"HEAD", outstream=patch)
    except Exception as exc:  # noqa: BLE001 - a patch is a courtesy, never fatal
        logger.debug("no code patch: %s", exc)
    finally:
        repo.close()
    data = patch.getvalue()
    info = {"commit": head.decode(), "branch": branch, "dirty": bool(data)}
    if len(data) > MAX_PATCH:
        data = data[:MAX_PATCH] + b"\n[gitruns: patch cut at 1 MiB]\n"
    return info, data or None


def init(
    project: str | None = None,
    entity: str | None = None,
    name: str | None = None,
    id: str | None = None,  # noqa: A002 - W&B's name
    config: Mapping[str, Any] | Any | None = None,
    tags: list[str] | tuple[str, ...] | None = None,
    notes: str | None = None,
    fork_from: str | None = None,
    resume: str | bool | None = None,
    resume_from: str | None = None,
    repo: str | os.PathLike[str] | None = None,
    group: str | None = None,
    job_type: str | None = None,
    source: Mapping[str, Any] | None = None,
    save_code: bool | None = None,
    **settings: Any,
) -> Run:
    """Start a run, resume one, fork one at a step, or rewind one in place.

    Args:
        project: the project (default ``uncategorized``).
        entity: accepted and recorded, as W&B's.
        name: a display name.
        id: the run id (default: 8 random base-36 characters).
        config: hyper-parameters (a dict or an argparse Namespace).
        tags: labels.
        notes: free text.
        fork_from: ``"<run>?_step=N"``: a new run holding the source's steps
            up to N, continuing at N + 1.
        resume: ``"allow"``, ``"must"`` or ``"never"`` with ``id=``.
        resume_from: ``"<run>?_step=N"``: rewind that run to N and continue it.
        repo: the Git repository (see README: where runs live).
        group: W&B's run group.
        job_type: W&B's job type.
        source: where an imported run came from, kept in run.json.
        save_code: record the code commit (default True).
        **settings: writer settings: window, flush_interval, fsync, background.

    Raises:
        GitRunsError: subclasses name what was wrong and what to do.
    """
    if hasattr(config, "__dict__") and not isinstance(config, Mapping):
        config = vars(config)
    config = dict(config or {})
    options = WriterOptions(
        **{
            k: v
            for k in WRITER_SETTINGS
            if (v := _setting(settings, k)) is not None
        }
    )
    for key in settings:
        logger.debug("init: ignoring setting %s", key)

    store = open_store(repo)
    if fork_from is not None and resume_from is not None:
        raise InvalidValueError("fork_from", fork_from, "pass fork_from or resume_from, not both")

    if resume_from is not None:
        path, key, text = split_spec(resume_from)
        ref = store.resolve(path)
        if id is not None and id != ref.run_id:
            raise InvalidValueError("id", id, f"resume_from names run {ref.path}")
        writer = RunWriter.open(store, ref, options)
        try:
            rewind_run(store, ref, resume_from, key, text)
            writer.reload()
        except BaseException:
            writer.abandon()
            raise
        return _started(store, ref, writer, name, config, tags, notes)

    project = check_name("project", project or os.environ.get("GITRUNS_PROJECT") or DEFAULT_PROJECT)
    run_id = check_name("run id", id) if id is not None else new_run_id()
    ref = RunRef(project, run_id)
    exists = store.tip(ref) is not None
    if resume is True:
        resume = "allow"
    if resume not in (None, False, "allow", "must", "never", "auto"):
        raise InvalidValueError("resume", resume, "use 'allow', 'must' or 'never'")

    if fork_from is not None:
        path, key, text = split_spec(fork_from)
        source_ref = store.resolve(path)
        if exists:
            raise RunExistsError(ref.path)
        info = _new_info(ref, name, tags, notes, group, job_type, entity, options, source)
        if save_code is not False:
            info["code"], _ = code_state(Path.cwd())
        fork_run(store, source_ref, fork_from, key, text, ref, info, config)
        writer = RunWriter.open(store, ref, options)
        return _started(store, ref, writer, None, {}, None, None)

    if exists:
        if resume in (None, False, "never"):
            raise RunExistsError(ref.path)
        writer = RunWriter.open(store, ref, options)
        logger.info("resumed run %s at step %d", ref.path, writer.step)
        return _started(store, ref, writer, name, config, tags, notes)
    if resume == "must":
        raise RunNotFoundError(ref.path, str(store.git_dir))

    info = _new_info(ref, name, tags, notes, group, job_type, entity, options, source)
    extra = None
    if save_code is not False:
        info["code"], patch = code_state(Path.cwd())
        if patch:
            extra = patch
    create_run(store, ref, info, config, code_patch=extra)
    writer = RunWriter.open(store, ref, options)
    return _started(store, ref, writer, None, {}, None, None)


def _new_info(
    ref: RunRef,
    name: str | None,
    tags: Any,
    notes: str | None,
    group: str | None,
    job_type: str | None,
    entity: str | None,
    options: WriterOptions,
    source: Mapping[str, Any] | None,
) -> dict[str, Any]:
    now = now_iso()
    return {
        "format": 1,
        "id": ref.run_id,
        "project": ref.project,
        "name": name or ref.run_id,
        "state": "running",
        "created": now,
        "updated": now,
        "window": options.window,
        "host": socket.gethostname(),
        "code": None,
        "fork_from": None,
        "rewinds": [],
        "tags": list(tags or []),
        "notes": notes or "",
        "group": group,
        "job_type": job_type,
        "entity": entity,
        "last_step": None,
        "metrics": {},
        "summary_set": [],
        "source": dict(source) if source else None,
        "exit_code": None,
    }


def _started(
    store: RunStore,
    ref: RunRef,
    writer: RunWriter,
    name: str | None,
    config: Mapping[str, Any],
    tags: Any,
    notes: str | None,
) -> Run:
    run = Run(store, ref, writer)
    if name:
        run.name = name
    if config:
        run.config.update(config)
    if tags is not None:
        run._info["tags"] = list(tags)
        writer.set_meta(tags=list(tags))
    if notes is not None:
        writer.set_meta(notes=notes)
    _remember(run)
    return run
