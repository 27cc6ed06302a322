"""The mechanism benchmark's criteria (benchmarks/mechanisms.py) on constructed QK reasons whose
answer is known: which token each side's roots name decides ``reason`` and ``reason_match``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

from circuits.mechanisms import SourceShare

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("mechs", ROOT / "benchmarks" / "mechanisms.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def token(pos: int, value: float) -> SourceShare:
    return SourceShare(f"token @{pos}", "embedding", None, pos, None, None, value)


def reason(query: list[SourceShare], key: list[SourceShare]):
    return SimpleNamespace(query_sources={"roots": query}, key_sources={"roots": key}, specific=1.0)


# BOS A B C x A B | q = 7 (the second B), key k = 3 (C, after the first B)
IDS = [0, 11, 12, 13, 99, 11, 12]
Q, K = 6, 3


def test_induction_reason_is_the_current_token_and_the_token_before_the_key():
    m = _benchmark()
    plain = reason([token(Q, 5.0), token(Q - 1, 1.0)], [token(K, 9.0), token(K - 1, 4.0)])
    assert m.sources_ok("induction", plain, Q, K)
    assert m.shared_token(plain, IDS, Q, K)
    # the key's strongest moved root is two tokens back: not ``reason``; the query's strongest
    # is also the earlier token A (11): a match on A at both places
    earlier = reason([token(Q - 1, 5.0), token(Q, 1.0)], [token(K - 2, 4.0), token(K - 1, 3.0)])
    assert not m.sources_ok("induction", earlier, Q, K)
    assert m.shared_token(earlier, IDS, Q, K)


def test_no_match_when_the_sides_hold_different_tokens_or_nothing_positive():
    m = _benchmark()
    other = reason([token(Q, 5.0)], [token(K - 2, 4.0), token(K - 1, 3.0)])  # B vs A
    assert not m.sources_ok("induction", other, Q, K)
    assert not m.shared_token(other, IDS, Q, K)
    negative = reason([token(Q, -5.0)], [token(K - 1, 4.0)])
    assert not m.shared_token(negative, IDS, Q, K)
    # the key's own token never counts as moved there (the key C is not the query's B anyway)
    own = reason([token(Q, 5.0)], [token(K, 9.0)])
    assert not m.shared_token(own, IDS, Q, K)
    # the strongest moved root is not a token (an error term before the key): no match
    error = SourceShare("L0 mlp error", "error", 0, K - 1, None, None, 4.0)
    assert not m.shared_token(reason([token(Q, 5.0)], [error, token(K - 1, 3.0)]), IDS, Q, K)


def test_reason_misses_are_sorted_by_what_the_key_side_leads_with():
    m = _benchmark()
    right = {"key": True, "reason": True, "query_root": {}}
    shared = {"key": True, "reason": False, "reason_match": True, "query_root": {},
              "key_moved_root": {"kind": "embedding", "pos": 2}}  # fmt: skip
    start = {"key": True, "reason": False, "reason_match": False, "query_root": {},
             "key_moved_root": {"kind": "embedding", "pos": 1}}  # fmt: skip
    other = {"key": True, "reason": False, "reason_match": False, "query_root": {},
             "key_moved_root": None}  # fmt: skip
    wrong_key = {"key": False, "reason": False, "query_root": {}}
    counts = m.reason_misses([right, shared, start, start, other, wrong_key])
    assert counts == {"misses": 4, "shared_token": 1, "document_start": 2, "other": 1}
    assert m._root_fields(None, IDS) is None
    assert m._root_fields(token(5, 2.5), IDS) == {"kind": "embedding", "pos": 5, "token": 11,
                                                  "value": 2.5}  # fmt: skip
