"""The exception tree of gitruns, and where foreign errors are mapped into it.

::

    GitRunsError                      exit 1   anything gitruns refuses
    ├── MissingExtraError             exit 1   an optional extra is not installed
    ├── InvalidNameError              exit 2   project, run id or metric key
    ├── InvalidValueError             exit 2   a value log() cannot store
    │   └── InvalidArgumentError      exit 2   an argument of init(), save(), filters
    ├── StepOrderError                exit 2   a step below the current one
    ├── ForkPointError                exit 2   fork / rewind step not usable
    ├── ChunkTooLargeError            exit 2   steps too large for one chunk
    ├── RunNotFoundError              exit 3   no such run
    ├── MetricNotFoundError           exit 3   no such metric in the runs
    ├── AmbiguousRunError             exit 3   a run id shared by projects
    ├── RunExistsError                exit 4   resume="never" on an existing run
    ├── RunLockedError                exit 4   another writer holds the run
    ├── ConflictError                 exit 4   a ref moved under us, retries spent
    ├── ChunkFormatError              exit 5   a malformed or hostile chunk
    │   └── UnsupportedVersionError   exit 5   a chunk from a newer gitruns
    ├── RepositoryError               exit 6   the Git repository itself
    ├── RemoteError                   exit 7   push, pull, fetch
    │   └── DivergedError             exit 7   both sides logged since a common commit
    └── ImportFormatError             exit 8   a foreign log gitruns cannot read

Every exception keeps its data as attributes and its message ends with what
the user can do next.

Foreign errors are mapped here, by three functions:

- :func:`mapped_errors`: dulwich's repository errors and ``OSError`` become
  :class:`RepositoryError`.
- :func:`remote_errors`: dulwich's transport errors, urllib3's ``HTTPError``
  and ``OSError`` during a push or fetch become :class:`RemoteError`, with
  credentials masked.
- :func:`require`: the ``ImportError`` of an optional extra becomes
  :class:`MissingExtraError`.

Two codecs map their own parser's errors, as reading their bytes is their
concern: ``gitruns.chunk`` turns msgpack's (in ``_unpacking``) and
zstandard's (in ``_Inflating``) into :class:`ChunkFormatError`, and
``gitruns.store`` turns dulwich's object parse errors (and
``objects.CorruptObject``, a delta that does not apply among them) into
:class:`RepositoryError` naming the object it read. ``remote`` says itself
when dulwich cannot make sense of a remote's URL (a ValueError, too common to
map around a whole push). Other modules catch a
foreign error only to decide what to do, never to report it: ``store``
creates a repository on dulwich's ``NotGitRepository``, ``repository``
records no code state outside a Git work tree, ``hooks`` refuses a push whose
objects dulwich cannot read, and ``journal`` stops at a record msgpack cannot
read, warns, and keeps the records before it.
"""

from __future__ import annotations

import errno
import importlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from types import ModuleType


class GitRunsError(Exception):
    """Root of every error gitruns raises on purpose."""

    exit_code = 1


#: Distribution names of the optional modules whose import name differs.
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "yaml": "PyYAML"}


class MissingExtraError(GitRunsError, ImportError):
    """A feature needs an optional extra that is not installed.

    Args:
        module: the module that could not be imported.
        extra: the gitruns extra that installs it.
        what: the feature that needs it, as the message's subject.
    """

    exit_code = 1

    def __init__(self, module: str, extra: str, what: str) -> None:
        self.module = module
        self.extra = extra
        self.what = what
        top = module.partition(".")[0]
        package = _DISTRIBUTIONS.get(top, top)
        super().__init__(
            f"{what} needs {package}: pip install 'gitruns[{extra}]'", name=top
        )


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional module, or raise the error that says how to install it.

    Args:
        module: the module to import ("pandas", "sklearn.datasets").
        extra: the gitruns extra that installs it ("pandas", "demo").
        what: the feature that needs it, as the message's subject.

    Returns:
        The imported module.

    Raises:
        MissingExtraError: the module cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra, what) from exc


class InvalidNameError(GitRunsError, ValueError):
    """A project, run id or metric key that gitruns refuses to store."""

    exit_code = 2

    def __init__(self, kind: str, name: object, reason: str) -> None:
        self.kind = kind
        self.name = name
        self.reason = reason
        super().__init__(f"invalid {kind} {name!r:.80}: {reason}")


class InvalidValueError(GitRunsError, ValueError):
    """A logged value that is not a number, bool, str or None."""

    exit_code = 2

    def __init__(
        self, key: str, value: object, reason: str, *, message: str | None = None
    ) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        if message is None:
            message = f"cannot log {key!r} = {value!r:.80}: {reason}"
        super().__init__(message)


class InvalidArgumentError(InvalidValueError):
    """An argument of init(), config, save() or a filter that gitruns refuses.

    ``key`` holds the argument's name.
    """

    def __init__(self, name: str, value: object, reason: str) -> None:
        super().__init__(
            name, value, reason, message=f"invalid {name}={value!r:.80}: {reason}"
        )


class StepOrderError(GitRunsError, ValueError):
    """log(step=s) with s below the run's current step."""

    exit_code = 2

    def __init__(self, run: str, step: int, current: int) -> None:
        self.run = run
        self.step = step
        self.current = current
        if step < 0:
            fix = "Steps start at 0"
        elif step > 0:
            fix = (
                "To replace history from that step on, finish the run and "
                f"rewind it: gitruns.init(resume_from='{run}?_step={step - 1}') "
                f"or `gitruns rewind {run} --step {step - 1}`"
            )
        else:
            fix = "To start over from step 0, start a new run"
        super().__init__(
            f"run {run}: step {step} is below the current step {current}; "
            f"steps only move forward. {fix}"
        )


class ForkPointError(GitRunsError, ValueError):
    """A fork or rewind point that does not name a committed step."""

    exit_code = 2

    def __init__(self, spec: str, reason: str) -> None:
        self.spec = spec
        self.reason = reason
        super().__init__(f"cannot fork or rewind at {spec!r}: {reason}")


class ChunkTooLargeError(GitRunsError, ValueError):
    """Steps whose chunk would encode past the chunk size limit.

    Args:
        start: the first step of the chunk.
        steps: how many steps it holds.
        size: the bytes it encodes to (or its arrays take).
        limit: the most a chunk may take.
        fix: what the caller can do, ending the message.
    """

    exit_code = 2

    def __init__(self, start: int, steps: int, size: int, limit: int, fix: str) -> None:
        self.start = start
        self.steps = steps
        self.size = size
        self.limit = limit
        held = "1 step" if steps == 1 else f"{steps} steps"
        super().__init__(
            f"a chunk of {held} from step {start} takes {size} bytes, over the "
            f"limit of {limit}; {fix}"
        )


class RunNotFoundError(GitRunsError, LookupError):
    """No run matches the given path."""

    exit_code = 3

    def __init__(self, path: str, where: str = "", fix: str = "") -> None:
        self.path = path
        where = f" in {where}" if where else ""
        fix = fix or "`gitruns runs` lists the runs there"
        super().__init__(f"no run {path!r}{where}; {fix}")


class AmbiguousRunError(GitRunsError, LookupError):
    """A bare run id that several projects use."""

    exit_code = 3

    def __init__(self, run_id: str, candidates: list[str]) -> None:
        self.run_id = run_id
        self.candidates = candidates
        super().__init__(
            f"run id {run_id!r} is in several projects: {', '.join(candidates)}; "
            "name it as <project>/<run_id>"
        )


class RunExistsError(GitRunsError):
    """A run id that is taken when resume='never' asks for a new run."""

    exit_code = 4

    def __init__(
        self,
        path: str,
        fix: str = "pass resume='allow' to continue it or choose another id",
    ) -> None:
        self.path = path
        super().__init__(f"run {path} already exists; {fix}")


class RunLockedError(GitRunsError):
    """Another live writer holds the run."""

    exit_code = 4

    def __init__(self, path: str, host: str, pid: int) -> None:
        self.path = path
        self.host = host
        self.pid = pid
        super().__init__(
            f"run {path} is being written by pid {pid} on {host}; finish that "
            "writer first, or fork the run to write beside it"
        )


class ConflictError(GitRunsError):
    """A compare-and-swap ref update kept losing to another writer."""

    exit_code = 4

    def __init__(
        self,
        ref: str,
        attempts: int,
        fix: str = "another process writes this run: stop it and run `gitruns recover`",
    ) -> None:
        self.ref = ref
        self.attempts = attempts
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        super().__init__(f"{ref} moved under us ({tries}); {fix}")


class ChunkFormatError(GitRunsError, ValueError):
    """A metric chunk that is malformed, hostile or otherwise unreadable."""

    exit_code = 5

    def __init__(self, source: str, reason: str, *, message: str | None = None) -> None:
        self.source = source
        self.reason = reason
        if message is None:
            message = (
                f"bad metric chunk {source}: {reason}; the data was not read. "
                "If it came from a remote, do not pull it; `git fsck` checks the rest"
            )
        super().__init__(message)


class UnsupportedVersionError(ChunkFormatError):
    """A chunk written by a newer major version of the format."""

    def __init__(self, source: str, version: object, supported: int) -> None:
        self.version = version
        self.supported = supported
        super().__init__(
            source,
            "newer format version",
            message=f"chunk {source} has format version {version}, this gitruns "
            f"reads major version {supported}; upgrade gitruns to read it",
        )


class RepositoryError(GitRunsError):
    """The Git repository cannot be opened, read or written.

    Args:
        message: what failed, ending with what the user can do.
        path: the repository or file concerned, when the caller knows it.
    """

    exit_code = 6

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class RemoteError(GitRunsError):
    """A push, pull or fetch failed or was refused."""

    exit_code = 7


class DivergedError(RemoteError):
    """Both sides logged after their common commit."""

    def __init__(
        self,
        ref: str,
        local: str,
        remote: str,
        fix: str = "take one side: `gitruns pull --force` takes the remote's, "
        "`gitruns push --force` replaces it with yours",
    ) -> None:
        self.ref = ref
        self.local = local
        self.remote = remote
        super().__init__(
            f"{ref} has diverged (local {local[:10]}, remote {remote[:10]}); {fix}"
        )


class ImportFormatError(GitRunsError, ValueError):
    """A foreign log that an importer cannot read.

    Args:
        message: what is wrong with the log, ending with what the user can do.
        path: the file or directory being imported, when the caller knows it.
    """

    exit_code = 8

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class MetricNotFoundError(GitRunsError, LookupError):
    """A metric that none of the runs asked about has logged."""

    exit_code = 3

    def __init__(self, run: str, metric: str, known: list[str]) -> None:
        self.run = run
        self.metric = metric
        self.known = known
        listing = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        super().__init__(
            f"{run} logged no metric {metric!r} (it has: {listing or 'none'}); "
            "name one of those"
        )


def os_error_fix(exc: OSError) -> str | None:
    """What the user can do about a failed read or write, in lower case; or None."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some disk space"
    if exc.errno == errno.EFBIG:
        return (
            "raise the file-size limit (`ulimit -f`), or keep the repository "
            "on a file system that allows larger files"
        )
    if exc.errno == errno.EROFS:
        return "make the repository writable"
    if isinstance(exc, PermissionError):
        return "check that you may read and write the repository's files"
    return None


@contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Turn dulwich and OS errors raised inside the block into RepositoryError.

    Args:
        what: what was being done, for the message ("writing run demo/abc").
    """
    from dulwich import errors as git_errors
    from dulwich.pack import PackFileDisappeared

    foreign = (
        OSError,
        PackFileDisappeared,
        git_errors.ChecksumMismatch,
        git_errors.FileFormatException,
        git_errors.ObjectFormatException,
        git_errors.PackedRefsException,
        git_errors.RefFormatError,
        git_errors.WrongObjectException,
        git_errors.ApplyDeltaError,
    )
    try:
        yield
    except GitRunsError:
        raise
    except foreign as exc:
        hint = ""
        if isinstance(exc, OSError) and (fix := os_error_fix(exc)) is not None:
            # (A writer's error says itself that its journal keeps the rows.)
            hint = f"; {fix}"
        if isinstance(exc, PackFileDisappeared):
            hint = "; a `git gc` or `git repack` removed a pack meanwhile: try again"
        raise RepositoryError(f"{what} failed: {exc}{hint}") from exc


# userinfo of a URL: ``scheme://user:secret@host`` or ``scheme://token@host``.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/@\s]+)@")


def mask_credentials(text: str) -> str:
    """Hide the secret part of every URL in ``text``.

    A password is always hidden. On http(s) the user name is hidden too, since
    access tokens are often passed as the user name.

    Args:
        text: a URL, or a message that may hold URLs.

    Returns:
        ``text`` with ``***`` for every secret.
    """

    def hide(match: re.Match[str]) -> str:
        scheme, info = match["scheme"], match["info"]
        user, colon, _secret = info.partition(":")
        if colon:
            shown = "***" if scheme.lower().startswith("http") else user
            return f"{scheme}{shown}:***@"
        if scheme.lower().startswith("http"):
            return f"{scheme}***@"
        return match[0]

    return _USERINFO.sub(hide, text)


@cache
def _transport_errors() -> tuple[type[BaseException], ...]:
    from dulwich.client import InvalidWants
    from dulwich.errors import GitProtocolError, ObjectFormatException

    errors: list[type[BaseException]] = [
        GitProtocolError,
        InvalidWants,
        ObjectFormatException,
        OSError,
    ]
    try:
        # http(s) remotes raise urllib3's errors for refused or broken connections.
        from urllib3.exceptions import HTTPError
    except ImportError:
        pass
    else:
        errors.append(HTTPError)
    return tuple(errors)


@contextmanager
def remote_errors(remote: str, what: str) -> Iterator[None]:
    """Turn dulwich's and urllib3's transport errors inside the block into RemoteError.

    Credentials in their messages are masked.

    Args:
        remote: the remote as the user should see it (credentials masked).
        what: what was being done, for the message ("pushing to origin").

    Raises:
        RemoteError: for a transport, protocol or authentication failure, a
            missing remote repository, or an OS error of the transfer.
    """
    from dulwich.client import HTTPProxyUnauthorized, HTTPUnauthorized
    from dulwich.errors import HangupException, NotGitRepository

    try:
        yield
    except GitRunsError:
        raise
    except HangupException as exc:
        detail = mask_credentials(str(exc)) or "the server hung up"
        raise RemoteError(
            f"{what} failed: {detail}; check the URL and that the server is "
            "running and lets you in"
        ) from None
    except (HTTPUnauthorized, HTTPProxyUnauthorized) as exc:
        raise RemoteError(
            f"{what} failed: the server asks for credentials; put them in the "
            "remote's URL or a credential helper, and check they are valid"
        ) from exc
    except NotGitRepository as exc:
        raise RemoteError(
            f"{what} failed: there is no Git repository at {remote}; check the "
            "URL, or create the repository on the server (`git init --bare`)"
        ) from exc
    except _transport_errors() as exc:
        detail = mask_credentials(str(exc) or type(exc).__name__)
        raise RemoteError(
            f"{what} failed: {detail}; check the URL, your network and your "
            "access to the remote"
        ) from None
