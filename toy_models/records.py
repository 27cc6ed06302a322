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
missing keys are allowed only where the field has a default (``check_keys``, the one check of
the keys of every JSON object read from disk). A problem raises one
``ValueError`` naming the field's path (``groups[3].qk[0].score: expected a finite number,
got 'x'``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from functools import cache


def parse_json(text: str):
    """Parse untrusted JSON text: a ``ValueError`` of one line for text that is not JSON, whose
    nesting is too deep to parse, or with an object that gives a key twice (``json.loads``
    keeps the last silently: a config with two ``"model"`` entries was read as the second, and
    its error named a missing dataclass argument; a fuzz pass)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError("not valid JSON here: nested too deeply to read") from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"not valid JSON here: an object gives the key {key!r:.60} twice")
        out[key] = value
    return out


def check_keys(value: dict, where: str, required, optional=()) -> None:
    """A JSON object read from disk holding exactly the keys its reader knows: every one of
    ``required`` and none but those and ``optional``. A key the reader does not know is another
    version's or a forgery, never ignored (a fuzz pass found statistics, dashboards and
    checkpoint states read with keys of any name), and one it needs is never filled in. The one
    message of every such refusal (records, configs, states, headers): a ``ValueError`` naming
    ``where``, the first few keys wrong (each clipped: a key may be any string) and what that
    means."""
    known = set(required) | set(optional)
    if unknown := sorted(set(value) - known):
        raise ValueError(f"{where} holds unknown keys ({some_keys(unknown)}): {_WRITTEN_ELSEWHERE}")
    if missing := [k for k in required if k not in value]:
        raise ValueError(f"{where} lacks {some_keys(missing)}: {_WRITTEN_ELSEWHERE}")


_WRITTEN_ELSEWHERE = "written by another version, or edited"


def some_keys(keys, shown: int = 3, width: int = 40) -> str:
    """The first ``shown`` of ``keys`` for a message, each quoted and clipped to ``width``
    characters (a key read from disk may be a string of any length), and how many more."""
    keys = list(keys)
    text = ", ".join(f"{k!r:.{width}}" + ("..." if len(repr(k)) > width else "")
                     for k in keys[:shown])  # fmt: skip
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def dataclass_keys(cls) -> tuple[list[str], list[str]]:
    """The JSON keys of the dataclass ``cls`` as ``check_keys`` takes them: its init fields
    without a default (required) and with one (optional)."""
    required, optional = [], []
    for f in dataclasses.fields(cls):
        if f.init:
            bare = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            (required if bare else optional).append(f.name)
    return required, optional


def finite_or_null(data) -> tuple[object, int]:
    """``data`` (JSON-like: dicts, lists, numbers, strings) with every NaN or infinite float
    made None (``null``: not measured), and how many were: results written with bare ``NaN``
    are not JSON to a strict reader (a browser's ``JSON.parse``, jq; found by a reviewer)."""
    count = 0

    def clean(x):
        nonlocal count
        if isinstance(x, float) and not math.isfinite(x):
            count += 1
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return clean(data), count


def write_measured_json(path, results) -> None:
    """``results`` written to ``path`` as JSON (atomically) with each figure that could not be
    measured as null (``finite_or_null``), a note on stderr saying how many, and a line that
    it was written: the evaluation commands' ``--json``."""
    from .files import write_json_atomic

    results, unmeasured = finite_or_null(results)
    if unmeasured:
        print(f"note: {unmeasured} figures could not be measured on this data (null in "
              "the JSON)", file=sys.stderr)  # fmt: skip
    write_json_atomic(path, results)
    print(f"wrote {path}", file=sys.stderr)


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

    def holds(self, value) -> bool:
        """Whether ``value`` lies inside the range (NaN aside: ``nan`` is the reader's)."""
        return not ((self.low is not None and value < self.low)
                    or (self.high is not None and value > self.high))  # fmt: skip

    def check(self, value, where: str):
        """``value`` if inside the range, else one ``ValueError`` naming ``where``."""
        if not self.holds(value):
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            _fail(where, f"a number in [{low}, {high}]", value)
        return value


# The ranges results files share (``from_json`` reads them): a fraction, a size, a scale.
Share = typing.Annotated[float, Bounds(0.0, 1.0)]
NonNegative = typing.Annotated[float, Bounds(0.0)]
PositiveReal = typing.Annotated[float, Bounds(1e-30)]  # a scale, a learning rate: above 0


@cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls, include_extras=True)


def _fail(where: str, expected: str, value) -> typing.NoReturn:
    shown = repr(value)
    raise ValueError(f"{where}: expected {expected}, got {shown[:60]}")


# A field's place in the record, built only when a message names it: (parent, ".name" or
# "[i]"), or the record's own name at the root. Reading a summary of 1e5 values made a string
# per value before (most of ``checked_summary``'s time).
_Path = str | tuple


def _where(path: _Path) -> str:
    parts = []
    while isinstance(path, tuple):
        path, part = path
        parts.append(part if isinstance(part, str) else f"[{part}]")
    return path + "".join(reversed(parts))


def to_plain(record):
    """``record`` (a dataclass, or lists, tuples and dicts of them) as plain lists, tuples and
    dicts, as ``dataclasses.asdict`` gives it, without its deep copy of every leaf (numbers
    and strings need none; anything else is left as it is, for ``json.dumps`` to refuse)."""
    if type(record) in _PLAIN:
        return record
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_plain(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, list):
        return [to_plain(x) for x in record]
    if isinstance(record, tuple) and not hasattr(record, "_fields"):  # not a named tuple
        return tuple(to_plain(x) for x in record)
    if isinstance(record, dict):
        return {k: to_plain(v) for k, v in record.items()}
    return record


_PLAIN = frozenset({str, int, float, bool, type(None)})


def from_json(tp, value, where: str = "record"):
    """``value`` (parsed JSON) as an instance of the type ``tp`` (module docstring)."""
    return _reader(tp)(value, where)


@cache
def _reader(tp) -> typing.Callable[[typing.Any, _Path], typing.Any]:
    """The function that reads JSON values as ``tp``, made once per type (``from_json``)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        bounds = next((m for m in args[1:] if isinstance(m, Bounds)), Bounds())
        inner = _reader(args[0])

        def bounded(value, path):
            if bounds.nan and isinstance(value, float) and math.isnan(value):
                return value
            value = inner(value, path)
            return value if bounds.holds(value) else bounds.check(value, _where(path))

        return bounded
    if dataclasses.is_dataclass(tp):
        return _dataclass_reader(tp)
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return _unreadable(f"unions other than X | None are not supported: {tp}")
        inner = _reader(rest[0])
        return lambda value, path: None if value is None else inner(value, path)
    if tp is str:
        return lambda v, path: v if isinstance(v, str) else _fail(_where(path), "a string", v)
    if tp is bool:
        return lambda v, path: v if isinstance(v, bool) else _fail(_where(path), "true or false", v)
    if tp is int:

        def integer(value, path):
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            _fail(_where(path), "an integer", value)

        return integer
    if tp is float:

        def number(value, path):
            if type(value) is float and math.isfinite(value):  # the common case, first
                return value
            if is_finite_number(value):
                return float(value)
            _fail(_where(path), "a finite number", value)

        return number
    if tp is dict:
        return lambda v, path: v if isinstance(v, dict) else _fail(_where(path), "a JSON object", v)
    if origin is list:
        item = _reader(args[0])

        def items(value, path):
            if not isinstance(value, list):
                _fail(_where(path), "a list", value)
            return [item(x, (path, i)) for i, x in enumerate(value)]

        return items
    if origin is tuple:
        readers = [_reader(a) for a in args]

        def fixed(value, path):
            if not isinstance(value, list) or len(value) != len(readers):
                _fail(_where(path), f"a list of {len(readers)}", value)
            pairs = enumerate(zip(readers, value, strict=True))
            return tuple(r(x, (path, i)) for i, (r, x) in pairs)

        return fixed
    if origin is dict:
        item = _reader(args[1])

        def mapping(value, path):
            if not isinstance(value, dict):
                _fail(_where(path), "a JSON object", value)
            return {k: item(x, (path, f".{k}")) for k, x in value.items()}

        return mapping
    return _unreadable(f"no JSON reading for type {tp}")


def _unreadable(problem: str):
    """A reader for a type ``from_json`` cannot read: a TypeError (the record's definition is
    wrong, not the data) naming where it was met."""

    def refuse(value, path):
        raise TypeError(f"{_where(path)}: {problem}")

    return refuse


def _dataclass_reader(cls):
    hints = _hints(cls)
    # the keys and which are required: ``dataclass_keys``'s, which ``check_keys`` is given
    # too (the required first: the fields' order, as a dataclass without kw_only ones has it)
    required, optional = keys = dataclass_keys(cls)
    fields = [(name, f".{name}", _reader(hints[name]), needed)
              for names, needed in ((required, True), (optional, False))
              for name in names]  # fmt: skip
    known = {name for name, *_ in fields}

    def read(value, path):
        if not isinstance(value, dict):
            _fail(_where(path), f"a JSON object ({cls.__name__})", value)
        if not known.issuperset(value):  # (the fast test first: a record is read per value)
            check_keys(value, _where(path), *keys)
        out = {}
        for name, part, reader, required in fields:
            if name in value:
                out[name] = reader(value[name], (path, part))
            elif required:
                check_keys(value, _where(path), *keys)
        return cls(**out)

    return read
