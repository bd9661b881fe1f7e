"""One place for argument checks, so every message has the same shape (MNE style)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def option_message(name: str, value: Any, allowed: Iterable[Any]) -> str:
    """The one message shape: ``Invalid value for 'name': expected one of 'a', 'b', got 'c'.``

    For checks that collect every problem before raising (the config's one-pass validation).
    """
    options = ", ".join(repr(a) for a in allowed)
    return f"Invalid value for {name!r}: expected one of {options}, got {value!r}."


def check_option(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise a ValueError (:func:`option_message`).

    A bool matches only a bool (``1 in (True, False)`` is true in Python, but ``1`` is not
    an allowed ``True``).
    """
    allowed = tuple(allowed)
    if not any(_same_option(value, a) for a in allowed):
        raise ValueError(option_message(name, value, allowed))
    return value


def _same_option(value: Any, option: Any) -> bool:
    if isinstance(value, bool) != isinstance(option, bool):
        return False
    try:
        return bool(value == option)
    except (TypeError, ValueError):  # e.g. an array compared with a string
        return False


def check_positive_int(name: str, value: Any, *, allow_none: bool = False, minimum: int = 1) -> int | None:
    """Check that ``value`` is an integer >= ``minimum`` (bools are rejected)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int,)) and not _is_integer_like(value):
        raise ValueError(f"Invalid value for {name!r}: expected an integer >= {minimum}, got {value!r}.")
    if int(value) < minimum:
        raise ValueError(f"Invalid value for {name!r}: expected an integer >= {minimum}, got {value!r}.")
    return int(value)


def _is_integer_like(value: Any) -> bool:
    try:
        import numpy as np

        return isinstance(value, np.integer)
    except ImportError:  # pragma: no cover - numpy is a hard dependency
        return False


def format_indices(indices: Iterable[int], limit: int = 5) -> str:
    """``'3, 17, 40 and 12 more'``: a short list of sample indices for messages."""
    indices = [int(i) for i in indices]
    head = ", ".join(str(i) for i in indices[:limit])
    rest = len(indices) - limit
    return f"{head} and {rest} more" if rest > 0 else head


def format_duration(seconds: float) -> str:
    """``'45 s'``, ``'12 min'``, ``'3.5 h'``, ``'4.2 days'``: a duration for messages and plans."""
    s = float(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def format_bytes(n: float) -> str:
    """``'512.0 B'``, ``'3.2 MB'``, ``'1.5 TB'`` (powers of 1000): a size for messages and plans."""
    b = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if b < 1000:
            return f"{b:.1f} {unit}"
        b /= 1000.0
    return f"{b:.1f} TB"
