"""A run's config and summary as a script holds them: W&B's dict-likes."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from gitruns.chunk import Digest
from gitruns.errors import InvalidArgumentError
from gitruns.store import MAX_JSON_DEPTH
from gitruns.summary import summarize
from gitruns.values import check_unicode, identical

logger = logging.getLogger(__name__)


_CONTAINERS = (Mapping, list, tuple, set, frozenset)


def plain_value(value: Any, depth: int = 0) -> Any:
    """A config or summary value as JSON stores it (numpy, enums, paths...).

    Raises:
        InvalidArgumentError: for lists and dicts nested deeper than a run's
            JSON files may be (or holding themselves), which readers refuse.
    """
    # A value sits in config.json or summary.json, an object itself: its
    # lists and dicts start at depth 2 there.
    if depth + 2 > MAX_JSON_DEPTH and isinstance(value, _CONTAINERS):
        raise InvalidArgumentError(
            "config",
            f"<{type(value).__name__}>",
            f"it nests lists and dicts more than {MAX_JSON_DEPTH} deep (or holds "
            "itself); flatten it",
        )
    deeper = depth + 1
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            # Subclasses (IntEnum, numpy.float64) become their plain kind.
            return plain(value)
    if isinstance(value, enum.Enum):
        return plain_value(value.value, deeper)
    if isinstance(value, Mapping):
        return {str(k): plain_value(v, deeper) for k, v in value.items()}
    if isinstance(value, argparse.Namespace):
        return plain_value(vars(value), deeper)
    if isinstance(value, (list, tuple)):
        return [plain_value(v, deeper) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((plain_value(v, deeper) for v in value), key=repr)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_value(dataclasses.asdict(value), deeper)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        # numpy arrays and scalars, tensors: their Python values.
        return plain_value(tolist(), deeper)
    logger.debug("storing %s value %r as its str()", kind.__name__, value)
    return str(value)


def as_mapping(data: Any, what: str) -> dict[str, Any]:
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


def _change(
    data: dict[str, Any],
    new: Mapping[str, Any] | None,
    on_change: Callable[[dict[str, Any]], None],
    lock: threading.RLock,
    *,
    remove: str | None = None,
) -> None:
    """Merge ``new`` into ``data`` (or remove a key) and journal it.

    A refusal undoes the change: the writer refuses what it cannot store (a
    config over the size readers take), and the run's config or summary
    then stays as it was. Under ``lock``, so that threads changing one run
    journal their snapshots in the order they changed it: a snapshot taken
    before another thread's change and journaled after it would undo it.

    Raises:
        KeyError: ``remove`` names no key.
    """
    with lock:
        before = dict(data)
        if remove is not None:
            del data[remove]
        if new:
            data.update(new)
        try:
            on_change(dict(data))
        except BaseException:
            data.clear()
            data.update(before)
            raise


def same_value(a: Any, b: Any) -> bool:
    """Whether a config value is unchanged (a NaN is unchanged by a NaN)."""
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
        lock: held while the config changes (the run's own, shared with its
            summary).
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        on_change: Callable[[dict[str, Any]], None],
        allow_val_change: bool = False,
        lock: threading.RLock | None = None,
    ) -> None:
        object.__setattr__(self, "_data", dict(data))
        object.__setattr__(self, "_on_change", on_change)
        object.__setattr__(self, "_allow_val_change", allow_val_change)
        object.__setattr__(self, "_lock", lock or threading.RLock())

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        _change(self._data, None, self._on_change, self._lock, remove=key)

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
        new = {**as_mapping(data, "config"), **more}
        if not new:
            return
        allow = self._allow_val_change if allow_val_change is None else allow_val_change
        clean = {str(k): plain_value(v) for k, v in new.items()}
        check_unicode(clean, "config")
        # Checked and changed under the lock: two threads setting one new
        # key to two values must not both pass the check.
        with self._lock:
            if not allow:
                for key, value in clean.items():
                    if key in self._data and not same_value(self._data[key], value):
                        raise InvalidArgumentError(
                            f"config.{key}",
                            value,
                            f"it is already {self._data[key]!r}; pass "
                            "allow_val_change=True to config.update() or init() "
                            "to change it",
                        )
            _change(self._data, clean, self._on_change, self._lock)

    def changed_by(self, data: Any) -> dict[str, tuple[Any, Any]]:
        """The keys ``data`` would give another value: key -> (current, new).

        Another type is another value (1 and 1.0), as the run stores it.
        """
        clean = {str(k): plain_value(v) for k, v in as_mapping(data, "config").items()}
        with self._lock:
            return {
                key: (self._data[key], value)
                for key, value in clean.items()
                if key in self._data and not identical(self._data[key], value)
            }

    def setdefaults(self, data: Any) -> None:
        """Set the keys that have no value yet (W&B's sweep idiom)."""
        with self._lock:
            missing = {
                k: v
                for k, v in as_mapping(data, "config").items()
                if k not in self._data
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
        lock: held while the overrides or the definitions change (the run's
            own, which define_metric() holds too).
    """

    def __init__(
        self,
        totals: Callable[[], Mapping[str, Digest]],
        definitions: Mapping[str, Mapping[str, Any]],
        overrides: Mapping[str, Any],
        on_change: Callable[[dict[str, Any]], None],
        lock: threading.RLock | None = None,
    ) -> None:
        object.__setattr__(self, "_totals", totals)
        object.__setattr__(self, "_definitions", definitions)
        object.__setattr__(self, "_overrides", dict(overrides))
        object.__setattr__(self, "_on_change", on_change)
        object.__setattr__(self, "_lock", lock or threading.RLock())

    def _current(self) -> dict[str, Any]:
        with self._lock:
            definitions, overrides = dict(self._definitions), dict(self._overrides)
        return summarize(self._totals(), definitions, overrides)

    def __getitem__(self, key: str) -> Any:
        return self._current()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        plain = plain_value(value)
        check_unicode({str(key): plain}, "summary")
        _change(self._overrides, {str(key): plain}, self._on_change, self._lock)

    def __delitem__(self, key: str) -> None:
        _change(self._overrides, None, self._on_change, self._lock, remove=key)

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
