"""The command line's argument parser: each command reports its own mistakes, numbers are checked against
their ranges, and value parsers speak in the user's words.

- An unknown option is reported with the usage of the command it was given to, not the top-level one.
- Every ``int`` and ``float`` option has a range (by default: integers 0..2147483647, finite numbers >= 0;
  ``limit()`` sets another); a value outside it, ``nan`` or ``inf`` is refused before any request, in one
  ``error:`` line, with exit status 2.
- An option given ``--`` as its value (``--seed=--``) is refused as a missing value, for every option type.
- A value parser raises ``argparse.ArgumentTypeError`` with a message a user can act on (argparse would
  otherwise print the parser function's name).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

INT_MAX = 2**31 - 1


class UsageError(ValueError):
    """The command line asks for something that cannot be done (exit status 2, before any request)."""


@dataclass(frozen=True)
class Range:
    """``low``..``high``; ``low_open``: ``low`` itself is excluded."""

    low: float | None = 0
    high: float | None = None
    low_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or value <= self.high

    def describe(self, integer: bool, value: float) -> str:
        """The range in words, as it bears on ``value`` (an integer's technical ceiling only when passed)."""
        if integer and self.high == INT_MAX:
            return f"at most {INT_MAX}" if value > INT_MAX else f">= {self.low}"
        if self.low is not None and self.high is not None:
            if integer:
                return f"in {self.low}..{self.high}"
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"<= {self.high:g}"
        return "a finite number"


DEFAULT_INT = Range(0, INT_MAX)
DEFAULT_FLOAT = Range(0)
ANY_FINITE = Range(None)


def limit(action: argparse.Action, low: float | None = 0, high: float | None = None, *, low_open=False):
    """Give a numeric option its range (``low``/``high`` ``None``: unbounded); returns the action."""
    if action.type is int and high is None:
        high = INT_MAX
    action.range = Range(low, high, low_open)  # type: ignore[attr-defined]
    return action


def range_of(action: argparse.Action) -> Range | None:
    """The range an option's values must lie in, ``None`` for options that are not numbers."""
    explicit = getattr(action, "range", None)
    if explicit is not None:
        return explicit
    if action.type is int:
        return DEFAULT_INT
    if action.type is float:
        return DEFAULT_FLOAT
    return None


def _out_of_range(action: argparse.Action, value: Any) -> str | None:
    """The complaint about ``value`` of ``action``, or ``None`` when it is in range."""
    bounds = range_of(action)
    if bounds is None or value is None:
        return None
    for number in value if isinstance(value, list) else [value]:
        if not bounds.holds(number):
            kind = "an integer" if action.type is int else "a number"
            return f"must be {kind} {bounds.describe(action.type is int, number)}, not {number!r}"
    return None


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose sub-commands report unknown options and out-of-range numbers
    themselves, with their own usage."""

    is_root = False
    #: What argparse reads as a negative number (a value, not an option): its own integers and decimals,
    #: plus fractions and exponents (``--eps -1/255`` reaches the option's own check, which names it).
    NEGATIVE_NUMBER = re.compile(r"^-(\d+/\d+|\d*\.?\d+([eE][+-]?\d+)?)$")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = self.NEGATIVE_NUMBER

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        namespace = cast(argparse.Namespace, parsed)
        if self.is_root:
            return namespace, extras
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        for action in self._actions:
            complaint = _out_of_range(action, getattr(namespace, action.dest, None))
            if complaint:
                self.error(f"argument {'/'.join(action.option_strings) or action.dest}: {complaint}")
        if getattr(namespace, "command_parser", None) is None:
            namespace.command_parser = self  # the innermost command: its parse ends first
        return namespace, extras

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # argparse drops a "--" given as an option's own value (``--seed=--``, ``-K=--``), which leaves the
        # option an empty list whatever its type: refuse it as the missing value it is.
        if action.option_strings and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one argument, not '--'")
        return super()._get_values(action, arg_strings)  # type: ignore[misc]


def finite(text: str) -> float:
    """A finite decimal number (``1e-3``, ``-2``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def fraction(text: str) -> float:
    """``4/255``, ``0.0157`` or ``1e-2``: a finite number, optionally written as a fraction."""
    numerator, slash, denominator = text.partition("/")
    try:
        top = float(numerator)
        bottom = float(denominator) if slash else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction like 4/255") from None
    if bottom == 0:
        raise argparse.ArgumentTypeError(f"{text!r} divides by zero")
    value = top / bottom
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value
