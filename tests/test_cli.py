"""Bad input to the CLIs: one line on stderr, exit code 2, no traceback, nothing overwritten."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd)


def assert_one_line_error(result, match):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], result.stderr


def test_train_unknown_config(tmp_path):
    assert_one_line_error(
        run("toy_models.train", "--config", "huge", "--out", str(tmp_path / "x")),
        "unknown config 'huge'",
    )
    assert not (tmp_path / "x").exists()


def test_train_refuses_to_overwrite_a_run(tiny_run):
    before = (tiny_run / "model.safetensors").read_bytes()
    assert_one_line_error(
        run("toy_models.train", "--config", "tiny", "--out", str(tiny_run)),
        "already holds a training run",
    )
    assert (tiny_run / "model.safetensors").read_bytes() == before


def test_train_refuses_a_users_config_json(tmp_path):
    """Found by a fuzz pass: a fresh training run replaced a config.json of the user's in
    --out (exit 0); either final file there is refused, and kept."""
    out = tmp_path / "exp"
    out.mkdir()
    (out / "config.json").write_text('{"my_experiment": "notes"}')
    assert_one_line_error(
        run("toy_models.train", "--config", "tiny", "--out", str(out)),
        "already holds config.json",
    )
    assert (out / "config.json").read_text() == '{"my_experiment": "notes"}'


def test_train_resume_without_checkpoint(tmp_path):
    assert_one_line_error(
        run("toy_models.train", "--config", "tiny", "--out", str(tmp_path), "--resume"),
        "nothing to resume",
    )


def test_a_zoo_name_that_is_also_a_directory_here_is_refused(tmp_path, monkeypatch):
    """Found by a fuzz pass: inside runs/ (after toy_models.train --out runs/default),
    ``--model default`` evaluated that folder (mean loss 5.13, the shipped model's 1.57) with
    exit 0, and replacement.ship would have bound a set to it as the zoo's. A path says which;
    a link to the zoo entry names its set."""
    from toy_models.zoo import SHIPPED_DIR, UnknownModelError, resolve_model_dir

    (tmp_path / "default").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownModelError, match="'default' is both the shipped model and a "
                                                "directory here: write ./default"):  # fmt: skip
        resolve_model_dir("default")
    assert resolve_model_dir("./default") == Path("./default")
    assert resolve_model_dir(str(tmp_path / "default")) == tmp_path / "default"
    (tmp_path / "link").symlink_to(SHIPPED_DIR / "default")
    from replacement.model import load_pretrained

    replacement, _ = load_pretrained(str(tmp_path / "link"))  # the zoo entry's own set
    monkeypatch.chdir(SHIPPED_DIR)  # there the directory is the shipped model
    assert resolve_model_dir("default").resolve() == (SHIPPED_DIR / "default").resolve()


def test_evaluate_unknown_model():
    assert_one_line_error(run("toy_models.evaluate", "--model", "gpt5"), "unknown model 'gpt5'")


@pytest.mark.parametrize("damage", ["truncate", "missing", "tokenizer", "token_ids"])
def test_evaluate_damaged_checkpoint(tiny_run, tmp_path, damage):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken, ignore=shutil.ignore_patterns("data", "checkpoint"))
    weights = broken / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        match = "unreadable weights"
    elif damage == "missing":
        weights.unlink()
        match = "checkpoint file missing"
    elif damage == "token_ids":  # as many tokens, one of them with an id past the embeddings
        data = json.loads((broken / "tokenizer.json").read_text())
        vocab = data["model"]["vocab"]
        token = max(vocab, key=vocab.get)
        vocab[token] = 5000
        (broken / "tokenizer.json").write_text(json.dumps(data))
        match = "token ids are not 0.."
    else:  # a tokenizer of another vocabulary size
        import random

        from toy_models.data import names_example
        from toy_models.tokenizer import train_tokenizer

        rng = random.Random(0)
        train_tokenizer([names_example(rng).text for _ in range(50)], 300).save(
            str(broken / "tokenizer.json")
        )
        match = "does not match the model's d_vocab"
    assert_one_line_error(run("toy_models.evaluate", "--model", str(broken), "--docs", "2"), match)


def test_results_never_overwrite_the_files_a_run_reads(tiny_run, tmp_path):
    """``--json`` naming a file of the model or of the replacement set is refused before any
    work, and the file is left as it was (a results file in the same folder is fine)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_run, model, ignore=shutil.ignore_patterns("data", "checkpoint"))
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        result = run("toy_models.evaluate", "--model", str(model), "--docs", "1",
                     "--json", str(model / "." / name))  # fmt: skip
        assert_one_line_error(result, f"is {name} of the model or replacement set")
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert "wrote" in run("toy_models.evaluate", "--model", str(model), "--docs", "1",
                          "--json", str(model / "eval.json")).stderr  # fmt: skip

    from replacement.ship import SHIPPED_DIR

    replacement = tmp_path / "set"
    shutil.copytree(SHIPPED_DIR / "default", replacement)
    before = {p.name: p.read_bytes() for p in replacement.iterdir()}
    for name in ("replacement.json", "record.json", "lorsa.0.safetensors"):
        result = run("replacement.evaluate", "--replacement", str(replacement),
                     "--json", str(replacement / name))  # fmt: skip
        assert_one_line_error(result, f"is {name} of the model or replacement set")
    assert {p.name: p.read_bytes() for p in replacement.iterdir()} == before


def test_help_is_fast_and_explains():
    for module in ("toy_models.train", "toy_models.evaluate"):
        result = run(module, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout


def test_replacement_train_bad_input(tmp_path):
    assert_one_line_error(
        run("replacement.train", "--model", "gpt5", "--out", str(tmp_path / "r")), "unknown model"
    )
    assert_one_line_error(
        run("replacement.train", "--config", "huge", "--out", str(tmp_path / "r")),
        "unknown replacement config 'huge'",
    )
    assert not (tmp_path / "r").exists()


def test_replacement_evaluate_refuses_a_set_made_for_another_model(tiny_run):
    # the shipped set belongs to the shipped default model, not to the tiny one
    from replacement.ship import SHIPPED_DIR

    shipped = str(SHIPPED_DIR / "default")
    result = run("replacement.evaluate", "--model", str(tiny_run), "--replacement", shipped)
    assert_one_line_error(result, "made for a 4-layer model")


def test_bad_arguments_of_the_benchmarks_are_one_line_before_any_work():
    """A zero or negative count (threads, repeats, rows, steps...) or a file where a directory
    goes is one error line, not a traceback later or a run that starts and fails at its end."""
    root = Path(__file__).parent.parent
    for script, args, text in (
        ("lorsa_speed", ["--batch", "0"], "--batch: must be at least 1, got 0"),
        ("mechanisms", ["--threads", "0"], "--threads: must be at least 1"),
        ("attn_sae_baseline", ["--batches", "-1"], "--batches: must be at least 1"),
        ("dashboards", ["--sae-steps", "-5"], "--sae-steps: must be at least 0"),
        ("replacement", ["--replacement", "x", "--docs", "2.5"], "not a whole number: '2.5'"),
        ("attribution", ["--lengths", "0"], "--lengths must lie in 1..127"),
        ("toy_model", ["--skip-train"], "--skip-train evaluates --model"),
        ("toy_model", ["--config", "tiny", "--model", "default"], "--model is what --skip-train"),
        ("startup", ["--repeat", "0"], "--repeat must be at least 1"),
        ("dashboards", ["--work", "README.md"], "--work README.md: exists and is not a dir"),
        ("heads", ["--report", "README.md"], "--report README.md: exists and is not a dir"),
        ("check_sizes", ["--per-family", "0"], "--per-family: must be at least 1"),
        ("paths", ["--per-family", "-2"], "--per-family: must be at least 1"),
        # a file that is no earlier results of the command is not replaced (README.md was)
        ("paths", ["--out", "README.md"], "is not an earlier results file of this command"),
        ("check_sizes", ["--out", "README.md"], "is not an earlier results file"),
        ("mechanisms", ["--out", "README.md"], "is not an earlier results file"),
        ("hand_prompts", ["--out", "README.md"], "is not an earlier results file"),
        ("attn_sae_baseline", ["--out", "README.md"], "is not an earlier results file"),
        ("error_analysis", ["--json", "README.md"], "is not an earlier results file"),
        ("lorsa_ablations", ["--json", "README.md"], "is not an earlier results file"),
    ):
        proc = subprocess.run([sys.executable, str(root / "benchmarks" / f"{script}.py"), *args],
                              capture_output=True, text=True, cwd=root, timeout=120)  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (script, proc.stderr)
        assert text in proc.stderr.strip().splitlines()[-1], (script, proc.stderr)


_SCRIPT_IN_A_FRESH_PROCESS = """
import json, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformer_lens"})
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def test_counts_and_paths_the_benchmarks_cannot_use_are_refused_before_torch(tmp_path):
    """Left by the argument fuzz pass: counts of 10**11 (prompts, rows, batches, documents,
    SAE steps), more right prompts than prompts, 10**9 threads, a 30-digit seed, validation
    rows beyond the rows, a missing --dashboards-file or set, an --out that is a file were
    taken, and the run loaded the model and built prompts or rows for hours, or failed after
    its load. Each is now one line and exit 2 before torch is imported."""
    root = Path(__file__).parent.parent
    huge, set_dir = "100000000000", str(root / "replacement" / "zoo" / "default")
    for script, args, text in (
        ("mechanisms", ["--dashboards-file", str(tmp_path / "no.safetensors")],
         "--dashboards-file missing"),
        ("mechanisms", ["--prompts", huge, "--max-prompts", huge], "--prompts: must be at most"),
        ("mechanisms", ["--max-prompts", huge], "--max-prompts: must be at most 10000"),
        ("mechanisms", ["--min-correct", "201"], "more right prompts than --max-prompts 200"),
        ("mechanisms", ["--threads", "1000000"], "--threads: must be at most"),
        ("mechanisms", ["--seed", "1" + "0" * 30], "--seed: must be at most 2**63 - 1"),
        ("superposition", ["--rows", huge], "--rows must be between 1 and 1048576"),
        ("superposition", ["--validation-rows", "300"], "more than the --rows 256"),
        ("superposition", ["--out", "README.md"], "--out README.md: exists and is not a dir"),
        ("replacement", ["--replacement", set_dir, "--batches", huge], "--batches: must be at"),
        ("replacement", ["--replacement", set_dir, "--docs", huge], "--docs: must be at most"),
        ("replacement", ["--replacement", str(tmp_path)], "no replacement.json there"),
        ("dashboards", ["--rows", huge], "--rows: must be at most 1048576"),
        ("dashboards", ["--sae-steps", "1" + "0" * 20], "--sae-steps: must be at most"),
        ("heads", ["--model", "nope"], "unknown model 'nope'"),
    ):  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", _SCRIPT_IN_A_FRESH_PROCESS,
                               str(root / "benchmarks" / f"{script}.py"), *args],
                              capture_output=True, text=True, cwd=root, timeout=300)  # fmt: skip
        *lines, ran = proc.stderr.strip().splitlines()
        assert json.loads(ran) == {"code": 2, "heavy": []}, (script, args, proc.stderr)
        assert text in lines[-1] and "Traceback" not in proc.stderr, (script, proc.stderr)
        assert len(lines) == 1 or lines[0].startswith("usage:"), (script, proc.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", ["heads", "superposition", "replacement"])
def test_a_benchmarks_results_file_that_cannot_be_written_is_refused_before_its_work(
    script, tiny_run, tiny_pretrained, make_replacement, tmp_path, cli, monkeypatch
):
    """These three wrote their results file (``benchmarks/results/{script}_{name}.json``) only
    at the end, unchecked: a directory or a user's file there failed, or was replaced, after
    the analysis. Checked now as the others' are, before any of it."""
    from conftest import benchmark

    import replacement.evaluate
    from reports import superposition as R

    def ran(*args, **kwargs):
        raise AssertionError("the work ran")

    bench = benchmark(script)
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(bench, "cli_startup", ran, raising=False)
    monkeypatch.setattr(R, "analyse", ran)
    monkeypatch.setattr(replacement.evaluate, "evaluate_replacement", ran)
    model, _ = tiny_pretrained
    make_replacement(model, n_qk=2, n_ov=8).save(tmp_path / "set", str(tiny_run))
    name = "set" if script == "replacement" else tiny_run.name
    target = tmp_path / "results" / f"{script}_{name}.json"
    target.mkdir(parents=True)
    args = ["--model", tiny_run, "--replacement", tmp_path / "set"]
    args += ["--out", tmp_path / "sp"] if script == "superposition" else []
    code, _, err = cli(bench.main, *args)
    assert (code, err) == (2, f"error: results file {target}: is a directory\n")


def test_replacement_evaluate_refuses_a_set_whose_weights_overflow(tmp_path):
    """Finite weights load, but x1e30 overflows in use: the figures would be NaN (and NaN is
    not JSON); one line saying so, and no results file."""
    import torch

    from replacement.model import load_pretrained

    replacement, _ = load_pretrained("default")
    with torch.no_grad():
        for p in replacement.transcoders[2].parameters():
            p.mul_(1e30)
    replacement.save(tmp_path / "huge", "default")
    result = run("replacement.evaluate", "--replacement", str(tmp_path / "huge"),
                 "--batches", "1", "--docs", "1", "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert_one_line_error(result, "the set gives non-finite figures")
    assert not (tmp_path / "r.json").exists()


def test_an_output_under_a_file_names_the_file(tmp_path):
    from toy_models.cli import UserError
    from toy_models.files import check_writable_dir, check_writable_file

    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"cannot write there \(.*afile is not a directory\)"):
        check_writable_file(tmp_path / "afile" / "deeper" / "x.json", "--json")
    with pytest.raises(UserError, match=r"cannot write there \(.*afile is not a directory\)"):
        check_writable_dir(tmp_path / "afile" / "sub")
    assert (tmp_path / "afile").read_text() == "x"


def test_a_refused_run_leaves_no_empty_output_directory(tmp_path, capsys, monkeypatch):
    """Output checks create ``--out`` early (to prove it writable); a run refused after them
    removes the directories they made themselves and left empty, and nothing else: not a
    directory that existed (also when named through a ``..``), one holding a file, the parents
    made on the way (another run may use them), nor one made by an earlier run."""
    from toy_models.cli import UserError, run_cli
    from toy_models.files import check_writable_dir

    existed = tmp_path / "existed"
    existed.mkdir()

    def refused(argv):
        check_writable_dir(tmp_path / "new" / "deeper" / "out")
        check_writable_dir(existed / "sub")
        check_writable_dir(Path("missing") / ".." / "existed")  # relative, existed
        check_writable_dir(tmp_path / "kept")
        (tmp_path / "kept" / "file").write_text("x")
        raise UserError("no")

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        run_cli(refused, [])
    assert stop.value.code == 2 and "error: no" in capsys.readouterr().err
    # one line, unless the traceback is asked for (a ValueError from a bug reads like a
    # refusal: a reviewer's run mid-edit said only "too many values to unpack")
    from toy_models.cli import TRACEBACK_VARIABLE

    def bug(argv):
        return int("three")  # a ValueError no check meant

    for value, shown in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv(TRACEBACK_VARIABLE, value)
        with pytest.raises(SystemExit) as stop:
            run_cli(bug, [])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.splitlines()[-1].startswith("error: invalid literal")
        assert ("Traceback (most recent call last)" in err) == shown
        assert shown or len(err.splitlines()) == 1
    monkeypatch.delenv(TRACEBACK_VARIABLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existed", "kept", "missing", "new"]
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["deeper"]
    assert not any((tmp_path / "new" / "deeper").iterdir()) and not any(existed.iterdir())
    assert (tmp_path / "kept" / "file").exists()
    # a directory a successful run made is not the next run's: a refused run elsewhere that
    # names the same relative path leaves it (and its namesake there) alone
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "results").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    with pytest.raises(SystemExit):
        run_cli(lambda argv: check_writable_dir(Path("results")), [])
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(SystemExit):
        run_cli(lambda argv: (check_writable_dir(Path("results")), refused(argv)), [])
    assert (tmp_path / "a" / "results").is_dir() and (tmp_path / "b" / "results").is_dir()
    # end to end: a cache that cannot fit on any disk is refused before any work
    out = tmp_path / "acts" / "default"
    assert_one_line_error(run("replacement.cache", "--rows", "100000000", "--out", str(out)),
                          "free")  # fmt: skip
    assert not out.exists()


def test_the_clis_copies_of_library_constants_are_the_librarys():
    """The CLIs keep copies of a few library constants so that parsing their arguments
    imports no torch; each copy must equal its original."""
    from circuits import dashboard_cli, dashboards, global_graph, statistics, statistics_file, trace
    from circuits import superposition as library
    from replacement import model
    from reports import superposition
    from reports.graphviz import RENDER_FORMATS
    from reports.heads import Settings

    assert trace.FORMATS == RENDER_FORMATS
    assert trace.DASHBOARD_ROWS == dashboard_cli.DEFAULT_ROWS == dashboards.DEFAULT_ROWS
    assert dashboard_cli.DEFAULT_DIR == dashboards.DEFAULT_DIR
    assert sorted(dashboard_cli.MODES) == sorted(model.MODES)
    assert global_graph.DEFAULT_STATS_DIR == statistics.DEFAULT_STATS_DIR
    assert global_graph.MAX_ROWS == statistics_file.MAX_ROWS
    assert superposition.DEFAULT_THRESHOLDS == library.SPREAD_THRESHOLDS
    assert superposition.HEADLINE in superposition.DEFAULT_THRESHOLDS
    assert superposition.HOST_SHARE == library.HOST_SHARE
    assert superposition.MIN_FIRES == library.MIN_FIRES == dashboards.MIN_FIRES
    assert superposition.HEADS_DOCS == Settings().docs


def test_a_closed_stdout_ends_the_run_quietly(capsys):
    """Found by the fourth fuzz pass: ``circuits.trace ... | head -1`` printed "error: Broken
    pipe" and exit 2 after writing everything. A reader that goes away ends the run with 141
    (as SIGPIPE would), nothing on stderr."""
    from toy_models.cli import run_cli

    def main(argv):
        print("a line nobody reads")
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [])
    assert exit_info.value.code == 141 and capsys.readouterr().err == ""


def test_an_option_given_twice_is_refused_and_a_dash_value_is_explained(capsys):
    """argparse keeps the last of a repeated option silently (``--prompt A --prompt B`` traced
    B; ``--qk --no-qk`` ran without QK): every CLI's parser refuses it, naming both spellings,
    while options that collect (``--target``) repeat. A value that begins with '-' is read as
    an option by argparse; the error says how to write it."""
    from circuits.trace import parse_args

    for argv, text in (
        (["--prompt", "a", "--prompt", "b"], "--prompt is given twice (--prompt, then --prompt)"),
        (["--prompt=a", "--prom", "b"], "--prompt is given twice (--prompt, then --prom)"),
        (["--prompt", "a", "--qk", "--no-qk"], "--qk/--no-qk is given twice (--qk, then --no-qk)"),
        (["--prompt", "-5+3="], "(a value that begins with '-' is written --prompt=-5+3=)"),
    ):
        with pytest.raises(SystemExit) as stop:
            parse_args(argv)
        assert stop.value.code == 2 and text in capsys.readouterr().err, argv
    args = parse_args(["--prompt=-5+3=", "--target", " 8", "--target", " 9"])
    assert args.prompt == "-5+3=" and args.target == [" 8", " 9"]
    # every CLI of the project uses the parser (benchmarks/startup.py times start-up and imports
    # nothing of the project; benchmarks/trace_limits.py runs the trace CLI)
    root = Path(__file__).parent.parent
    plain = [
        str(path.relative_to(root))
        for folder in ("toy_models", "replacement", "circuits", "reports")
        for path in sorted((root / folder).rglob("*.py"))
        if "argparse.ArgumentParser(" in path.read_text()
    ]
    assert plain == []


def someone_elses_folder(path: Path) -> dict:
    """circuit-tracer's output (graph.json, features/) beside the user's own files; returns
    every file's bytes, to compare after a refused run."""
    (path / "features").mkdir(parents=True)
    (path / "features" / "0.json").write_text('{"index": 0}')
    (path / "graph.json").write_text('{"metadata": {"slug": "theirs"}, "nodes": [], "links": []}')
    (path / "graph.pdf").write_text("my drawing")
    (path / "notes.txt").write_text("mine")
    return files_in(path)


def files_in(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_a_graph_json_no_run_wrote_is_refused_not_replaced(tmp_path, fresh_cli):
    """Found by a fuzz pass (lost work): ``circuits.trace --out D``, ``circuits.global_graph
    --out D`` and ``reports.heads`` took any graph.json (heads.json) in D for an earlier run's
    and replaced it, deleting circuit-tracer's features/ and the user's graph.pdf. A run now
    writes only where its own record (``.graph-set.json``) says an earlier run wrote; a mark
    with no record beside it is refused in one line, every file kept (global_graph before any
    work: torch is never imported)."""
    from reports.heads.report import REPORT_SET
    from reports.outputs import write_set
    from toy_models.files import WriteError

    out = tmp_path / "D"
    before = someone_elses_folder(out)
    code, heavy, err = fresh_cli(
        "circuits.global_graph", ["--start", "lorsa:1:2", "--out", str(out)]
    )
    assert code == 2 and heavy == [] and err.count("\n") == 0, err
    assert f"cannot write {out / 'graph.json'}: not written by a run of this version" in err
    assert "choose another --out" in err
    result = run("circuits.trace", "--prompt", "hi there", "--no-dashboards", "--no-checks",
                 "--no-qk", "--format", "", "--out", str(out))  # fmt: skip
    assert_one_line_error(result, f"{out / 'graph.json'}: not written by a run of this version")
    assert files_in(out) == before and sorted(p.name for p in out.iterdir()) == [
        "features", "graph.json", "graph.pdf", "notes.txt"]  # fmt: skip
    # reports.heads' set, marked by heads.json, the same way
    (tmp_path / "H").mkdir()
    (tmp_path / "H" / "heads.json").write_text('{"mine": true}')
    with pytest.raises(WriteError, match="heads.json: not written by a run of this version"):
        write_set(tmp_path / "H", REPORT_SET, lambda stage: (stage / "heads.json").write_text("{}"))
    assert files_in(tmp_path / "H") == {"heads.json": b'{"mine": true}'}


def test_an_output_folder_holding_a_model_or_a_replacement_set_is_refused(tmp_path, fresh_cli):
    """Found by a fuzz pass: ``circuits.trace``, ``reports.superposition`` and
    ``toy_models.train --out`` accepted a model's folder or a replacement set's and wrote
    beside model.safetensors. Every command's output directory refuses one now (as
    ``reports.heads`` did), except the trainers' own runs, in one line, nothing written."""
    model, replacement = tmp_path / "model", tmp_path / "set"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_text("weights")
    replacement.mkdir()
    (replacement / "replacement.json").write_text("{}")
    before = files_in(tmp_path)
    for module, args, where in [
        ("circuits.global_graph", ["--start", "lorsa:1:2"], model),
        ("reports.superposition", [], model),
        ("reports.superposition", [], replacement),
        ("toy_models.train", ["--config", "tiny"], replacement),
        ("toy_models.train", ["--config", "tiny", "--resume"], replacement),
        ("replacement.train", ["--config", "tiny"], model),
    ]:
        code, heavy, err = fresh_cli(module, [*args, "--out", str(where)])
        what = "a model (config.json)" if where == model else "a replacement set (replacement.json)"
        assert code == 2 and err.count("\n") == 0 and f"holds {what}" in err, (module, err)
        assert heavy == [] or module == "replacement.train", module  # before any work
    result = run("circuits.trace", "--prompt", "hi there", "--no-dashboards", "--no-checks",
                 "--no-qk", "--format", "", "--out", str(replacement))  # fmt: skip
    assert_one_line_error(result, "holds a replacement set (replacement.json)")
    assert files_in(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "set"]


def test_the_global_graphs_copy_of_the_output_names_is_the_reports():
    """``circuits.global_graph`` checks --out against the set's names before torch is imported,
    from a copy of ``reports.outputs``' names."""
    from circuits import global_graph, trace
    from reports.outputs import GRAPH_SET, GRAPH_WRITERS

    assert global_graph.OUTPUT_NAMES == GRAPH_SET.names
    assert global_graph.GRAPH_MARK == GRAPH_SET.mark
    assert (trace.TRACE, trace.GLOBAL_GRAPH) == GRAPH_WRITERS


def test_a_file_put_in_a_traced_sets_features_folder_is_refused_and_kept(tmp_path, fresh_cli):
    """Found in review (lost work, exit 0): a trace over an earlier trace's set deleted a file
    the user had put in its features/ folder, when it replaced features/ and when, without
    feature files, it removed it ("removed features of an earlier run"). The record now lists
    the files a run wrote in the folder: anything else there is refused in one line, before
    any work (global_graph imports no torch), naming it; every file is kept."""
    from reports.outputs import GRAPH_SET, write_set

    out = tmp_path / "x1"

    def earlier_trace(stage: Path) -> None:
        (stage / "graph.json").write_text('{"nodes": []}')
        (stage / "features" / "default-local").mkdir(parents=True)
        (stage / "features" / "default-local" / "1.json").write_text("{}")

    write_set(out, GRAPH_SET, earlier_trace)
    (out / "features" / "MY_NOTES.txt").write_text("my notes\n")
    before = files_in(out)
    message = f"cannot write {out / 'features' / 'MY_NOTES.txt'}: in the way: not written by a run"
    for flags in (["--no-feature-files", "--no-dashboards"], []):
        result = run("circuits.trace", "--prompt", "A B C", *flags, "--out", str(out))
        assert_one_line_error(result, message)
        assert "move it out of features/" in result.stderr
    args = ["--start", "lorsa:1:2", "--out", str(out)]
    code, heavy, err = fresh_cli("circuits.global_graph", args)
    assert code == 2 and heavy == [] and err.count("\n") == 0 and message in err, err
    assert files_in(out) == before


def test_a_set_that_left_an_empty_folder_is_replaced_by_the_next_run(tmp_path):
    """Found by a fuzz pass: a trace whose graph kept no head or feature wrote an empty
    features/<model>-<mode>/ folder, which its record (listing files) did not name, and the
    same trace run again was refused ("not written by a run"). The record lists the empty
    folders a run left too (``a/``); a file put in one is still refused, and so is a folder
    the user made (``tests/test_files.py``)."""
    from reports.outputs import GRAPH_SET, write_set

    out = tmp_path / "x"

    def no_units(stage: Path) -> None:
        (stage / "graph.json").write_text('{"nodes": []}')
        (stage / "features" / "tiny-local" / "deeper").mkdir(parents=True)

    write_set(out, GRAPH_SET, no_units)
    record = json.loads((out / ".graph-set.json").read_text())
    assert record["files"]["features"] == ["tiny-local/deeper/"]
    write_set(out, GRAPH_SET, no_units)  # the same run again
    assert (out / "features" / "tiny-local").is_dir()
    (out / "features" / "tiny-local" / "deeper" / "mine.txt").write_text("my notes")
    with pytest.raises(OSError, match="not written by a run"):
        write_set(out, GRAPH_SET, no_units)
    assert (out / "features" / "tiny-local" / "deeper" / "mine.txt").read_text() == "my notes"


RESULTS = Path(__file__).parent.parent / "benchmarks" / "results"


@pytest.mark.parametrize(
    "module, results, names",
    [
        ("reports.errors", "error_analysis_default.json", ("errors.md", "errors.png")),
        ("reports.ablations", "lorsa_ablations_default.json", ("ablations.png", "ablations.md")),
    ],
)
def test_a_reports_same_named_file_is_refused_and_its_own_set_rewritten(
    module, results, names, tmp_path, cli
):
    """Found in review (lost work, exit 0): ``reports.errors`` and ``reports.ablations``
    overwrote the user's own errors.md (ablations.png...) in --out, file by file. They write
    their report as one set with a record (``.errors-set.json``), as reports.heads does: a file
    of its names that no run wrote is refused in one line and kept byte for byte; the command
    rewrites its own set run after run, and leaves the user's other files alone."""
    import importlib

    main = importlib.import_module(module).main
    record = f".{names[0].partition('.')[0]}-set.json"
    for name in names:
        out = tmp_path / name
        out.mkdir()
        (out / name).write_bytes(b"my own \x00 report\n")
        code, _, err = cli(main, "--json", RESULTS / results, "--out", out)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"error: cannot write {out / name}: " in err and "not written by a run" in err
        assert files_in(out) == {name: b"my own \x00 report\n"} and not (out / record).exists()
    own = tmp_path / "own"
    own.mkdir()
    (own / "notes.txt").write_text("mine")
    for _ in range(2):
        code, stdout, err = cli(main, "--json", RESULTS / results, "--out", own)
        assert code == 0 and err == "", err
        assert sorted(stdout.splitlines()) == sorted(f"wrote {own / name}" for name in names)
    assert sorted(p.name for p in own.iterdir()) == sorted([record, "notes.txt", *names])
    assert (own / "notes.txt").read_text() == "mine"


def test_a_results_file_with_huge_numbers_is_drawn_from_its_checked_record(tmp_path, cli):
    """Found by a fuzz pass: ``reports.errors`` drew the raw JSON, where an R^2 of 10**30 (a
    JSON integer, which the checked record reads as a float) overflowed in matplotlib, a
    traceback; as 1e30 it was drawn with exit 0, though an R^2 is at most 1."""
    from reports.errors import main as errors

    results = json.loads((RESULTS / "error_analysis_default.json").read_text())
    layer = next(iter(results["lorsa_vs_sae"]))
    for value in (10**30, 1e30, 1.5):
        edited = json.loads(json.dumps(results))
        edited["lorsa_vs_sae"][layer]["r2_a_from_b"] = value
        path = tmp_path / "e.json"
        path.write_text(json.dumps(edited))
        code, _, err = cli(errors, "--json", path, "--out", tmp_path / "e")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "r2_a_from_b" in err and "a number in [-inf, 1]" in err, err
        assert "ValueError(" not in err and "\\'" not in err  # the message, not its repr
        assert not (tmp_path / "e" / "errors.png").exists()


def test_results_figures_that_contradict_each_other_are_refused(tmp_path, cli):
    """Found by a fuzz pass (exit 0, a 300-digit enrichment printed): each figure in range is
    not enough; those a results file ties together must agree (an enrichment is its error
    share over its token share, a count at most the file's tokens, the groups' variances the
    whole, a run's L0 at most its K)."""
    from reports.ablations import main as ablations
    from reports.errors import main as errors

    results = json.loads((RESULTS / "error_analysis_default.json").read_text())
    layer = next(iter(results["by_kind"]["lorsa"]))
    ablation = json.loads((RESULTS / "lorsa_ablations_default.json").read_text())
    a_layer = next(iter(ablation["layers"]))
    a_run = next(iter(ablation["layers"][a_layer]["runs"]))

    def top(r):
        return r["by_kind"]["lorsa"][layer]["top_tokens"][0]

    for main, data, edit, words in (
        (errors, results, lambda r: top(r).update(enrichment=1e300), "enrichment: 1e+300"),
        (errors, results, lambda r: top(r).update(count=2**52), "more than the file's"),
        (errors, results, lambda r: top(r).update(count=10**40), "count: expected a number in"),
        (errors, results,
         lambda r: r["by_kind"]["lorsa"][layer]["by_role"]["group_fvu"].__setitem__(0, 1e40),
         "the groups' variances make"),
        (ablations, ablation,
         lambda r: r["layers"][a_layer]["runs"][a_run].update(l0=1e300), "more than its K"),
    ):  # fmt: skip
        edited = json.loads(json.dumps(data))
        edit(edited)
        path = tmp_path / "r.json"
        path.write_text(json.dumps(edited))
        code, _, err = cli(main, "--json", path, "--out", tmp_path / "out")
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
        assert not (tmp_path / "out").exists()


def test_superposition_refuses_a_users_file_before_its_work_and_rewrites_its_own(
    tiny_run, tiny_pretrained, make_layers, tmp_path, cli, fresh_cli
):
    """Found in review (lost work, exit 0): ``reports.superposition --out D`` overwrote the
    user's superposition.md and top_share.png in D, file by file, after a minute's work. It is
    refused now in one line before torch is imported, the files kept; its own report (the set
    of ``.superposition-set.json``) is written again run after run."""
    from replacement.model import ReplacementModel
    from reports.superposition import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "superposition.md").write_text("# my notes\n")
    (out / "top_share.png").write_bytes(b"\x89PNG mine")
    before = files_in(out)
    code, heavy, err = fresh_cli("reports.superposition",
                                 ["--out", str(out), "--rows", "1", "--quiet"])  # fmt: skip
    assert code == 2 and heavy == [] and err.count("\n") == 0, err
    assert f"cannot write {out / 'superposition.md'}: in the way: not written by a run" in err
    assert files_in(out) == before
    model, _ = tiny_pretrained
    lorsas, transcoders = make_layers(model.cfg.n_layers, model.cfg.d_model, n_qk=2, n_ov=16)
    ReplacementModel(model, lorsas, transcoders).save(tmp_path / "rep", str(tiny_run))
    own = tmp_path / "own"
    args = ["--model", tiny_run, "--replacement", tmp_path / "rep", "--out", own, "--rows", "4",
            "--heads-docs", "1", "--min-fires", "1", "--examples", "1", "--quiet"]  # fmt: skip
    for _ in range(2):
        code, stdout, err = cli(main, *args)
        assert code == 0, err
        assert stdout.count(f"wrote {own}") == 4
    assert sorted(p.name for p in own.iterdir()) == [".superposition-set.json",
        "superposition.json", "superposition.md", "superposition.png", "top_share.png"]  # fmt: skip


def test_models_sets_and_caches_refuse_a_folder_holding_a_graphs_outputs(tmp_path, fresh_cli):
    """A reviewer cached activations and trained a model into a trace's --out: exit 0, and the
    trace then refused its own folder ("holds an activation cache"). The commands that write
    saved work refuse a folder holding a graph's or report's output set, in one line, before
    any work; a report's own command still writes beside a trace's set."""
    from toy_models.cli import UserError
    from toy_models.files import check_writable_dir, write_set_record

    traced = tmp_path / "traced"
    traced.mkdir()
    write_set_record(traced, "graph.json", {"graph.json": "file"}, by="circuits.trace")
    (traced / "graph.json").write_text("{}")
    before = sorted(p.name for p in traced.iterdir())
    for module, args in (
        ("replacement.cache", ["--model", "default", "--layers", "1", "--rows", "4"]),
        ("toy_models.train", ["--config", "tiny", "--steps", "2"]),
    ):
        code, _, err = fresh_cli(module, [*args, "--out", str(traced)])
        assert code == 2 and len(err.strip().splitlines()) == 1, (module, err)
        assert "holds a graph's or report's outputs (.graph-set.json)" in err, (module, err)
    assert sorted(p.name for p in traced.iterdir()) == before
    check_writable_dir(traced, "--out")  # a report's folder check: beside it is fine
    with pytest.raises(UserError, match="holds a graph's or report's outputs"):
        check_writable_dir(traced, "--out", sets_refused=True)


def test_a_library_module_and_a_file_for_a_set_say_so(tmp_path, fresh_cli):
    """A reviewer ran `python -m reports.results_cli` (a library): exit 0, nothing said; and a
    --replacement naming a file read "replacement file missing: FILE/replacement.json"."""
    code, _, err = fresh_cli("reports.results_cli", [])
    assert code == 2 and "use python -m reports.errors or python -m reports.ablations" in err
    from replacement.model import ReplacementModel
    from toy_models.zoo import load_pretrained

    model, _ = load_pretrained("default")
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file, not a set's folder"):
        ReplacementModel.load(afile, model)


BAR_LEFT_OPEN = """
import errno, sys
sys.path.insert(0, {root!r})
from tqdm import tqdm
from toy_models.cli import run_cli
from toy_models.files import WriteError

def rows(fault):  # a step whose bar is closed only after its loop
    bar = tqdm(total=4, desc="rows")
    bar.update(1)
    if fault == "interrupt":
        raise KeyboardInterrupt
    raise WriteError(errno.ENOSPC, "No space left on device", "stats.safetensors")

run_cli(lambda argv: rows({fault!r}), [])
"""


@pytest.mark.parametrize("fault", ["interrupt", "full disk"])
def test_the_error_line_comes_after_a_progress_bar_left_open(fault):
    """Found by a fault pass: a Ctrl-C (or a full disk) inside the global statistics' row loop,
    whose bar is closed only after it, printed "interrupted", then the bar again when the
    failed frames were freed at exit: the last line on the terminal was a progress bar, not
    the error. The line is printed once the failed step's frames are gone."""
    script = BAR_LEFT_OPEN.format(root=str(Path(__file__).resolve().parents[1]), fault=fault)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == (130 if fault == "interrupt" else 2), done.stderr
    last = "interrupted" if fault == "interrupt" else "error: cannot write stats.safetensors"
    assert done.stderr.rstrip("\n").split("\n")[-1].startswith(last), repr(done.stderr)


@pytest.mark.parametrize(
    ("module", "parse", "rest"),
    [
        ("circuits.trace", "parse_args", ["--prompt", "1+1="]),
        ("circuits.dashboard_cli", "parse_args", []),
        ("circuits.global_graph", "parse_args", ["--start", "lorsa:0:0"]),
        ("reports.heads.cli", "parse_args", []),
        ("reports.superposition", "parse_args", []),
        ("replacement.evaluate", "main", []),
    ],
)
def test_an_empty_replacement_path_is_refused_by_argparse(module, parse, rest, capsys):
    """Found by a fuzz pass: ``--replacement ""`` was read as the current directory once the
    model had loaded ("replacement file missing: replacement.json", or a set that happened to
    be there was used); like every path option's, an empty one is a usage error at once."""
    import importlib

    for value in ("", "  "):
        with pytest.raises(SystemExit) as exc:
            getattr(importlib.import_module(module), parse)([*rest, "--replacement", value])
        assert exc.value.code == 2
        assert "argument --replacement: an empty path" in capsys.readouterr().err


@pytest.mark.parametrize(
    "script",
    ["attn_sae_baseline", "error_analysis", "heads", "mechanisms", "replacement", "superposition"],
)
def test_a_benchmarks_empty_replacement_path_is_refused_by_argparse(script):
    """The benchmarks' own ``--replacement`` as the commands' (above): an empty one ran the
    shipped set (``heads``, ``mechanisms``, ``superposition``, ``error_analysis``: an empty
    value read as not given) or the current folder, the results file recording neither."""
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(root / "benchmarks" / f"{script}.py"), "--replacement", ""]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("argument --replacement: an empty path")
