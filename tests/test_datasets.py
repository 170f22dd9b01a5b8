"""Behavioural tests for datasets.py: real image files decoded from disk, real DataLoader workers, no mocks."""
import argparse
import logging
import os
import pickle
import subprocess
import sys
import time
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as tv_transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import datasets as D  # noqa: E402
import quickstart  # noqa: E402
import transforms  # noqa: E402
from errors import UserError  # noqa: E402


def make_args(**overrides: Any) -> argparse.Namespace:
    """The ConvNeXt flag names with their original defaults, plus skip_bad_images."""
    args = dict(data_set='image_folder', data_path=None, eval_data_path=None, nb_classes=None, input_size=40,
                imagenet_default_mean_and_std=False, color_jitter=0.4, aa='rand-m9-mstd0.5-inc1',
                train_interpolation='bicubic', reprob=0.25, remode='pixel', recount=1, crop_pct=None,
                skip_bad_images=False)
    args.update(overrides)
    return argparse.Namespace(**args)


def write_image(path: str, seed: int, size: Tuple[int, int] = (48, 40)) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_folder(root: str, classes: Sequence[str], per_class: int = 3, seed: int = 0) -> List[str]:
    """``root/<class>/<n>.png|jpg`` (alternating formats so both decoders run); returns the file paths."""
    paths = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            path = os.path.join(root, name, f'{i:03d}.{"png" if i % 2 == 0 else "jpg"}')
            write_image(path, seed * 1000 + c * 100 + i)
            paths.append(path)
    return paths


def make_imnet(root: str, classes: Sequence[str] = ('ant', 'bee', 'cat'), per_class: int = 3) -> str:
    make_folder(os.path.join(root, 'train'), classes, per_class, seed=1)
    make_folder(os.path.join(root, 'val'), classes, 2, seed=2)
    return root


def collect(loader: torch.utils.data.DataLoader) -> Tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


# ----------------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------------

def test_sampler_resume_yields_exactly_the_unseen_samples() -> None:
    full = D.ResumableSampler(103, num_replicas=3, rank=1, seed=5)
    full.set_epoch(4)
    seen = list(full)
    assert len(seen) == len(full) == 34 and {e for e, _ in seen} == {4}

    resumed = D.ResumableSampler(103, num_replicas=3, rank=1, seed=5)  # a fresh process after a restart
    resumed.set_epoch(4, start=10)
    assert len(resumed) == 24
    assert list(resumed) == seen[10:]
    resumed.set_epoch(4, start=34)
    assert list(resumed) == [] and len(resumed) == 0

    other_epoch = D.ResumableSampler(103, num_replicas=3, rank=1, seed=5)
    other_epoch.set_epoch(5)
    assert [i for _, i in other_epoch] != [i for _, i in seen]
    with pytest.raises(ValueError):
        resumed.set_epoch(4, start=35)


@pytest.mark.parametrize('shuffle', [True, False])
def test_sampler_shards_are_disjoint_and_cover_drop_last(shuffle: bool) -> None:
    n, world = 103, 4
    shards = []
    for rank in range(world):
        sampler = D.ResumableSampler(n, num_replicas=world, rank=rank, shuffle=shuffle, seed=1, drop_last=True)
        sampler.set_epoch(2)
        shards.append([i for _, i in sampler])
    assert all(len(s) == n // world for s in shards)
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == len(flat) == 100 and set(flat) <= set(range(n))
    if not shuffle:
        assert shards[1] == list(range(1, 100, world))

    padded = []
    for rank in range(world):
        sampler = D.ResumableSampler(n, num_replicas=world, rank=rank, shuffle=shuffle, seed=1, drop_last=False)
        sampler.set_epoch(2)
        padded.append([i for _, i in sampler])
    assert all(len(s) == 26 for s in padded)
    flat = [i for s in padded for i in s]
    assert set(flat) == set(range(n)) and len(flat) == 104  # one sample repeated to make the shards equal


def test_eval_shards_partition_without_padding() -> None:
    shards = [list(D.EvalShardSampler(10, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 3, 3]
    assert [len(D.EvalShardSampler(10, 3, r)) for r in range(3)] == [4, 3, 3]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert list(D.EvalShardSampler(2, num_replicas=4, rank=3)) == []


def test_augmentation_is_identical_across_worker_counts(tmp_path: Any) -> None:
    root = str(tmp_path / 'data')
    make_folder(root, ['a', 'b'], per_class=5)
    args = make_args(data_path=root, reprob=1.0, remode='pixel')  # RandomResizedCrop + RandAugment + pixel erasing
    dataset, nb_classes = D.build_dataset(True, args)
    assert nb_classes == 2 and len(dataset) == 10

    def run(num_workers: int, batch_size: int, epoch: int, start: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        sampler = D.ResumableSampler(len(dataset), seed=7)
        sampler.set_epoch(epoch, start)
        return collect(D.build_loader(dataset, sampler, batch_size, num_workers, pin_memory=True, drop_last=False))

    x0, y0 = run(0, 4, epoch=1)
    x2, y2 = run(2, 3, epoch=1)
    assert x0.shape == (10, 3, 40, 40)
    assert torch.equal(x0, x2) and torch.equal(y0, y2)
    x_resumed, _ = run(2, 2, epoch=1, start=6)
    assert torch.equal(x_resumed, x0[6:])
    x_next, _ = run(0, 4, epoch=2)
    assert not torch.equal(x_next, x0)  # augmentation and order do change between epochs

    # The same (epoch, index) gives the same tensor whichever position or process it is loaded in.
    seeded = D.SeededDataset(dataset, seed=7)
    sampler = D.ResumableSampler(len(dataset), seed=7)
    sampler.set_epoch(1)
    key = list(sampler)[3]
    assert torch.equal(seeded[key][0], x0[3])
    assert torch.equal(seeded[(0, key[1])][0], seeded[key[1]][0])  # a plain int means epoch 0


def test_build_loader_options_on_cpu() -> None:
    data = torch.utils.data.TensorDataset(torch.arange(10.0))
    loader = D.build_loader(data, D.EvalShardSampler(10), 4, 0, pin_memory=True, drop_last=False)
    assert loader.pin_memory == torch.cuda.is_available() and not loader.persistent_workers
    assert [b[0].tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    loader = D.build_loader(data, D.EvalShardSampler(10), 4, 2, pin_memory=False, drop_last=True)
    assert loader.persistent_workers and len(loader) == 2


# ----------------------------------------------------------------------------------------------------------------------
# Folder layouts
# ----------------------------------------------------------------------------------------------------------------------

def test_imnet_layout_loads_with_imagefolder_labels(tmp_path: Any) -> None:
    root = make_imnet(str(tmp_path / 'imnet'))
    train, n_train = D.build_dataset(True, make_args(data_set='IMNET', data_path=root, nb_classes=3))
    val, n_val = D.build_dataset(False, make_args(data_set='IMNET', data_path=root, nb_classes=3))
    assert (n_train, n_val, len(train), len(val)) == (3, 3, 9, 6)
    assert train.classes == val.classes == ['ant', 'bee', 'cat']
    x, y = val[5]
    assert x.shape == (3, 40, 40) and y == 2


@pytest.mark.parametrize('problem', ['missing', 'extra', 'both', 'hidden'])
def test_val_classes_must_match_train(tmp_path: Any, problem: str) -> None:
    train, val = str(tmp_path / 'train'), str(tmp_path / 'val')
    make_folder(train, ['ant', 'bee', 'cat'], 1)
    classes = {'missing': ['ant', 'cat'], 'extra': ['ant', 'bee', 'cat', 'dog'], 'both': ['ant', 'cat', 'dog'],
               'hidden': ['ant', 'bee', 'cat', '.ipynb_checkpoints']}[problem]
    make_folder(val, classes, 1)
    args = make_args(data_path=train, eval_data_path=val, nb_classes=3)
    D.build_dataset(True, args)
    with pytest.raises(UserError) as err:
        D.build_dataset(False, args)
    message = str(err.value)
    assert '\n' not in message
    expected = {'missing': "'bee'", 'extra': "'dog'", 'both': "'bee' found in training folder",
                'hidden': os.path.join(val, '.ipynb_checkpoints')}[problem]
    assert expected in message and val in message
    if problem == 'both':  # the missing and the extra classes, in one line
        assert "has class folder(s) 'dog' not in training folder" in message, message


def test_layout_errors_name_the_path(tmp_path: Any) -> None:
    missing = str(tmp_path / 'nope')
    with pytest.raises(UserError, match='nope.*does not exist.*<class_name>'):
        D.build_dataset(True, make_args(data_path=missing))
    with pytest.raises(UserError, match=r"nope' does not exist.*train/<class>"):
        D.build_dataset(True, make_args(data_set='IMNET', data_path=missing))
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(UserError, match='empty.*contains no class folders'):
        D.build_dataset(True, make_args(data_path=str(empty)))

    root = str(tmp_path / 'data')
    make_folder(root, ['a', 'b'], 1)
    (tmp_path / 'data' / 'c').mkdir()
    with pytest.raises(UserError, match=r"data/c' is empty"):
        D.build_dataset(True, make_args(data_path=root))
    (tmp_path / 'data' / 'c' / 'notes.txt').write_text('not an image')
    with pytest.raises(UserError, match=r"data/c' has no image files"):
        D.build_dataset(True, make_args(data_path=root))
    os.remove(tmp_path / 'data' / 'c' / 'notes.txt')
    os.rmdir(tmp_path / 'data' / 'c')

    with pytest.raises(UserError, match='--nb_classes is 1000 but .* has 2 classes; pass --nb_classes 2'):
        D.build_dataset(True, make_args(data_path=root, nb_classes=1000))
    with pytest.raises(UserError, match='--eval_data_path is required'):
        D.build_dataset(False, make_args(data_path=root))
    with pytest.raises(UserError, match="unknown --data_set 'MNIST'"):
        D.build_dataset(True, make_args(data_set='MNIST', data_path=root))


def test_symlink_loop_fails_fast_naming_the_link(tmp_path: Any) -> None:
    root = str(tmp_path / 'data')
    make_folder(root, ['a', 'b'], 1)
    link = os.path.join(root, 'a', 'again')
    os.symlink(os.path.join(root, 'a'), link)
    start = time.monotonic()
    with pytest.raises(UserError, match='symlink loop') as err:
        D.build_dataset(True, make_args(data_path=root))
    assert link in str(err.value) and time.monotonic() - start < 5
    os.remove(link)
    os.symlink(root, os.path.join(root, 'c'))  # a "class" that is the data folder itself
    with pytest.raises(UserError, match='symlink loop'):
        D.build_dataset(True, make_args(data_path=root))


# ----------------------------------------------------------------------------------------------------------------------
# Bad images
# ----------------------------------------------------------------------------------------------------------------------

def _with_bad_files(tmp_path: Any) -> Tuple[str, str, str]:
    root = str(tmp_path / 'data')
    make_folder(root, ['a', 'b'], 3)
    not_image = os.path.join(root, 'a', '001.jpg')  # index 1: text pretending to be a JPEG
    with open(not_image, 'w') as f:
        f.write('this is not a jpeg\n')
    truncated = os.path.join(root, 'b', '000.png')  # index 3: a PNG cut in half
    with open(truncated, 'rb') as f:
        head = f.read()
    with open(truncated, 'wb') as f:
        f.write(head[:len(head) // 2])
    return root, not_image, truncated


def test_file_that_is_not_an_image_fails_the_scan_with_one_line_naming_it(tmp_path: Any) -> None:
    root, not_image, truncated = _with_bad_files(tmp_path)
    with pytest.raises(transforms.BadImageError) as err:
        D.build_dataset(True, make_args(data_path=root))  # before any image is decoded
    message = str(err.value)
    assert '\n' not in message and f"cannot read image file '{not_image}' (not an image: it starts with" in message
    assert 'pass --skip_bad_images' in message and truncated not in message  # a cut-off file passes the scan
    empty = os.path.join(root, 'b', '002.png')
    open(empty, 'wb').close()
    with pytest.raises(transforms.BadImageError) as err:
        D.build_dataset(True, make_args(data_path=root))
    assert f"nor 1 more file(s) of the training data ('{empty}')" in str(err.value)


def test_scan_accepts_images_whatever_their_extension_says(tmp_path: Any) -> None:
    """ImageNet has PNG data in .JPEG files; a format outside the signature table goes to PIL's header reader."""
    root = str(tmp_path / 'data')
    make_folder(root, ['a'], 2)
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(root, 'a', 'png_inside.jpg'), format='PNG')
    Image.fromarray(pixels).save(os.path.join(root, 'a', 'pcx_inside.png'), format='PCX')
    assert transforms.image_header_problem(os.path.join(root, 'a', 'pcx_inside.png')) is None
    dataset, _ = D.build_dataset(True, make_args(data_path=root))
    assert len(dataset) == 4


def test_header_check_is_cheap_and_reads_only_the_first_bytes(tmp_path: Any) -> None:
    root = str(tmp_path / 'data')
    paths = make_folder(root, ['a'], 2)
    big = os.path.join(root, 'a', 'big.png')
    with open(big, 'wb') as f:  # a PNG signature, then a (sparse) 64 MB: reading it whole would show in the time
        f.write(b'\x89PNG\r\n\x1a\n')
        f.truncate(64 << 20)
    many = (paths + [big]) * 1000
    start = time.perf_counter()
    assert D.check_image_headers(many) == []
    assert time.perf_counter() - start < 3.0  # ~10 us a file; 3,000 files


# one worker process is enough: after a worker raised, torch's loader shutdown waits out a 5 s join timeout per worker
@pytest.mark.parametrize('num_workers', [0, pytest.param(1, marks=pytest.mark.slow)])
def test_corrupt_image_error_names_file(tmp_path: Any, num_workers: int) -> None:
    """A file cut short after its header passes the scan and fails when decoded, naming the file."""
    root, not_image, truncated = _with_bad_files(tmp_path)
    os.remove(not_image)
    dataset, _ = D.build_dataset(True, make_args(data_path=root))
    loader = D.build_loader(dataset, D.EvalShardSampler(len(dataset), 1, 0), 1, num_workers, False, False)
    with pytest.raises(UserError) as err:
        for i, _ in enumerate(loader):
            assert i < 2  # a/000, a/002, then b/000 (truncated)
    message = str(err.value)
    assert isinstance(err.value, transforms.BadImageError)
    assert '\n' not in message and f"'{truncated}'" in message and '--skip_bad_images' in message
    assert 'Traceback' not in message


def test_corrupt_image_is_skipped_deterministically_when_asked(tmp_path: Any, caplog: Any) -> None:
    root, not_image, truncated = _with_bad_files(tmp_path)
    args = make_args(data_path=root, eval_data_path=root, skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger='datasets'):
        dataset, _ = D.build_dataset(False, args)  # eval transform: deterministic, so samples can be compared
    assert f"leaving out unreadable image file '{not_image}'" in caplog.text  # at the scan, before training
    assert len(dataset) == 5 and not_image not in [p for p, _ in dataset.samples]
    caplog.clear()
    before = D.skipped_image_count()
    with caplog.at_level(logging.WARNING, logger='datasets'):
        x2, y2 = dataset[2]  # b/000.png, truncated: replaced when decoded
    assert D.skipped_image_count() - before == 1
    assert truncated in caplog.text and 'next readable image is used in its place' in caplog.text
    assert 'or pass --skip_bad_images' not in caplog.text  # the flag is already on
    x3, y3 = dataset[3]
    assert torch.equal(x2, x3) and y2 == y3 == 1  # index 2 is replaced by index 3

    loader = D.build_loader(dataset, D.EvalShardSampler(len(dataset)), 2, 2, False, False)
    xs, ys = collect(loader)
    assert xs.shape[0] == 5 and torch.equal(xs[2], x3) and ys.tolist() == [0, 0, 1, 1, 1]


# ----------------------------------------------------------------------------------------------------------------------
# QUICKSTART
# ----------------------------------------------------------------------------------------------------------------------

def _tree(root: str) -> Dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_quickstart_dataset_is_deterministic_and_complete(tmp_path: Any) -> None:
    small = dict(num_classes=10, train_per_class=2, val_per_class=1, image_size=32, seed=3)
    first = quickstart.make_quickstart_dataset(str(tmp_path / 'one' / 'qs'), **small)
    second = quickstart.make_quickstart_dataset(str(tmp_path / 'two' / 'qs'), **small)
    tree_one, tree_two = _tree(first), _tree(second)
    assert tree_one == tree_two
    pngs = [p for p in tree_one if p.endswith('.png')]
    assert len(pngs) == 30 and quickstart.QUICKSTART_MARKER in tree_one
    assert os.listdir(tmp_path / 'one') == ['qs']  # no temporary directory left behind
    with Image.open(os.path.join(first, 'train', 'ring', 'ring_00001.png')) as img:
        assert img.size == (32, 32) and img.mode == 'RGB'

    stamp = os.stat(os.path.join(first, quickstart.QUICKSTART_MARKER)).st_mtime_ns
    assert quickstart.make_quickstart_dataset(first, **small) == first  # reused, not rewritten
    assert os.stat(os.path.join(first, quickstart.QUICKSTART_MARKER)).st_mtime_ns == stamp
    with pytest.raises(UserError, match='different parameters'):
        quickstart.make_quickstart_dataset(first, **{**small, 'seed': 4})

    # build_dataset reuses the existing dataset and reads it like an image folder.
    train, n = D.build_dataset(True, make_args(data_set='QUICKSTART', data_path=first, nb_classes=10, input_size=32))
    val, _ = D.build_dataset(False, make_args(data_set='QUICKSTART', data_path=first, nb_classes=10, input_size=32))
    assert (n, len(train), len(val)) == (10, 20, 10) and train.classes == sorted(quickstart.QUICKSTART_CLASSES)
    assert train[0][0].shape == val[0][0].shape == (3, 32, 32)
    with pytest.raises(UserError, match='pass --nb_classes 10'):
        D.build_dataset(True, make_args(data_set='QUICKSTART', data_path=first, nb_classes=1000))

    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'stuff.txt').write_text('x')
    with pytest.raises(UserError, match='not a complete QUICKSTART dataset'):
        quickstart.make_quickstart_dataset(str(foreign), **small)


def test_quickstart_interrupted_run_leaves_no_half_dataset(tmp_path: Any) -> None:
    root = str(tmp_path / 'qs')
    code = f'import quickstart; quickstart.make_quickstart_dataset({root!r}, train_per_class=200, image_size=32)'
    proc = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until it is writing images, then kill it hard
            tmp_dirs = [d for d in os.listdir(tmp_path) if d.startswith('.qs.tmp-')]
            if tmp_dirs and os.path.isdir(os.path.join(tmp_path, tmp_dirs[0], 'train', 'circle')):
                break
            time.sleep(0.02)
        proc.kill()
    finally:
        proc.wait()
    assert not os.path.exists(root)
    quickstart.make_quickstart_dataset(root, num_classes=2, train_per_class=1, val_per_class=1, image_size=16)
    assert os.path.isfile(os.path.join(root, quickstart.QUICKSTART_MARKER))


# ----------------------------------------------------------------------------------------------------------------------
# CIFAR (real python-pickle format, tiny)
# ----------------------------------------------------------------------------------------------------------------------

def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _dump(path: str, obj: Dict[str, Any]) -> None:
    with open(path, 'wb') as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar100(root: str, n_train: int = 6, n_test: int = 4) -> np.ndarray:
    folder = os.path.join(root, 'cifar-100-python')
    os.makedirs(folder)
    train = _cifar_images(n_train, 0)
    for name, data in (('train', train), ('test', _cifar_images(n_test, 1))):
        _dump(os.path.join(folder, name), {'filenames': [f'{i}.png' for i in range(len(data))], 'batch_label': name,
                                           'fine_labels': [7 * i % 100 for i in range(len(data))],
                                           'coarse_labels': [i % 20 for i in range(len(data))], 'data': data})
    _dump(os.path.join(folder, 'meta'), {'fine_label_names': [f'fine{i}' for i in range(100)],
                                         'coarse_label_names': [f'coarse{i}' for i in range(20)]})
    return train


def make_cifar10(root: str) -> None:
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder)
    for k, name in enumerate([f'data_batch_{b}' for b in range(1, 6)] + ['test_batch']):
        _dump(os.path.join(folder, name), {'batch_label': name, 'labels': [k, (k + 1) % 10],
                                           'data': _cifar_images(2, 10 + k), 'filenames': ['x.png', 'y.png']})
    _dump(os.path.join(folder, 'batches.meta'), {'label_names': [f'c{i}' for i in range(10)], 'num_cases_per_batch': 2,
                                                 'num_vis': 3072})


def test_cifar_missing_files_says_where(tmp_path: Any) -> None:
    root = str(tmp_path)
    with pytest.raises(UserError) as err:
        D.build_dataset(True, make_args(data_set='CIFAR', data_path=root, input_size=32))
    message = str(err.value)
    assert os.path.join(root, 'cifar-100-python') + os.sep in message and '\n' not in message
    assert 'train, test, meta' in message and 'cifar-100-python.tar.gz' in message
    with pytest.raises(UserError, match=r'cifar-10-batches-py/\' must contain data_batch_1.*test_batch, batches.meta'):
        D.build_dataset(False, make_args(data_set='CIFAR10', data_path=root, input_size=32))

    make_cifar100(root)
    os.remove(os.path.join(root, 'cifar-100-python', 'meta'))
    with pytest.raises(UserError, match=r'\(missing: meta\)'):
        D.build_dataset(True, make_args(data_set='CIFAR', data_path=root, input_size=32))


def test_cifar_loads_real_pickle_format(tmp_path: Any) -> None:
    root = str(tmp_path)
    train_pixels = make_cifar100(root)
    make_cifar10(root)
    args = make_args(data_set='CIFAR', data_path=root, input_size=32, nb_classes=100)
    train, n = D.build_dataset(True, args)
    val, _ = D.build_dataset(False, args)
    assert (n, len(train), len(val)) == (100, 6, 4)
    x, y = val[0]
    assert x.shape == (3, 32, 32) and y == 0
    x, y = train[3]
    assert x.shape == (3, 32, 32) and y == 21  # RandomCrop(32, padding=4) + RandAugment + erasing on 32 px
    # Eval output is exactly the stored pixels (CHW planes) after inception normalisation.
    eval_train = D.build_cifar(True, root, transforms.build_transform(False, args), ten=False)
    expected = torch.from_numpy(train_pixels[3].reshape(3, 32, 32).astype(np.float32)) / 255.0
    assert torch.allclose(eval_train[3][0], (expected - 0.5) / 0.5, atol=1e-6)

    ten, n10 = D.build_dataset(True, make_args(data_set='CIFAR10', data_path=root, input_size=32, nb_classes=10))
    assert (n10, len(ten), ten.targets[:4]) == (10, 10, [0, 1, 1, 2])
    with pytest.raises(UserError, match='--nb_classes is 1000 but --data_set CIFAR10 has 10 classes'):
        D.build_dataset(True, make_args(data_set='CIFAR10', data_path=root, input_size=32, nb_classes=1000))


# ----------------------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------------------

def _expected_eval(img: Image.Image, resized: Tuple[int, int], crop: int, mean: float = 0.5) -> torch.Tensor:
    """The original ConvNeXt eval pipeline spelled out with PIL: bicubic resize, center crop, scale, normalise."""
    out = img.resize(resized, Image.BICUBIC)
    left, top = int(round((resized[0] - crop) / 2.0)), int(round((resized[1] - crop) / 2.0))
    out = out.crop((left, top, left + crop, top + crop))
    tensor = torch.from_numpy(np.asarray(out, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return (tensor - mean) / 0.5


def test_eval_transform_matches_original(tmp_path: Any) -> None:
    path = str(tmp_path / 'img.jpg')
    write_image(path, 0, size=(400, 300))
    img = transforms.load_image(path)

    t224 = transforms.build_transform(False, make_args(input_size=224))
    resize, crop = t224.transforms[0], t224.transforms[1]
    assert resize.size == 256 and resize.interpolation == tv_transforms.InterpolationMode.BICUBIC
    assert tuple(crop.size) == (224, 224)
    assert torch.allclose(t224(img), _expected_eval(img, (341, 256), 224), atol=1e-6)

    t235 = transforms.build_transform(False, make_args(input_size=224, crop_pct=0.95))
    assert t235.transforms[0].size == int(224 / 0.95) == 235

    t384 = transforms.build_transform(False, make_args(input_size=384))
    assert t384.transforms[0].size == (384, 384) and not any(
        isinstance(t, tv_transforms.CenterCrop) for t in t384.transforms)
    assert torch.allclose(t384(img), _expected_eval(img, (384, 384), 384), atol=1e-6)

    default_norm = transforms.build_transform(False, make_args(input_size=224, imagenet_default_mean_and_std=True))
    assert tuple(default_norm.transforms[-1].mean) == (0.485, 0.456, 0.406)


def test_train_transform_follows_convnext(tmp_path: Any) -> None:
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import RandomResizedCropAndInterpolation
    big = transforms.build_transform(True, make_args(input_size=224, reprob=0.25))
    assert isinstance(big.transforms[0], RandomResizedCropAndInterpolation)
    assert isinstance(big.transforms[-1], RandomErasing)
    small = transforms.build_transform(True, make_args(input_size=32, aa='none', reprob=0.0))
    assert isinstance(small.transforms[0], tv_transforms.RandomCrop) and small.transforms[0].padding == 4
    assert any(isinstance(t, tv_transforms.ColorJitter) for t in small.transforms)  # no RandAugment: jitter stays on
    path = str(tmp_path / 'x.png')
    write_image(path, 1, size=(32, 32))
    assert small(transforms.load_image(path)).shape == (3, 32, 32)


def test_randaugment_posterize_extremes_do_not_crash() -> None:
    """timm asks for 0-bit posterize at magnitude 10 (reached by m9 + mstd noise); current Pillow rejects 0 bits."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    transform = transforms.build_transform(True, make_args(aa='rand-m9-mstd0.5-inc1'))
    ops = [op for step in transform.transforms for op in getattr(step, 'ops', [])]
    posterize = [op for op in ops if op.name == 'PosterizeIncreasing']
    assert len(posterize) == 1
    op = posterize[0]
    op.prob, op.magnitude_std, op.magnitude = 1.0, 0.0, 10.0
    assert np.asarray(op(img)).max() == 0  # 0 bits kept: black, as timm's recipe got from older Pillow
    op.magnitude = 5.0
    assert np.array_equal(np.asarray(op(img)), np.asarray(img) & 0b11000000)
