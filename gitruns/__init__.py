"""gitruns: experiment runs stored as Git branches, with W&B's names.

A training script calls :func:`init`, then :func:`log` per step and
:func:`finish`; ``import gitruns as wandb`` runs a typical W&B script.
:class:`Api` reads runs back, filters them and edits them. Every error is
a :class:`GitRunsError`; its subclasses (the tree in :mod:`gitruns.errors`)
are here too, so a script can catch :class:`StepOrderError` by name.
"""

import typing as _typing

from gitruns.api import Api
from gitruns.compat import Audio, Histogram, Html, Image, Object3D, Table, Video
from gitruns.compat import unsupported as _unsupported
from gitruns.errors import (
    AmbiguousRunError,
    ChunkFormatError,
    ChunkTooLargeError,
    ConflictError,
    DivergedError,
    ForkPointError,
    GitRunsError,
    ImportFormatError,
    InvalidArgumentError,
    InvalidNameError,
    InvalidValueError,
    MetricNotFoundError,
    MissingExtraError,
    RemoteError,
    RepositoryError,
    RunExistsError,
    RunLockedError,
    RunNotFoundError,
    StepOrderError,
    UnsupportedVersionError,
)
from gitruns.reader import RunView
from gitruns.run import (
    Run,
    config,
    define_metric,
    finish,
    init,
    log,
    login,
    save,
    setup,
    summary,
    unwatch,
    watch,
)
from gitruns.settings import Settings

__version__ = "0.1.0"

# W&B's module-level state: init() points these at the current run, finish()
# back here. ``run`` and ``summary`` shadow the submodules of those names, as
# ``wandb.run`` does: import from them by name (``from gitruns.run import Run``).
run: Run | None = None

__all__ = [
    "AmbiguousRunError",
    "Api",
    "Audio",
    "ChunkFormatError",
    "ChunkTooLargeError",
    "ConflictError",
    "DivergedError",
    "ForkPointError",
    "GitRunsError",
    "Histogram",
    "Html",
    "Image",
    "ImportFormatError",
    "InvalidArgumentError",
    "InvalidNameError",
    "InvalidValueError",
    "MetricNotFoundError",
    "MissingExtraError",
    "Object3D",
    "RemoteError",
    "RepositoryError",
    "Run",
    "RunExistsError",
    "RunLockedError",
    "RunNotFoundError",
    "RunView",
    "Settings",
    "StepOrderError",
    "Table",
    "UnsupportedVersionError",
    "Video",
    "__version__",
    "config",
    "define_metric",
    "finish",
    "init",
    "log",
    "login",
    "run",
    "save",
    "setup",
    "summary",
    "unwatch",
    "watch",
]


def __getattr__(name: str) -> _typing.NoReturn:
    # Only reached for names the package lacks: say which W&B ones and why.
    raise _unsupported(name, __name__)
