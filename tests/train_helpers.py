"""Shared helpers for the training/distributed tests: a tiny real image folder and a way to run main.py."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent


def make_image_folder(root: pathlib.Path, classes: int = 4, train_per_class: int = 12, val_per_class: int = 5,
                      size: int = 32, seed: int = 0) -> pathlib.Path:
    """root/train/<c>/*.png and root/val/<c>/*.png: noisy images whose mean colour depends on the class."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(classes, 3))
    for split, n in (('train', train_per_class), ('val', val_per_class)):
        for c in range(classes):
            d = root / split / f'class_{c}'
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.normal(0, 40, size=(size, size, 3))
                img = np.clip(palette[c][None, None, :] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f'{i:03d}.png')
    return root


def base_args(data: pathlib.Path, out: Optional[pathlib.Path], **overrides) -> List[str]:
    """A fast CPU training command on the tiny folder (micro HorNet, 32 px)."""
    opts: Dict[str, object] = dict(
        model='hornet_micro_7x7', data_set='IMNET', data_path=str(data), input_size=32, device='cpu', epochs=2,
        batch_size=4, num_workers=0, lr=1e-3, warmup_epochs=1, min_lr=1e-5, aa='rand-m9-mstd0.5-inc1', reprob=0.25,
        mixup=0.8, cutmix=1.0, smoothing=0.1, drop_path=0.1, nb_classes=4, print_freq=1000, seed=3,
        pin_mem='false')
    if out is not None:
        opts['output_dir'] = str(out)
    opts.update(overrides)
    argv: List[str] = []
    for k, v in opts.items():
        argv += [f'--{k}'] + ([str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)])
    return argv


def env() -> Dict[str, str]:
    e = dict(os.environ)
    e['PYTHONPATH'] = str(REPO) + os.pathsep + e.get('PYTHONPATH', '')
    e.setdefault('OMP_NUM_THREADS', '1')
    return e


def run_main(argv: Sequence[str], timeout: float = 300, cwd: Optional[pathlib.Path] = None,
             launcher: Sequence[str] = ()) -> subprocess.CompletedProcess:
    cmd = list(launcher) + ([str(REPO / 'main.py')] if launcher else [sys.executable, str(REPO / 'main.py')])
    return subprocess.run(cmd + list(argv), capture_output=True, text=True, timeout=timeout, env=env(),
                          cwd=str(cwd or REPO))


def load_model_sd(path: pathlib.Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location='cpu', weights_only=True)['model']


def assert_state_dicts_equal(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f'{k} differs (max abs diff {(a[k] - b[k]).abs().max().item()})'


def torchrun(nproc: int = 2) -> list:
    """The torchrun command line for ``nproc`` local processes on a free port."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_port', str(port)]
