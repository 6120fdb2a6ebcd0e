"""What a visitor types, checked: the app's input readers, its status messages (shared by every tab) and the
handler wrapper.

Every value reaching an endpoint may be wrong in any way (a browser sends numbers, the API anything JSON
holds: strings for numbers, None, NaN, huge text), so the app's events take their inputs unprocessed and
the readers here check type, finiteness and range themselves, raising `InputError` with a hint in the
UI's own words. `friendly` turns that (and the codec's and corpus' errors) into the handler's failure
output plus one log line, so a visitor's mistake never becomes a traceback, in the page or in the log.
"""
from __future__ import annotations

import functools
import inspect
import logging
import math
from typing import Any, Callable, Sequence

import torch

from bitlm.bits.frames import parse_bit_string
from bitlm.bits.codec import HEADER_BITS, CodecError, compression_ratio, stream_info
from bitlm.train.data import CorpusError

log = logging.getLogger("bitlm.app")

# A bit field may hold separators (spaces, newlines) between the bits; beyond this many characters
# it cannot be within the bit cap, so it is refused before parsing.
_BIT_FIELD_SLACK = 3


class InputError(ValueError):
    """A request the app refuses, with a hint on what to do instead."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


def ok(message: str) -> str:
    """A success status line."""
    return f"✓ {message}"


def warn(message: str, hint: str = "") -> str:
    """A friendly failure status line: what went wrong, then what to try."""
    return f"⚠️ {message}" + (f" — {hint}" if hint else "")


def refusal(error: Exception) -> str | None:
    """The status line for an error a visitor caused (bad input, stream or corpus), else None."""
    if isinstance(error, InputError):
        return warn(str(error), error.hint)
    if isinstance(error, CodecError):
        return warn(f"Not a valid compressed stream: {error}",
                    "paste the compressed bits exactly as the Codec tab printed them")
    if isinstance(error, CorpusError):
        return warn(f"Cannot use this corpus: {error}", "pick a built-in corpus or upload a UTF-8 .txt file")
    return None


def _status_for(name: str, error: Exception) -> str:
    status = refusal(error)
    if status is not None:
        log.warning("%s refused: %s", name.lstrip("_"), status.removeprefix("⚠️ "))  # one line, no traceback
        return status
    log.exception("handler %s failed", name)  # a bug: the operator needs the traceback
    return warn(f"Unexpected error ({type(error).__name__}: {error})",
                "the app is still running; try again, and report it if it repeats")


def friendly(on_error: Callable[[str], Any]) -> Callable:
    """Decorate a handler (a function or a generator) so any exception becomes `on_error(status)`.

    A visitor's error (`refusal`) is logged as one line; anything else is logged with its traceback and
    shown as an unexpected error. Either way the app keeps serving.
    """
    def wrap(fn: Callable) -> Callable:
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as e:  # GeneratorExit (a cancelled stream) is not an Exception: it passes
                    yield on_error(_status_for(fn.__name__, e))
            return stream

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                return on_error(_status_for(fn.__name__, e))
        return inner
    return wrap


def read_text(text: Any, what: str, max_chars: int) -> str:
    """Return `text` if it is usable, else raise `InputError` (not text, empty, whitespace, over `max_chars`)."""
    if text is None or text == "":
        raise InputError(f"The {what} is empty", f"type some text (up to {max_chars:,} characters)")
    if not isinstance(text, str):
        raise InputError(f"The {what} must be text, got {_shown(text)}", f"type some text (up to {max_chars:,} characters)")
    if not text.strip():
        raise InputError(f"The {what} is only whitespace", "type some visible text")
    if len(text) > max_chars:
        raise InputError(f"The {what} has {len(text):,} characters; the limit is {max_chars:,}", "shorten it")
    return text


def read_bits(field: Any, what: str, max_bits: int) -> torch.Tensor:
    """Parse a typed bit string (0/1 with optional spaces, newlines, underscores) into a 1-D uint8 tensor.

    Raises: `InputError` for non-text, empty / whitespace / oversized input and characters other than 0 and 1.
    """
    hint = "type bits such as 011010000 (spaces and newlines are allowed)"
    if field is None or (isinstance(field, str) and not field.strip()):
        raise InputError(f"The {what} is empty", hint)
    if not isinstance(field, str):
        raise InputError(f"The {what} must be text of 0s and 1s, got {_shown(field)}", hint)
    if len(field) > _BIT_FIELD_SLACK * max_bits:
        raise InputError(f"The {what} has {len(field):,} characters; the limit is {max_bits:,} bits", "shorten it")
    try:
        bits = parse_bit_string(field)
    except ValueError as e:
        raise InputError(f"The {what} is not a bit string: {e}", "use only 0 and 1 (spaces and newlines are allowed)") from e
    if bits.numel() == 0:
        raise InputError(f"The {what} has no bits", "type bits such as 011010000")
    if bits.numel() > max_bits:
        raise InputError(f"The {what} has {bits.numel():,} bits; the limit is {max_bits:,}", "shorten it")
    return bits


def _shown(value: Any) -> str:
    """A short, safe rendering of a wrong value for a message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: Any, what: str, hint: str) -> int | float:
    """An int or a finite float from an int, float or numeric string; `InputError` for anything else."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise InputError(f"The {what} must be a number, got {_shown(value)}", hint) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"The {what} must be a number, got {_shown(value)}", hint)
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"The {what} must be a finite number, got {value}", hint)
    return value


def read_int(value: Any, what: str, lo: int, hi: int) -> int:
    """A whole number in [lo, hi] (exact for large ints; 3.0 is 3, 3.5 is refused). Raises `InputError`."""
    hint = f"enter a whole number from {lo:,} to {hi:,}"
    number = _number(value, what, hint)
    if isinstance(number, float):
        if number != int(number):
            raise InputError(f"The {what} must be a whole number, got {number}", hint)
        number = int(number)
    if not lo <= number <= hi:
        raise InputError(f"The {what} must be a whole number from {lo:,} to {hi:,}, got {number:,}", "pick a value in range")
    return number


def read_float(value: Any, what: str, lo: float, hi: float) -> float:
    """A finite number in [lo, hi]. Raises `InputError`."""
    number = float(_number(value, what, f"enter a number from {lo:g} to {hi:g}"))
    if not lo <= number <= hi:
        raise InputError(f"The {what} must be from {lo:g} to {hi:g}, got {number:g}", "pick a value in range")
    return number


def read_choice(value: Any, what: str, choices: Sequence[str]) -> str:
    """One of `choices` exactly. Raises `InputError` naming them."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"Unknown {what} {_shown(value)}", f"choose one of {', '.join(choices)}")
    return value


def read_flag(value: Any, what: str) -> bool:
    """A checkbox: True or False (JSON true/false). Raises `InputError` for anything else."""
    if not isinstance(value, bool):
        raise InputError(f"The {what} must be true or false, got {_shown(value)}", "tick or untick it")
    return value


# Bit groups (frames, or bytes of a stream) per line in the bit text boxes: fits their width.
GROUPS_PER_LINE = 6


def ratio_line(label: str, original: torch.Tensor, stream: torch.Tensor) -> str:
    """One line on what the bit codec did: bits before and after, its method and the ratio (and why a
    ratio below 1 is no fault)."""
    ratio = compression_ratio(original, stream)
    line = (f"{label}: {original.numel():,} → {stream.numel():,} bits "
            f"(`{stream_info(stream).method}`, compression ratio {ratio:.3f})")
    if ratio < 1:
        line += f"; short or varied bits do not compress, and the header costs {HEADER_BITS} bits"
    return line
