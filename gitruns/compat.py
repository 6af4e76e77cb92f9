"""W&B names a script may use that gitruns accepts without storing, or lacks.

Media objects (:class:`Image`, :class:`Table`...) can be made, and a logged
key holding one is left out with a warning; names such as ``log_artifact``
raise an AttributeError that says what to do instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

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


def is_media(value: Any) -> bool:
    """Whether ``value`` is a W&B media object, or a list of them (a gallery)."""
    if isinstance(value, Media):
        return True
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(v, Media) for v in value)
    )


def media_kind(value: Any) -> str:
    """What kind of media ``value`` is, for the warning that leaves it out."""
    if isinstance(value, Media):
        return value.kind
    return f"{value[0].kind} list"


def without_media(data: Any, run: str, prefix: str = "") -> Any:
    """``data`` without Media values (nested too), warning once per key."""
    if not isinstance(data, Mapping):
        return data
    kept: dict[Any, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if is_media(value):
            if (run, name) not in _warned_media:
                _warned_media.add((run, name))
                logger.warning(
                    "run %s: %r is a wandb.%s, which gitruns does not store; "
                    "the key is left out (log numbers, str or bools instead)",
                    run,
                    name,
                    media_kind(value),
                )
            continue
        if isinstance(value, Mapping):
            value = without_media(value, run, f"{name}/")
        kept[key] = value
    return kept
