"""Run names and the Git ref names they map to, validated before use."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from dulwich.objects import ObjectID

from gitruns.errors import InvalidNameError

#: Every run branch lives under this prefix; nothing else in gitruns spells it.
RUNS_PREFIX = b"refs/heads/runs/"

#: A 40-hex-digit Git object id, as bytes: dulwich's own typed id, so that a
#: branch name and an object id cannot be swapped unnoticed.
Sha = ObjectID

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def check_name(kind: str, name: object) -> str:
    """Return ``name`` if it is a safe project or run id, else raise.

    Letters, digits, ``.``, ``_`` and ``-``; at most 64 characters; not
    starting with ``.`` or ``-``; no ``..``; not ending in ``.`` or ``.lock``.

    Raises:
        InvalidNameError: naming the rule that was broken.
    """
    reason = _broken_rule(name) if isinstance(name, str) else "must be a string"
    if reason is not None or not isinstance(name, str):
        raise InvalidNameError(
            kind,
            name,
            f"{reason}; use letters, digits, '.', '_' and '-' (at most 64, not "
            "starting with '.' or '-')",
        )
    return name


def _broken_rule(name: str) -> str | None:
    if not name:
        return "must not be empty"
    if len(name) > 64:
        return "must be at most 64 characters"
    if not _NAME.fullmatch(name):
        return "has a character that is not allowed"
    if name[0] in ".-":
        return "must not start with '.' or '-'"
    if ".." in name:
        return "must not contain '..'"
    if name.endswith(".lock"):
        return "must not end in '.lock'"
    if name.endswith("."):
        # Git refuses a ref name that ends with a dot.
        return "must not end with '.'"
    return None


def new_run_id() -> str:
    """Return 8 random lowercase base-36 characters, as W&B's run ids are."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


@dataclass(frozen=True, order=True)
class RunRef:
    """A run's address: its project and id, and so its branch."""

    project: str
    run_id: str

    def __post_init__(self) -> None:
        check_name("project", self.project)
        check_name("run id", self.run_id)

    @property
    def path(self) -> str:
        """``<project>/<run_id>``, the unambiguous way to name the run."""
        return f"{self.project}/{self.run_id}"

    @property
    def ref(self) -> bytes:
        """The full ref name, ``refs/heads/runs/<project>/<run_id>``."""
        return RUNS_PREFIX + self.path.encode()

    @property
    def branch(self) -> str:
        """The branch name as ``git log`` takes it: ``runs/<project>/<run_id>``."""
        return self.ref[len(b"refs/heads/") :].decode()

    @classmethod
    def from_ref(cls, ref: bytes, prefix: bytes = RUNS_PREFIX) -> RunRef:
        """Parse a full ref name under ``prefix`` back into a RunRef.

        Raises:
            InvalidNameError: for a ref outside the prefix or with bad parts.
        """
        if not ref.startswith(prefix):
            raise InvalidNameError("run ref", ref, f"not under {prefix.decode()}")
        try:
            rest = ref[len(prefix) :].decode("ascii")
        except UnicodeDecodeError:
            raise InvalidNameError("run ref", ref, "not ASCII") from None
        parts = rest.split("/")
        if len(parts) != 2:
            raise InvalidNameError("run ref", ref, "must be runs/<project>/<run_id>")
        return cls(parts[0], parts[1])

    def __str__(self) -> str:
        return self.path
