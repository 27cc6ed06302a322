"""Reading records back from JSON as untrusted data (``toy_models.records``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated

import pytest

from toy_models.records import Bounds, from_json, parse_json


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


WRITTEN = "written by another version, or edited"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("count", True, "record.count: expected an integer"),
        ("count", 2.5, "record.count: expected an integer"),
        ("flag", 1, "record.flag: expected true or false"),
        ("pair", ["a"], "record.pair: expected a list of 2"),
        ("pair", ["a", "b"], "record.pair[1]: expected a finite number"),
        ("inner", {"name": "x", "share": float("inf")}, "record.inner.share: expected a finite"),
        ("inner", {"name": "x"}, f"record.inner lacks 'share': {WRITTEN}"),
        (
            "items",
            [{"name": "y", "share": 1, "z": 0}],
            f"record.items[0] holds unknown keys ('z'): {WRITTEN}",
        ),
        ("items", {"name": "y"}, "record.items: expected a list"),
        ("table", {"k": None}, "record.table.k: expected a finite number"),
        # JSON parses a 401-digit integer; math.isfinite overflowed on it (a fuzz pass's
        # OverflowError traceback where a float was expected)
        ("table", {"k": 10**400}, "record.table.k: expected a finite number"),
        ("extra", [], "record.extra: expected a JSON object"),
    ],
)
def test_a_bad_field_is_refused_naming_it(key, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        from_json(Outer, {**GOOD, key: value})


def test_keys_are_refused_in_one_form_clipped_counted_and_explained():
    """``check_keys`` is the one message of every reader of JSON from disk (records, model and
    dictionary configs, states, headers, QK records, cache plans): where, the first three keys
    each clipped to 40 characters (a key may be any string: a 10**5-character key was
    written out whole by ``from_json``, a config and a cache plan), how many more, and what it
    means. The missing form said no more than the key."""
    from toy_models.checkpoint import config_from_dict
    from toy_models.model import ModelConfig
    from toy_models.records import check_keys

    long = "a" * 10**5
    with pytest.raises(ValueError) as info:
        check_keys({long: 1, "b": 2, "c": 3, "d": 4, "e": 5, "kept": 6}, "its header", ["kept"])
    assert str(info.value) == (f"its header holds unknown keys ('{'a' * 39}..., 'b', 'c' and 2 "
                               f"more): {WRITTEN}")  # fmt: skip
    with pytest.raises(ValueError) as info:
        check_keys({}, "meta", ("rows", "seed"), ("top_k",))
    assert str(info.value) == f"meta lacks 'rows', 'seed': {WRITTEN}"
    check_keys({"rows": 1, "seed": 2}, "meta", ("rows", "seed"), ("top_k",))  # optional: may lack
    config = {"d_vocab": 10, "n_ctx": 8, "d_model": 8, "n_layers": 1, "n_heads": 2, "d_head": 4,
              "d_mlp": 16, "ln_eps": 1e-5, "init_std": 0.02}  # fmt: skip
    for read, good in ((lambda d: from_json(Outer, d), GOOD),
                       (lambda d: config_from_dict(ModelConfig, d), config)):  # fmt: skip
        with pytest.raises(ValueError) as info:
            read({**good, long: 1})
        assert str(info.value).endswith(f"holds unknown keys ('{'a' * 39}...): {WRITTEN}")
        assert len(str(info.value)) < 200
    with pytest.raises(ValueError) as info:
        from_json(Outer, {k: v for k, v in GOOD.items() if k != "pair"} | {"items": [{}]})
    assert str(info.value) == f"record lacks 'pair': {WRITTEN}"


def test_a_missing_field_or_a_non_object_is_refused():
    with pytest.raises(ValueError, match="record lacks 'count': written by another version"):
        from_json(Outer, {k: v for k, v in GOOD.items() if k != "count"})
    with pytest.raises(ValueError, match="expected a JSON object"):
        from_json(Outer, [GOOD])


@dataclass
class Kinds:
    """One field of each kind ``dataclass_keys`` tells apart."""

    first: int
    second: str
    plain: float = 1.5
    made: list[int] = field(default_factory=list)
    derived: int = field(default=0, init=False)


def test_a_records_required_and_optional_keys_are_dataclass_keys():
    """The reader takes which keys a record needs from ``dataclass_keys``, the one place
    that says it (it worked them out again beside it): fields without a default are required,
    those with a default or a factory optional, and a field outside ``__init__`` is no key."""
    from toy_models.records import dataclass_keys

    assert dataclass_keys(Kinds) == (["first", "second"], ["plain", "made"])
    assert from_json(Kinds, {"first": 1, "second": "a"}) == Kinds(1, "a")
    assert from_json(Kinds, {"first": 1, "second": "a", "plain": 2, "made": [3]}) == Kinds(
        1, "a", 2.0, [3]
    )
    for missing in ("first", "second"):
        with pytest.raises(ValueError) as info:
            from_json(Kinds, {k: v for k, v in {"first": 1, "second": "a"}.items() if k != missing})
        assert str(info.value) == f"record lacks {missing!r}: {WRITTEN}"
    with pytest.raises(ValueError) as info:
        from_json(Kinds, {"second": "a", "plain": "x"})  # the first field read that fails
    assert str(info.value) == f"record lacks 'first': {WRITTEN}"
    with pytest.raises(ValueError) as info:
        from_json(Kinds, {"first": 1, "second": "a", "derived": 2})
    assert str(info.value) == f"record holds unknown keys ('derived'): {WRITTEN}"


def test_parse_json_is_never_a_traceback():
    """JSON from disk: text that is not JSON, and nesting too deep to parse, are one
    ValueError line each, not a JSONDecodeError or a RecursionError traceback."""
    assert parse_json('{"a": [1, 2.5, null, "x"]}') == {"a": [1, 2.5, None, "x"]}
    with pytest.raises(ValueError, match="an object gives the key 'model' twice"):
        parse_json('{"x": {"model": 1, "d": 2, "model": 3}}')  # json.loads keeps the last
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_json("{not json")
    with pytest.raises(ValueError, match="nested too deeply") as info:
        parse_json("[" * 100_000 + "]" * 100_000)
    assert "\n" not in str(info.value)


@dataclass
class Ranged:
    share: Annotated[float, Bounds(0.0, 1.0)]
    count: Annotated[int, Bounds(0)]
    maybe: Annotated[float, Bounds(0.0, nan=True)]


def test_bounds_check_the_range_and_nan_only_where_allowed():
    assert from_json(Ranged, {"share": 1, "count": 0, "maybe": float("nan")}).share == 1.0
    cases = {
        "share": (1.5, "record.share: expected a number in [0, 1], got 1.5"),
        "count": (-1, "record.count: expected a number in [0, inf], got -1"),
        "maybe": (-0.5, "record.maybe: expected a number in [0, inf], got -0.5"),
    }
    for name, (value, message) in cases.items():
        good = {"share": 0.5, "count": 3, "maybe": 0.0}
        with pytest.raises(ValueError, match=re.escape(message)):
            from_json(Ranged, good | {name: value})
    with pytest.raises(ValueError, match="record.share: expected a finite number"):
        from_json(Ranged, {"share": float("nan"), "count": 3, "maybe": 0.0})
    with pytest.raises(ValueError, match="record.count: expected an integer"):
        from_json(Ranged, {"share": 0.5, "count": True, "maybe": 0.0})


def test_finite_numbers_from_json_never_overflow():
    """``is_finite_number``: what every reader of a float field asks of a JSON number; a
    401-digit integer is no float (a fuzz pass found OverflowError tracebacks from a model's
    ``config.json``, a graph file and the dashboards and statistics headers), nor a bool."""
    from toy_models.checkpoint import config_from_dict
    from toy_models.model import ModelConfig
    from toy_models.records import is_finite_number

    assert [is_finite_number(x) for x in (1, -2.5, 10**300, 10**400, -(10**400), True,
                                          float("nan"), float("inf"), "1", None)] == [
        True, True, True, False, False, False, False, False, False, False]  # fmt: skip
    with pytest.raises(ValueError, match="ln_eps must be finite and positive, got 1000"):
        config_from_dict(ModelConfig, {"ln_eps": 10**400})
    # a fuzz pass: ln_eps 1e30 made every figure 0 (exit 0); a missing d_head was read as 32
    full = {"d_vocab": 10, "n_ctx": 8, "d_model": 8, "n_layers": 1, "n_heads": 2, "d_head": 4,
            "d_mlp": 16, "ln_eps": 1e-5, "init_std": 0.02}  # fmt: skip
    assert config_from_dict(ModelConfig, full) == ModelConfig(**full)
    with pytest.raises(ValueError, match=r"ln_eps must be at most 0.01, got 1e\+30"):
        config_from_dict(ModelConfig, full | {"ln_eps": 1e30})
    with pytest.raises(ValueError, match=r"init_std must be at most 1"):
        config_from_dict(ModelConfig, full | {"init_std": 5.0})
    with pytest.raises(ValueError, match="config lacks 'd_head': written by another version"):
        config_from_dict(ModelConfig, {k: v for k, v in full.items() if k != "d_head"})
    with pytest.raises(ValueError, match="ln_eps must be at most 0.01"):  # made, not read
        ModelConfig(**full | {"ln_eps": 0.5})


def test_to_plain_is_asdict_without_the_copies():
    """``to_plain`` (what ``MechanismSummary.to_dict`` uses) gives what ``dataclasses.asdict``
    gives, tuples kept, and reads back to the same record."""
    from dataclasses import asdict

    from toy_models.records import to_plain

    record = from_json(Outer, GOOD)
    plain = to_plain(record)
    assert plain == asdict(record) and isinstance(plain["pair"], tuple)
    assert from_json(Outer, parse_json(__import__("json").dumps(plain))) == record
    assert to_plain([record, (1, "a"), {"k": record}]) == [asdict(record), (1, "a"),
                                                           {"k": asdict(record)}]  # fmt: skip


def test_a_weights_files_other_tensors_name_only_what_differs():
    """A reviewer read "missing [], unexpected [...]": only the side that has names is said."""
    from toy_models.checkpoint import _check_names_and_shapes

    with pytest.raises(ValueError, match=r"in C \(unexpected \['b'\]\)$"):
        _check_names_and_shapes({"a": (1,)}, {"a": (1,), "b": (2,)}, "P", "C")
    with pytest.raises(ValueError, match=r"in C \(missing \['b'\]\)$"):
        _check_names_and_shapes({"a": (1,), "b": (1,)}, {"a": (1,)}, "P", "C")
