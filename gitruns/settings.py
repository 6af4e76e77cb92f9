"""init()'s settings: keywords, ``settings=``, and ``GITRUNS_*`` variables.

Part of the top layer: every ``GITRUNS_*`` variable is read here, and the
layers below take what it found as arguments. (The CLI also passes Git's own
``GIT_SSH_COMMAND`` to the remote layer.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from gitruns.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

DEFAULT_PROJECT = "uncategorized"

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


def settings_dict(settings: Settings | Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings gitruns reads from ``settings=``; W&B-only ones noted once."""
    if settings is None:
        return {}
    values = settings.to_dict() if isinstance(settings, Settings) else dict(settings)
    for key in sorted(set(values) - _KNOWN_SETTINGS - _reported_settings):
        _reported_settings.add(key)
        logger.debug("setting %s is not used by gitruns; ignored", key)
    return {k: v for k, v in values.items() if k in _KNOWN_SETTINGS}


def env_repo() -> str | None:
    """``GITRUNS_REPO``: the repository runs go to when no ``repo=`` is given."""
    return os.environ.get("GITRUNS_REPO") or None


def env_mode() -> str | None:
    """``GITRUNS_MODE``: ``online``, ``offline`` or ``disabled``, if set."""
    return os.environ.get("GITRUNS_MODE") or None


def env_project() -> str:
    """``GITRUNS_PROJECT``, else the project of runs that name none."""
    return os.environ.get("GITRUNS_PROJECT") or DEFAULT_PROJECT


def env_setting(name: str) -> Any:
    """A writer setting from ``GITRUNS_<NAME>``, parsed, or None if unset.

    Raises:
        InvalidArgumentError: for a value of the wrong kind.
    """
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


def parse_mode(value: Any) -> str:
    """``mode=`` as one of :data:`MODES` (W&B's old names too)."""
    mode = _MODE_ALIASES.get(value, value)
    if mode not in MODES:
        raise InvalidArgumentError("mode", value, f"use one of {', '.join(MODES)}")
    return str(mode)


def parse_reinit(value: Any) -> str:
    """``reinit=`` as one of :data:`REINIT_MODES` (True and False too)."""
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
