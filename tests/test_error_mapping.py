"""Foreign errors land in the gitruns tree: each kind, its class and its hint."""

from __future__ import annotations

import errno
from collections.abc import Callable
from contextlib import AbstractContextManager

import msgpack
import pytest
import zstandard
from dulwich import errors as git_errors
from dulwich.client import HTTPProxyUnauthorized, HTTPUnauthorized, InvalidWants
from dulwich.pack import PackFileDisappeared
from urllib3.exceptions import NewConnectionError, ProtocolError

from gitruns.chunk import _Inflating, _unpacking
from gitruns.errors import (
    ChunkFormatError,
    GitRunsError,
    MissingExtraError,
    RemoteError,
    RepositoryError,
    RunNotFoundError,
    mapped_errors,
    remote_errors,
    require,
)

URL = "https://user:s3cret@example.invalid/runs.git"

#: What runs the block, per foreign library.
Mapper = Callable[[], AbstractContextManager[None]]


def repository() -> AbstractContextManager[None]:
    return mapped_errors("writing run p/r")


def remote() -> AbstractContextManager[None]:
    return remote_errors("origin (https://***:***@example.invalid/runs.git)", "pushing")


def chunk() -> AbstractContextManager[None]:
    return _unpacking("runs/p/r:metrics/0.msgpack", "not valid msgpack")


def frame() -> AbstractContextManager[None]:
    return _Inflating("runs/p/r:metrics/0.msgpack", "metric 'loss': values")


TABLE: list[tuple[Mapper, BaseException, type[GitRunsError], str]] = [
    # dulwich and the OS, reading or writing the repository.
    (repository, git_errors.ChecksumMismatch(b"a" * 40, b"b" * 40), RepositoryError,
     "writing run p/r failed: "),
    (repository, git_errors.ObjectFormatException("bad tree"), RepositoryError,
     "bad tree"),
    (repository, git_errors.FileFormatException("bad pack"), RepositoryError,
     "bad pack"),
    (repository, git_errors.PackedRefsException("bad line"), RepositoryError,
     "bad line"),
    (repository, git_errors.RefFormatError("refs/x"), RepositoryError, "refs/x"),
    (repository, git_errors.NotCommitError(b"c" * 40), RepositoryError,
     "is not a commit"),
    (repository, git_errors.ApplyDeltaError("bad delta"), RepositoryError,
     "bad delta"),
    (repository, PackFileDisappeared(object()), RepositoryError,
     "removed a pack meanwhile: try again"),
    (repository, OSError(errno.ENOSPC, "No space left on device"), RepositoryError,
     "free some disk space"),
    (repository, PermissionError(errno.EACCES, "Permission denied"), RepositoryError,
     "check that you may read and write the repository's files"),
    (repository, OSError(errno.EROFS, "Read-only file system"), RepositoryError,
     "make the repository writable"),
    # dulwich's transports, urllib3 and the OS, talking to a remote.
    (remote, git_errors.HangupException(), RemoteError,
     "that the server is running and lets you in"),
    (remote, HTTPUnauthorized(None, URL), RemoteError, "asks for credentials"),
    (remote, HTTPProxyUnauthorized(None, URL), RemoteError, "asks for credentials"),
    (remote, git_errors.NotGitRepository(), RemoteError,
     "there is no Git repository at origin"),
    (remote, git_errors.GitProtocolError(f"unexpected reply from {URL}"), RemoteError,
     "https://***:***@example.invalid"),
    (remote, InvalidWants({b"d" * 40}), RemoteError, "your network"),
    (remote, git_errors.ObjectFormatException("bad object"), RemoteError,
     "bad object"),
    (remote, ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
     RemoteError, "Connection refused"),
    (remote, NewConnectionError(None, f"cannot reach {URL}"), RemoteError,  # type: ignore[arg-type]
     "your network and your access to the remote"),
    (remote, ProtocolError("Connection aborted."), RemoteError, "Connection aborted"),
    # msgpack, decoding a chunk.
    (chunk, msgpack.OutOfData(), ChunkFormatError,
     "not valid msgpack (the document is truncated)"),
    (chunk, msgpack.StackError(), ChunkFormatError, "containers nested more than"),
    (chunk, msgpack.ExtraData(1, b"x"), ChunkFormatError, "not valid msgpack ("),
    (chunk, msgpack.FormatError("bad byte"), ChunkFormatError, "(bad byte)"),
    (chunk, ValueError("Unexpected type header on stream"), ChunkFormatError,
     "Unexpected type header"),
    (chunk, RecursionError("maximum recursion depth"), ChunkFormatError,
     "maximum recursion depth"),
    # zstandard, inflating a chunk's numeric arrays.
    (frame, zstandard.ZstdError("decompression error: Data corruption detected"),
     ChunkFormatError,
     "metric 'loss': values is not one valid zstd frame (decompression error: Data"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mapper", "foreign", "kind", "hint"),
    TABLE,
    ids=[f"{m.__name__}-{type(e).__name__}" for m, e, _, _ in TABLE],
)
def test_foreign_error_becomes_a_gitruns_error(
    mapper: Mapper, foreign: BaseException, kind: type[GitRunsError], hint: str
) -> None:
    with pytest.raises(GitRunsError) as caught, mapper():
        raise foreign

    assert type(caught.value) is kind
    assert hint in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert caught.value.exit_code == kind.exit_code


@pytest.mark.parametrize("mapper", [repository, remote, chunk, frame])
def test_gitruns_errors_and_bugs_pass_through(mapper: Mapper) -> None:
    ours = RunNotFoundError("p/r")
    with pytest.raises(RunNotFoundError) as caught, mapper():
        raise ours
    assert caught.value is ours

    with pytest.raises(KeyError), mapper():
        raise KeyError("a bug, not a foreign failure")


def test_a_missing_extra_becomes_missing_extra_error() -> None:
    with pytest.raises(MissingExtraError) as caught:
        require("gitruns_no_such_module", "plot", "drawing plots")

    assert isinstance(caught.value, ImportError)
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    assert str(caught.value) == (
        "drawing plots needs gitruns_no_such_module: pip install 'gitruns[plot]'"
    )
