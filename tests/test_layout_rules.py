"""The project's structural rules, checked on the source: data flows one way between the four
packages, and the stage/kind numbering and ids come from one module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from circuits.nodes import (
    Kind,
    block_of,
    is_attention,
    logit_stage,
    lorsa_stage,
    node_id,
    stage_of,
    sublayer_kind,
    transcoder_stage,
    unit_id,
)

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["toy_models", "replacement", "circuits", "reports"]
# The command lines of circuits hand finished graphs to reports.outputs to write files.
CLI_EXCEPTIONS = {"circuits/trace.py", "circuits/global_graph.py"}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(ORDER)


@pytest.mark.parametrize("package", ORDER)
def test_data_flows_one_way(package):
    higher = set(ORDER[ORDER.index(package) + 1 :])
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        allowed = {"reports"} if rel in CLI_EXCEPTIONS else set()
        assert not (imported_packages(path) & higher) - allowed, rel


def test_stage_helpers_round_trip():
    for layer in range(5):
        assert block_of(lorsa_stage(layer)) == block_of(transcoder_stage(layer)) == layer
        assert is_attention(lorsa_stage(layer)) and not is_attention(transcoder_stage(layer))
        assert sublayer_kind(lorsa_stage(layer)) == Kind.LORSA
        assert sublayer_kind(transcoder_stage(layer)) == Kind.TRANSCODER
        assert stage_of(Kind.LORSA, layer) == lorsa_stage(layer)
        assert stage_of(Kind.TRANSCODER, layer) == transcoder_stage(layer)
    assert stage_of(Kind.EMBEDDING, 3) == 0 and block_of(0) == -1
    assert stage_of(Kind.LOGIT, 4) == logit_stage(4) == 9 and block_of(9) == 4
    with pytest.raises(ValueError, match="give the stage"):
        stage_of(Kind.ERROR, 1)


def test_node_and_unit_ids_follow_circuit_tracer():
    assert node_id(Kind.EMBEDDING, 0, 3, 17) == "E_17_3"
    assert node_id(Kind.LORSA, lorsa_stage(1), 5, 400) == "2_400_5"
    assert node_id(Kind.ERROR, transcoder_stage(1), 5, -1) == "3_-1_5"
    assert node_id(Kind.TRANSCODER, transcoder_stage(0), 2, 9) == "1_9_2"
    assert node_id(Kind.LOGIT, logit_stage(4), 7, 11) == "9_11_7"
    assert node_id(Kind.LOGIT, logit_stage(4), 7, 11, negative=12) == "9_11-12_7"
    assert unit_id(Kind.LORSA, lorsa_stage(1), 400) == "2_400"
    assert unit_id(Kind.EMBEDDING, 0, 17) == "E_17"
    assert node_id(Kind.BIAS, lorsa_stage(1), 5, -1) == "2_bias_5"
    assert unit_id(Kind.BIAS, transcoder_stage(0), -1) == "1_bias"


def test_kind_names():
    assert [k.label for k in Kind] == ["embedding", "lorsa", "transcoder", "error", "logit", "bias"]
    assert Kind.parse("lorsa") == Kind.LORSA
    with pytest.raises(ValueError, match="expected one of embedding, lorsa"):
        Kind.parse("head")
