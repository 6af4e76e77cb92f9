"""The Run a training script holds, ``init``, and W&B's module-level state.

This is the top layer: it reads the ``GITRUNS_*`` variables (through
:mod:`gitruns.settings`) and alone touches process-wide state (the current
run, atexit, the exception hook and ``sys.exit``). ``gitruns.run``,
``gitruns.config``, ``gitruns.summary`` and ``gitruns.log`` name the current
run's objects, as ``wandb.run`` and friends do, so a typical W&B script runs
on ``import gitruns as wandb``.
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, NoReturn

from gitruns.compat import (
    unsupported,
    without_media,
)
from gitruns.errors import (
    GitRunsError,
    InvalidArgumentError,
    InvalidValueError,
    RunExistsError,
    RunNotFoundError,
    mapped_errors,
)
from gitruns.files import (
    FILES_TREE,
    MAX_SAVE_BYTES,
    read_files_tree,
    tree_path,
    write_files_tree,
)
from gitruns.fork import ForkPoint, create_run, fork_run, rewind_run
from gitruns.refs import RunRef, Sha, check_name, new_run_id
from gitruns.repository import code_state, open_store
from gitruns.run_config import Config, Summary, as_mapping, plain_value
from gitruns.settings import (
    WRITER_SETTINGS,
    Settings,
    env_mode,
    env_project,
    env_repo,
    env_setting,
    parse_mode,
    parse_reinit,
    settings_dict,
)
from gitruns.store import TREE_MODE, RunStore, now_iso
from gitruns.summary import summary_modes
from gitruns.values import MAX_KEY, clean_row
from gitruns.writer import RunWriter, WriterOptions

logger = logging.getLogger(__name__)

#: The most define_metric rules a run holds (run.json holds them all: at
#: most 10,000 rules of a few hundred bytes, far within a file's 16 MiB).
MAX_RULES = 10_000

# -- the run ------------------------------------------------------------------


class Run:
    """A run being written: log metrics, then finish.

    Use it as a context manager to finish it (as ``crashed`` on an exception).
    """

    def __init__(
        self,
        store: RunStore,
        ref: RunRef,
        writer: RunWriter,
        *,
        mode: str = "online",
        resumed: bool = False,
        allow_val_change: bool = False,
    ) -> None:
        self._store = store
        self._ref = ref
        self._writer = writer
        self._known: set[str] = set()
        # Bound once: log() hands it to the writer at every call.
        self._clean = self._cleaned
        self._mode = mode
        self._resumed = resumed
        self._finished = False
        self._start_time = time.time()
        snapshot = writer.snapshot
        self._info = dict(snapshot.info)
        self._extra = dict(snapshot.extra)
        self._definitions: dict[str, dict[str, Any]] = dict(
            self._info.get("metrics", {})
        )
        # Held while config, summary values or metric rules change, so that
        # threads journal them in the order they made them.
        self._meta_lock = threading.RLock()
        self.config = Config(
            snapshot.config,
            lambda data: self._set_meta(config=data),
            allow_val_change=allow_val_change,
            lock=self._meta_lock,
        )
        overrides = {
            k: snapshot.summary.get(k) for k in self._info.get("summary_set", [])
        }
        self.summary = Summary(
            writer.live_totals,
            self._definitions,
            overrides,
            lambda data: self._set_meta(summary_overrides=data),
            lock=self._meta_lock,
        )
        # Saved files: tree path -> blob, loaded on the first save().
        self._files: dict[str, Sha] | None = None
        self._watched: list[tuple[str, str, str]] = []
        self._dir: Path | None = None

    def __repr__(self) -> str:
        return f"<Run {self.path} step={self.step}>"

    def __getattr__(self, name: str) -> Any:
        raise unsupported(name, "Run")

    def _set_meta(self, **meta: Any) -> None:
        self._writer.set_meta(**meta)

    # -- identity -----------------------------------------------------------

    @property
    def id(self) -> str:
        """The run id."""
        return self._ref.run_id

    @property
    def project(self) -> str:
        """The run's project."""
        return self._ref.project

    @property
    def entity(self) -> str | None:
        """The entity given to init(), kept for W&B scripts."""
        value = self._info.get("entity")
        return None if value is None else str(value)

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
    def url(self) -> str:
        """Where the run lives: the repository and branch."""
        return f"{self.repo}#{self.branch}"

    def get_url(self) -> str:
        """W&B's name for :attr:`url`."""
        return self.url

    @property
    def name(self) -> str:
        """The display name."""
        return str(self._info.get("name") or self.id)

    @name.setter
    def name(self, value: str) -> None:
        self._set_meta(name=str(value))
        self._info["name"] = str(value)

    @property
    def display_name(self) -> str:
        """W&B's older name for :attr:`name`."""
        return self.name

    @property
    def tags(self) -> tuple[str, ...]:
        """The run's tags; assign a new sequence to change them."""
        return tuple(self._info.get("tags") or ())

    @tags.setter
    def tags(self, value: Any) -> None:
        tags = [str(t) for t in value]
        self._set_meta(tags=tags)
        self._info["tags"] = tags

    @property
    def notes(self) -> str:
        """Free text about the run."""
        return str(self._info.get("notes") or "")

    @notes.setter
    def notes(self, value: str) -> None:
        self._set_meta(notes=str(value))
        self._info["notes"] = str(value)

    @property
    def group(self) -> str | None:
        """W&B's run group."""
        return self._info.get("group")

    @property
    def job_type(self) -> str | None:
        """W&B's job type."""
        return self._info.get("job_type")

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
    def start_time(self) -> float:
        """When this process started (or resumed) the run, in seconds."""
        return self._start_time

    @property
    def resumed(self) -> bool:
        """Whether init() reopened a run that existed."""
        return self._resumed

    @property
    def mode(self) -> str:
        """``online``, ``offline`` (both log locally) or ``disabled``."""
        return self._mode

    @property
    def offline(self) -> bool:
        """Whether init() was given mode='offline'."""
        return self._mode == "offline"

    @property
    def disabled(self) -> bool:
        """Whether the run is a no-op (mode='disabled')."""
        return self._mode == "disabled"

    @property
    def sweep_id(self) -> None:
        """Always None: gitruns has no sweep server."""
        return None

    @property
    def finished(self) -> bool:
        """Whether finish() ran."""
        return self._finished

    @property
    def dir(self) -> str:
        """A folder for the run's files; what is in it at finish() is saved."""
        if self._dir is None:
            folder = self._store.data_dir / "files" / self.project / self.id
            folder.mkdir(parents=True, exist_ok=True)
            self._dir = folder
        return str(self._dir)

    # -- logging ------------------------------------------------------------

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
            data: metric name -> number, bool, str or None. W&B media objects
                (:class:`Image`, :class:`Table`...) are left out with a warning.
            step: the step; None uses the current one. Below the current step
                is an error (rewind with ``resume_from`` instead).
            commit: False keeps the step open for more keys; True ends it.
                By default a call without ``step`` ends its step.
            sync: accepted for W&B compatibility; ignored.
            timestamp: wall-clock time of the step (imports), default now.
        """
        if step is not None and type(step) is not int:
            step = _as_step(step)
        self._writer.log(data, step, commit, timestamp, self._clean)

    def _cleaned(self, data: Any) -> dict[str, Any]:
        """``data`` as a stored row: checked, flattened, W&B media left out."""
        try:
            row = clean_row(data, self._known)
        except InvalidValueError:
            row = None
        if row is None:
            # Outside the handler so that a refusal shows one traceback: drop
            # media objects, or raise the error again.
            row = clean_row(without_media(data, self.path), self._known)
        return row

    def define_metric(
        self,
        name: str,
        step_metric: str | None = None,
        step_sync: bool | None = None,
        hidden: bool | None = None,
        summary: str | None = None,
        goal: str | None = None,
        overwrite: bool | None = None,
    ) -> dict[str, Any]:
        """Declare how a metric (or a glob such as ``val/*``) is summarized.

        Args:
            name: metric name or glob.
            step_metric: a metric to use as this one's x axis (``epoch``);
                ``history(x_axis=...)`` and fork points (``?epoch=3``) use it.
            step_sync: accepted for W&B compatibility; log the step metric
                with the metric, gitruns does not insert its last value.
            hidden: leave the metric out of views meant for people.
            summary: comma-separated aggregates: last, first, min, max, mean,
                none (and best, with ``goal``).
            goal: ``minimize`` or ``maximize``.
            overwrite: True replaces an earlier call's rule for ``name``;
                by default (as in W&B) the settings this call leaves out
                keep the earlier call's values.

        Returns:
            The rule recorded for ``name``.

        Raises:
            InvalidValueError: for an unknown summary mode or goal.
        """
        if not isinstance(name, str) or not name or len(name) > MAX_KEY:
            raise InvalidArgumentError(
                "define_metric",
                name,
                f"name a metric or a glob, of at most {MAX_KEY} characters",
            )
        if step_metric is not None and (
            not isinstance(step_metric, str) or len(step_metric) > MAX_KEY
        ):
            raise InvalidArgumentError(
                "step_metric",
                step_metric,
                f"name a metric, of at most {MAX_KEY} characters",
            )
        modes = summary_modes(summary, goal)
        rule = {
            k: v
            for k, v in (
                ("step_metric", step_metric),
                ("summary", modes),
                ("hidden", hidden),
                ("goal", goal),
            )
            if v is not None
        }
        with self._meta_lock:
            if name not in self._definitions and len(self._definitions) >= MAX_RULES:
                # run.json holds them all, within the size a run's file may have.
                raise InvalidArgumentError(
                    "define_metric",
                    name,
                    f"a run may hold {MAX_RULES} metric rules; cover metrics "
                    "with a glob ('val/*') instead of a rule each",
                )
            if not overwrite:
                rule = {**self._definitions.get(name, {}), **rule}
            # Journaled first: a refused rule (a str Git cannot store) changes
            # nothing.
            self._set_meta(metrics={**self._definitions, name: rule})
            self._definitions[name] = rule
            self._info["metrics"] = dict(self._definitions)
        return rule

    # -- saved files --------------------------------------------------------

    def save(
        self,
        glob_str: str | os.PathLike[str],
        base_path: str | os.PathLike[str] | None = None,
        policy: str = "live",
    ) -> list[str]:
        """Keep small files (a model card, a config file) in the run's tree.

        Files land under ``files/`` in the run's tree, at their path relative
        to ``base_path`` (default: the working directory for a relative path,
        the file's folder for an absolute one), with the run's next commit.

        Args:
            glob_str: a file or a glob (``**`` works).
            base_path: the folder paths in the tree are relative to.
            policy: ``now`` keeps the files as they are now; ``live`` and
                ``end`` also keep them as they are at finish().

        Returns:
            The paths of the kept files inside the run's tree.

        Raises:
            InvalidValueError: for a file over :data:`MAX_SAVE_BYTES`, outside
                ``base_path``, or an unknown policy.
        """
        if policy not in ("live", "now", "end"):
            raise InvalidArgumentError("policy", policy, "use 'live', 'now' or 'end'")
        pattern = os.fspath(glob_str)
        if base_path is not None:
            base = os.fspath(base_path)
        elif os.path.isabs(pattern):
            base = os.path.dirname(pattern)
        else:
            base = "."
        kept = self._keep_files(pattern, base, "", strict=True)
        if policy != "now":
            # Absolute, so that a chdir before finish() finds the same files.
            watched = (os.path.abspath(pattern), os.path.abspath(base), "")
            self._watched.append(watched)
        return kept

    def _keep_files(
        self, pattern: str, base: str, prefix: str, strict: bool
    ) -> list[str]:
        paths = sorted(
            p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)
        )
        if not paths:
            return []
        # Under the run's lock: two threads saving must not journal trees in
        # another order than they made them (the older would drop a file).
        with self._meta_lock:
            return self._keep_paths(pattern, paths, base, prefix, strict)

    def _keep_paths(
        self, pattern: str, paths: list[str], base: str, prefix: str, strict: bool
    ) -> list[str]:
        files = self._saved_files()
        kept = []
        with mapped_errors(f"saving files into run {self.path}"):
            for path in paths:
                name = prefix + tree_path(path, base)
                size = os.path.getsize(path)
                if size > MAX_SAVE_BYTES:
                    error = InvalidArgumentError(
                        "save",
                        path,
                        f"it is {size} bytes, over the {MAX_SAVE_BYTES}-byte limit "
                        "for files kept in a run; keep large files in Git LFS or "
                        "DVC and save a small pointer file instead",
                    )
                    if strict:
                        raise error
                    logger.warning("run %s: not kept: %s", self.path, error)
                    continue
                files[name] = self._store.blob(Path(path).read_bytes())
                kept.append(FILES_TREE.decode() + "/" + name)
            tree = write_files_tree(self._store, files, path=pattern)
        self._extra[FILES_TREE] = (TREE_MODE, tree)
        self._set_meta(extra={FILES_TREE: (TREE_MODE, tree)})
        return kept

    def _saved_files(self) -> dict[str, Sha]:
        if self._files is None:
            self._files = {}
            entry = self._extra.get(FILES_TREE)
            if entry is not None and entry[0] == TREE_MODE:
                read_files_tree(self._store, entry[1], "", self._files)
        return self._files

    def _keep_final_files(self) -> None:
        # Files saved with policy live/end, and whatever is in run.dir, as
        # they are now; a problem here is reported, never fatal to finish().
        watched = list(self._watched)
        if self._dir is not None:
            watched.append((os.path.join(self._dir, "**"), str(self._dir), ""))
        for pattern, base, prefix in watched:
            try:
                if not self._keep_files(pattern, base, prefix, strict=False):
                    logger.warning(
                        "run %s: save(%r) matched no file; nothing kept",
                        self.path,
                        pattern,
                    )
            except GitRunsError as exc:
                logger.warning("run %s: could not keep %s: %s", self.path, pattern, exc)

    # -- W&B calls with nothing to do --------------------------------------

    def watch(self, *args: Any, **kwargs: Any) -> None:
        """Accepted for W&B scripts; gitruns logs no gradients or parameters."""
        _note_once("watch", "watch() is accepted and does nothing in gitruns")

    def unwatch(self, *args: Any, **kwargs: Any) -> None:
        """Accepted for W&B scripts; does nothing."""

    # -- finishing ----------------------------------------------------------

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        """Commit everything and close the run (``crashed`` if exit_code != 0).

        Args:
            exit_code: the script's exit code, recorded in run.json.
            quiet: accepted for W&B compatibility.
        """
        if self._finished:
            return
        self._finished = True
        code = exit_code or 0
        state = "finished" if code == 0 else "crashed"
        try:
            self._keep_final_files()
            self._writer.finish(state, exit_code=code)
        finally:
            _forget(self)
            # The run's own store: its pack files stay open until closed, and
            # a sweep of many runs in one process would pile them up.
            self._store.close()
        logger.info("run %s %s", self.path, state)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exit_code=None if kind is None else _exception_code(kind))


class DisabledRun(Run):
    """What init(mode="disabled") returns: every call is accepted and does nothing.

    Config and summary still hold what the script sets, so code that reads
    ``run.config.lr`` back keeps working; nothing touches the disk.
    """

    def __init__(
        self, ref: RunRef, info: dict[str, Any], config: Mapping[str, Any]
    ) -> None:
        self._ref = ref
        self._info = info
        self._mode = "disabled"
        self._resumed = False
        self._finished = False
        self._start_time = time.time()
        self._definitions = {}
        self._meta_lock = threading.RLock()
        self._dir = None
        self.config = Config({}, _ignore, allow_val_change=True)
        self.config.update(config)
        self.summary = Summary(dict, self._definitions, {}, _ignore)

    def __repr__(self) -> str:
        return f"<Run {self.path} disabled>"

    def _set_meta(self, **meta: Any) -> None:
        pass

    @property
    def repo(self) -> Path:
        """There is none; a disabled run's path names no repository."""
        return Path(os.devnull)

    @property
    def step(self) -> int:
        """Always 0: nothing is logged."""
        return 0

    @property
    def dir(self) -> str:
        """A scratch folder, so scripts that write into run.dir still run."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="gitruns-disabled-"))
        return str(self._dir)

    def log(
        self,
        data: Mapping[str, Any],
        step: int | None = None,
        commit: bool | None = None,
        sync: bool | None = None,
        *,
        timestamp: float | None = None,
    ) -> None:
        """Accepted and dropped."""

    def save(
        self,
        glob_str: str | os.PathLike[str],
        base_path: str | os.PathLike[str] | None = None,
        policy: str = "live",
    ) -> list[str]:
        """Accepted and dropped."""
        return []

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        """Forget the run and its scratch folder; there is nothing to commit."""
        if not self._finished:
            self._finished = True
            _forget(self)
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)


def _ignore(_: Any) -> None:
    pass


def _as_step(step: Any) -> int:
    if isinstance(step, bool) or not hasattr(step, "__index__"):
        raise InvalidArgumentError("step", step, "a step must be a non-negative int")
    value = int(step.__index__())
    if value < 0:
        raise InvalidArgumentError("step", step, "a step must be a non-negative int")
    return value


_noted: set[str] = set()


def _note_once(key: str, message: str) -> None:
    if key not in _noted:
        _noted.add(key)
        logger.info(message)


# -- process-wide state -------------------------------------------------------

_active: list[Run] = []
_active_lock = threading.Lock()
_current: Run | None = None
_exit_code: int | None = None
_hooks_installed = False


def _relock_in_child() -> None:
    # A thread of the parent may have held a run's lock (or the list's) at
    # the fork; no thread of the child would ever release it.
    global _active_lock
    _active_lock = threading.Lock()
    for run in list(_active):
        lock = threading.RLock()
        run._meta_lock = lock
        object.__setattr__(run.config, "_lock", lock)
        object.__setattr__(run.summary, "_lock", lock)


os.register_at_fork(after_in_child=_relock_in_child)


def _exception_code(kind: type[BaseException]) -> int:
    # What the interpreter's own exit status would be.
    return 130 if issubclass(kind, KeyboardInterrupt) else 1


def _status_code(status: Any) -> int:
    if status is None:
        return 0
    if isinstance(status, int):
        return status
    return 1


def _install_hooks() -> None:
    # An uncaught exception or sys.exit(n) decides how atexit finishes runs.
    atexit.register(_finish_all)
    previous_hook = sys.excepthook
    previous_exit = sys.exit

    def excepthook(
        kind: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        global _exit_code
        _exit_code = _exception_code(kind)
        previous_hook(kind, exc, tb)

    def exit(status: Any = None) -> NoReturn:  # noqa: A001 - replaces sys.exit
        global _exit_code
        _exit_code = _status_code(status)
        previous_exit(status)

    sys.excepthook = excepthook
    sys.exit = exit

    # SIGTERM (a scheduler's stop) ends the script as an exit would, so atexit
    # finishes its runs as crashed; only where nobody chose another handler.
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _exit_code
    _exit_code = 128 + signum
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise SystemExit(128 + signum)


def _remember(run: Run, publish: bool) -> None:
    global _hooks_installed
    with _active_lock:
        _active.append(run)
        if not _hooks_installed:
            _hooks_installed = True
            _install_hooks()
    if publish:
        _publish(run)


def _forget(run: Run) -> None:
    with _active_lock:
        if run in _active:
            _active.remove(run)
    if _current is run:
        _publish(None)


def _publish(run: Run | None) -> None:
    """Point ``gitruns.run``, ``.config``, ``.summary`` and ``.log`` at ``run``."""
    global _current
    _current = run
    package = sys.modules.get(__name__.rpartition(".")[0])
    if package is None:
        return
    # gitruns.log is the run's bound method itself: it costs what run.log does.
    package.__dict__.update(
        run=run,
        config=config if run is None else run.config,
        summary=summary if run is None else run.summary,
        log=log if run is None else run.log,
    )


def _finish_all() -> None:
    code = _exit_code or 0
    for run in reversed(active_runs()):
        try:
            run.finish(exit_code=code)
        except GitRunsError as exc:
            logger.error("could not finish run %s at exit: %s", run.path, exc)


def active_runs() -> list[Run]:
    """Runs of this process that are not finished yet, oldest first."""
    with _active_lock:
        return list(_active)


def _require(what: str) -> Run:
    run = _current
    if run is None:
        raise GitRunsError(
            f"no run is active: call gitruns.init() before gitruns.{what}"
        )
    return run


class _NoRun:
    """``gitruns.config`` or ``gitruns.summary`` while no run is active.

    It reaches the current run if one has started since it was imported
    (``from gitruns import config``), else it raises a clear error.
    """

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def _target(self) -> Any:
        return getattr(_require(self._name), self._name)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return getattr(self._target(), key)

    def __setattr__(self, key: str, value: Any) -> None:
        setattr(self._target(), key, value)

    def __getitem__(self, key: str) -> Any:
        return self._target()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._target()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._target()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._target()

    def __iter__(self) -> Iterator[str]:
        return iter(self._target())

    def __len__(self) -> int:
        return len(self._target())

    def __repr__(self) -> str:
        run = _current
        if run is None:
            return f"<gitruns.{self._name}: no run is active>"
        return repr(getattr(run, self._name))


#: The current run's config (``wandb.config``); init() rebinds it.
config: Any = _NoRun("config")

#: The current run's summary (``wandb.summary``); init() rebinds it.
summary: Any = _NoRun("summary")


def log(
    data: Mapping[str, Any],
    step: int | None = None,
    commit: bool | None = None,
    sync: bool | None = None,
    *,
    timestamp: float | None = None,
) -> None:
    """Log to the current run; see :meth:`Run.log`.

    init() rebinds ``gitruns.log`` to the run's own ``log``, so this function
    only serves a name imported before (``from gitruns import log``).

    Raises:
        GitRunsError: if no run is active.
    """
    _require("log()").log(data, step, commit, sync, timestamp=timestamp)


def define_metric(
    name: str,
    step_metric: str | None = None,
    step_sync: bool | None = None,
    hidden: bool | None = None,
    summary: str | None = None,
    goal: str | None = None,
    overwrite: bool | None = None,
) -> dict[str, Any]:
    """Declare a metric of the current run; see :meth:`Run.define_metric`."""
    return _require("define_metric()").define_metric(
        name, step_metric, step_sync, hidden, summary, goal, overwrite
    )


def save(
    glob_str: str | os.PathLike[str],
    base_path: str | os.PathLike[str] | None = None,
    policy: str = "live",
) -> list[str]:
    """Keep small files in the current run's tree; see :meth:`Run.save`."""
    return _require("save()").save(glob_str, base_path, policy)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    """Finish the current run, if there is one; see :meth:`Run.finish`."""
    run = _current
    if run is not None:
        run.finish(exit_code, quiet)


def watch(*args: Any, **kwargs: Any) -> None:
    """Accepted for W&B scripts; gitruns logs no gradients or parameters."""
    _note_once("watch", "watch() is accepted and does nothing in gitruns")


def unwatch(*args: Any, **kwargs: Any) -> None:
    """Accepted for W&B scripts; does nothing."""


def login(*args: Any, **kwargs: Any) -> bool:
    """Accepted for W&B scripts: runs live in Git, there is nothing to log in to."""
    return True


def setup(*args: Any, **kwargs: Any) -> None:
    """Accepted for W&B scripts; does nothing."""


# -- init ---------------------------------------------------------------------


def init(
    project: str | None = None,
    entity: str | None = None,
    name: str | None = None,
    id: str | None = None,  # noqa: A002 - W&B's name
    config: Any = None,
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
    *,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - W&B's name
    mode: str | None = None,
    reinit: str | bool | None = None,
    settings: Settings | Mapping[str, Any] | None = None,
    config_exclude_keys: list[str] | None = None,
    config_include_keys: list[str] | None = None,
    allow_val_change: bool | None = None,
    anonymous: str | None = None,
    sync_tensorboard: bool | None = None,
    tensorboard: bool | None = None,
    monitor_gym: bool | None = None,
    magic: Any = None,
    force: bool | None = None,
    **writer_settings: Any,
) -> Run:
    """Start a run, resume one, fork one at a step, or rewind one in place.

    The run becomes ``gitruns.run`` (with ``gitruns.config``, ``.summary`` and
    ``.log``) unless ``reinit="create_new"``.

    Args:
        project: the project (default ``GITRUNS_PROJECT``, else ``uncategorized``).
        entity: accepted and recorded, as W&B's.
        name: a display name.
        id: the run id (default: 8 random base-36 characters).
        config: hyper-parameters (a dict, argparse Namespace or dataclass).
        tags: labels.
        notes: free text.
        fork_from: ``"<run>?_step=N"``: a new run holding the source's steps
            up to N, continuing at N + 1.
        resume: ``"allow"``, ``"must"`` or ``"never"`` (True is "allow") with
            ``id=``.
        resume_from: ``"<run>?_step=N"``: rewind that run to N and continue it.
        repo: the Git repository (see README: where runs live).
        group: W&B's run group.
        job_type: W&B's job type.
        source: where an imported run came from, kept in run.json.
        save_code: record the code commit and a patch of uncommitted changes
            (default True); True outside a Git work tree keeps the script.
        dir: the folder to find the repository from instead of the working
            directory (when neither ``repo`` nor ``GITRUNS_REPO`` is given).
        mode: ``online`` and ``offline`` both log locally; ``disabled`` returns
            a run on which every call does nothing (default ``GITRUNS_MODE``).
        reinit: what to do while this process has a run open: ``True`` /
            ``"finish_previous"`` finishes it first, ``False`` /
            ``"return_previous"`` returns it, ``"create_new"`` starts another
            without making it current; the default starts another and makes
            it current.
        settings: a :class:`Settings` or a dict; keywords win over it.
        config_exclude_keys: config keys to leave out.
        config_include_keys: the only config keys to keep.
        allow_val_change: let config keys change value later.
        anonymous: accepted for W&B scripts; there are no accounts.
        sync_tensorboard: accepted and ignored, with a warning.
        tensorboard: W&B's old name of ``sync_tensorboard``.
        monitor_gym: accepted and ignored, with a warning.
        magic: accepted for W&B scripts; ignored.
        force: accepted for W&B scripts; ignored.
        **writer_settings: window, flush_interval, fsync, background, float32
            (store float metrics as float32: half the bytes, rounded values).

    Raises:
        GitRunsError: subclasses name what was wrong and what to do.
        TypeError: for a keyword init() does not know.
    """
    # Settings: keywords, then settings=, then GITRUNS_* variables.
    unknown = sorted(set(writer_settings) - set(WRITER_SETTINGS))
    if unknown:
        raise TypeError(f"init() got an unexpected keyword argument {unknown[0]!r}")
    chosen = settings_dict(settings)
    mode = parse_mode(mode or chosen.get("mode") or env_mode() or "online")
    reinit_mode = parse_reinit(reinit if reinit is not None else chosen.get("reinit"))
    if save_code is None:
        save_code = chosen.get("save_code")
    # A window given here must match a resumed or forked run's own.
    window = writer_settings.get("window", chosen.get("window"))
    options = {}
    for key in WRITER_SETTINGS:
        value = writer_settings.get(key, chosen.get(key))
        if value is None:
            value = env_setting(key)
        if value is not None:
            options[key] = value
    for flag, given in (
        ("sync_tensorboard", sync_tensorboard or tensorboard),
        ("monitor_gym", monitor_gym),
    ):
        if given:
            logger.warning(
                "init(%s=True) is ignored: gitruns logs only what log() is given", flag
            )

    # Config: what the script passed, less the keys it asked to leave out.
    if config_exclude_keys is not None and config_include_keys is not None:
        raise InvalidArgumentError(
            "config_include_keys",
            config_include_keys,
            "pass config_include_keys or config_exclude_keys, not both",
        )
    start_config = as_mapping(config, "config")
    if config_include_keys is not None:
        start_config = {
            k: v for k, v in start_config.items() if k in config_include_keys
        }
    if config_exclude_keys is not None:
        start_config = {
            k: v for k, v in start_config.items() if k not in config_exclude_keys
        }
    start_config = {str(k): plain_value(v) for k, v in start_config.items()}

    # Runs this process already has open.
    open_runs = active_runs()
    if open_runs and reinit_mode == "return_previous":
        logger.info("init(): returning the open run %s", open_runs[-1].path)
        return open_runs[-1]
    if reinit_mode == "finish_previous":
        for previous in reversed(open_runs):
            previous.finish()
    publish = reinit_mode != "create_new"

    if project is None:
        project = env_project()
    if mode == "disabled":
        ref = RunRef(project, new_run_id() if id is None else id)
        info = new_run_info(
            ref,
            WriterOptions(),
            name=name,
            tags=tags,
            notes=notes,
            group=group,
            job_type=job_type,
            entity=entity,
            source=source,
        )
        disabled = DisabledRun(ref, info, start_config)
        _remember(disabled, publish)
        return disabled

    started = _open_run(
        project=project,
        entity=entity,
        name=name,
        run_id=id,
        config=start_config,
        tags=tags,
        notes=notes,
        fork_from=fork_from,
        resume=resume,
        resume_from=resume_from,
        store=open_store(repo, None if dir is None else Path(dir), env_repo=env_repo()),
        group=group,
        job_type=job_type,
        source=source,
        save_code=save_code,
        options=WriterOptions(**options),
        window=window,
        mode=mode,
        allow_val_change=bool(allow_val_change),
    )
    _remember(started, publish)
    return started


def _open_run(
    *,
    project: str,
    entity: str | None,
    name: str | None,
    run_id: str | None,
    config: dict[str, Any],
    tags: Any,
    notes: str | None,
    fork_from: str | None,
    resume: str | bool | None,
    resume_from: str | None,
    store: RunStore,
    group: str | None,
    job_type: str | None,
    source: Mapping[str, Any] | None,
    save_code: bool | None,
    options: WriterOptions,
    window: int | None,
    mode: str,
    allow_val_change: bool,
) -> Run:
    if fork_from is not None and resume_from is not None:
        raise InvalidArgumentError(
            "fork_from", fork_from, "pass fork_from or resume_from, not both"
        )

    def same_window(ref: RunRef, actual: int, what: str) -> None:
        # A run's window is fixed for its life, and forks inherit it.
        if window is not None and window != actual:
            raise InvalidArgumentError(
                "window",
                window,
                f"{what} {ref.path} has window {actual}, fixed for its life; "
                "leave window out",
            )

    def opened(ref: RunRef, what: str) -> RunWriter:
        writer = RunWriter.open(store, ref, options)
        try:
            same_window(ref, writer.window, what)
        except BaseException:
            writer.abandon()
            raise
        return writer

    def started(ref: RunRef, writer: RunWriter, resumed: bool, **meta: Any) -> Run:
        run = Run(
            store,
            ref,
            writer,
            mode=mode,
            resumed=resumed,
            allow_val_change=allow_val_change,
        )
        if meta.get("name"):
            run.name = meta["name"]
        if meta.get("config"):
            # init()'s own config is the script's latest word, even on resume;
            # but a value it changes is said, as the steps already logged ran
            # with the old one (an argparse default, often).
            changed = run.config.changed_by(meta["config"]) if resumed else {}
            if changed:
                logger.warning(
                    "run %s: resumed with a config that changes %s; config.json "
                    "now holds the new values, though the steps already logged "
                    "ran with the old ones (pass the run's own values to keep them)",
                    ref.path,
                    ", ".join(
                        f"{k} from {a!r} to {b!r}" for k, (a, b) in changed.items()
                    ),
                )
            run.config.update(meta["config"], allow_val_change=True)
        if meta.get("tags") is not None:
            run.tags = meta["tags"]
        if meta.get("notes") is not None:
            run.notes = meta["notes"]
        return run

    if resume_from is not None:
        point = ForkPoint.parse(resume_from)
        ref = store.resolve(point.run)
        if run_id is not None and run_id != ref.run_id:
            raise InvalidArgumentError(
                "id", run_id, f"resume_from names run {ref.path}"
            )
        writer = opened(ref, "the rewound run")
        try:
            rewind_run(store, ref, point)
            writer.reload()
        except BaseException:
            writer.abandon()
            raise
        return started(
            ref, writer, True, name=name, config=config, tags=tags, notes=notes
        )

    project = check_name("project", project)
    if resume == "must" and run_id is None:
        raise InvalidArgumentError(
            "resume", resume, "pass id= to name the run to resume"
        )
    ref = RunRef(
        project, check_name("run id", run_id) if run_id is not None else new_run_id()
    )
    exists = store.tip(ref) is not None
    if run_id is None and resume in (True, "auto", "allow"):
        logger.warning(
            "init(resume=%r) without id= starts a new run (%s): gitruns does not "
            "pick the last run itself; pass id= to resume one",
            resume,
            ref.path,
        )
    if resume is True or resume == "auto":
        resume = "allow"
    if resume not in (None, False, "allow", "must", "never"):
        raise InvalidArgumentError("resume", resume, "use 'allow', 'must' or 'never'")

    if exists and fork_from is None:
        if resume in (None, False, "never"):
            raise RunExistsError(ref.path)
        writer = opened(ref, "the resumed run")
        logger.info("resumed run %s at step %d", ref.path, writer.step)
        return started(
            ref, writer, True, name=name, config=config, tags=tags, notes=notes
        )
    if resume == "must" and fork_from is None:
        raise RunNotFoundError(ref.path, str(store.git_dir))
    if exists:
        raise RunExistsError(
            ref.path, "a fork is a new run: leave id= out, or choose another id"
        )

    info = new_run_info(
        ref,
        options,
        name=name,
        tags=tags,
        notes=notes,
        group=group,
        job_type=job_type,
        entity=entity,
        source=source,
    )
    patch = None
    if save_code is not False:
        info["code"], patch = code_state(Path.cwd())
    if fork_from is not None:
        point = ForkPoint.parse(fork_from)
        parent = store.resolve(point.run)
        tip = store.tip(parent)
        if window is not None and tip is not None:
            same_window(
                parent, store.read_snapshot(tip, parent).window, "the fork source"
            )
        fork_run(store, parent, point, ref, info, config)
    else:
        create_run(store, ref, info, config, code_patch=patch)
    run = started(ref, RunWriter.open(store, ref, options), False)
    if save_code is True and info["code"] is None:
        _keep_script(run)
    return run


def _keep_script(run: Run) -> None:
    # save_code=True outside a Git work tree: keep the script itself, as W&B does.
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if not script or not os.path.isfile(script):
        return
    try:
        run._keep_files(
            script, os.path.dirname(os.path.abspath(script)), "code/", strict=False
        )
    except GitRunsError as exc:
        logger.warning("run %s: could not keep the script: %s", run.path, exc)


def new_run_info(
    ref: RunRef,
    options: WriterOptions,
    *,
    name: str | None = None,
    tags: Any = None,
    notes: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    entity: str | None = None,
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run.json of a new run, state ``running`` and no steps yet.

    Args:
        ref: the run.
        options: the writer settings (its window, float32).
        name: display name; the run id when None.
        tags: labels, kept as str.
        notes: free text.
        group: W&B's group.
        job_type: W&B's job type.
        entity: W&B's entity, kept for reference.
        source: where an imported run came from.
    """
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
        **({} if options.float32 is None else {"float32": options.float32}),
        "host": socket.gethostname(),
        "code": None,
        "fork_from": None,
        "rewinds": [],
        "tags": [str(t) for t in tags or []],
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
