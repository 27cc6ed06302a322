"""``python -m circuits.trace`` on the shipped default model: the files it writes, and bad input
(one line on stderr, exit code 2, no traceback, nothing written)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from circuits.graph import Graph
from circuits.mechanism_file import load_summary
from circuits.trace import main
from reports.labels import node_label
from toy_models.cli import run_cli
from toy_models.files import write_set_record

PROMPT = "Monday, Tuesday, Wednesday,"


def trace(capsys, *args) -> tuple[int, str, str]:
    """The trace CLI in this process; without dashboards unless the arguments ask for them
    (building the default ones takes minutes: one test below builds small ones)."""
    args = list(args)
    if not any(a.startswith("--dashboard") for a in args):
        args.append("--no-dashboards")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_trace_writes_every_file(tmp_path, capsys):
    out = tmp_path / "trace"
    code, stdout, _ = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--key-mass", "0.3")
    assert code == 0
    assert "logit ' Thursday'" in stdout and "replacement" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"graph.json", "graph.safetensors", "graph.dot", "graph.html"} <= names
    assert not any(name.endswith(".tmp") for name in names)
    graph = Graph.load(out / "graph.safetensors")
    data = json.loads((out / "graph.json").read_text())
    assert [n["node_id"] for n in data["nodes"]] == graph.ids
    assert graph.qk and graph.settings["scores"]["replacement"] > 0
    assert graph.mode == "local"
    # Constants are nodes, QK records carry their reasons, and the mechanism summary is
    # printed, written and shown in the report.
    assert graph.has_constants and all(a.reason is not None for a in graph.qk)
    assert "mechanisms.json" in names and "predicting heads" in stdout
    assert "ablate: predicted" in stdout and "parts: tokens" in stdout
    summary = load_summary(out / "mechanisms.json")
    # a group's promoted tokens are named, any of the vocabulary (a reviewer read '<749>')
    promoted = [x for g in summary.groups for x in g.promotes]
    assert promoted and not [x for x in promoted if x.startswith("<") and x[1:-1].isdigit()]
    (target,) = summary.targets
    assert target.tokens + target.constants + target.errors == pytest.approx(target.value, abs=1e-3)
    assert summary.group(target.predicting_group).kind == "lorsa"
    assert "<h2>Mechanisms</h2>" in (out / "graph.html").read_text()
    # graph.json's qParams start from the supernodes the page starts from: the summary's
    # groups of two members or more in the pruned graph (its were empty; a review)
    present = set(graph.ids)
    groups = [g for g in summary.groups if g.kind in ("lorsa", "transcoder")
              and sum(m in present for m in g.members) >= 2]  # fmt: skip
    supernodes = data["qParams"]["supernodes"]
    assert groups and [s[0] for s in supernodes] == [f"{g.key} {g.name}" for g in groups]
    assert all(set(s[1:]) <= present for s in supernodes)
    if "graph.svg" in names:  # Graphviz installed (CI installs it)
        assert "<svg" in (out / "graph.svg").read_text()
        assert "<svg" in (out / "graph.html").read_text()


def test_the_summary_prints_its_content_before_its_legend(tmp_path, capsys):
    """The mechanism summary leads with its content (the target, the predicting heads, why and
    where they attend, the top paths, the groups) and says its definitions once, in a legend at
    its end, with a one-line pointer where each stood: a reviewer found a 330-character header
    and a 1,300-character ablation legend inside the first 40 lines of this prompt's printout.
    The report's section does the same."""
    from reports.mechanisms import (
        FLOWS_CLAUSES,
        LEGEND_AT_END,
        LEGEND_ID,
        LEGEND_WIDTH,
        PRINT_WIDTH,
    )

    out = tmp_path / "legend"
    code, stdout, _ = trace(capsys, "--prompt", "ticket owl harbor glass | ticket owl harbor",
                            "--out", str(out), "--format", "")  # fmt: skip
    assert code == 0
    lines = stdout.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("mechanisms ("))
    end = next(i for i, x in enumerate(lines) if x.startswith("wrote "))
    legend = lines.index("legend:")
    assert start < legend < end
    # each definition a block of lines no wider than LEGEND_WIDTH (they were a 318- and a
    # 1,156-character line: a review), flows first, the ablate lines' last
    assert lines[legend + 1].startswith(f"  {FLOWS_CLAUSES[0][:40]}")
    assert max(len(x) for x in lines[legend:end]) <= LEGEND_WIDTH
    heads = [x for x in lines[legend + 1 : end] if not x.startswith("   ")]
    assert heads[0].startswith("  exact flows: ") and heads[-1].startswith("  the ablate lines ")
    assert any(x.startswith("  QK reasons ") for x in heads)
    # each definition said once, in the legend; a pointer where it stood
    assert stdout.count("exact flows: ") == 1 and stdout.count("the ablate lines (the") == 1
    assert lines[start].endswith(f"how to read them: {LEGEND_AT_END}):")
    groups = lines.index("groups:")
    assert lines[groups + 1] == f"  (how to read the ablate lines and their marks: {LEGEND_AT_END})"
    # the content first: each of these before the legend, and the first group within 40 lines
    firsts = [next(i for i, x in enumerate(lines) if x.startswith(prefix)) for prefix in (
        "target ", "  parts: tokens", "  predicting heads", "    why it attends there",
        "    what makes it attend there", "  top paths", "groups:", "    g0 ")]  # fmt: skip
    # (40 lines before the QK sources' facts took a line each: their block is 8 lines longer;
    # 45 before the why line's term, its movers and what the blocks leave long took lines too)
    assert firsts == sorted(firsts) and firsts[-1] < 50 and firsts[-1] < legend
    assert max(len(x) for x in lines[: firsts[-1]]) < 700
    # a QK source's verdict beside its name, before its measurements (this prompt's query side
    # is weak: its "weak ..." came after 393 of the line's 586 characters)
    # is weak: its "weak ..." came after 393 of the line's 586 characters): the line under
    # its name, before the lines of its measurements
    block = lines[firsts[4] : firsts[5]]
    said = "weak (the group's attention):"  # a block: its clauses a line each, further in
    weak = [i for i, x in enumerate(block) if x.strip() == said]
    assert weak and all(" side of QK " in block[i - 1] for i in weak)

    def indent(x: str) -> int:
        return len(x) - len(x.lstrip())

    for i in weak:
        after = next(x for x in block[i + 1 :] if indent(x) <= indent(block[i]))
        assert after.strip().startswith("writes ")
    # its heading, verdicts, choices and measurements a labelled block each, a fact a line
    # (193-, 201-, 176- and 197-character lines before: a review)
    assert max(len(x) for x in block) < 150, block
    # every printed line within PRINT_WIDTH (1,156 before the legend; then the scores line 173,
    # the why line 188, a path 239: a review), the legend's within LEGEND_WIDTH
    assert max(len(x) for x in lines[:end]) <= PRINT_WIDTH
    page = (out / "graph.html").read_text()
    section = page[page.index("<h2>Mechanisms</h2>") :]
    pointer = section.index(f'<a href="#{LEGEND_ID}">')
    assert pointer < section.index("<h3>Target ") < section.index("<table><tr><th>group</th>")
    legend = section.index(f'<div id="{LEGEND_ID}" class="legend">')
    assert section.index("<table><tr><th>group</th>") < legend
    assert section.count("exact flows: ") == 1 and section.index("exact flows: ") > legend


def test_trace_targets_modes_and_formats(tmp_path, capsys):
    out = tmp_path / "t"
    code, stdout, _ = trace(
        capsys, "--prompt", PROMPT, "--out", str(out), "--mode", "sparse", "--no-qk",
        "--target", " Thursday", "--target-diff", " Thursday", " Friday",
        "--graph-file", "safetensors", "--save-full", "--max-nodes", "20", "--format", "",
    )  # fmt: skip
    assert code == 0
    graph = Graph.load(out / "graph.safetensors")
    full = Graph.load(out / "full_graph.safetensors")
    assert graph.mode == "sparse" and not graph.qk
    assert int(graph.is_kind("lorsa", "transcoder", "error").sum()) <= 20
    assert int(graph.is_kind("error").sum()) == 0
    assert full.n_nodes > graph.n_nodes
    logits = [node_label(graph, i) for i in graph.is_kind("logit").nonzero().squeeze(1).tolist()]
    assert logits[0].startswith("logit ' Thursday'") and " - ' Friday'" in logits[1]
    assert not (out / "graph.svg").exists()


def trace_a_node(capsys, out, kind: str, layer: int):
    """Trace ``PROMPT`` into ``out``, then again with the first ``kind`` node of ``layer`` its
    pruned graph kept as the only target: (code, stdout, stderr, first graph, that node)."""
    assert trace(capsys, "--prompt", PROMPT, "--out", str(out), "--format", "",
                 "--no-mechanisms")[0] == 0  # fmt: skip
    graph = Graph.load(out / "graph.safetensors")
    node = next(i for i in graph.is_kind(kind).nonzero().squeeze(1).tolist()
                if int(graph.layer[i]) == layer)  # fmt: skip
    spec = f"{kind}:{layer}:{int(graph.pos[node])}:{int(graph.index[node])}"
    code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--format", "",
                              "--target-node", spec)  # fmt: skip
    return code, stdout, err, graph, node


def test_a_node_target_is_named_and_summarised(tmp_path, capsys):
    """A head or feature as the only target: the targets line names it with its value, and
    the mechanism summary explains its pre-activation like a logit's (parts, paths, checks)."""
    out = tmp_path / "n"
    code, stdout, _, graph, feature = trace_a_node(capsys, out, "transcoder", 2)
    assert code == 0
    first = stdout.splitlines()[0]
    assert first.startswith(f"targets: L2 feature {int(graph.index[feature])} @")
    assert "(pre-activation " in first
    name = f"L2 feature {int(graph.index[feature])} @{int(graph.pos[feature])}"
    assert f"target {name} = " in stdout and "(pre-activation)" in stdout
    assert "ablate: predicted" in stdout and "parts: tokens" in stdout
    summary = load_summary(out / "mechanisms.json")
    (target,) = summary.targets
    assert target.kind == "transcoder" and target.label == name and target.probability is None
    assert target.tokens + target.constants + target.errors == pytest.approx(target.value, abs=1e-3)
    assert any(g.checks for g in summary.groups)
    assert name in (out / "graph.html").read_text()


def test_a_layer_0_node_target_is_traced(tmp_path, capsys):
    """Found by a fuzz pass: the pruned graph of a layer-0 target keeps no bias node, and a
    check taking that for a graph without constants refused the QK step's run."""
    code, _, err, _, _ = trace_a_node(capsys, tmp_path / "n0", "lorsa", 0)
    assert code == 0, err
    out = tmp_path / "n0"
    pruned = Graph.load(out / "graph.safetensors")
    assert not pruned.is_kind("bias").any() and pruned.qk


def test_trace_notes_the_tokens_the_model_never_trained_on(tmp_path, capsys):
    """The default model never saw ``#`` in training: the trace says so, in one line, and the
    graph records where."""
    code, _, err = trace(
        capsys, "--prompt", PROMPT, "--out", str(tmp_path / "a"), "--no-qk", "--format", ""
    )
    assert code == 0 and "never saw" not in err
    assert Graph.load(tmp_path / "a" / "graph.safetensors").untrained_positions == []
    code, _, err = trace(
        capsys, "--prompt", "Monday # Tuesday", "--out", str(tmp_path / "b"), "--no-qk",
        "--format", "", "--no-mechanisms",
    )  # fmt: skip
    (note,) = [line for line in err.splitlines() if "never saw" in line]
    graph = Graph.load(tmp_path / "b" / "graph.safetensors")
    (pos,) = graph.untrained_positions
    assert "#" in graph.token_strings[pos] and f"@{pos}" in note and code == 0
    # with the mechanism summary, its heading says it (and its file holds the positions)
    code, out, err = trace(
        capsys, "--prompt", "Monday # Tuesday", "--out", str(tmp_path / "c"), "--no-checks",
        "--format", "",
    )  # fmt: skip
    assert code == 0 and "never saw" not in err
    (note,) = [line for line in out.splitlines() if "never saw" in line]
    assert note.startswith("  (note: the model never saw") and f"@{pos}" in note
    assert load_summary(tmp_path / "c" / "mechanisms.json").untrained_positions == [pos]


def test_the_closure_line_says_what_each_figure_is(tmp_path, capsys):
    """A reviewer read "closure error max 9.78e-06 (relative to |value| 9.81e-06)" as a target's
    |value| of 9.81e-06: the line says what the error compares and that both figures are maxima
    over the targets, the relative one of each target's |value|, as the graph's settings hold
    them."""
    code, out, _ = trace(capsys, "--prompt", PROMPT, "--out", str(tmp_path / "c"),
                         "--no-mechanisms", "--no-qk", "--format", "")  # fmt: skip
    closure = Graph.load(tmp_path / "c" / "graph.safetensors").settings["closure_error"]
    assert code == 0
    assert (f"closure error (a target's incoming edges + bias against its value) max "
            f"{closure['max_abs']:.2e}, relative to the target's |value| max "
            f"{closure['max_rel_value']:.2e}\n") in out  # fmt: skip


def test_trace_says_when_the_model_is_unsure(tmp_path, capsys):
    """A reviewer's ``after Tuesday comes``: ten targets of p 0.02-0.04, each explained at
    length, nothing saying none was a prediction. Under ``UNSURE`` the top logit's probability
    is said, with what the targets hold; not for a confident prompt, nor for a target named."""
    from circuits.trace import UNSURE, chosen_words

    unsure = "  (the model is unsure here: its most likely next token has p "
    for args, said in ((["--prompt", "after Tuesday comes"], True),
                       (["--prompt", "after Tuesday comes", "--target", " ("], False),
                       (["--prompt", PROMPT], False)):  # fmt: skip
        code, out, _ = trace(capsys, *args, "--out", str(tmp_path / "u"), "--no-mechanisms",
                             "--no-qk", "--format", "")  # fmt: skip
        graph = Graph.load(tmp_path / "u" / "graph.safetensors")
        top = max(r.probability for r in graph.logit_targets)
        assert code == 0 and (unsure in out) == said
        if said:
            held = sum(r.probability for r in graph.logit_targets)
            n = len(graph.logit_targets)
            assert top < UNSURE and f"{unsure}{top:.2g} and the {n} targets hold {held:.2g};" in out
            first = top
        elif len(args) == 2 and args[1] == PROMPT:
            assert top >= UNSURE
        # how many top logits and which setting stopped them, where none is named
        chosen = [x for x in out.splitlines() if " by probability, holding " in x]
        assert chosen == ([f"  ({chosen_words(graph.logit_targets, 10, 0.95)})"] if said else [])
    code, out, _ = trace(capsys, "--prompt", "after Tuesday comes", "--max-logits", "1",
                         "--out", str(tmp_path / "u"), "--no-mechanisms", "--no-qk",
                         "--format", "")  # fmt: skip
    assert code == 0 and f"{unsure}{first:.2g}; the graph explains a weak preference" in out
    # in sparse mode the probabilities are the replacement's, and so is the uncertainty (a
    # review: "the model is unsure here: its most likely next token has p 0.082" where the
    # model put ' Nick' first at 0.276 and the replacement ',' at 0.082)
    code, out, err = trace(capsys, "--prompt", "The sun rose; Pemberwick smiled. The sun rose; "
                           "Pemberw", "--mode", "sparse", "--out", str(tmp_path / "s"),
                           "--no-mechanisms", "--no-qk", "--format", "")  # fmt: skip
    graph = Graph.load(tmp_path / "s" / "graph.safetensors")
    top = max(r.probability for r in graph.logit_targets)
    assert code == 0 and top < UNSURE and "model is unsure" not in out
    assert f"  (the replacement is unsure here: its most likely next token has p {top:.2g}" in out
    assert "not a prediction the replacement makes" in out


def test_the_targets_line_says_how_many_top_logits_and_what_stopped_them():
    """A review's ``--max-logits 100000`` explained 312 targets (a 520 KB printout) with
    nothing saying how many or why: under the targets a line gives their number, the
    probability they hold and the setting that stopped them; none for one top logit that
    holds the probability asked for alone."""
    from types import SimpleNamespace

    from circuits.trace import chosen_words

    def records(*ps):
        return [SimpleNamespace(probability=p) for p in ps]

    assert chosen_words(records(0.97), 10, 0.95) == ""
    assert chosen_words(records(), 10, 0.95) == ""
    assert chosen_words(records(0.5, 0.3, 0.2), 100000, 0.95) == (
        "the top 3 logits by probability, holding 1: the fewest reaching --logit-probability "
        "0.95 (--max-logits 100000 allows more)"
    )
    assert chosen_words(records(0.4, 0.3), 2, 0.95) == (
        "the top 2 logits by probability, holding 0.7: --max-logits 2 stops there, short of "
        "--logit-probability 0.95"
    )
    assert chosen_words(records(0.4), 1, 0.95) == (
        "the top 1 logit by probability, holding 0.4: --max-logits 1 stops there, short of "
        "--logit-probability 0.95"
    )
    assert chosen_words(records(0.6, 0.4), 2, 0.95) == (
        "the top 2 logits by probability, holding 1: the fewest reaching --logit-probability "
        "0.95, as many as --max-logits 2 allows"
    )


def test_sparse_mode_says_the_probabilities_are_the_replacements():
    """Without error nodes the replacement's prediction can differ from the model's (a review
    traced `A B C D E` in sparse mode: ' D' p 0.224 where the model says ' F' p 0.784, with
    nothing said), and so can its probabilities where both rank the same token first (a later
    review: ' Z' p 0.753 sparse, 0.200 in the model, with nothing said): a note gives both,
    read from the two runs; none in local mode."""
    import torch

    from circuits.attribution import run_prompt
    from circuits.trace import sparse_note
    from replacement.model import load_pretrained
    from toy_models.tokenizer import encode_prompt, token_text

    replacement, tokenizer = load_pretrained("default")
    for prompt, differ in (("A B C D E", True), ("Zorg, Blip, Zorg,", False)):
        tokens = torch.tensor(encode_prompt(tokenizer, prompt, 128))
        sparse = run_prompt(replacement, tokens, "sparse")
        with torch.no_grad():
            model = replacement.model(tokens[None])[0, -1].softmax(-1)
        ours, theirs = int(sparse.logits[-1].argmax()), int(model.argmax())
        assert (ours != theirs) == differ  # the cases the note is for, on the shipped model
        note = sparse_note(replacement, sparse, tokenizer)
        p_ours = float(sparse.logits[-1].softmax(-1)[ours])
        assert f"{token_text(tokenizer, ours)!r} (p {p_ours:.3g}; the model gives it " \
               f"{float(model[ours]):.3g})" in note  # fmt: skip
        assert "the probabilities printed are the replacement's, except those said" in note
        if differ:
            assert f"where the model predicts {token_text(tokenizer, theirs)!r}" in note
        else:
            assert note.startswith("in sparse mode the replacement and the model both predict")
            assert abs(p_ours - float(model[ours])) > 0.3  # the gap the note makes visible
        assert sparse_note(replacement, run_prompt(replacement, tokens, "local"), tokenizer) == ""


def test_trace_vs_runner_up_without_constants_or_mechanisms(tmp_path, capsys):
    out = tmp_path / "t"
    (out).mkdir()
    (out / "graph.json").write_text("{}")  # an earlier run's set: replaced,
    (out / "mechanisms.json").write_text("{}")  # and what this run does not write removed
    write_set_record(out, "graph.json", {"graph.json": "file", "mechanisms.json": "file"})
    code, stdout, err = trace(
        capsys, "--prompt", PROMPT, "--out", str(out), "--vs-runner-up", "--no-constants",
        "--no-mechanisms", "--no-qk", "--max-nodes", "10", "--format", "",
    )  # fmt: skip
    assert code == 0, err
    graph = Graph.load(out / "graph.safetensors")
    (record,) = graph.logit_targets
    assert record.negative is not None and record.negative != record.token
    assert not graph.has_constants and "predicting heads" not in stdout
    assert not (out / "mechanisms.json").exists() and "mechanisms.json of an earlier run" in err


def test_a_margin_over_the_runner_up_names_its_negative_as_such(tmp_path, capsys):
    """With --vs-runner-up the target's most likely other token is its own negative: the text
    and the page say so, without the margin (the target itself; a reviewer read "margin over
    ' Friday' +4.29" under ' Thursday' - ' Friday' = 4.29), as the record's field says; a file
    claiming it for a token that is not the negative is refused."""
    out = tmp_path / "t"
    code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--vs-runner-up",
                              "--no-checks", "--format", "")  # fmt: skip
    assert code == 0, err
    summary = load_summary(out / "mechanisms.json")
    (t,) = summary.targets
    assert t.runner_up_is_negative and t.runner_up == t.negative
    said = f"runner-up: its negative {t.negative!r} p="
    assert said in stdout and "margin over" not in stdout.split("\n")[1]
    page = (out / "graph.html").read_text()
    assert f'"rival":{json.dumps(said)[:-1]}' in page and "runnerUp != null" not in page
    forged = json.loads((out / "mechanisms.json").read_text())
    forged["targets"][0]["runner_up"] = "x"
    (out / "forged.json").write_text(json.dumps(forged))
    with pytest.raises(ValueError, match="said to be the difference's negative that is not"):
        load_summary(out / "forged.json")


def test_vs_runner_up_alone_says_it_chose_the_top_token(tmp_path, capsys):
    """With no target named, --vs-runner-up takes the top token alone (``_targets``), whatever
    it holds: a reviewer read "(the top 1 logit by probability, holding 0.826: the fewest
    reaching --logit-probability 0.95 (--max-logits 10 allows more))" under ``'ith' - 'oun'``,
    which 0.826 does not reach and the two settings did not choose. The line says what did."""
    code, stdout, err = trace(capsys, "--prompt", "after Tuesday comes", "--out",
                              str(tmp_path / "t"), "--vs-runner-up", "--no-mechanisms",
                              "--no-qk", "--format", "")  # fmt: skip
    assert code == 0, err
    (record,) = Graph.load(tmp_path / "t" / "graph.safetensors").logit_targets
    assert record.probability < 0.95  # the prompt where the old line said it reached 0.95
    lines = stdout.splitlines()
    assert " by probability, holding " not in stdout and "--logit-probability" not in stdout
    assert lines[lines.index(next(x for x in lines if x.startswith("targets: "))) + 1] == (
        "  (--vs-runner-up with no target named: the most likely token alone, less the most "
        "likely other)"
    )


def test_a_prompt_reaching_the_untrained_last_position_is_refused(tmp_path, capsys):
    """Found by the fourth fuzz pass: a prompt of exactly n_ctx tokens was traced, and its
    prediction read at position n_ctx - 1, which training never reaches (rows[:, :-1]): on a
    repeated week the model said ' Tuesday' after 'Sunday,' there, ' Monday' everywhere else."""
    from toy_models.zoo import load_pretrained

    model, tokenizer = load_pretrained("default")
    assert model.trained_positions == model.cfg.n_ctx - 1 == 127
    week = "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday, " * 20
    ids = tokenizer.encode(week).ids

    def prompt(n):  # n tokens with BOS
        return tokenizer.decode(ids[1:n], skip_special_tokens=True)

    code, _, err = trace(capsys, "--prompt", prompt(128), "--out", str(tmp_path / "a"),
                         "--no-qk", "--no-mechanisms", "--format", "")  # fmt: skip
    assert code == 2 and "128 tokens with BOS, longer than the 127 positions" in err
    assert not (tmp_path / "a").exists()
    code, _, err = trace(capsys, "--prompt", prompt(127), "--out", str(tmp_path / "b"),
                         "--no-qk", "--no-mechanisms", "--format", "")  # fmt: skip
    assert code == 0, err


def test_a_pruned_graph_too_large_for_graph_json_is_refused(tmp_path, capsys, monkeypatch):
    """Found by the fourth fuzz pass: ``--node-threshold 1 --edge-threshold 1`` on a 128-token
    prompt kept all 1.1e8 edges and ran out of memory writing graph.json, leaving a lock."""
    import circuits.trace as trace_module

    monkeypatch.setattr(trace_module, "MAX_KEPT_EDGES", 50)
    out = tmp_path / "big"
    code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--no-qk",
                         "--no-mechanisms", "--format", "")  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert "edges, more than graph.json takes (50): lower --node-threshold" in err
    assert not out.exists()


@pytest.mark.parametrize("after", [1, 2, 4])
def test_a_ctrl_c_among_the_renames_leaves_one_runs_whole_set(tmp_path, capsys, monkeypatch,
                                                               after):  # fmt: skip
    """A fuzz pass: a real SIGINT between two renames of the staged outputs into --out left
    one prompt's graph beside another prompt's mechanisms.json. The signal is held back until
    every entry has moved: the run ends interrupted (130) with the new set whole."""
    import signal

    from reports import outputs

    out = tmp_path / "t"
    assert trace(capsys, "--prompt", PROMPT, "--out", str(out), "--no-checks", "--format",
                 "")[0] == 0  # fmt: skip
    moved, replace = [0], os.replace

    def then_interrupt(a, b, *args, **kwargs):
        replace(a, b, *args, **kwargs)
        if os.path.dirname(os.path.abspath(b)) == str(out) and "/.writing" in str(a):
            moved[0] += 1
            if moved[0] == after:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(outputs.os, "replace", then_interrupt)
    other = "Friday, Saturday,"
    code, _, err = trace(capsys, "--prompt", other, "--out", str(out), "--no-checks",
                         "--format", "")  # fmt: skip
    assert moved[0] > after and code == 130 and "interrupted" in err, err
    assert Graph.load(out / "graph.safetensors").prompt == other
    assert load_summary(out / "mechanisms.json").prompt == other
    shown = (out / "graph.json").read_text(encoding="utf-8")
    assert json.dumps(other) in shown and json.dumps(PROMPT) not in shown
    assert not list(out.glob(".writing*"))


def test_an_interrupted_trace_leaves_no_empty_out(tmp_path, capsys, monkeypatch):
    """Found by the fourth fuzz pass: Ctrl-C while the set was being written left the --out
    directory the run had made, empty."""
    from reports import outputs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "_write_set", interrupted)
    out = tmp_path / "new" / "out"
    code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--no-qk",
                         "--no-mechanisms", "--format", "")  # fmt: skip
    assert code == 130 and err.strip() == "interrupted"
    assert not out.exists()


def test_a_terminated_trace_leaves_no_lock_and_no_empty_out(tmp_path, capsys, monkeypatch):
    """Found by the fourth fuzz pass: SIGTERM (``timeout``) while the set was being written
    left ``.writing.lock`` and ``.writing/`` in a new --out. SIGTERM is raised where the run is,
    as Ctrl-C is, so the lock and the staging directory go, then the empty --out."""
    import os
    import signal

    from reports import outputs

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(outputs, "_write_set", killed)
    out = tmp_path / "out"
    code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--no-qk",
                         "--no-mechanisms", "--format", "")  # fmt: skip
    assert code == 143 and err == "terminated\n"
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the run


def test_the_last_position_never_trains(tiny_run):
    """What ``trained_positions`` rests on: training feeds ``rows[:, :-1]``, so the position
    embedding of the context's last position keeps its initial value (it is not decayed)."""
    import torch

    from toy_models.model import ModelConfig, ToyTransformer
    from toy_models.zoo import load_pretrained

    model, _ = load_pretrained(str(tiny_run))
    start = ToyTransformer(ModelConfig(**dataclasses.asdict(model.cfg)))
    last = model.cfg.n_ctx - 1
    torch.testing.assert_close(model.W_pos[last], start.W_pos[last], rtol=0, atol=0)
    assert not torch.equal(model.W_pos[last - 1], start.W_pos[last - 1])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", ""], "the prompt is empty"),
        (["--prompt", "x " * 200], "longer than the 127 positions the model was trained on"),
        (["--prompt", "a<|bos|>b"], "special token"),
        (["--prompt", "bad \ud800 char"], "the prompt is not valid UTF-8"),
        (["--prompt", PROMPT, "--target", "\udcff"], "target '\\udcff' is not valid UTF-8"),
        (["--prompt", PROMPT, "--model", "gpt5"], "unknown model 'gpt5'"),
        (["--prompt", PROMPT, "--target", " Thursdayy"], "not one token"),
        # its pieces as labels read them, not the vocabulary's byte symbols (`ĠZ`, `æ`)
        (["--prompt", PROMPT, "--target", " Zorgblat"], "[' Z', 'or', 'g', 'bl', 'at']"),
        (["--prompt", PROMPT, "--target", "日"], "['<0xE6>', '<0x97>', '<0xA5>']"),
        (["--prompt", PROMPT, "--target-node", "lorsa:0:1:99999"], "lorsa 99999 does not exist"),
        (["--prompt", PROMPT, "--target-node", "lorsa:0:99:1"], "position 99 is outside"),
        (["--prompt", PROMPT, "--target-node", "transcoder:9:1:1"], "layer 9 does not exist"),
        (
            ["--prompt", PROMPT, "--target-diff", " Friday", " Friday"],
            "--target-diff of a token with itself is zero",
        ),
        (
            ["--prompt", PROMPT, "--target", " Friday", "--target", " Friday"],
            "--target ' Friday' is given twice",
        ),
        (
            ["--prompt", PROMPT, "--target-node", "lorsa:0:1:1", "--target-node", "lorsa:0:1:1"],
            "--target-node lorsa:0:1:1 is given twice",
        ),
        (  # the same node written two ways: named in the user's terms, not as a record
            ["--prompt", PROMPT, "--target-node", "lorsa:0:1:1", "--target-node", "lorsa:00:1:1"],
            "the node lorsa:0:1:1 is named twice: name each target once",
        ),
        (  # --vs-runner-up makes --target ' Thursday' the margin over ' Friday', given too
            [
                "--prompt",
                PROMPT,
                "--target",
                " Thursday",
                "--target-diff",
                " Thursday",
                " Friday",
                "--vs-runner-up",
            ],
            "the difference ' Thursday' - ' Friday' is named twice (--vs-runner-up makes each",
        ),
        (  # a difference and its reverse: one target, traced twice with opposite signs
            [
                "--prompt",
                PROMPT,
                "--target-diff",
                " Thursday",
                " Friday",
                "--target-diff",
                " Friday",
                " Thursday",
            ],
            "the difference ' Friday' - ' Thursday' is named twice (a difference and its "
            "reverse are one target): name each target once",
        ),
        (
            ["--prompt", PROMPT, "--vs-runner-up", "--target-diff", " Friday", " May"],
            "--target-diff and --target-node are not logits",
        ),
        (["--prompt", PROMPT, "--target-node", "lorsa:x"], "KIND:LAYER:POS:INDEX"),
        (["--prompt", PROMPT, "--target-node", "lorsa:0:1:1_0"], "KIND:LAYER:POS:INDEX"),
        (["--prompt", PROMPT, "--no-qk", "--key-mass", "0.2"], "--no-qk turns off: drop one"),
        (
            [
                "--prompt",
                PROMPT,
                "--dashboards-file",
                "/nonexistent/x.safetensors",
                "--no-dashboards",
            ],
            "--no-dashboards turns off: drop one",
        ),
        (["--prompt", PROMPT, "--checks", "--no-mechanisms"], "--no-mechanisms turns off"),
        (
            ["--prompt", PROMPT, "--no-checks", "--no-mechanisms"],  # the flag as given
            "--no-checks sets the summary's ablation checks that --no-mechanisms turns off",
        ),
        (
            ["--prompt", PROMPT, "--dashboard-rows", "64", "--no-dashboards"],
            "--dashboard-rows sets the dashboards --no-dashboards turns off",
        ),
        # found by a fuzz pass: options a target makes moot, and BOS as a target, were
        # accepted without a word (the default values of these options are not refused)
        (
            ["--prompt", PROMPT, "--target", " Thursday", "--max-logits", "3"],
            "--max-logits chooses the top logits traced when no target is given; with --target it "
            "is unused: drop one",
        ),
        (
            ["--prompt", PROMPT, "--target-node", "lorsa:0:1:1", "--logit-probability", "0.5"],
            "--logit-probability chooses the top logits traced when no target is given; with "
            "--target-node it is unused: drop one",
        ),
        (
            ["--prompt", PROMPT, "--vs-runner-up", "--max-logits", "2"],
            "with --vs-runner-up it is unused",
        ),
        (
            ["--prompt", PROMPT, "--feature-files"],  # (trace() adds --no-dashboards)
            "--feature-files writes the dashboards' feature files that --no-dashboards turns off",
        ),
        (
            ["--prompt", PROMPT, "--target", "<|bos|>"],
            "--target '<|bos|>': <|bos|> only begins a sequence and is never predicted",
        ),
        (
            ["--prompt", PROMPT, "--target-diff", " a", "<|bos|>"],
            "--target-diff ' a' '<|bos|>': <|bos|> only begins a sequence and is never predicted",
        ),
        (["--prompt", PROMPT, "--node-threshold", "0"], "--node-threshold must be in (0, 1]"),
        # a review's --max-logits 100000 explained 312 targets without a word: more top logits
        # than the vocabulary holds is no cap
        (
            ["--prompt", PROMPT, "--max-logits", "100000"],
            "--max-logits 100000 is more than the model's ",
        ),
        (["--prompt", PROMPT, "--format", "gif"], "--format: unknown ['gif']"),
        # a fuzz pass: drawn twice, and nothing drawn without a word
        (["--prompt", PROMPT, "--format", "svg,svg"], "--format: svg named twice"),
        (["--prompt", PROMPT, "--format", ","], "--format ',': an empty name between commas"),
        (["--prompt", PROMPT, "--format", "svg,"], "--format 'svg,': an empty name"),
        (["--prompt", PROMPT, "--replacement", "/nonexistent"], "replacement file missing"),
        (["--prompt", PROMPT, "--model", ""], "the model is an empty name"),
    ],
)
def test_bad_input(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    code, _, err = trace(capsys, *args, "--out", str(out))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error:") and message in err, err
    assert not out.exists()


def test_a_set_whose_weights_overflow_in_use_is_refused(
    tiny_run, overflowing_set, tmp_path, capsys
):
    """Found by a fuzz pass: finite weights that overflow in use gave, in local mode, a graph
    of edges near 1e35 (the error nodes absorbing the overflow) written with exit 0."""
    out = tmp_path / "never"
    code, _, err = trace(capsys, "--prompt", "ab", "--model", str(tiny_run), "--replacement",
                         str(overflowing_set), "--out", str(out))  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "weights overflow on this prompt" in err, err
    assert not out.exists()


def test_a_model_whose_weights_overflow_in_use_is_refused(tiny_run, tmp_path, capsys):
    """Found by a fuzz pass: a model whose MLP weights (x1e30) load, being finite, but
    overflow in use was traced in sparse mode with the note "the model predicts '<|bos|>' (p
    nan)", exit 0."""
    import torch
    from conftest import random_replacement
    from safetensors.torch import load_file, save_file

    from toy_models.zoo import load_pretrained

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_run, model_dir)
    weights = load_file(model_dir / "model.safetensors")
    weights["blocks.0.mlp.W_out"] = weights["blocks.0.mlp.W_out"] * 1e30  # finite in float32
    save_file(weights, model_dir / "model.safetensors")
    model, _ = load_pretrained(str(model_dir))
    with torch.no_grad():
        random_replacement(model, n_qk=2, n_ov=16, lorsa_k=4).save(tmp_path / "rep",
                                                                   str(model_dir))  # fmt: skip
    for mode in ("sparse", "local"):
        out = tmp_path / f"never-{mode}"
        code, _, err = trace(capsys, "--prompt", "ab", "--model", str(model_dir),
                             "--replacement", str(tmp_path / "rep"), "--mode", mode,
                             "--out", str(out))  # fmt: skip
        assert code == 2 and err.count("\n") == 1, err
        assert "the model's weights overflow on this prompt" in err, err
        assert not out.exists()


def test_a_dashboards_file_among_the_outputs_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "t"
    saved = out / "graph.safetensors"
    out.mkdir()
    saved.write_bytes(b"saved dashboards")
    code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(out),
                         "--dashboards-file", str(saved))  # fmt: skip
    assert code == 2 and "writes its outputs over it" in err and err.count("\n") == 1, err
    assert saved.read_bytes() == b"saved dashboards"


def test_a_dashboards_file_that_is_none_is_never_to_be_removed(tmp_path, capsys):
    """A reviewer passed the shipped model as ``--dashboards-file`` and was told to "remove it
    to build it there again": a file that is no dashboards file (another safetensors file, a
    text) is refused without that advice, and left as it was."""
    from safetensors.torch import save_file

    weights, text = tmp_path / "model.safetensors", tmp_path / "notes.txt"
    save_file({"w": torch.zeros(2)}, weights)
    text.write_text("my notes")
    for given, why in ((weights, "no dashboards header (not a dashboards file)"),
                       (text, "not readable as a dashboards file (")):  # fmt: skip
        before = given.read_bytes()
        code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(tmp_path / "t"),
                             "--dashboards-file", str(given), "--no-mechanisms")  # fmt: skip
        assert code == 2 and err.startswith(f"error: dashboards file {given}: {why}"), err
        assert err.endswith("; pass a dashboards file as --dashboards-file, or --no-dashboards\n")
        assert "remove" not in err and err.count("\n") == 1
        assert given.read_bytes() == before and not (tmp_path / "t").exists()


def test_a_dashboards_file_that_cannot_be_shown_is_refused_naming_it(tmp_path, capsys,
                                                                     monkeypatch):  # fmt: skip
    """Found by fuzz pass 13: a dashboards file that ``read_file`` accepted and
    ``for_viewer`` could not show failed the trace with a bare "token id -1 is outside the
    vocabulary" naming neither the file nor --no-dashboards. Such an error is said as the
    file's other refusals are."""
    from circuits import trace as T

    class Unshowable:
        def for_viewer(self, tokenizer, units):
            raise ValueError("token id -1 is outside the vocabulary (0..1023)")

    monkeypatch.setattr(T, "_given_file", lambda *args: Unshowable())
    given, out = tmp_path / "d.safetensors", tmp_path / "t"
    code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--dashboards-file",
                         str(given), "--max-nodes", "20", "--no-mechanisms")  # fmt: skip
    said = f"dashboards file {given}: token id -1 is outside the vocabulary (0..1023)"
    way_out = (
        "remove it to build it there again, or pass another --dashboards-file or --no-dashboards"
    )
    assert code == 2 and err == f"error: {said}: {way_out}\n", err
    assert not out.exists()


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(blocker))
    assert code == 2 and "not a directory" in err
    assert blocker.read_text() == "keep me"
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(locked / "x"))
        assert code == 2 and "not writable" in err


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tmp_path, capsys):
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere" / "dir")
    code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(dangling))
    assert code == 2 and "dangling symbolic link" in err and err.count("\n") == 1
    code, _, err = trace(capsys, "--prompt", PROMPT, "--out", "/proc/sparse-circuits-test")
    assert code == 2 and "kernel file system" in err


def test_a_users_staging_folder_and_a_bad_target_node_are_refused_before_the_work(
    tmp_path, capsys, monkeypatch
):
    """A reviewer's: a user's ``--out/.writing`` folder was refused only after the whole run
    (its summary printed, then nothing written), and ``--target-node`` syntax only after the
    model loaded. Both now before anything loads (loading is made to fail here), the folder
    kept."""
    import replacement.model

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(replacement.model, "load_pretrained", no_loading)
    out = tmp_path / "out"
    (out / ".writing").mkdir(parents=True)
    (out / ".writing" / "notes.txt").write_text("mine")
    code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and ".writing is in the way" in err and not stdout
    assert (out / ".writing" / "notes.txt").read_text() == "mine"
    numbers = "LAYER, POS and INDEX are whole numbers from 0, in digits"
    for spec, message in (("lorsa:1:x:0", numbers), ("lorsa:2:-1:429", numbers),
                          ("lorsa:1:2", "expected KIND:LAYER:POS:INDEX"),
                          ("head:1:2:3", "the kind must be one of lorsa, transcoder")):  # fmt: skip
        code, _, err = trace(capsys, "--prompt", PROMPT, "--target-node", spec,
                             "--out", str(tmp_path / "never"))  # fmt: skip
        assert code == 2 and err.count("\n") == 1 and message in err, err
    # a target that is not one token, read off the tokenizer alone (a reviewer waited 11-20 s
    # for the model to load before ``--target-diff " 30" " 31"`` was refused)
    diff = "--target-diff '3' ' 31': target ' 31' is not one token of this tokenizer"
    days = "--target ' Thursdayy': target"
    for args, message in ((("--target-diff", "3", " 31"), diff),
                          (("--target", " Thursdayy"), days)):  # fmt: skip
        code, _, err = trace(capsys, "--prompt", PROMPT, *args, "--out", str(tmp_path / "never"))
        assert code == 2 and err.count("\n") == 1 and message in err, err
    # the prompt's own faults, read off its text (a reviewer's empty --prompt: 15 s of loading)
    for prompt, message in (("", "error: the prompt is empty"), ("a<|bos|>b", "special token"),
                            ("bad \ud800", "the prompt is not valid UTF-8")):  # fmt: skip
        code, _, err = trace(capsys, "--prompt", prompt, "--out", str(tmp_path / "never"))
        assert code == 2 and err.count("\n") == 1 and message in err, err


def test_a_full_disk_is_one_line_and_leaves_no_temp_files(tmp_path, capsys, monkeypatch):
    """The disk fills up while the graph file is written: half its bytes, then ENOSPC, at
    the one place every safetensors file is written (``save_state_atomic``)."""
    import errno

    from toy_models import files

    real_open = open

    def full(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "graph.safetensors" in str(path) and "w" in mode:
            f.write(b"half")
            f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return f

    monkeypatch.setattr(files, "open", full, raising=False)
    out = tmp_path / "t"
    code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--no-qk")
    assert code == 2 and "Traceback" not in err, err
    assert err == f"error: cannot write {out / 'graph.safetensors'}: No space left on device\n"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not (out / "graph.safetensors").exists()


def test_files_of_the_sets_names_that_no_run_wrote_are_refused_not_removed(tmp_path, capsys):
    """Found by the fourth fuzz pass: a user's own ``graph.pdf`` or ``features/`` in --out was
    removed as "of an earlier run" although no run had written there. A set's entries are
    replaced only beside an earlier set's graph.json; otherwise the run refuses, leaving them."""
    out = tmp_path / "mine"
    (out / "features").mkdir(parents=True)
    (out / "features" / "notes.txt").write_text("keep")
    (out / "graph.pdf").write_text("my drawing")
    code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--no-qk",
                         "--no-mechanisms", "--format", "")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "not written by a run" in err, err
    assert (out / "features" / "notes.txt").read_text() == "keep"
    assert (out / "graph.pdf").read_text() == "my drawing"
    assert sorted(p.name for p in out.iterdir()) == ["features", "graph.pdf"]


def test_a_failed_drawing_keeps_every_other_file_and_stale_renders_go(tmp_path, capsys):
    if not shutil.which("dot"):
        pytest.skip("Graphviz `dot` is not installed")
    out = tmp_path / "t"
    out.mkdir()
    (out / "graph.json").write_text("{}")
    (out / "graph.png").write_text("a drawing of an earlier run")
    write_set_record(out, "graph.json", {"graph.json": "file", "graph.png": "file"})
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'cdt.c:887: assertion failed' >&2\nexit 134\n")
    fake.chmod(0o755)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{fake.parent}:{path}"
    try:
        code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--no-qk")
    finally:
        os.environ["PATH"] = path
    assert code == 0, err
    assert f"drawing failed, written without it ({out / 'graph.dot'}): " in err
    assert "dot -Tsvg failed: cdt.c:887" in err and ".writing" not in err
    names = {p.name for p in out.iterdir()}
    assert {"graph.json", "graph.safetensors", "graph.dot", "graph.html"} <= names
    assert "graph.svg" not in names and "graph.png" not in names  # none stale, none half
    assert not any(name.endswith(".tmp") for name in names)
    assert "No drawing" in (out / "graph.html").read_text()
    assert "error:" not in err  # the default render, skipped with its note
    # named by the user, the render not drawn is a failure once the rest is written (a review:
    # `--format png` that drew nothing exited 0)
    os.environ["PATH"] = f"{fake.parent}:{path}"
    try:
        code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--no-qk",
                                  "--format", "svg,png")  # fmt: skip
    finally:
        os.environ["PATH"] = path
    assert code == 1, err
    assert err.strip().splitlines()[-1] == (
        "error: --format svg,png: svg, png not drawn (the "
        "note above says why); every other file is written"
    )
    assert {"graph.json", "graph.safetensors", "graph.dot", "graph.html"} <= set(os.listdir(out))
    assert f"wrote {out / 'graph.html'}" in stdout


def test_no_traceback_from_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "circuits.trace", "--prompt", "", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: the prompt is empty"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["--prompt", "x", "--node-threshold", "2"], 2),
        (["--prompt", "x", "--format", "gif"], 2),
        (["--prompt", "x" * 100_001], 2),  # refused before tokenizing
    ],
)
def test_help_and_argument_errors_import_no_torch(fresh_cli, tmp_path, args, code):
    got, heavy, err = fresh_cli("circuits.trace", [*args, "--out", str(tmp_path / "never")])
    assert (got, heavy) == (code, []), err
    assert not (tmp_path / "never").exists()
    if code:
        assert err.startswith("error:") and "Traceback" not in err and err.count("\n") == 0


def test_outputs_are_byte_reproducible(tmp_path, capsys):
    """No timings or other run-to-run noise in any file: the same prompt, the same bytes."""
    outs = [tmp_path / run / "t" for run in ("a", "b")]
    for out in outs:
        code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--max-nodes", "30")
        assert code == 0, err
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir())
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_the_benchmarks_read_the_graphs_size_from_its_file(tmp_path, capsys):
    """benchmarks/trace_limits.py and viewer.py record the traced graph's size from its
    file's fields (``graph_figures``), read before their temporary folder goes: they kept the
    printout's ``graph:`` line, joined back from its wrapped lines with a regex. The figures
    are the graph's and agree with what the trace printed; no graph written (a failed trace):
    None. A stored results file of the old shape is still one a rerun may replace."""
    from conftest import benchmark

    from toy_models.files import check_writable_file

    limits = benchmark("trace_limits")
    out = tmp_path / "t"
    code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--format", "",
                              "--no-mechanisms", "--max-nodes", "30")  # fmt: skip
    assert code == 0, err
    graph = Graph.load(out / "graph.safetensors")
    got = limits.graph_figures(out)
    kinds = {k: graph.kinds.count(k) for k in sorted(set(graph.kinds))}
    assert got == {
        "unpruned": graph.settings["unpruned"], "nodes": graph.n_nodes, "edges": graph.n_edges,
        "nodes_by_kind": kinds, "qk_records": len(graph.qk), "scores": graph.settings["scores"],
    }  # fmt: skip
    assert graph.pruned and got["unpruned"]["nodes"] > got["nodes"] == sum(kinds.values())
    by_kind = ", ".join(f"{n} {k}" for k, n in kinds.items())
    printed = (f"graph: {got['unpruned']['nodes']} nodes, {got['unpruned']['edges']} edges -> "
               f"pruned to {got['nodes']} nodes ({by_kind}), {got['edges']} edges; "
               f"{got['qk_records']} QK attributions")  # fmt: skip
    assert printed in " ".join(stdout.split())
    assert limits.graph_figures(tmp_path / "failed") is None
    results = limits.RESULTS
    check_writable_file(results / "trace_limits_default.json", "results", limits.RESULT_KEYS)
    viewer = benchmark("viewer")
    check_writable_file(results / "viewer.json", "results", viewer.RESULT_KEYS)


def test_trace_builds_small_dashboards_on_first_use_then_reuses_them(tmp_path, capsys):
    dashboards = tmp_path / "dashboards.safetensors"
    small = ["--dashboards-file", str(dashboards), "--dashboard-rows", "4", "--max-nodes", "20"]
    code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(tmp_path / "a"), *small)
    assert code == 0, err
    assert dashboards.is_file() and "[concept: " in stdout
    assert f"unit dashboards: {dashboards} (4 rows)" in err  # where the built file went
    built = dashboards.read_bytes()
    code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(tmp_path / "b"), *small)
    assert code == 0 and dashboards.read_bytes() == built  # reused, not rebuilt
    assert '"dashboards"' in (tmp_path / "b" / "graph.html").read_text(encoding="utf-8")
    # a finished file the user names is used with the rows it has, whatever --dashboard-rows
    other_rows = [*small[:2], "--dashboard-rows", "6", *small[4:]]
    code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(tmp_path / "c"), *other_rows)
    assert code == 0 and dashboards.read_bytes() == built and "[concept: " in stdout, err
    code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(tmp_path / "s"), *small,
                              "--mode", "sparse")  # fmt: skip
    assert code == 2 and "built in local mode, not sparse; trace with --mode local" in err, err
    # an unfinished one is resumed only with the rows it was started with
    from circuits.dashboard_pass import build
    from replacement.model import load_pretrained

    replacement, tokenizer = load_pretrained("default")
    partial = tmp_path / "partial.safetensors"
    build(replacement, tokenizer, partial, rows=40, stop_after=32, progress=False)
    started = partial.read_bytes()
    small = ["--dashboards-file", str(partial), "--dashboard-rows", "4", "--max-nodes", "20"]
    code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(tmp_path / "d"), *small)
    assert code == 2 and partial.read_bytes() == started, err
    assert "an unfinished build of 40 rows; pass --dashboard-rows 40 to finish it" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_default_dashboards_are_bound_to_the_set_and_rows_and_never_replaced(
    tmp_path, capsys, monkeypatch
):
    """Traces asking for other dashboards (here other rows; another replacement set is keyed
    the same way) build a file of their own at the default place, keeping the earlier one;
    ``circuits.dashboard_cli`` writes and reuses the very file the trace reads."""
    from circuits import dashboard_cli

    monkeypatch.chdir(tmp_path)
    place = tmp_path / "runs" / "dashboards"
    small = ["--prompt", PROMPT, "--max-nodes", "20", "--no-checks"]

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(place.glob("*.safetensors"))}

    assert trace(capsys, *small, "--dashboard-rows", "2", "--out", "a")[0] == 0
    first = files()
    assert len(first) == 1 and next(iter(first)).startswith("default-local-")
    code, _, err = trace(capsys, *small, "--dashboard-rows", "3", "--out", "b")
    assert code == 0 and "building it again" not in err, err
    second = files()
    assert len(second) == 2 and {k: second[k] for k in first} == first  # kept as it was
    with pytest.raises(SystemExit) as exit_info:
        run_cli(dashboard_cli.main, ["--rows", "2", "--quiet"])
    assert exit_info.value.code == 0 and files() == second  # the trace's file, reused


@pytest.mark.parametrize("what", ["a directory", "a link in a loop"])
def test_a_directory_at_the_default_dashboards_file_is_refused_in_one_line(
    tmp_path, capsys, monkeypatch, what
):
    """Something that is not a file where the dashboards are built (a folder of the user's):
    one line saying so, the folder kept; not 'building it again' and then a failed remove. A
    review: a link in a loop there was built for a minute, then refused as a link."""
    from circuits.dashboards import default_path
    from replacement.model import load_pretrained

    monkeypatch.chdir(tmp_path)
    replacement, tokenizer = load_pretrained("default")
    place = default_path("default", "local", replacement, tokenizer, 2)
    place.parent.mkdir(parents=True)
    if what == "a link in a loop":
        place.symlink_to(place.name)
        monkeypatch.setattr("circuits.dashboard_pass.build", lambda *a, **k: 1 / 0)
    else:
        place.mkdir()
        (place / "mine.txt").write_text("kept")
    small = ["--prompt", PROMPT, "--max-nodes", "20", "--no-checks", "--dashboard-rows", "2"]
    code, _, err = trace(capsys, *small, "--out", "a")
    assert code == 2 and err.startswith("error: dashboards file ") and "not a file" in err, err
    assert len(err.strip().splitlines()) == 1 and "building it again" not in err, err
    assert not (tmp_path / "a").exists()
    kept = place.is_symlink() if what == "a link in a loop" else (place / "mine.txt").is_file()
    assert kept


def test_a_file_of_another_kind_at_the_default_dashboards_path_is_kept(
    tmp_path, capsys, monkeypatch
):
    """A fuzz pass: a user's file at the default dashboards path (no dashboards header) was
    deleted and an 18 MB build put in its place. It is refused in one line and kept; a
    dashboards file damaged inside is still built again (``NotDashboards`` tells the two
    apart)."""
    from circuits.dashboards import default_path
    from replacement.model import load_pretrained

    monkeypatch.chdir(tmp_path)
    replacement, tokenizer = load_pretrained("default")
    place = default_path("default", "local", replacement, tokenizer, 2)
    place.parent.mkdir(parents=True)
    place.write_text("my notes, not a dashboards file")
    small = ["--prompt", PROMPT, "--max-nodes", "20", "--no-checks", "--dashboard-rows", "2"]
    code, _, err = trace(capsys, *small, "--out", "a")
    assert code == 2 and err.startswith("error: dashboards file ") and "left as it is" in err
    assert len(err.strip().splitlines()) == 1 and "building it again" not in err, err
    assert place.read_text() == "my notes, not a dashboards file"
    assert not (tmp_path / "a").exists()
    place.unlink()
    assert trace(capsys, *small, "--out", "b")[0] == 0  # built
    damaged = bytearray(place.read_bytes())
    damaged[-100:] = bytes(100)  # inside its tensors: its header says what it is
    place.write_bytes(bytes(damaged))
    code, _, err = trace(capsys, *small, "--out", "c")
    assert code == 0 and "building it again" in err, err
    place.write_bytes(place.read_bytes()[:-10])  # cut short: its header still names it
    code, _, err = trace(capsys, *small, "--out", "d")
    assert code == 0 and "building it again" in err, err


def test_a_dashboards_folder_that_cannot_hold_the_file_is_refused_before_the_pass(
    tmp_path, capsys, monkeypatch
):
    """A file where the dashboards' folder goes (``runs/dashboards``): one line before the
    minute-long pass over the corpus, not a failed write after it; the file kept."""
    from circuits import dashboard_pass

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "dashboards").write_text("mine")
    monkeypatch.setattr(dashboard_pass, "build", lambda *a, **k: pytest.fail("the pass ran"))
    small = ["--prompt", PROMPT, "--max-nodes", "20", "--no-checks", "--dashboard-rows", "2"]
    code, _, err = trace(capsys, *small, "--out", "a")
    assert code == 2 and err.startswith("error: dashboards folder runs/dashboards: "), err
    assert "not a directory" in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "runs" / "dashboards").read_text() == "mine"
    assert not (tmp_path / "a").exists()


def test_a_graph_names_its_replacement_set_and_intervene_refuses_another(tmp_path):
    """A graph traced with a saved set records the set's identity (its config's content hash,
    which covers every layer file), through its file too; intervening on it with another set
    is refused instead of comparing one set's predictions with the other's effects."""
    import torch

    from circuits.attribution import attribute, run_prompt
    from circuits.interventions import Intervention, first_order, intervene
    from circuits.qk import qk_attribution
    from replacement.model import load_pretrained
    from toy_models.tokenizer import encode_prompt

    with torch.no_grad():
        replacement, tokenizer = load_pretrained("default")
        tokens = encode_prompt(tokenizer, PROMPT, replacement.cfg.n_ctx)
        graph = attribute(replacement, tokens, tokenizer=tokenizer, prompt=PROMPT)
        assert graph.model["replacement_sha256"] == replacement.content_sha256 is not None
        graph.save(tmp_path / "g.safetensors")
        back = Graph.load(tmp_path / "g.safetensors")
        assert back.model["replacement_sha256"] == replacement.content_sha256
        edit = [Intervention(graph.ids[len(graph.ids) // 2])]
        intervene(replacement, back, edit)  # the same set: fine
        back.model["replacement_sha256"] = "0" * 64  # as if traced with another set
        for call in (
            lambda: intervene(replacement, back, edit),
            lambda: first_order(replacement, back),
            lambda: qk_attribution(replacement, back),
        ):
            with pytest.raises(ValueError, match="traced with another replacement set"):
                call()
        # a run of another prompt, or in another mode, is not this graph's
        other = encode_prompt(tokenizer, "12+35=47", replacement.cfg.n_ctx)
        for run in (run_prompt(replacement, other), run_prompt(replacement, tokens, "sparse")):
            for call in (
                lambda run=run: intervene(replacement, graph, edit, run=run),
                lambda run=run: first_order(replacement, graph, run=run),
                lambda run=run: qk_attribution(replacement, graph, run=run),
            ):
                with pytest.raises(ValueError, match="not of this graph's prompt in its mode"):
                    call()
        with pytest.raises(ValueError, match="predicted has shape"):
            intervene(replacement, graph, edit, predicted=torch.zeros(3))
        # arguments: no negative index read from the end, no string ids, ranges checked
        for kwargs, message in (
            ({"nodes": [-1]}, "node indices in 0.."),
            ({"nodes": [graph.ids[5]]}, "must be node indices"),
            ({"top": -1}, "top must be a positive integer"),
            ({"key_mass": 2.0}, "key_mass must be in"),
            ({"key_mass": float("nan")}, "key_mass must be in"),
        ):
            with pytest.raises(ValueError, match=message):
                qk_attribution(replacement, graph, **kwargs)
        # a global graph has no prompt to rerun
        unit_graph = dataclasses.replace(graph, positional=False, tokens=[])
        with pytest.raises(ValueError, match="a global graph has no prompt"):
            first_order(replacement, unit_graph)


def readme_trace_commands() -> list[list[str]]:
    """The arguments of every ``python -m circuits.trace`` command in the README's examples
    (continuation lines joined, comments dropped)."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        _, found, args = line.partition("python -m circuits.trace ")
        if found:
            commands.append(shlex.split(args, comments=True))
    return commands


def test_the_readme_trace_examples_run_on_the_shipped_default(tmp_path, capsys):
    """The examples name tokens and node ids of the shipped model: a retrained default that
    leaves one inactive (or a target that is not one token) fails here, not for a reader."""
    commands = readme_trace_commands()
    assert len(commands) >= 4 and any("--target-node" in c for c in commands)
    for i, args in enumerate(commands):
        # bash's $'...' quoting: shlex leaves the $ and the escapes to be read here
        args = [a[1:].encode().decode("unicode_escape") if a.startswith("$") else a for a in args]
        for flag in ("--out", "--format"):
            if flag in args:
                del args[args.index(flag) : args.index(flag) + 2]
        code, stdout, err = trace(capsys, *args, "--out", str(tmp_path / str(i)), "--format",
                                  "", "--no-checks")  # fmt: skip
        assert code == 0, (args, err)
        assert "targets:" in stdout


def test_a_logit_differences_json_label_agrees_with_the_printout(tmp_path, capsys):
    """graph.json's label of a difference gives the probability the printout gives (its
    positive token's), saying whose, and never a "(p=0.000)" of its own."""
    out = tmp_path / "d"
    code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--no-qk",
                              "--target-diff", " Thursday", " Friday", "--format", "")  # fmt: skip
    assert code == 0, err
    (record,) = Graph.load(out / "graph.safetensors").logit_targets
    assert record.probability > 0.5
    (node,) = [n for n in json.loads((out / "graph.json").read_text())["nodes"]
               if n["feature_type"] == "logit"]  # fmt: skip
    p = f"p={record.probability:.3f}"
    assert node["clerp"].startswith("Output ' Thursday' - ' Friday' = ")
    # ... and its negative's after the ")" (a reviewer found the positive's alone)
    q = f"p={record.negative_probability:.3f}"
    assert node["clerp"].endswith(f"; ' Thursday' ({p}), ' Friday' {q}")
    assert node["token_prob"] == pytest.approx(record.probability)
    (printed,) = [line for line in stdout.splitlines()  # the mechanisms' "target" line
                  if "' Thursday' - ' Friday' = " in line and "p=" in line]  # fmt: skip
    assert f"({p} for ' Thursday', " in printed and " for ' Friday')" in printed  # both


def test_most_influential_never_lists_a_target(tmp_path, capsys):
    """A target has no influence on itself. A layer-0 feature at BOS traced alone keeps no
    other head or feature: the printout says so in words instead of listing the target."""
    out = tmp_path / "n"
    code, stdout, err = trace(
        capsys, "--prompt", PROMPT, "--out", str(out), "--format", "", "--no-mechanisms",
        "--target-node", "transcoder:0:0:1859",
    )  # fmt: skip
    assert code == 0, err
    graph = Graph.load(out / "graph.safetensors")
    (target,) = graph.is_target.logical_and(~graph.is_kind("logit")).nonzero().squeeze(1).tolist()
    assert not graph.is_kind("lorsa", "transcoder").logical_and(~graph.is_target).any()
    assert "most influential: none" in stdout
    assert graph.ids[target] not in stdout.split("most influential")[1]


def test_only_explicit_options_that_a_target_or_no_dashboards_makes_moot_are_refused():
    """The defaults of --max-logits, --logit-probability and --feature-files (on) never
    trigger the refusals above; --no-feature-files with --no-dashboards asks for nothing moot."""
    from circuits.trace import _check_args, parse_args

    args = parse_args(["--prompt", "x", "--target", " a", "--no-dashboards"])
    _check_args(args)
    assert (args.max_logits, args.logit_probability, args.feature_files) == (10, 0.95, True)
    assert not parse_args(["--prompt", "x", "--no-feature-files", "--no-dashboards"]).feature_files
    args = parse_args(["--prompt", "x", "--max-logits", "3", "--logit-probability", "0.5"])
    _check_args(args)
    assert (args.max_logits, args.logit_probability) == (3, 0.5)


def test_links_that_lead_nowhere_or_loop_are_refused_before_any_work(tmp_path, capsys):
    """A fuzz pass: a dashboards file to build that was a link leading nowhere (or in a loop)
    was refused only once the build was done (minutes lost), and a link loop beside the trace's
    --out or the evaluation's --json raised a RuntimeError traceback from Path.resolve. Each
    is one line and exit 2 now, before a model is loaded."""
    from circuits import dashboard_cli
    from toy_models import evaluate

    (tmp_path / "dangle").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    for link in ("dangle", "loop1"):
        path = tmp_path / link
        code, _, err = trace(capsys, "--prompt", PROMPT, "--out", str(tmp_path / "t"),
                             "--dashboards-file", str(path))  # fmt: skip
        assert code == 2 and err == (
            f"error: --dashboards-file {path}: a symbolic link that "
            "leads nowhere or in a loop; name a new or regular file\n"
        )
        with pytest.raises(SystemExit) as exit_info:
            run_cli(dashboard_cli.main, ["--rows", "2", "--quiet", "--out", str(path)])
        _, err = capsys.readouterr()
        assert exit_info.value.code == 2
        assert err == f"error: --out {path}: is a symbolic link; name a new or regular file\n"
    loop = tmp_path / "loop1"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main, ["--json", str(loop)])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert err == f"error: --json {loop}: a symbolic link in a loop; name a real path\n"
    assert not (tmp_path / "t").exists()


def test_head_and_feature_targets_are_explained_in_the_order_given(tmp_path, capsys):
    """Two ``--target-node``s printed in node order, not the order given (a note left for
    several sessions): the graph records the order (``Graph.node_targets``), which the targets
    line, the mechanism summary and its file follow; a graph file naming other nodes there is
    refused."""
    from circuits.graph_file import GraphFileError
    from circuits.interventions import target_nodes

    first = tmp_path / "a"
    assert trace(capsys, "--prompt", PROMPT, "--out", str(first), "--format", "",
                 "--no-mechanisms")[0] == 0  # fmt: skip
    graph = Graph.load(first / "graph.safetensors")
    heads = graph.is_kind("lorsa").nonzero().squeeze(1).tolist()
    low, high = heads[0], heads[-1]  # node order: low first
    specs = [f"lorsa:{int(graph.layer[i])}:{int(graph.pos[i])}:{int(graph.index[i])}"
             for i in (high, low)]  # fmt: skip
    out = tmp_path / "b"
    code, stdout, err = trace(capsys, "--prompt", PROMPT, "--out", str(out), "--format", "",
                              "--no-checks", "--target-node", specs[0], "--target-node",
                              specs[1])  # fmt: skip
    assert code == 0, err
    traced = Graph.load(out / "graph.safetensors")
    given = [graph.ids[high], graph.ids[low]]
    assert [traced.ids[i] for i in traced.node_targets] == given
    assert "node_targets" not in traced.settings  # structure, not provenance
    assert [traced.ids[i] for i in target_nodes(traced)] == given
    assert [t.node for t in load_summary(out / "mechanisms.json").targets] == given
    info = json.loads((out / "graph.json").read_text(encoding="utf-8"))["metadata"]["info"]
    assert info["targets"] == given  # graph.json too (a review found node order there)
    lines = stdout.splitlines()  # the targets a line each under their heading (ten on one
    at = lines.index("targets:")  # line ran to 230 characters: a review)
    for line, i in zip(lines[at + 1 : at + 3], (high, low), strict=True):
        assert line.startswith(f"  {node_label(graph, i)} (pre-activation ")
    traced.node_targets = traced.node_targets[:1]
    with pytest.raises(GraphFileError, match="field node_targets: leaves out the target "):
        traced.save(tmp_path / "forged.safetensors")


def test_the_help_says_vs_runner_up_without_a_target_takes_the_top_token_alone(capsys):
    """With no --target, --vs-runner-up explains the top token's margin alone (``_targets``),
    not each of the default top logits: on `Lucy wrote 214+563=` (targets '7', ' ', '8' by
    default) it traced '7' - ' ' only, where the help promised "each logit target" (a
    review)."""
    from circuits.trace import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--vs-runner-up explain each --target (with none named, the top token alone," in text
