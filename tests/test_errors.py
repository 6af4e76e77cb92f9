"""The exceptions keep their data as attributes and end with what to do."""

from __future__ import annotations

from gitruns.errors import (
    ChunkFormatError,
    ImportFormatError,
    InvalidArgumentError,
    InvalidValueError,
    RepositoryError,
    UnsupportedVersionError,
)


def test_invalid_value_keeps_its_reason() -> None:
    exc = InvalidValueError("loss", object, "not a number")

    assert (exc.key, exc.value, exc.reason) == ("loss", object, "not a number")
    assert str(exc).startswith("cannot log 'loss' = ")


def test_invalid_argument_is_an_invalid_value_with_its_own_message() -> None:
    exc = InvalidArgumentError("resume", "sometimes", "choose allow, must or never")

    assert isinstance(exc, InvalidValueError)
    assert (exc.key, exc.value) == ("resume", "sometimes")
    assert exc.reason == "choose allow, must or never"
    assert str(exc) == "invalid resume='sometimes': choose allow, must or never"


def test_unsupported_version_is_a_chunk_format_error_with_its_data() -> None:
    exc = UnsupportedVersionError("demo/r1 0000.msgpack", "9.0", 1)

    assert isinstance(exc, ChunkFormatError)
    assert (exc.source, exc.version, exc.supported) == (
        "demo/r1 0000.msgpack",
        "9.0",
        1,
    )
    assert exc.reason == "newer format version"
    assert str(exc).endswith("upgrade gitruns to read it")


def test_path_is_kept_when_given_and_none_otherwise() -> None:
    assert RepositoryError("x; fix it", path="/r").path == "/r"
    assert RepositoryError("x; fix it").path is None
    assert ImportFormatError("x; fix it", path="log.csv").path == "log.csv"
    assert ImportFormatError("x; fix it").path is None
