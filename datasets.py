"""Datasets and exact, resumable sampling for HorNet training (ConvNeXt/DeiT-style flags).

Decoding and transforms live in ``transforms.py``, the quick-start images in ``quickstart.py``, the device side of the
input pipeline in ``loaders.py``.

Design notes (why things are the way they are):

* Folder datasets are scanned by our own code rather than ``torchvision.datasets.ImageFolder`` so that a wrong layout
  (hidden folder, empty class, class lists that differ between train and val, symlink loops) fails up front with one
  line naming the path, instead of silently training with a shifted label set or hanging.
* Sampling is exact and resumable: ``ResumableSampler`` yields ``(epoch, index)`` and ``SeededDataset`` seeds every
  RNG from a hash of ``(seed, epoch, index)`` before loading. A sample's augmentation therefore depends only on what it
  is, never on which worker or rank loads it, in which order, or how many workers exist; resuming mid-epoch continues
  with exactly the unseen samples and the same augmentations an uninterrupted run would have drawn.
* Unreadable images raise ``transforms.BadImageError`` (a one-line ``UserError``); ``--skip_bad_images`` leaves out
  files that are not images at the scan and replaces images that fail to decode deterministically instead.
"""
import logging
import math
import os
import pickle
import random
import signal
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets as tv_datasets

from errors import UserError
from quickstart import ensure_quickstart
from transforms import (BadImageError, build_transform, build_uint8_transform, image_header_problem, load_image,
                        load_image_fast, seed_sequence, uint8_pipeline)

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
DATA_SETS = ('IMNET', 'image_folder', 'CIFAR', 'CIFAR10', 'QUICKSTART')

# Number of bad images replaced by the next good one (--skip_bad_images) IN THIS PROCESS. Each DataLoader worker is a
# separate process with its own counter, so with num_workers > 0 the main process's value stays 0; read it through
# ``skipped_image_count()`` inside a worker (or with num_workers=0) to get a meaningful number.
SKIPPED_IMAGES = 0

# Domain tags so the epoch-order seed and the per-sample seed never coincide even for equal (seed, epoch).
_ORDER_TAG = 0x0D3E
_SAMPLE_TAG = 0x5A3F


def skipped_image_count() -> int:
    """Bad images skipped so far in the calling process (per process: each DataLoader worker counts its own)."""
    return SKIPPED_IMAGES


# ----------------------------------------------------------------------------------------------------------------------
# Folder datasets
# ----------------------------------------------------------------------------------------------------------------------

def check_image_headers(paths: Sequence[str]) -> List[Tuple[str, str]]:
    """``(path, problem)`` for each file of ``paths`` whose first bytes are not an image's, in ``paths`` order.

    One thread: ~10 us a file with the files in the page cache (3,000 64 px files: 30 ms; ImageNet's 1.28M: ~15 s
    per process). A pool of threads was 4-8x slower on 2 cores (GIL hand-offs), so it is not used."""
    start = time.perf_counter()
    bad = [(p, why) for p, why in ((p, image_header_problem(p)) for p in paths) if why is not None]
    seconds = time.perf_counter() - start
    logger.log(logging.INFO if seconds > 5 else logging.DEBUG, 'checked the first bytes of %d image files in %.1f s',
               len(paths), seconds)
    return bad


def _layout_hint(root: str) -> str:
    return f'expected {root}/<class_name>/<image files ({", ".join(IMG_EXTENSIONS)})>'


def scandir_sorted(path: str) -> List[os.DirEntry]:
    """Directory entries sorted by name (scandir order is filesystem dependent; sample order must not be)."""
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except PermissionError:
        raise UserError(f"cannot read directory '{path}' (permission denied); fix its permissions") from None
    except OSError as exc:
        raise UserError(f"cannot read directory '{path}' ({exc.strerror or exc}); check that path") from None


def dir_id(path: str) -> Tuple[int, int]:
    """``(device, inode)`` of ``path``: the same directory whichever link leads to it (symlink loop checks)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def find_classes(root: str, role: str = 'training') -> List[str]:
    """Sorted class-folder names under ``root`` (ImageFolder order), rejecting layouts that would mislabel data."""
    if not root or not os.path.isdir(root):
        raise UserError(f"{role} data folder '{root}' does not exist or is not a directory; {_layout_hint(root)}")
    entries = scandir_sorted(root)
    dirs = [e for e in entries if e.is_dir()]
    hidden = [e.name for e in dirs if e.name.startswith('.')]
    if hidden:
        raise UserError(f"hidden folder '{os.path.join(root, hidden[0])}' in {role} data would become a class; "
                        f"remove or move it (class folders must not start with '.')")
    if not dirs:
        has_images = any(e.name.lower().endswith(IMG_EXTENSIONS) for e in entries)
        what = 'contains images but no class folders' if has_images else 'contains no class folders'
        raise UserError(f"{role} data folder '{root}' {what}; {_layout_hint(root)}")
    return [e.name for e in dirs]


def list_images(class_dir: str, ancestors: Dict[Tuple[int, int], str]) -> List[str]:
    """Image files under ``class_dir`` (recursive, following symlinks, sorted), failing fast on symlink loops."""
    found: List[str] = []
    for entry in scandir_sorted(class_dir):
        if entry.name.startswith('.'):
            continue  # hidden files/dirs inside a class (e.g. macOS '._x.jpg' resource forks) are not samples
        path = os.path.join(class_dir, entry.name)
        if entry.is_dir():
            ident = dir_id(path)
            if ident in ancestors:
                raise UserError(f"symlink loop: '{path}' leads back to '{ancestors[ident]}'; remove that link")
            found.extend(list_images(path, {**ancestors, ident: path}))
        elif entry.name.lower().endswith(IMG_EXTENSIONS):
            found.append(path)  # broken links are kept so loading names them as unreadable
    return found


class ImageFolderDataset(Dataset):
    """``root/<class>/**/<image>`` with ImageFolder labels (sorted class names), strict checks and bad-image handling.

    ``classes`` may be given to require exactly that class list (validation must match training). With
    ``check_files`` every file's first bytes are checked while scanning (:func:`check_image_headers`): a file that
    is not an image fails here, before training starts, or with ``skip_bad_images`` is left out with a warning.
    """

    def __init__(self, root: str, transform: Optional[Callable] = None, skip_bad_images: bool = False,
                 role: str = 'training', classes: Optional[Sequence[str]] = None,
                 reference_root: Optional[str] = None, loader: Optional[Callable[[str], Any]] = None,
                 check_files: bool = True) -> None:
        self.root = root
        self.transform = transform
        self.loader = loader or load_image  # transforms.load_image_fast for the uint8 training pipeline
        self.skip_bad_images = skip_bad_images
        found = find_classes(root, role)
        if classes is not None:
            _require_same_classes(list(classes), found, reference_root or '<training data>', root)
        self.classes: List[str] = found
        self.class_to_idx: Dict[str, int] = {name: i for i, name in enumerate(found)}
        self.samples: List[Tuple[str, int]] = []
        root_id = dir_id(root)
        for name in found:
            class_dir = os.path.join(root, name)
            class_id = dir_id(class_dir)
            if class_id == root_id:
                raise UserError(f"symlink loop: '{class_dir}' leads back to '{root}'; remove that link")
            images = list_images(class_dir, {root_id: root, class_id: class_dir})
            if not images:
                if not os.listdir(class_dir):
                    raise UserError(f"class folder '{class_dir}' is empty; add its images or remove the folder")
                raise UserError(f"class folder '{class_dir}' has no image files ({', '.join(IMG_EXTENSIONS)}); "
                                f"add images or remove the folder")
            self.samples.extend((path, self.class_to_idx[name]) for path in images)
        if check_files:
            self._leave_out_unreadable(role)
        self.targets: List[int] = [t for _, t in self.samples]

    def _leave_out_unreadable(self, role: str) -> None:
        """Fail on the first file that is not an image, or (``skip_bad_images``) drop every such file with a
        warning: the same files on every rank and every relaunch, so sample indices stay consistent."""
        bad = check_image_headers([p for p, _ in self.samples])
        if not bad:
            return
        if not self.skip_bad_images:
            path, why = bad[0]
            others = [f"'{p}'" for p, _ in bad[1:4]] + ([f'+{len(bad) - 4} more'] if len(bad) > 4 else [])
            more = f", nor {len(bad) - 1} more file(s) of the {role} data ({', '.join(others)})" if others else ''
            raise BadImageError(f"cannot read image file '{path}' ({why}){more}; delete or replace "
                                f"{'them' if more else 'it'}, or pass --skip_bad_images to leave unreadable images "
                                f"out", path=path, reason=why)
        for path, why in bad[:10]:
            logger.warning("leaving out unreadable image file '%s' (%s)", path, why)
        if len(bad) > 10:
            logger.warning('... and %d more unreadable files left out', len(bad) - 10)
        dropped = {p for p, _ in bad}
        kept = [s for s in self.samples if s[0] not in dropped]
        if not kept:
            raise BadImageError(f"no readable image in '{self.root}' (none of its {len(self.samples)} files is an "
                                f"image); check the data")
        emptied = sorted({self.classes[t] for _, t in self.samples} - {self.classes[t] for _, t in kept})
        if emptied:
            logger.warning('%s class folder(s) %s have no readable image left; their classes get no %s samples',
                           role, ', '.join(f"'{os.path.join(self.root, c)}'" for c in emptied), role)
        logger.warning('%d unreadable files left out of %s data (--skip_bad_images): %d samples remain', len(bad),
                       role, len(kept))
        self.samples = kept

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        img, target = self._load(int(index))
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def _load(self, index: int) -> Tuple[Any, int]:
        """Load sample ``index``; with skip_bad_images fall through to index+1, +2, ... (wrapping) deterministically."""
        global SKIPPED_IMAGES
        path, target = self.samples[index]
        if not self.skip_bad_images:
            return self.loader(path), target
        n = len(self.samples)
        for step in range(n):
            path, target = self.samples[(index + step) % n]
            try:
                return self.loader(path), target
            except BadImageError as err:
                SKIPPED_IMAGES += 1
                logger.warning("skipping unreadable image file '%s' (%s): the next readable image is used in its "
                               "place (--skip_bad_images; %d skipped in this process)", path,
                               err.reason or err, SKIPPED_IMAGES)
        raise BadImageError(f"no readable image in '{self.root}' (all {n} files failed to decode); check the data")


def _require_same_classes(train: List[str], val: List[str], train_root: str, val_root: str) -> None:
    """Validation labels are indices into the training class list, so the two lists must be identical."""
    def show(names: List[str]) -> str:
        head = ', '.join(f"'{n}'" for n in names[:3])
        return head + (f' (+{len(names) - 3} more)' if len(names) > 3 else '')
    missing = sorted(set(train) - set(val))
    extra = sorted(set(val) - set(train))
    problems = []
    if missing:
        problems.append(f"lacks class folder(s) {show(missing)} found in training folder '{train_root}'")
    if extra:
        problems.append(f"has class folder(s) {show(extra)} not in training folder '{train_root}'")
    if problems:
        raise UserError(f"validation folder '{val_root}' {' and '.join(problems)}; train and val must have the same "
                        f"class folders")


# ----------------------------------------------------------------------------------------------------------------------
# CIFAR (python-pickle files already on disk; never downloaded)
# ----------------------------------------------------------------------------------------------------------------------

class _NoChecksumCifarMixin:
    """Skip torchvision's md5 checks: presence is checked by ``_require_cifar_files`` with a precise message, and
    skipping md5 also accepts re-packed or subset files in the same pickle format. Corrupt files fail while unpickling.
    """
    root: str
    base_folder: str
    meta: Dict[str, str]

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta['filename'])
        with open(path, 'rb') as f:
            data = pickle.load(f, encoding='latin1')
        self.classes = list(data[self.meta['key']])
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class LocalCIFAR10(_NoChecksumCifarMixin, tv_datasets.CIFAR10):
    """torchvision CIFAR10 reading ``cifar-10-batches-py/`` without download or md5."""


class LocalCIFAR100(_NoChecksumCifarMixin, tv_datasets.CIFAR100):
    """torchvision CIFAR100 reading ``cifar-100-python/`` without download or md5."""


def _require_cifar_files(cls: type, root: str, name: str) -> None:
    """Fail with the exact directory and file names when the extracted CIFAR archive is not where we look."""
    folder = os.path.join(root, cls.base_folder)
    needed = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta['filename']]
    missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise UserError(f"{name} files missing: '{folder}{os.sep}' must contain {', '.join(needed)} "
                        f"(missing: {', '.join(missing)}); extract {cls.filename} into '{root}' (set by --data_path)")


def build_cifar(is_train: bool, root: str, transform: Callable, ten: bool) -> Dataset:
    cls = LocalCIFAR10 if ten else LocalCIFAR100
    name = 'CIFAR-10' if ten else 'CIFAR-100'
    _require_cifar_files(cls, root, name)
    try:
        return cls(root, train=is_train, transform=transform, download=False)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        folder = os.path.join(root, cls.base_folder)
        raise UserError(f"{name} files in '{folder}' are not valid CIFAR python pickles ({type(exc).__name__}: "
                        f"{exc}); re-extract {cls.filename} there") from None


# ----------------------------------------------------------------------------------------------------------------------
# build_dataset
# ----------------------------------------------------------------------------------------------------------------------

def _check_nb_classes(args: Any, found: int, source: str) -> None:
    wanted = getattr(args, 'nb_classes', None)
    if wanted is not None and int(wanted) != found:
        raise UserError(f'--nb_classes is {wanted} but {source} has {found} classes; pass --nb_classes {found}')


def _folder_pair(is_train: bool, train_root: str, val_root: str, args: Any, transform: Callable) -> Dataset:
    """Training folder, or validation folder checked against the training folder's class list."""
    skip = bool(getattr(args, 'skip_bad_images', False))
    if is_train:
        fast = load_image_fast if uint8_pipeline(args) else None
        return ImageFolderDataset(train_root, transform, skip, role='training', loader=fast)
    train_classes = find_classes(train_root, 'training')
    return ImageFolderDataset(val_root, transform, skip, role='validation', classes=train_classes,
                              reference_root=train_root)


def build_dataset(is_train: bool, args: Any) -> Tuple[Dataset, int]:
    """Return ``(dataset, nb_classes)`` for ``args.data_set``; every layout problem is a one-line UserError.

    With ``args.data_backend`` ``pil`` or ``dali`` the transforms are ``transforms.build_uint8_transform``'s (uint8
    samples; training samples are ``(image, erasing boxes)``), to be normalised on the device by
    ``loaders.wrap_loader``. Without that attribute they are the float transforms of ``transforms.build_transform``.
    """
    if uint8_pipeline(args):
        transform = build_uint8_transform(is_train, args)
    else:
        transform = build_transform(is_train, args)
    data_set = getattr(args, 'data_set', None)
    data_path = getattr(args, 'data_path', None)
    split = 'train' if is_train else 'val'

    if data_set in ('CIFAR', 'CIFAR10'):
        if not data_path:
            raise UserError(f'--data_path is required for --data_set {data_set} (the folder holding the extracted '
                            f'cifar-*-python files)')
        dataset = build_cifar(is_train, data_path, transform, ten=data_set == 'CIFAR10')
        nb_classes = len(dataset.classes)
        _check_nb_classes(args, nb_classes, f'--data_set {data_set}')
    elif data_set in ('IMNET', 'QUICKSTART'):
        if data_set == 'QUICKSTART':
            data_path = ensure_quickstart(data_path or os.path.join('.', 'data', 'quickstart'))
        if not data_path or not os.path.isdir(data_path):
            raise UserError(f"--data_path '{data_path}' does not exist; --data_set {data_set} expects "
                            f"<data_path>/train/<class>/<images> and <data_path>/val/<class>/<images>")
        train_root, val_root = os.path.join(data_path, 'train'), os.path.join(data_path, 'val')
        if not os.path.isdir(train_root if is_train else val_root):
            raise UserError(f"'{train_root if is_train else val_root}' does not exist; --data_set {data_set} expects "
                            f"{data_path}/train/<class>/<images> and {data_path}/val/<class>/<images>")
        dataset = _folder_pair(is_train, train_root, val_root, args, transform)
        nb_classes = len(dataset.classes)
        _check_nb_classes(args, nb_classes, f"'{train_root if is_train else val_root}'")
    elif data_set == 'image_folder':
        eval_path = getattr(args, 'eval_data_path', None)
        if not data_path:
            raise UserError('--data_path is required for --data_set image_folder (folder of <class>/<images>)')
        if not is_train and not eval_path:
            raise UserError('--eval_data_path is required for --data_set image_folder evaluation '
                            '(folder of <class>/<images> with the same classes as --data_path)')
        dataset = _folder_pair(is_train, data_path, eval_path, args, transform)
        nb_classes = len(dataset.classes)
        _check_nb_classes(args, nb_classes, f"'{data_path if is_train else eval_path}'")
    else:
        raise UserError(f"unknown --data_set '{data_set}'; choose one of {', '.join(DATA_SETS)}")

    logger.info('%s dataset %s: %d samples, %d classes', split, data_set, len(dataset), nb_classes)
    return dataset, nb_classes


# ----------------------------------------------------------------------------------------------------------------------
# Exact, resumable sampling
# ----------------------------------------------------------------------------------------------------------------------

def seed_sample_rngs(base_seed: int, epoch: int, index: int) -> None:
    """Seed python ``random``, ``numpy.random`` and torch's CPU generator for one sample.

    Only the CPU generator is seeded (not ``torch.manual_seed``), so with num_workers=0 the CUDA RNG used by training
    (dropout, drop-path) is left alone; CPU transforms only use the CPU generator.
    """
    words = seed_sequence(base_seed, _SAMPLE_TAG, epoch, index).generate_state(10, np.uint32)
    py_seed = int(words[0]) | int(words[1]) << 32 | int(words[2]) << 64 | int(words[3]) << 96
    random.seed(py_seed)
    np.random.seed(words[4:8])
    torch.random.default_generator.manual_seed(int(words[8]) | int(words[9]) << 32)


class SeededDataset(Dataset):
    """Wrap a dataset so sample ``(epoch, index)`` always gets the same augmentation, whoever loads it.

    RNG state is deliberately not restored afterwards: each DataLoader worker owns its RNGs, and every sample reseeds.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Any:
        if isinstance(key, (tuple, list)):
            epoch, index = (int(k) for k in key)
        else:
            epoch, index = 0, int(key)
        seed_sample_rngs(self.seed, epoch, index)
        return self.dataset[index]


class ResumableSampler(Sampler):
    """Distributed, seeded, resumable training sampler yielding ``(epoch, index)``.

    The global order of an epoch depends only on ``(seed, epoch)``; rank ``r`` takes entries ``r::num_replicas`` and
    then skips ``start`` of them, so a mid-epoch resume (``set_epoch(epoch, start=samples_already_seen_by_this_rank)``)
    continues with exactly the unseen samples. ``len()`` is what remains of this rank's epoch after the skip;
    ``per_replica`` is the full per-rank epoch length.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f'need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}')
        if num_samples < 1:
            raise UserError('the training dataset is empty; check --data_path')
        if drop_last and num_samples < num_replicas:
            raise UserError(f'the training dataset has {num_samples} samples, fewer than the {num_replicas} '
                            f'processes; use more data or fewer processes')
        self.num_samples = int(num_samples)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        if self.drop_last:
            self.per_replica = self.num_samples // self.num_replicas
        else:
            self.per_replica = math.ceil(self.num_samples / self.num_replicas)
        self.total_size = self.per_replica * self.num_replicas
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and how many of this rank's samples in it were already consumed (0 = fresh epoch)."""
        if epoch < 0:
            raise ValueError(f'epoch must be >= 0, got {epoch}')
        if not 0 <= start <= self.per_replica:
            raise ValueError(f'start must be in [0, {self.per_replica}], got {start}')
        self.epoch = int(epoch)
        self.start = int(start)

    def global_order(self, epoch: int) -> torch.Tensor:
        """The epoch's order for all ranks together, truncated or padded to a multiple of num_replicas."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(int(seed_sequence(self.seed, _ORDER_TAG, epoch).generate_state(1, np.uint64)[0]))
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        if self.total_size <= self.num_samples:
            return order[:self.total_size]
        pad = self.total_size - self.num_samples
        return torch.cat([order, order.repeat(math.ceil(pad / self.num_samples))[:pad]])

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch = self.epoch
        mine = self.global_order(epoch)[self.rank::self.num_replicas][self.start:]
        for index in mine.tolist():
            yield epoch, index

    def __len__(self) -> int:
        return self.per_replica - self.start


class EvalShardSampler(Sampler):
    """Rank ``r`` evaluates indices ``r::num_replicas``: every sample exactly once, no padding, for exact metrics."""

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f'need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}')
        self.num_samples = int(num_samples)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.num_replicas))


def build_loader(dataset: Dataset, sampler: Sampler, batch_size: int, num_workers: int, pin_memory: bool,
                 drop_last: bool, persistent_workers: Optional[bool] = None) -> DataLoader:
    """DataLoader wired for exact sampling.

    A ``ResumableSampler`` yields ``(epoch, index)``, so a dataset that is not yet a ``SeededDataset`` is wrapped in
    one seeded with ``sampler.seed``. pin_memory is honoured only with CUDA (avoids the CPU warning); workers persist
    by default when there are any (the sampler runs in the main process, so ``set_epoch`` still applies).
    """
    if isinstance(sampler, ResumableSampler) and not isinstance(dataset, SeededDataset):
        dataset = SeededDataset(dataset, seed=sampler.seed)
    num_workers = max(0, int(num_workers))
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=bool(pin_memory) and torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=bool(persistent_workers) and num_workers > 0,
        # its own generator: creating an iterator must not draw from the global torch RNG, or a resumed run's
        # drop-path/mixup randomness would shift relative to an uninterrupted one
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=_ignore_ctrl_c,
    )


def _ignore_ctrl_c(worker_id: int) -> None:  # noqa: ARG001
    """A terminal's Ctrl-C reaches the loader workers too; they leave it to the training process, which saves the
    step it is in and then shuts them down (a worker that died of it would fail the batches that step still needs).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
