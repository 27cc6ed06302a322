"""``python -m reports.heads``: see ``reports.heads.cli``."""

from toy_models.cli import run_cli

from .cli import main

run_cli(main)
