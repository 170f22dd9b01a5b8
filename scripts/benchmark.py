#!/usr/bin/env python3
"""Training / inference throughput, peak memory and profile of HorNet against peers, exact step memory, or
data-pipeline throughput: the command line of the measuring tools in ``scripts/bench/`` (see ``--help``).

    python scripts/benchmark.py --device cpu --batch_size 16 --repeats 5 --json cpu.json
    python scripts/benchmark.py --mode memory --models hornet_large_7x7 --grad_checkpointing off on selective
    python scripts/benchmark.py --mode data --workers 0 1 2

Needs the repository importable: ``pip install -e .`` in its root (or ``python -m scripts.benchmark`` from it).
"""
import sys

try:
    from scripts.bench.cli import main
except ModuleNotFoundError as e:  # run as a file from a checkout that is not installed: one line naming the fix
    from install_hint import exit_with_install_hint  # scripts/ is the first import path when run as a file
    exit_with_install_hint(e, 'scripts.benchmark')

if __name__ == '__main__':
    sys.exit(main())
