"""--data_backend dali (dali_backend.py) against the PIL path, in DALI's CPU mode.

Skipped when NVIDIA DALI is not installed (optional: pip install -r requirements-dali.txt). Crop windows, flips,
erasing boxes and label order are drawn/ordered by the same code and per-sample seeds as the PIL path, so they are
compared per sample; RandAugment is DALI's own (see TRAINING.md, "Data backends") and is switched off here.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

import datasets as D
import transforms as T

dali_backend = pytest.importorskip('dali_backend')
_MISSING = dali_backend.dali_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f'NVIDIA DALI not installed: {_MISSING}')


def _args(**kw) -> argparse.Namespace:
    base = dict(input_size=48, color_jitter=None, aa='none', train_interpolation='bicubic', reprob=0.0, remode='pixel',
                recount=1, imagenet_default_mean_and_std=True, batch_size=8, num_workers=1)
    return argparse.Namespace(**{**base, **kw})


def _folder(root, per_class: int = 8):
    """Coordinate-coded PNGs (R = x, G = y) in 2 classes: crop boxes and flips can be read back from outputs."""
    yy, xx = np.mgrid[0:150, 0:200]
    arr = np.stack([xx, yy, np.full_like(xx, 128)], -1).astype(np.uint8)
    for c in range(2):
        d = root / f'c{c}'
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(arr).save(d / f'{i:02d}.png')
    return D.ImageFolderDataset(str(root))


def _box(out: torch.Tensor) -> tuple:
    r, g = out[0].double(), out[1].double()
    s = out.shape[-1]
    left, right = r[s // 2, 0].item(), r[s // 2, -1].item()
    return min(left, right), abs(right - left), (g[-1, s // 2] - g[0, s // 2]).item(), right < left


def test_dali_crops_flips_and_labels_follow_the_pil_path_per_sample(tmp_path):
    ds = _folder(tmp_path)
    args = _args()
    sampler = D.ResumableSampler(len(ds), seed=5)
    dl = dali_backend.DaliTrainLoader(ds, sampler, 8, args, torch.device('cpu'), num_threads=1)
    pil = T.build_uint8_transform(True, args)
    order = list(sampler)
    seen = 0
    for (imgs, boxes), labels in dl:
        assert imgs.dtype == torch.uint8 and imgs.shape == (8, 3, 48, 48)
        for k in range(8):
            epoch, index = order[seen + k]
            assert int(labels[k]) == ds.samples[index][1]  # same order and labels as the PIL path
            D.seed_sample_rngs(5, epoch, index)
            ref, _ = pil(T.load_image(ds.samples[index][0]))
            a, b = _box(imgs[k]), _box(ref)
            assert a[3] == b[3]  # same flip
            assert abs(a[0] - b[0]) <= 3 and abs(a[1] - b[1]) <= 4 and abs(a[2] - b[2]) <= 4  # same crop window
        seen += 8
    assert seen == 16


def test_dali_epoch_is_deterministic_for_a_given_epoch_and_start(tmp_path):
    ds = _folder(tmp_path)
    args = _args(aa='rand-m9-mstd0.5-inc1', reprob=0.5)
    sampler = D.ResumableSampler(len(ds), seed=1)
    sampler.set_epoch(1, start=8)
    dl = dali_backend.DaliTrainLoader(ds, sampler, 8, args, torch.device('cpu'), num_threads=1)
    first = [(i.clone(), b.clone(), y.clone()) for (i, b), y in dl]
    second = [(i.clone(), b.clone(), y.clone()) for (i, b), y in dl]
    assert len(first) == 1
    for x, y in zip(first, second):
        assert all(torch.equal(p, q) for p, q in zip(x, y))


def test_dali_rejects_cifar_style_datasets_with_a_clear_error():
    with pytest.raises(D.UserError, match='image-folder'):
        dali_backend.DaliTrainLoader(object(), D.ResumableSampler(4), 2, _args(), torch.device('cpu'))
