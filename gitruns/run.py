"""The Run a training script holds, ``init``, and W&B's module-level state.

This is the top layer: it alone reads environment variables (``GITRUNS_*``)
and process-wide state (the current run, atexit, the exception hook and
``sys.exit``). ``gitruns.run``, ``gitruns.config``, ``gitruns.summary`` and
``gitruns.log`` name the current run's objects, as ``wandb.run`` and friends
do, so a typical W&B script runs on ``import gitruns as wandb``.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import enum
import glob
import io
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, NoReturn

from dulwich.objects import Tree

from gitruns.chunk import Digest
from gitruns.errors import (
    GitRunsError,
    InvalidArgumentError,
    InvalidValueError,
    RepositoryError,
    RunExistsError,
    RunNotFoundError,
    mapped_errors,
)
from gitruns.fork import create_run, fork_run, rewind_run, split_spec
from gitruns.refs import RunRef, Sha, check_name, new_run_id
from gitruns.store import FILE_MODE, TREE_MODE, RunStore, locate_repository
from gitruns.summary import summarize, summary_modes
from gitruns.values import clean_row
from gitruns.writer import RunWriter, WriterOptions, now_iso

logger = logging.getLogger(__name__)

DEFAULT_PROJECT = "uncategorized"
MAX_PATCH = 1 << 20

#: The largest file :func:`save` keeps in a run's tree; Git is no place for
#: checkpoints.
MAX_SAVE_BYTES = 1 << 20

#: The folder of a run's tree that holds the files :func:`save` keeps.
FILES_TREE = b"files"

#: Settings init() takes as keywords (or GITRUNS_<NAME> in the environment).
WRITER_SETTINGS = {
    "window": int,
    "flush_interval": float,
    "fsync": str,
    "background": bool,
    "float32": bool,
}

#: ``mode=`` values; W&B's old names map onto them.
MODES = ("online", "offline", "disabled")
_MODE_ALIASES = {"run": "online", "dryrun": "offline"}

#: ``reinit=`` values, as W&B names them (True and False are older spellings).
REINIT_MODES = ("default", "return_previous", "finish_previous", "create_new")

#: Settings gitruns reads; any other is a W&B setting it accepts and ignores.
_KNOWN_SETTINGS = frozenset({"mode", "reinit", "save_code", *WRITER_SETTINGS})

#: W&B names gitruns does not offer, and what to do instead.
UNSUPPORTED = {
    "Artifact": "keep large files in Git LFS or DVC beside the code",
    "log_artifact": "keep large files in Git LFS or DVC beside the code",
    "use_artifact": "keep large files in Git LFS or DVC beside the code",
    "log_model": "keep checkpoints in Git LFS or DVC beside the code",
    "use_model": "keep checkpoints in Git LFS or DVC beside the code",
    "link_model": "keep checkpoints in Git LFS or DVC beside the code",
    "sweep": "loop over configs in your script; each init() is a run",
    "agent": "loop over configs in your script; each init() is a run",
    "controller": "loop over configs in your script; each init() is a run",
    "restore": "read saved files with `git show runs/<project>/<id>:files/<name>`",
    "alert": "there is no server to send alerts; log a metric instead",
    "plot": "plot from Api().run(...).history() with matplotlib",
    "mark_preempting": "a killed run is recovered from its journal on next open",
    "log_code": "init(save_code=True) records the code commit and its patch",
}


def unsupported(name: str, owner: str) -> AttributeError:
    """The AttributeError for ``owner.name``, with advice if W&B has the name."""
    advice = UNSUPPORTED.get(name)
    if advice is None:
        return AttributeError(f"{owner!r} has no attribute {name!r}")
    return AttributeError(
        f"gitruns does not support W&B's {name}: {advice} (README: W&B compatibility)"
    )


# -- settings -----------------------------------------------------------------


class Settings:
    """Settings for :func:`init`, in the place of ``wandb.Settings``.

    gitruns reads ``mode``, ``reinit``, ``save_code`` and the writer settings
    (``window``, ``flush_interval``, ``fsync``, ``background``, ``float32``).
    Every other keyword (W&B has many: ``start_method``, ``console``,
    ``silent``...) is accepted, kept, and reported once at DEBUG when a run
    starts with it.

    Args:
        **values: setting name -> value.
    """

    def __init__(self, **values: Any) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        if name in _KNOWN_SETTINGS:
            return None
        raise AttributeError(f"Settings has no {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        self._values[name] = value

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def update(self, values: Mapping[str, Any] | None = None, **more: Any) -> None:
        """Set several settings at once."""
        self._values.update(values or {}, **more)

    def to_dict(self) -> dict[str, Any]:
        """The settings given, as a dict."""
        return dict(self._values)


_reported_settings: set[str] = set()


def _settings_dict(settings: Settings | Mapping[str, Any] | None) -> dict[str, Any]:
    if settings is None:
        return {}
    values = settings.to_dict() if isinstance(settings, Settings) else dict(settings)
    for key in sorted(set(values) - _KNOWN_SETTINGS - _reported_settings):
        _reported_settings.add(key)
        logger.debug("setting %s is not used by gitruns; ignored", key)
    return {k: v for k, v in values.items() if k in _KNOWN_SETTINGS}


def _env_setting(name: str) -> Any:
    text = os.environ.get(f"GITRUNS_{name.upper()}")
    if text is None:
        return None
    kind = WRITER_SETTINGS[name]
    if kind is bool:
        word = text.strip().lower()
        if word in _TRUE_WORDS or word in _FALSE_WORDS:
            return word in _TRUE_WORDS
        raise InvalidArgumentError(
            f"GITRUNS_{name.upper()}", text, "set it to 1 or 0 (true or false)"
        )
    try:
        return kind(text)
    except ValueError:
        raise InvalidArgumentError(
            f"GITRUNS_{name.upper()}", text, f"set it to {_KIND_WORDS[kind]}"
        ) from None


_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
_KIND_WORDS = {int: "a whole number", float: "a number of seconds", str: "a word"}


def _writer_options(options: dict[str, Any]) -> WriterOptions:
    # The writer checks its settings; a refusal names the argument.
    try:
        return WriterOptions(**options)
    except ValueError as exc:
        name = str(exc).split(" ", 1)[0]
        raise InvalidArgumentError(name, options.get(name), str(exc)) from None


def _mode(value: Any) -> str:
    mode = _MODE_ALIASES.get(value, value)
    if mode not in MODES:
        raise InvalidArgumentError("mode", value, f"use one of {', '.join(MODES)}")
    return str(mode)


def _reinit(value: Any) -> str:
    if value is None:
        return "default"
    if value is True:
        return "finish_previous"
    if value is False:
        return "return_previous"
    if value not in REINIT_MODES:
        raise InvalidArgumentError(
            "reinit", value, f"use True, False or one of {', '.join(REINIT_MODES)}"
        )
    return str(value)


# -- config and summary -------------------------------------------------------


def plain_value(value: Any) -> Any:
    """A config or summary value as JSON stores it (numpy, enums, paths...)."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            # Subclasses (IntEnum, numpy.float64) become their plain kind.
            return plain(value)
    if isinstance(value, enum.Enum):
        return plain_value(value.value)
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, argparse.Namespace):
        return plain_value(vars(value))
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((plain_value(v) for v in value), key=repr)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_value(dataclasses.asdict(value))
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        # numpy arrays and scalars, tensors: their Python values.
        return plain_value(tolist())
    logger.debug("storing %s value %r as its str()", kind.__name__, value)
    return str(value)


def _as_mapping(data: Any, what: str) -> dict[str, Any]:
    """What a config may be given as: a dict, argparse Namespace, absl flags..."""
    if data is None:
        return {}
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, argparse.Namespace):
        return dict(vars(data))
    flags = getattr(data, "flag_values_dict", None)
    if callable(flags):
        return dict(flags())
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.asdict(data)
    try:
        return dict(data)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            what, data, "pass a dict, an argparse Namespace or a dataclass"
        ) from None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


class Config(MutableMapping[str, Any]):
    """A run's hyper-parameters: a dict with attribute access, as W&B's config.

    Changing a key that already has another value is refused unless
    ``allow_val_change`` is given (here or to init()), as W&B does, so that a
    typo cannot silently overwrite a hyper-parameter.

    Args:
        data: the initial keys.
        on_change: called with the whole dict after every change.
        allow_val_change: let every change through.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        on_change: Callable[[dict[str, Any]], None],
        allow_val_change: bool = False,
    ) -> None:
        object.__setattr__(self, "_data", dict(data))
        object.__setattr__(self, "_on_change", on_change)
        object.__setattr__(self, "_allow_val_change", allow_val_change)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._on_change(dict(self._data))

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["_data"][key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __repr__(self) -> str:
        return f"Config({self._data!r})"

    def update(  # type: ignore[override]
        self,
        data: Any = None,
        allow_val_change: bool | None = None,
        **more: Any,
    ) -> None:
        """Merge keys in; dicts, argparse Namespaces and dataclasses all work.

        Args:
            data: the keys to set.
            allow_val_change: allow changing keys that have another value.
            **more: more keys.

        Raises:
            InvalidValueError: for a changed value without allow_val_change.
        """
        new = {**_as_mapping(data, "config"), **more}
        if not new:
            return
        allow = self._allow_val_change if allow_val_change is None else allow_val_change
        clean = {str(k): plain_value(v) for k, v in new.items()}
        if not allow:
            for key, value in clean.items():
                if key in self._data and not _same(self._data[key], value):
                    raise InvalidArgumentError(
                        f"config.{key}",
                        value,
                        f"it is already {self._data[key]!r}; pass "
                        "allow_val_change=True to config.update() or init() "
                        "to change it",
                    )
        self._data.update(clean)
        self._on_change(dict(self._data))

    def setdefaults(self, data: Any) -> None:
        """Set the keys that have no value yet (W&B's sweep idiom)."""
        missing = {
            k: v for k, v in _as_mapping(data, "config").items() if k not in self._data
        }
        self.update(missing)

    def as_dict(self) -> dict[str, Any]:
        """A plain copy."""
        return dict(self._data)


class Summary(MutableMapping[str, Any]):
    """A run's summary: derived from its history; values set here win.

    Args:
        totals: returns the digests of everything logged so far.
        definitions: the run's define_metric rules (read at every access).
        overrides: values set by the user.
        on_change: called with every user-set value after a change.
    """

    def __init__(
        self,
        totals: Callable[[], Mapping[str, Digest]],
        definitions: Mapping[str, Mapping[str, Any]],
        overrides: Mapping[str, Any],
        on_change: Callable[[dict[str, Any]], None],
    ) -> None:
        object.__setattr__(self, "_totals", totals)
        object.__setattr__(self, "_definitions", definitions)
        object.__setattr__(self, "_overrides", dict(overrides))
        object.__setattr__(self, "_on_change", on_change)

    def _current(self) -> dict[str, Any]:
        return summarize(self._totals(), self._definitions, self._overrides)

    def __getitem__(self, key: str) -> Any:
        return self._current()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._overrides[str(key)] = plain_value(value)
        self._on_change(dict(self._overrides))

    def __delitem__(self, key: str) -> None:
        del self._overrides[key]
        self._on_change(dict(self._overrides))

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"summary has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __repr__(self) -> str:
        return f"Summary({self._current()!r})"

    def as_dict(self) -> dict[str, Any]:
        """The summary as a plain dict."""
        return self._current()


# -- media: accepted so scripts run, never stored ------------------------------


class Media:
    """A W&B media object: accepted so that a script runs, never stored.

    ``log()`` leaves out a key whose value is one of these and warns once per
    key; every other key of the call is logged as usual.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.kind = type(self).__name__

    def __repr__(self) -> str:
        return f"<gitruns.{self.kind}: not stored>"


class Image(Media):
    """W&B's ``Image``; not stored (see :class:`Media`)."""


class Audio(Media):
    """W&B's ``Audio``; not stored (see :class:`Media`)."""


class Video(Media):
    """W&B's ``Video``; not stored (see :class:`Media`)."""


class Html(Media):
    """W&B's ``Html``; not stored (see :class:`Media`)."""


class Histogram(Media):
    """W&B's ``Histogram``; not stored (log summary statistics as metrics)."""


class Object3D(Media):
    """W&B's ``Object3D``; not stored (see :class:`Media`)."""


class Table(Media):
    """W&B's ``Table``; not stored (log one metric per column instead)."""

    def add_data(self, *values: Any) -> None:
        """Accepted and dropped."""

    def add_column(self, name: str, data: Any, **kwargs: Any) -> None:
        """Accepted and dropped."""


_warned_media: set[tuple[str, str]] = set()


def _is_media(value: Any) -> bool:
    # A W&B media object, or a list of them (a gallery of images).
    if isinstance(value, Media):
        return True
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(v, Media) for v in value)
    )


def _media_kind(value: Any) -> str:
    if isinstance(value, Media):
        return value.kind
    return f"{value[0].kind} list"


def _without_media(data: Any, run: str, prefix: str = "") -> Any:
    """``data`` without Media values (nested too), warning once per key."""
    if not isinstance(data, Mapping):
        return data
    kept: dict[Any, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if _is_media(value):
            if (run, name) not in _warned_media:
                _warned_media.add((run, name))
                logger.warning(
                    "run %s: %r is a wandb.%s, which gitruns does not store; "
                    "the key is left out (log numbers, str or bools instead)",
                    run,
                    name,
                    _media_kind(value),
                )
            continue
        if isinstance(value, Mapping):
            value = _without_media(value, run, f"{name}/")
        kept[key] = value
    return kept


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
        self.config = Config(
            snapshot.config,
            lambda data: self._set_meta(config=data),
            allow_val_change=allow_val_change,
        )
        overrides = {
            k: snapshot.summary.get(k) for k in self._info.get("summary_set", [])
        }
        self.summary = Summary(
            writer.live_totals,
            self._definitions,
            overrides,
            lambda data: self._set_meta(summary_overrides=data),
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
        self._info["name"] = str(value)
        self._set_meta(name=str(value))

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
        self._info["tags"] = tags
        self._set_meta(tags=tags)

    @property
    def notes(self) -> str:
        """Free text about the run."""
        return str(self._info.get("notes") or "")

    @notes.setter
    def notes(self, value: str) -> None:
        self._info["notes"] = str(value)
        self._set_meta(notes=str(value))

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
        try:
            row = clean_row(data, self._known)
        except InvalidValueError:
            # Off the hot path: drop media objects, or raise the error again.
            row = clean_row(_without_media(data, self.path), self._known)
        if step is not None and type(step) is not int:
            step = _as_step(step)
        self._writer.log(row, step, commit, timestamp)

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
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("define_metric", name, "name a metric or a glob")
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
        if not overwrite:
            rule = {**self._definitions.get(name, {}), **rule}
        self._definitions[name] = rule
        self._info["metrics"] = dict(self._definitions)
        self._set_meta(metrics=dict(self._definitions))
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
        files = self._saved_files()
        kept = []
        with mapped_errors(f"saving files into run {self.path}"):
            for path in paths:
                name = prefix + _tree_path(path, base)
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
            tree = _write_tree(self._store, files, path=pattern)
        self._extra[FILES_TREE] = (TREE_MODE, tree)
        self._set_meta(extra={FILES_TREE: (TREE_MODE, tree)})
        return kept

    def _saved_files(self) -> dict[str, Sha]:
        if self._files is None:
            self._files = {}
            entry = self._extra.get(FILES_TREE)
            if entry is not None and entry[0] == TREE_MODE:
                _read_tree(self._store, entry[1], "", self._files)
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


def _tree_path(path: str, base: str) -> str:
    """``path`` relative to ``base`` with / separators, checked for a Git tree."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
    parts = Path(relative).parts
    if not parts or parts[0] == ".." or os.path.isabs(relative):
        raise InvalidArgumentError(
            "save", path, f"it is outside base_path {base!r}; pass a base_path above it"
        )
    if any(part.lower() == ".git" for part in parts):
        raise InvalidArgumentError("save", path, "Git trees cannot hold a '.git' entry")
    return "/".join(parts)


def _write_tree(store: RunStore, files: Mapping[str, Sha], path: str) -> Sha:
    """Write ``files`` (tree path -> blob) as nested trees; return the root's id."""
    root: dict[str, Any] = {}
    for name, sha in files.items():
        *folders, leaf = name.split("/")
        node = root
        for folder in folders:
            child = node.setdefault(folder, {})
            if not isinstance(child, dict):
                raise InvalidArgumentError(
                    "save", path, f"{folder!r} is a file already"
                )
            node = child
        if isinstance(node.get(leaf), dict):
            raise InvalidArgumentError("save", path, f"{leaf!r} is a folder already")
        node[leaf] = sha

    def write(node: dict[str, Any]) -> Sha:
        tree = Tree()
        for name, child in node.items():
            if isinstance(child, dict):
                tree.add(name.encode(), TREE_MODE, write(child))
            else:
                tree.add(name.encode(), FILE_MODE, child)
        store.add(tree)
        return Sha(tree.id)

    return write(root)


def _read_tree(store: RunStore, sha: Sha, prefix: str, into: dict[str, Sha]) -> None:
    tree = store.repo.object_store[sha]
    if not isinstance(tree, Tree):
        return
    for name, mode, child in tree.iteritems():
        path = prefix + name.decode(errors="replace")
        if mode == TREE_MODE:
            _read_tree(store, Sha(child), path + "/", into)
        else:
            into[path] = Sha(child)


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


# -- repositories -------------------------------------------------------------

_open_stores: weakref.WeakSet[RunStore] = weakref.WeakSet()


def open_store(
    repo: str | os.PathLike[str] | None = None,
    start: Path | None = None,
    *,
    create: bool = True,
) -> RunStore:
    """Open the repository: repo=, GITRUNS_REPO, the enclosing one, or ./.gitruns.

    Args:
        repo: an explicit repository.
        start: the folder to search from instead of the working directory.
        create: make a bare repository there if there is none (writers do;
            readers should not turn a typo into an empty repository).
    """
    where = start or Path.cwd()
    env_repo = os.environ.get("GITRUNS_REPO")
    path, may_create = locate_repository(repo, env_repo, where)
    if not create and repo is None and not env_repo and not path.exists():
        # The embedded default, which only a writer creates.
        raise RepositoryError(
            f"no runs here yet: no Git repository encloses {where} and there is "
            f"no {path.name}; runs appear once gitruns.init() or `gitruns "
            "import` writes some, or pass --repo"
        )
    store = RunStore.open(path, create=create and may_create)
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
    chosen = _settings_dict(settings)
    mode = _mode(
        mode or chosen.get("mode") or os.environ.get("GITRUNS_MODE") or "online"
    )
    reinit_mode = _reinit(reinit if reinit is not None else chosen.get("reinit"))
    if save_code is None:
        save_code = chosen.get("save_code")
    # A window given here must match a resumed or forked run's own.
    window = writer_settings.get("window", chosen.get("window"))
    options = {}
    for key in WRITER_SETTINGS:
        value = writer_settings.get(key, chosen.get(key))
        if value is None:
            value = _env_setting(key)
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
    start_config = _as_mapping(config, "config")
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
        project = os.environ.get("GITRUNS_PROJECT") or DEFAULT_PROJECT
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
        store=open_store(repo, None if dir is None else Path(dir)),
        group=group,
        job_type=job_type,
        source=source,
        save_code=save_code,
        options=_writer_options(options),
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
            # init()'s own config is the script's latest word, even on resume.
            run.config.update(meta["config"], allow_val_change=True)
        if meta.get("tags") is not None:
            run.tags = meta["tags"]
        if meta.get("notes") is not None:
            run.notes = meta["notes"]
        return run

    if resume_from is not None:
        path, key, text = split_spec(resume_from)
        ref = store.resolve(path)
        if run_id is not None and run_id != ref.run_id:
            raise InvalidArgumentError(
                "id", run_id, f"resume_from names run {ref.path}"
            )
        writer = opened(ref, "the rewound run")
        try:
            rewind_run(store, ref, resume_from, key, text)
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
        path, key, text = split_spec(fork_from)
        parent = store.resolve(path)
        tip = store.tip(parent)
        if window is not None and tip is not None:
            same_window(parent, store.read_snapshot(tip).window, "the fork source")
        fork_run(store, parent, fork_from, key, text, ref, info, config)
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
