"""The tools in scripts/ import the project normally (no import-path edits): run as files from a checkout that is
not installed they stop with one line naming the fix, and ``python -m scripts.NAME`` from the root works as that
line says."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = ['predict', 'export', 'flops', 'plot_log']  # benchmark.py: tests/test_bench_levers.py
NO_PYTHONPATH = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}


@pytest.mark.parametrize('tool', TOOLS)
def test_tool_run_as_a_file_without_the_checkout_installed_says_how_to_install_it(tool, tmp_path):
    """``python -S`` loads no site-packages, so no editable install makes the checkout importable; the working
    directory is elsewhere, as a user's may be."""
    proc = subprocess.run([sys.executable, '-S', str(REPO / 'scripts' / f'{tool}.py'), '--help'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=NO_PYTHONPATH)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: cannot import 'errors': install this checkout first (pip install -e . in the repository root), "
        f"or run python -m scripts.{tool} from the root"], proc.stderr


@pytest.mark.parametrize('tool', ['predict', 'export', 'plot_log'])
def test_tool_runs_as_a_module_from_the_root_without_installing(tool):
    proc = subprocess.run([sys.executable, '-S', '-m', f'scripts.{tool}', '--help'], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=NO_PYTHONPATH)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('usage:'), proc.stdout
