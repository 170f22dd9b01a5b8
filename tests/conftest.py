"""Fixtures shared by several test modules.

The SLURM cluster is defined here (not imported into each module) so that pytest starts ONE cluster per session:
two clusters would reuse job ids, and submitit's job-state cache is keyed by job id alone.

Markers (declared in pytest.ini): ``slow`` (over ~5 s; ``-m "not slow"`` is the quick tier), ``distributed``
(several torch.distributed processes), ``slurm`` (the local SLURM cluster), ``gpu`` (CUDA; skipped here otherwise).
"""
import os

# One intra-op thread per process (unless the caller chose): the tests run tiny models, most of them in several
# processes at once (main.py runs, loader workers, torchrun ranks), and on a busy 2-core machine a second OpenMP
# thread that waits for a taken core made in-process training runs 10-20x slower. Set before torch is imported, so
# this process and every subprocess (which inherits the environment) start with it.
os.environ.setdefault('OMP_NUM_THREADS', '1')

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.slurm_fixture import slurm_cluster  # noqa: F401


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, with the reason, where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)
