"""The one-line error of a tool in scripts/ run as a file from a checkout that is not installed.

``python scripts/NAME.py`` makes scripts/ the only folder of this checkout on the import path, so the project's
modules (``errors``, ``models``, ``scripts``, ...) import only once the checkout is installed (``pip install -e .``)
or when the tool runs as ``python -m scripts.NAME`` from the repository root. The tools import this module by its
bare name in that failure branch (scripts/ is then the first import path), so it imports nothing of the project.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent


def project_modules() -> frozenset:
    """Top-level names of this checkout: its root's modules and packages."""
    return frozenset({p.stem for p in ROOT.glob('*.py')} |
                     {p.parent.name for p in ROOT.glob('*/__init__.py')})


def exit_with_install_hint(error: ModuleNotFoundError, module: str) -> NoReturn:
    """Exit with one line naming the fix when ``error`` is about a module of this checkout; re-raise anything else
    (a missing third-party package keeps its own message). ``module`` is the tool's dotted name, for ``python -m``."""
    if (error.name or '').split('.')[0] not in project_modules():
        raise error
    sys.exit(f"error: cannot import {error.name!r}: install this checkout first (pip install -e . in the repository "
             f"root), or run python -m {module} from the root")
