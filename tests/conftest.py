"""Fixtures shared by several test modules.

The SLURM cluster is defined here (not imported into each module) so that pytest starts ONE cluster per session:
two clusters would reuse job ids, and submitit's job-state cache is keyed by job id alone.

Markers (declared in pytest.ini): ``slow`` (over ~5 s; ``-m "not slow"`` is the quick tier), ``distributed``
(several torch.distributed processes), ``slurm`` (the local SLURM cluster), ``gpu`` (CUDA; skipped here otherwise).
"""
import logging
import os

# One intra-op thread per process (unless the caller chose): the tests run tiny models, most of them in several
# processes at once (main.py runs, loader workers, torchrun ranks), and on a busy 2-core machine a second OpenMP
# thread that waits for a taken core made in-process training runs 10-20x slower. Set before torch is imported, so
# this process and every subprocess (which inherits the environment) start with it.
os.environ.setdefault('OMP_NUM_THREADS', '1')

import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.slurm_fixture import slurm_cluster  # noqa: F401,E402
from tests.train_helpers import REPO, base_args, env  # noqa: E402


@pytest.fixture(autouse=True)
def _no_stale_log_handlers():
    """An in-process main.py run leaves its stderr handler on the root logger, pointing at that test's captured (then
    closed) stderr; remove it after each test (else a later test's log record prints a 'Logging error' traceback)."""
    yield
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, '_hornet', False)]:
        root.removeHandler(h)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, with the reason, where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------------------------------ one trained run

QUICK_FLAGS = dict(aa='none', reprob=0, mixup=0, cutmix=0, smoothing=0, warmup_epochs=0)  # cheap, no extra noise


@dataclass
class TrainedRun:
    """A finished main.py run: its data, output folder, flags (``base_args`` options) and the process result."""
    data: Path
    out: Path
    opts: Dict[str, object]
    proc: subprocess.CompletedProcess

    def argv(self, out: Optional[Path] = None, **overrides) -> List[str]:
        """The run's command line (as ``base_args``), with another output folder and/or other flags."""
        return base_args(self.data, out or self.out, **{**self.opts, **overrides})

    @property
    def checkpoint(self) -> Path:
        return self.out / 'checkpoint-0.pth'


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory) -> TrainedRun:
    """ONE real training run for the whole session, shared by the tests that need a finished run or a main.py
    checkpoint (its log, TensorBoard files, permissions, relaunch and resume, predict/export, safetensors, a full disk,
    the memory-saving modes): hornet_micro_7x7, one epoch of a 4-class quick-start data set (32 images, 32 px,
    batch 4: 8 steps; 40 validation images), the recipe batch set to 8, .safetensors on, under umask 022.

    Tests must not change its files: copy them first (``shutil.copytree``)."""
    import quickstart
    root = tmp_path_factory.mktemp('trained_run')
    data = Path(quickstart.make_quickstart_dataset(str(root / 'data'), num_classes=4, train_per_class=8,
                                                 val_per_class=10, image_size=48))
    opts = dict(data_set='QUICKSTART', epochs=1, print_freq=5, recipe_batch_size=8, save_safetensors='true',
                **QUICK_FLAGS)
    out = root / 'out'
    proc = subprocess.run([sys.executable, str(REPO / 'main.py')] + base_args(data, out, **opts), capture_output=True,
                          text=True, env=env(), cwd=str(REPO), timeout=300, preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return TrainedRun(data=data, out=out, opts=opts, proc=proc)
