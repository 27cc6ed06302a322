"""Records read back from JSON as untrusted data: every field checked against its dataclass's
annotations before anything is built.

``parse_json(text)`` is the one way JSON read from disk becomes Python here: text that is not
JSON, or whose nesting is too deep to parse, is refused with one ``ValueError`` line, never a
``RecursionError`` traceback. (``NaN`` is read as Python reads it: the project writes it for a
figure that is undefined, such as a loss recovered where the ablation costs nothing; the
records that hold it check it where they are used.)

``from_json(cls, data)`` builds the dataclass ``cls`` from parsed JSON, recursively, accepting
exactly what its annotations say: ``str``, ``int`` (not ``bool``), ``float`` (a finite number:
NaN and infinities are refused), ``bool``, ``X | None``, ``list[T]``, ``tuple[A, B]`` (a JSON
array of that length), ``dict[str, T]``, a bare ``dict`` (any JSON object) and nested
dataclasses, and ``Annotated[float, Bounds(low, high)]`` (or ``int``) for a number in a range
(with ``nan=True``, NaN too: a figure its writer leaves undefined). Unknown keys are refused;
missing keys are allowed only where the field has a default. A problem raises one
``ValueError`` naming the field's path (``groups[3].qk[0].score: expected a finite number,
got 'x'``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from functools import cache


def parse_json(text: str):
    """Parse untrusted JSON text: a ``ValueError`` of one line for text that is not JSON, or
    whose nesting is too deep to parse."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError("not valid JSON here: nested too deeply to read") from None


def is_finite_number(x) -> bool:
    """A JSON number finite as a float: not a bool, NaN or an infinity, nor an integer too
    large for a float (``math.isfinite`` raises ``OverflowError`` on the 401-digit integers a
    fuzzer wrote, which JSON parses)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range of a number read by ``from_json``: ``Annotated[float, Bounds(0, 1)]`` (either end
    None: open); ``nan``: NaN is allowed as well."""

    low: float | None = None
    high: float | None = None
    nan: bool = False

    def check(self, value, where: str):
        """``value`` if inside the range, else one ``ValueError`` naming ``where``."""
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            _fail(where, f"a number in [{low}, {high}]", value)
        return value


@cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls, include_extras=True)


def _fail(where: str, expected: str, value) -> typing.NoReturn:
    shown = repr(value)
    raise ValueError(f"{where}: expected {expected}, got {shown[:60]}")


def from_json(tp, value, where: str = "record"):
    """``value`` (parsed JSON) as an instance of the type ``tp`` (module docstring)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        bounds = next((m for m in args[1:] if isinstance(m, Bounds)), Bounds())
        if bounds.nan and isinstance(value, float) and math.isnan(value):
            return value
        return bounds.check(from_json(args[0], value, where), where)
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, where)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{where}: unions other than X | None are not supported: {tp}")
        return from_json(rest[0], value, where)
    if tp is str:
        return value if isinstance(value, str) else _fail(where, "a string", value)
    if tp is bool:
        return value if isinstance(value, bool) else _fail(where, "true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        _fail(where, "an integer", value)
    if tp is float:
        if is_finite_number(value):
            return float(value)
        _fail(where, "a finite number", value)
    if tp is dict:
        return value if isinstance(value, dict) else _fail(where, "a JSON object", value)
    if origin is list:
        if not isinstance(value, list):
            _fail(where, "a list", value)
        return [from_json(args[0], x, f"{where}[{i}]") for i, x in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list) or len(value) != len(args):
            _fail(where, f"a list of {len(args)}", value)
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(from_json(a, x, f"{where}[{i}]") for i, (a, x) in pairs)
    if origin is dict:
        if not isinstance(value, dict):
            _fail(where, "a JSON object", value)
        return {k: from_json(args[1], x, f"{where}.{k}") for k, x in value.items()}
    raise TypeError(f"{where}: no JSON reading for type {tp}")


def _dataclass(cls, value, where: str):
    if not isinstance(value, dict):
        _fail(where, f"a JSON object ({cls.__name__})", value)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown[:5]}")
    out = {}
    for name, f in fields.items():
        if name in value:
            out[name] = from_json(hints[name], value[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}: missing key {name!r}")
    return cls(**out)
