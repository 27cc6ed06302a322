"""Fixtures: a tiny model trained from scratch with the project's own command (seconds)."""

from __future__ import annotations

import pytest
import torch

from toy_models.model import ModelConfig, ToyTransformer


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
    cfg = ModelConfig(d_vocab=50, n_ctx=16, d_model=24, n_layers=2, n_heads=3, d_head=8, d_mlp=48)
    model = ToyTransformer(cfg)
    # Larger weights than the init so that attention patterns are far from uniform.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    return model.eval()


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
