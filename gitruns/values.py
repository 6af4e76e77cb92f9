"""What log() accepts: metric keys and values, checked on the hot path.

Keys are non-empty strings of at most 256 characters, valid Unicode, without
control characters; ``/`` separates namespaces (``train/loss``) but may not
lead, trail or repeat; a leading ``_`` is reserved for gitruns (``_step``,
``_timestamp``). A nested dict is flattened with ``/`` (``{"train": {"loss":
x}}`` is ``train/loss``); a key reached twice in one call is refused.

Values are stored exactly, as one of: float (any float64: NaN, infinities,
-0.0 and subnormals included), int (int64 range; beyond it refused), bool,
str (valid Unicode, up to :data:`MAX_STR` characters) or None. Subclasses of
those (IntEnum, numpy.float64, numpy.str_) are stored as their plain kind;
numpy scalars of any real dtype and 0-d arrays or tensors are unwrapped to the
Python value of the same kind (a float32 is widened to float64 exactly).
Anything else (lists, tuples, complex numbers, bytes, numpy.longdouble,
arrays with elements) is refused with an error naming the key: nothing is
silently dropped or coerced.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gitruns.errors import InvalidArgumentError, InvalidNameError, InvalidValueError

Value = float | int | bool | str | None

MAX_KEY = 256
MAX_STR = 65_536
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_PLAIN = (float, str, bool, type(None))

#: The kinds a row may hold and still take clean_row's fast path: stored as
#: they are, with nothing to check per value (ints are range-checked at once).
_NONE = type(None)
_FAST_KINDS = frozenset({float, int, bool, _NONE})


#: Why a str with a lone surrogate (say, bytes decoded with "surrogateescape")
#: is refused, and what to do instead.
SURROGATE = (
    "a str must be valid Unicode (it holds a lone surrogate); decode its bytes "
    "with errors='replace', or drop that character"
)


def check_key(key: object) -> str:
    """Return ``key`` if it may name a metric.

    Args:
        key: the proposed metric name.

    Returns:
        ``key``, unchanged.

    Raises:
        InvalidNameError: for a key that is not a str, is empty or too long,
            starts with ``_``, holds control characters or a lone surrogate,
            or misuses ``/``.
    """
    if not isinstance(key, str):
        raise InvalidNameError("metric key", key, "must be a string")
    if not key:
        raise InvalidNameError("metric key", key, "must not be empty")
    if len(key) > MAX_KEY:
        raise InvalidNameError(
            "metric key", key, f"must be at most {MAX_KEY} characters"
        )
    if key[0] == "_":
        raise InvalidNameError(
            "metric key", key, "a leading '_' is reserved for gitruns; rename it"
        )
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in key):
        raise InvalidNameError("metric key", key, "must not hold control characters")
    if key[0] == "/" or key[-1] == "/" or "//" in key:
        raise InvalidNameError(
            "metric key", key, "'/' separates namespaces: no leading, trailing or '//'"
        )
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidNameError(
                "metric key", key, "must be valid Unicode (it holds a lone surrogate)"
            ) from None
    return key


def to_value(key: str, value: Any) -> Value:
    """Turn one logged value into what gitruns stores.

    Args:
        key: the metric's name, for the error message.
        value: what the caller logged.

    Returns:
        A float, int, bool, str or None of exactly that type.

    Raises:
        InvalidValueError: for an int beyond int64, a str over
            :data:`MAX_STR` characters, a numpy scalar float64 cannot hold
            exactly, or anything that is not a scalar.
    """
    kind = type(value)
    if kind in _PLAIN:
        if kind is str and len(value) > MAX_STR:
            raise InvalidValueError(
                key, value, f"strings are limited to {MAX_STR} characters"
            )
        return value  # type: ignore[no-any-return]
    if kind is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidValueError(
                key, value, "ints must fit in int64; log it as a float or a str"
            )
        return value  # type: ignore[no-any-return]
    if isinstance(value, (bool, float, str, int)):
        # Subclasses (IntEnum, numpy.float64) become their plain kind.
        for plain in (bool, float, str, int):
            if isinstance(value, plain):
                return to_value(key, plain(value))
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "shape", None) in ((), []):
        # numpy scalars and 0-d arrays / tensors: unwrap to the Python value.
        inner = item()
        if type(inner) is kind:
            # numpy.longdouble unwraps to itself: float64 cannot hold it exactly.
            raise InvalidValueError(
                key,
                value,
                f"{kind.__name__} does not fit a float64 exactly; "
                "convert it with float() if rounding is fine",
            )
        return to_value(key, inner)
    raise InvalidValueError(
        key,
        value,
        f"{kind.__name__} is not a number, bool, str or None; "
        "log a scalar (for a list, one key per element)",
    )


def clean_row(data: Any, known: set[str]) -> dict[str, Value]:
    """Validate one log() payload into a flat dict of stored values.

    Args:
        data: what the caller passed to log().
        known: keys already checked; new valid keys are added to it.

    Returns:
        A new dict, which the caller may keep.

    Raises:
        InvalidNameError: for a bad key (see :func:`check_key`), a nested key
            that is not a str, or a key given twice (once nested).
        InvalidValueError: for ``data`` that is not a mapping, or a value
            :func:`to_value` refuses.
    """
    # The fast path, for the rows of a training loop: a plain dict of known
    # keys and plain numbers. Every check runs in C, none per key in Python.
    if (
        type(data) is dict
        and known.issuperset(data)
        and _FAST_KINDS.issuperset(kinds := set(map(type, data.values())))
        and (int not in kinds or (_NONE not in kinds and _ints_fit(data.values())))
    ):
        return dict(data)
    if not isinstance(data, Mapping):
        raise InvalidValueError(
            "<data>", data, "log() takes a dict of metric names to values"
        )
    row: dict[str, Value] = {}
    for key, value in data.items():
        if key not in known:
            check_key(key)
            known.add(key)
        kind = type(value)
        if kind is float or kind is str and len(value) <= MAX_STR:
            row[key] = value
        elif isinstance(value, Mapping):
            for inner in value:
                if not isinstance(inner, str):
                    raise InvalidNameError(
                        "metric key", inner, f"keys nested under {key!r} must be str"
                    )
            flat = clean_row({f"{key}/{k}": v for k, v in value.items()}, known)
            for name in flat:
                if name in row or name in data:
                    raise InvalidNameError(
                        "metric key",
                        name,
                        "is given twice in one log() call (once nested); give it once",
                    )
            row.update(flat)
        else:
            row[key] = to_value(key, value)
    return row


def _ints_fit(values: Any) -> bool:
    """Whether values (floats, ints, bools) hold only ints that fit int64.

    min() and max() run in C. A NaN, an infinity or a float beyond int64
    fails the test too: it only sends the row to the slow path, which checks
    each value.
    """
    return bool(min(values) >= INT64_MIN and max(values) <= INT64_MAX)


def unencodable(row: Mapping[str, Value]) -> InvalidValueError:
    """The error for a row the journal could not encode, naming the culprit.

    Strings are only checked here, after encoding failed, so that the hot
    path does not pay for a rare mistake.
    """
    for key, value in row.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return InvalidValueError(
                    key,
                    value,
                    SURROGATE,
                )
    return InvalidValueError("<row>", dict(row), "it cannot be encoded")


def check_unicode(value: Any, where: str) -> None:
    """Refuse run metadata (config, name, tags...) holding a str Git cannot store.

    A str with a lone surrogate has no UTF-8 form, so no JSON file of a run
    can hold it; it is refused before it is journaled or committed.

    Args:
        value: a str, or a dict, list or tuple of them (keys too), at any depth.
        where: what ``value`` is, for the message (``config``, ``name``).

    Raises:
        InvalidArgumentError: naming the first such str and where it is.
    """
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidArgumentError(where, value, SURROGATE) from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_unicode(key, f"{where} key")
            check_unicode(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_unicode(item, f"{where}[{index}]")


def identical(a: Any, b: Any) -> bool:
    """Whether two JSON-like values are the same, type and sign of zero included.

    ``==`` holds 1, 1.0 and True equal, and 0.0 and -0.0: a patch made with
    it would keep the old one of two such values.
    """
    if type(a) is not type(b):
        return False
    if type(a) is float:
        if a != a:  # NaN
            return bool(b != b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if type(a) is dict:
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return bool(a == b)
