"""circuit-tracer's feature files beside graph.json (reports.feature_files): they follow its
schema, graph.json's nodes resolve to them, and they hold the dashboards' values; on a tiny
trained model with random replacement layers and small dashboards."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

from circuits import dashboard_pass as P
from circuits.attribution import attribute
from circuits.graph import Graph
from circuits.neuronpedia import feature_number
from circuits.nodes import Kind, sublayer, unit_id
from circuits.prune import prune_graph
from circuits.trace import parse_args
from reports import feature_files as F
from reports.outputs import write_graph_outputs
from reports.viewer import check_dashboards
from toy_models.tokenizer import encode_prompt

PROMPT = "Monday, Tuesday, Wednesday,"


@pytest.fixture(scope="module")
def traced(tiny_pretrained, tmp_path_factory):
    """A pruned graph of the tiny model and its units' dashboards (viewer schema)."""
    from conftest import random_replacement

    model, tokenizer = tiny_pretrained
    replacement = random_replacement(model, n_qk=2, n_ov=8, lorsa_k=3, d_sae=16, tc_k=4)
    path = tmp_path_factory.mktemp("dash") / "d.safetensors"
    with torch.no_grad():
        dash = P.build(replacement, tokenizer, path, rows=12, batch_rows=4, seed=3, progress=False)
        tokens = encode_prompt(tokenizer, PROMPT, replacement.cfg.n_ctx)
        full = attribute(replacement, tokens, tokenizer=tokenizer, prompt=PROMPT, max_logits=3)
    full.model["name"] = "tiny"
    graph = prune_graph(full, 0.9, 0.98, max_nodes=24)
    units = [(Kind(k), s, i) for k, s, i in graph.units()]
    views = dash.for_viewer(tokenizer, [(k, (s - 1) // 2, i) for k, s, i in units])
    return graph, views


def feature_paths(out):
    return sorted((out / F.FEATURES_DIR).rglob("*.json"))


def cantor_unpair(z: int) -> tuple[int, int]:
    """The viewer's ``util.cantorUnpair``."""
    w = math.floor((math.sqrt(8 * z + 1) - 1) / 2)
    y = z - (w * w + w) // 2
    return w - y, y


def test_graph_json_nodes_resolve_to_feature_files(traced, tmp_path):
    graph, views = traced
    write_graph_outputs(graph, tmp_path, [], dashboards=views)
    data = json.loads((tmp_path / "graph.json").read_text())
    scan = data["metadata"]["scan"]
    assert scan == "./graph_data/features/tiny-local"
    index = json.loads((tmp_path / F.INDEX_FILE).read_text())
    assert [g["slug"] for g in index["graphs"]] == [F.GRAPH_SLUG]  # -> graph_data/graph.json
    assert index["graphs"][0]["prompt_tokens"] == graph.token_strings
    assert "node_threshold" not in index["graphs"][0]
    wanted = set()
    for node in data["nodes"]:
        if node["feature_type"] in ("lorsa", "cross layer transcoder"):
            layer, index_in_layer = cantor_unpair(node["feature"])
            assert node["node_id"].startswith(f"{layer}_{index_in_layer}_")
            # the viewer fetches {scan}/{feature}.json; the server maps graph_data/ to --out
            path = tmp_path / scan.removeprefix("./graph_data/") / f"{node['feature']}.json"
            assert path.is_file(), node["node_id"]
            wanted.add(path)
        if node["feature_type"] == "logit":
            float(node["clerp"].split("(p=")[1].split(")")[0])  # what the viewer parses
    assert wanted and set(feature_paths(tmp_path)) == wanted  # one file per unit, no more
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_files_follow_the_schema_and_hold_the_dashboards_values(traced, tmp_path):
    graph, views = traced
    write_graph_outputs(graph, tmp_path, [], dashboards=views)
    checked = check_dashboards(views)
    seen = {Kind.LORSA: 0, Kind.TRANSCODER: 0}
    for kind, stage, index in graph.units():
        number = feature_number(sublayer(stage), index)
        data = json.loads((tmp_path / "features/tiny-local" / f"{number}.json").read_text())
        F.check_feature_file(data)
        view = checked[unit_id(kind, stage, index)]
        assert data["index"] == index and data["transcoder_id"].endswith(kind.label)
        assert data["activation_frequency"] == view["frequency"]
        assert data["top_logits"] == [t for t, _ in view["logits"]["promoted"]]
        assert data["bottom_logits"] == [t for t, _ in view["logits"]["suppressed"]]
        shown = [e for q in data["examples_quantiles"] for e in q["examples"]]
        assert len(shown) == len(view.get("examples", []))
        for e, v in zip(shown, view.get("examples", []), strict=True):
            assert e["tokens"] == [t.translate(F.VISIBLE) for t in v["tokens"]]
            assert e["train_token_ind"] == v["at"]
            acts = [0.0] * len(v["tokens"])
            acts[v["at"]] = v["activation"]
            assert e["tokens_acts_list"] == acts
            assert e.get("keys") == v.get("keys")
        if "concept" in view:
            assert data["concept"] == view["concept"]
            # a label at chance is no concept, said first (reports.labels.concept_text)
            first = "none (at chance: " * bool(view["concept"].get("at_chance"))
            assert data["description"].startswith(first + view["concept"]["label"])
        if not view.get("examples"):
            assert data["histogram"] == data["quantile_values"] == [] and data["act_max"] == 0
            continue
        seen[kind] += 1
        assert data["examples_quantiles"][0]["quantile_name"] == F.TOP_NAME
        assert data["act_max"] == view["examples"][0]["activation"]  # the top example
        fires = sum(view["histogram"]["counts"])
        assert len(data["histogram"]) == F.HIST_BINS
        assert sum(data["histogram"]) == pytest.approx(fires)
        q = data["quantile_values"]
        assert len(q) == F.N_QUANTILES and q == sorted(q) and q[-1] == data["act_max"]
    assert seen[Kind.LORSA] and seen[Kind.TRANSCODER]  # both kinds were really checked


def test_files_validate_against_circuit_tracers_pydantic_models(traced, tmp_path):
    """The field definitions of circuit_tracer/frontend/feature_models.py (0.5.0)."""
    pydantic = pytest.importorskip("pydantic")

    class Example(pydantic.BaseModel):
        tokens_acts_list: list[float]
        train_token_ind: int
        is_repeated_datapoint: bool
        tokens: list[str]

    class ExamplesQuantile(pydantic.BaseModel):
        quantile_name: str
        examples: list[Example]

    class Model(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(strict=True)
        transcoder_id: str
        index: int
        examples_quantiles: list[ExamplesQuantile]
        top_logits: list[str]
        bottom_logits: list[str]
        act_min: float
        act_max: float
        quantile_values: list[float]
        histogram: list[float]
        activation_frequency: float

    graph, views = traced
    write_graph_outputs(graph, tmp_path, [], dashboards=views)
    paths = feature_paths(tmp_path)
    assert paths
    for path in paths:
        Model.model_validate_json(path.read_text())


def test_byte_reproducible_and_stale_files_removed(traced, tmp_path):
    graph, views = traced
    outs = [tmp_path / "a" / "t", tmp_path / "b" / "t"]  # the slug is the directory's name
    for out in outs:
        write_graph_outputs(graph, out, [], dashboards=views)
    names = [sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) for out in outs]
    assert names[0] == names[1]
    for name in names[0]:
        a, b = outs[0] / name, outs[1] / name
        assert a.is_dir() or a.read_bytes() == b.read_bytes(), name
    stale = outs[0] / "features/tiny-local/999999.json"
    stale.write_text("{}")  # a file no run wrote there: someone's, in the way and kept
    with pytest.raises(OSError, match="999999.json: in the way"):
        write_graph_outputs(graph, outs[0], [], dashboards=views)
    assert stale.read_text() == "{}"
    record_path = outs[0] / ".graph-set.json"  # as an earlier run that wrote it records it
    record = json.loads(record_path.read_text())
    record["files"]["features"].append("tiny-local/999999.json")
    record_path.write_text(json.dumps(record))
    write_graph_outputs(graph, outs[0], [], dashboards=views)  # rebuilt whole: no stale file
    assert not stale.exists()
    written = write_graph_outputs(graph, outs[0], [], dashboards=views, feature_files=False)
    assert not (outs[0] / F.FEATURES_DIR).exists() and not (outs[0] / F.INDEX_FILE).exists()
    assert sum("of an earlier run" in note for note in written.notes) == 2
    data = json.loads((outs[0] / "graph.json").read_text())
    assert data["metadata"]["scan"] == "tiny"  # the model's name, as without dashboards


def test_bad_dashboards_are_refused(traced, tmp_path):
    graph, views = traced
    unit = next(iter(views))
    with pytest.raises(ValueError, match=f"no dashboard for {unit}"):
        write_graph_outputs(graph, tmp_path, [], dashboards={u: v for u, v in views.items()
                                                             if u != unit})  # fmt: skip
    bad = {u: dict(v) for u, v in views.items()}
    bad[unit]["histogram"] = {"edges": [1.0, 0.5], "counts": [3]}
    with pytest.raises(ValueError, match=f"dashboard of {unit}: histogram"):
        write_graph_outputs(graph, tmp_path, [], dashboards=bad)
    # found by a fuzz pass: a zero-width bin passed, then divided by zero in equal_bins
    bad[unit] = {"frequency": 0.1, "histogram": {"edges": [0.0, 0.0], "counts": [3]}}
    with pytest.raises(ValueError, match=f"dashboard of {unit}: histogram edges must rise"):
        write_graph_outputs(graph, tmp_path, [], dashboards=bad)
    bad[unit]["frequency"] = float("nan")
    with pytest.raises(ValueError, match="frequency"):
        write_graph_outputs(graph, tmp_path, [], dashboards=bad)
    assert not (tmp_path / F.FEATURES_DIR).exists() and not (tmp_path / "graph.json").exists()


def test_schema_check_refuses_what_the_viewer_cannot_read():
    example = {"tokens": ["a", "b"], "tokens_acts_list": [0.0, 1.5], "train_token_ind": 1,
               "is_repeated_datapoint": False}  # fmt: skip
    good = {
        "transcoder_id": "m:L0.lorsa", "index": 3, "top_logits": ["x"], "bottom_logits": [],
        "examples_quantiles": [{"quantile_name": "Top activations", "examples": [example]}],
        "act_min": 0.0, "act_max": 1.5, "quantile_values": [1.5], "histogram": [1.0],
        "activation_frequency": 0.1,
    }  # fmt: skip
    F.check_feature_file(good)
    for change, message in [
        ({"act_max": float("inf")}, "act_max must be float"),
        ({"index": True}, "index must be int"),
        ({"top_logits": [3]}, r"top_logits must be list\[str\]"),
        ({"examples_quantiles": [{"examples": []}]}, "quantile_name"),
        ({"examples_quantiles": [{"quantile_name": "q", "examples": [
            {**example, "tokens_acts_list": [1.0]}]}]}, "one activation per token"),
        ({"examples_quantiles": [{"quantile_name": "q", "examples": [
            {**example, "train_token_ind": 2}]}]}, "not a token index"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            F.check_feature_file({**good, **change})
    with pytest.raises(ValueError, match="histogram is missing"):
        F.check_feature_file({k: v for k, v in good.items() if k != "histogram"})


def test_histogram_and_quantiles_from_geometric_bins():
    edges, counts = [0.5, 1.0, 2.0, 4.0], [2, 0, 6]
    bins = F.equal_bins(edges, counts, 3.0)
    assert sum(bins) == pytest.approx(8) and len(bins) == F.HIST_BINS
    width = 3.0 / F.HIST_BINS
    assert sum(bins[: int(0.5 / width)]) == 0  # nothing below the first edge
    assert sum(bins[int(1.0 / width) + 1 : int(2.0 / width)]) == 0  # the empty bin
    q = F.quantile_values(edges, counts, 3.0)
    assert q[:25] == [1.0] * 25  # 2 of 8 firings lie below 1.0
    assert q[25:] == [3.0] * 75  # the rest in [2, 4), capped at the largest activation
    assert F.equal_bins([3.0, 3.5], [4], 3.0)[-1] == 4  # a bin at the top keeps its count


def test_a_unit_that_never_fired_on_the_dashboards_tokens_says_so():
    """A graph's unit fired on its prompt, but maybe never on the dashboards' tokens: its file
    has no examples, no histogram and act_max 0, and its description says why."""
    never = {"frequency": 0.0, "histogram": {"edges": [0.0, 1.0], "counts": [0]}, "examples": []}
    data = F.feature_file(never, "0-lorsa", 3)
    F.check_feature_file(data)
    assert data["act_max"] == 0 and data["histogram"] == [] and data["examples_quantiles"] == []
    assert data["description"] == "never fired on the dashboards' tokens (no examples)"
    fired = F.feature_file({"frequency": 0.5, "examples": []}, "0-lorsa", 3)
    assert "description" not in fired


def test_trace_flag_on_by_default():
    assert parse_args(["--prompt", "x"]).feature_files
    assert not parse_args(["--prompt", "x", "--no-feature-files"]).feature_files


def test_a_run_that_fails_half_way_leaves_the_earlier_set_whole(traced, tmp_path, monkeypatch):
    """The output set is written beside the old one and moved into place only when whole: a
    full disk while writing the page (the last file) leaves the earlier run's files, every one
    of them, and no staging directory; never a mix of two prompts' files."""
    import errno

    from reports import outputs

    graph, views = traced
    out = tmp_path / "t"
    write_graph_outputs(graph, out, [], dashboards=views, full=graph)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full_disk(graph, path, *args, **kwargs):  # write_html(graph, path, ...)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "write_html", full_disk)
    other = dataclasses.replace(graph, prompt="")  # another graph: of no recorded prompt
    with pytest.raises(OSError) as failed:
        write_graph_outputs(other, out, [], dashboards=None)
    # the error names the file in out, not its staged copy
    assert str(failed.value) == f"cannot write {out / 'graph.html'}: No space left on device"
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not (out / outputs.STAGING_DIR).exists()
    # the next run that succeeds replaces the set and removes what it does not write again,
    # and nothing else: a file of the user's own beside the set stays
    (out / "graph_notes.txt").write_text("mine")
    monkeypatch.undo()
    written = write_graph_outputs(other, out, [], dashboards=None)
    assert (out / "graph_notes.txt").read_text() == "mine"
    assert not (out / "full_graph.safetensors").exists() and not (out / "features").exists()
    assert sum("of an earlier run" in note for note in written.notes) == 3  # + graph-metadata
    assert Graph.load(out / "graph.safetensors").prompt == ""
    # an entry of the other kind in the way (a directory named graph.html) is refused before
    # anything moves: the set stays whole
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "graph.html").unlink()
    (out / "graph.html").mkdir()
    with pytest.raises(OSError, match="graph.html: in the way"):
        write_graph_outputs(graph, out, [], dashboards=None)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == {k: v for k, v in before.items() if k.name != "graph.html"}


def test_a_full_disk_among_the_feature_files_names_the_file_where_it_goes(
    traced, tmp_path, monkeypatch
):
    """Found by a robustness pass: a full disk while the feature files were written said
    ``cannot write OUT/features.new/...``, a folder no run leaves (the feature files' own
    temporary one). The line names the file in ``features/``; the earlier set stays whole."""
    import errno

    graph, views = traced
    out = tmp_path / "t"
    write_graph_outputs(graph, out, [], dashboards=views)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real, written = F.write_bytes_atomic, []

    def full_disk(path, data):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        real(path, data)

    monkeypatch.setattr(F, "write_bytes_atomic", full_disk)
    with pytest.raises(OSError) as failed:
        write_graph_outputs(graph, out, [], dashboards=views)
    features = re.escape(str(out / F.FEATURES_DIR))
    message = str(failed.value)
    assert re.fullmatch(rf"cannot write {features}/[^/]+/\d+\.json: No space left on device",
                        message), message  # fmt: skip
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_two_runs_never_write_into_one_directory_at_once(traced, tmp_path):
    """Found by a fuzz pass: two traces into one --out shared its staging directory, each
    removing the other's files, and both said they wrote graph.json that was not there. A run
    holds ``.writing.lock`` while it writes: another live run's lock is refused in one line
    (nothing touched), a killed run's is taken over, and none is left behind."""
    import subprocess
    import sys

    from reports.outputs import LOCK_FILE
    from toy_models.files import WriteError

    graph, views = traced
    out = tmp_path / "t"
    write_graph_outputs(graph, out, [], dashboards=views)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(str(live.pid))
        with pytest.raises(WriteError, match=f"another run .process {live.pid}. is writing"):
            write_graph_outputs(graph, out, [], dashboards=views)
        after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE}
        assert after == before
    finally:
        live.kill()
        live.wait()
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    (out / LOCK_FILE).write_text(done.stdout)  # a killed run's lock
    write_graph_outputs(graph, out, [], dashboards=views)
    assert not (out / LOCK_FILE).exists() and not list(out.glob(f"{LOCK_FILE}*"))
