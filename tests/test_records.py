"""Reading records back from JSON as untrusted data (``toy_models.records``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from toy_models.records import from_json, parse_json


@dataclass
class Inner:
    name: str
    share: float


@dataclass
class Outer:
    count: int
    flag: bool
    pair: tuple[str, float]
    inner: Inner | None
    items: list[Inner] = field(default_factory=list)
    table: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


GOOD = {
    "count": 3, "flag": True, "pair": ["a", 1], "inner": {"name": "x", "share": 0.5},
    "items": [{"name": "y", "share": -2}], "table": {"k": 1.5}, "extra": {"any": [1, None]},
}  # fmt: skip


def test_a_good_record_is_built_with_its_types():
    r = from_json(Outer, GOOD)
    assert r == Outer(3, True, ("a", 1.0), Inner("x", 0.5), [Inner("y", -2.0)], {"k": 1.5},
                      {"any": [1, None]})  # fmt: skip
    assert isinstance(r.pair, tuple) and isinstance(r.items[0].share, float)
    assert from_json(Outer, {**GOOD, "inner": None}).inner is None
    short = {k: v for k, v in GOOD.items() if k not in ("items", "table", "extra")}
    assert from_json(Outer, short).items == []  # defaults fill what is missing


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("count", True, "record.count: expected an integer"),
        ("count", 2.5, "record.count: expected an integer"),
        ("flag", 1, "record.flag: expected true or false"),
        ("pair", ["a"], "record.pair: expected a list of 2"),
        ("pair", ["a", "b"], "record.pair[1]: expected a finite number"),
        ("inner", {"name": "x", "share": float("inf")}, "record.inner.share: expected a finite"),
        ("inner", {"name": "x"}, "record.inner: missing key 'share'"),
        ("items", [{"name": "y", "share": 1, "z": 0}], "record.items[0]: unknown keys ['z']"),
        ("items", {"name": "y"}, "record.items: expected a list"),
        ("table", {"k": None}, "record.table.k: expected a finite number"),
        ("extra", [], "record.extra: expected a JSON object"),
    ],
)
def test_a_bad_field_is_refused_naming_it(key, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        from_json(Outer, {**GOOD, key: value})


def test_a_missing_field_or_a_non_object_is_refused():
    with pytest.raises(ValueError, match="record: missing key 'count'"):
        from_json(Outer, {k: v for k, v in GOOD.items() if k != "count"})
    with pytest.raises(ValueError, match="expected a JSON object"):
        from_json(Outer, [GOOD])


def test_parse_json_is_never_a_traceback():
    """JSON from disk: text that is not JSON, and nesting too deep to parse, are one
    ValueError line each, not a JSONDecodeError or a RecursionError traceback."""
    assert parse_json('{"a": [1, 2.5, null, "x"]}') == {"a": [1, 2.5, None, "x"]}
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_json("{not json")
    with pytest.raises(ValueError, match="nested too deeply") as info:
        parse_json("[" * 100_000 + "]" * 100_000)
    assert "\n" not in str(info.value)
