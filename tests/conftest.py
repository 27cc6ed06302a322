"""Fixtures shared by the tests: a tiny model trained with the project's own command
(seconds), a random toy model, random replacement layers around any model, and the two ways
to run a CLI (in this process with ``cli``, in a fresh interpreter with ``fresh_cli``), and a
benchmark script loaded as a module (``benchmark``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from replacement.lorsa import LorsaConfig, LorsaLayer
from replacement.model import ReplacementModel
from replacement.transcoder import Transcoder, TranscoderConfig
from toy_models.model import ModelConfig, ToyTransformer

D_MODEL = 24  # random_model's width


@pytest.fixture(autouse=True)
def _autograd_left_on():
    """A test that leaves autograd off for the process breaks every later test of its worker
    that trains or differentiates (55 failed after one in-process benchmark run, far from it):
    the test that left it off fails instead, and the mode is put back."""
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        pytest.fail("this test left autograd off for the process (torch.set_grad_enabled("
                    "False) outside a context)")  # fmt: skip


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    from toy_models.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    train("tiny", out, quiet=True)
    return out


@pytest.fixture(scope="session")
def tiny_pretrained(tiny_run):
    from toy_models.zoo import load_pretrained

    return load_pretrained(str(tiny_run))


@pytest.fixture
def random_model():
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_vocab=50, n_ctx=16, d_model=D_MODEL, n_layers=2, n_heads=3, d_head=8, d_mlp=48
    )
    model = ToyTransformer(cfg)
    # Larger weights than the init so that attention patterns are far from uniform.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    return model.eval()


# ----------------------------------------------------------------- random replacement layers
def random_layers(
    n_layers: int = 2,
    d_model: int = D_MODEL,
    *,
    n_qk: int = 2,
    n_ov: int = 8,
    lorsa_k: int = 3,
    d_sae: int = 16,
    tc_k: int = 4,
    skip_layers: tuple[int, ...] = (),
) -> tuple[list[LorsaLayer], list[Transcoder]]:
    """Seeded random Lorsa layers and transcoders, biases included, with weights large enough
    that patterns are far from uniform; ``skip_layers`` get a transcoder skip."""
    torch.manual_seed(1)
    lorsas = [
        LorsaLayer(LorsaConfig(d_model, n_qk_heads=n_qk, n_ov_heads=n_ov, d_qk=4, top_k=lorsa_k))
        for _ in range(n_layers)
    ]
    transcoders = [
        Transcoder(TranscoderConfig(d_model, d_sae=d_sae, top_k=tc_k, skip=l in skip_layers))
        for l in range(n_layers)
    ]
    with torch.no_grad():
        for p in [p for layer in lorsas + transcoders for p in layer.parameters()]:
            p.normal_(std=0.3)
    return lorsas, transcoders


def random_replacement(model: ToyTransformer, **layers) -> ReplacementModel:
    """``random_layers`` (same keywords) around ``model``, in eval mode."""
    lorsas, transcoders = random_layers(model.cfg.n_layers, model.cfg.d_model, **layers)
    return ReplacementModel(model, lorsas, transcoders).eval()


@pytest.fixture
def make_layers():
    """``random_layers`` as a fixture."""
    return random_layers


@pytest.fixture
def make_replacement():
    """``random_replacement`` as a fixture."""
    return random_replacement


@pytest.fixture
def replacement(random_model):
    """``random_replacement`` of ``random_model`` with the default layers: the replacement
    model the attribution, QK, mechanism, global-circuit and head tests trace."""
    return random_replacement(random_model)


@pytest.fixture
def tokens():
    """A seeded 12-token prompt of ids 1..49 in ``random_model``'s vocabulary."""
    torch.manual_seed(2)
    return torch.randint(1, 50, (12,))


def targets(graph) -> torch.Tensor:
    """The indices of the nodes ``graph`` gives a value (its targets: heads, features,
    logits)."""
    return (~torch.isnan(graph.value)).nonzero().squeeze(1)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium window (``reports.browser``, 1400x900) for a module's page tests;
    they are skipped where chromium is not installed."""
    from reports.browser import Browser, find_chromium

    if find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    with Browser(width=1400, height=900) as b:
        yield b


@pytest.fixture
def overflowing_set(tiny_run, tiny_pretrained, tmp_path):
    """A replacement set of the tiny model whose weights are finite (they load) but overflow in
    use (a transcoder x1e30), saved in ``tmp_path / "huge"``: its path."""
    model, _ = tiny_pretrained
    rep = random_replacement(model, n_qk=2, n_ov=16, lorsa_k=4)
    with torch.no_grad():
        for p in rep.transcoders[0].parameters():
            p.mul_(1e30)
    rep.save(tmp_path / "huge", str(tiny_run))
    return tmp_path / "huge"


# ----------------------------------------------------------------- CLIs in this process
@pytest.fixture
def cli(capsys):
    """Run a CLI's ``main`` through ``run_cli`` in this process: (exit code, stdout, stderr).
    Autograd's global mode is the process's: a script's ``torch.set_grad_enabled(False)`` (the
    benchmarks') is undone when its ``main`` returns, as its process's end would."""
    from toy_models.cli import run_cli

    def run(main, *args) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info, torch.enable_grad():
            run_cli(main, [str(a) for a in args])
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return run


# ----------------------------------------------------------------- CLIs in a fresh process
_FRESH_CLI = """
import json, runpy, sys, warnings
warnings.simplefilter("ignore")
module, args = sys.argv[1], json.loads(sys.argv[2])
sys.argv = [module, *args]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformer_lens"})
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def run_fresh(module: str, args: list[str], cwd=None) -> tuple[int, list[str], str]:
    """Run ``python -m module args`` in a new interpreter: (exit code, the heavy packages
    (torch, transformer_lens) it imported, its stderr without the report line)."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_CLI, module, json.dumps(args)],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )  # fmt: skip
    *lines, last = proc.stderr.rstrip("\n").split("\n")
    report = json.loads(last)
    return report["code"], report["heavy"], "\n".join(lines)


@pytest.fixture
def fresh_cli():
    """``run_fresh`` as a fixture, for tests of start-up and argument errors."""
    return run_fresh


def deleting(path: str):
    """An edit of a JSON object (for damaged-file tests) deleting the key at a dotted ``path``
    of nested objects."""

    def edit(data):
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        del data[last]

    return edit


def benchmark(name: str):
    """``benchmarks/NAME.py`` as a module (the benchmarks are scripts, not a package),
    registered in ``sys.modules`` so that its dataclasses can look their module up."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
