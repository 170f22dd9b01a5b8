"""Datasets, transforms and exact, resumable sampling for HorNet training (ConvNeXt/DeiT-style flags).

Design notes (why things are the way they are):

* Folder datasets are scanned by our own code rather than ``torchvision.datasets.ImageFolder`` so that a wrong layout
  (hidden folder, empty class, class lists that differ between train and val, symlink loops) fails up front with one
  line naming the path, instead of silently training with a shifted label set or hanging.
* Sampling is exact and resumable: ``ResumableSampler`` yields ``(epoch, index)`` and ``SeededDataset`` seeds every
  RNG from a hash of ``(seed, epoch, index)`` before loading. A sample's augmentation therefore depends only on what it
  is, never on which worker or rank loads it, in which order, or how many workers exist; resuming mid-epoch continues
  with exactly the unseen samples and the same augmentations an uninterrupted run would have drawn.
* Unreadable images raise ``BadImageError`` (a ``UserError``) whose message survives the trip out of a DataLoader
  worker as one line naming the file; ``--skip_bad_images`` replaces them deterministically instead.
"""
import json
import logging
import math
import os
import pickle
import random
import shutil
import signal
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets as tv_datasets
from torchvision import transforms

from errors import UserError

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
_U64 = 1 << 64


def skipped_image_count() -> int:
    """Bad images skipped so far in the calling process (per process: each DataLoader worker counts its own)."""
    return SKIPPED_IMAGES


# ----------------------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------------------

def _mean_std(args: Any) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """ImageNet default mean/std when asked for, else the inception 0.5/0.5 the ConvNeXt recipe uses by default."""
    from timm.data.constants import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN,
                                     IMAGENET_INCEPTION_STD)
    if getattr(args, 'imagenet_default_mean_and_std', False):
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD


def _auto_augment(aa: Optional[str]) -> Optional[str]:
    """Map the CLI spellings of 'no auto-augment' ('none', '', None) to None, which timm understands."""
    if aa is None or str(aa).strip().lower() in ('', 'none'):
        return None
    return str(aa)


def _posterize_compat(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, keeping its meaning for 0 bits (a black image, as Pillow < 11 gave).

    timm maps RandAugment magnitude 10 ('PosterizeIncreasing', reached whenever mstd noise pushes m9 to the clip) and
    magnitude 0 ('Posterize') to 0 bits, which current Pillow rejects with ValueError, crashing training mid-epoch.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, int(bits_to_keep))


def _use_compatible_posterize(transform: Callable) -> None:
    """Point every posterize op of timm's RandAugment/AutoAugment/AugMix inside ``transform`` at _posterize_compat."""
    from timm.data.auto_augment import AugmentOp
    for step in getattr(transform, 'transforms', []):
        ops = list(getattr(step, 'ops', None) or [])
        for sub_policy in getattr(step, 'policy', None) or []:
            ops.extend(sub_policy)
        for op in ops:
            if isinstance(op, AugmentOp) and op.name.startswith('Posterize'):
                op.aug_fn = _posterize_compat


def build_transform(is_train: bool, args: Any) -> Callable:
    """The ConvNeXt train/eval transforms, so results are comparable with the original recipe.

    Train: timm ``create_transform`` (RandomResizedCrop, flip, RandAugment, color jitter, normalize, random erasing);
    for ``input_size <= 32`` (CIFAR) the crop is RandomCrop(padding=4), as in the original.
    Eval: ``input_size >= 384`` warps to a square (no crop); otherwise bicubic resize of the shorter side to
    ``int(input_size / crop_pct)`` then CenterCrop. For ``input_size <= 32`` the original does no resizing; we add
    only a CenterCrop(input_size), a no-op on native-size images that keeps eval tensors the size training sees.
    """
    from timm.data import create_transform
    input_size = int(args.input_size)
    mean, std = _mean_std(args)
    resize_im = input_size > 32
    if is_train:
        transform = create_transform(
            input_size=input_size,
            is_training=True,
            color_jitter=getattr(args, 'color_jitter', 0.4),
            auto_augment=_auto_augment(getattr(args, 'aa', None)),
            interpolation=getattr(args, 'train_interpolation', 'bicubic'),
            re_prob=getattr(args, 'reprob', 0.0),
            re_mode=getattr(args, 'remode', 'pixel'),
            re_count=getattr(args, 'recount', 1),
            scale=tuple(getattr(args, 'train_crop_scale', None) or (0.08, 1.0)),
            mean=mean,
            std=std,
        )
        if not resize_im:
            transform.transforms[0] = transforms.RandomCrop(input_size, padding=4)
        _use_compatible_posterize(transform)
        return transform

    steps: List[Callable] = []
    bicubic = transforms.InterpolationMode.BICUBIC
    if not resize_im:
        steps.append(transforms.CenterCrop(input_size))
    elif input_size >= 384:
        steps.append(transforms.Resize((input_size, input_size), interpolation=bicubic))
        logger.info('Warping %d size input images (no center crop)', input_size)
    else:
        crop_pct = getattr(args, 'crop_pct', None)
        crop_pct = 224 / 256 if crop_pct is None else float(crop_pct)
        if not 0.0 < crop_pct <= 1.0:
            raise UserError(f'--crop_pct must be in (0, 1], got {crop_pct}; e.g. pass --crop_pct 0.875')
        steps.append(transforms.Resize(int(input_size / crop_pct), interpolation=bicubic))
        steps.append(transforms.CenterCrop(input_size))
    steps.append(transforms.ToTensor())
    steps.append(transforms.Normalize(mean, std))
    return transforms.Compose(steps)


# ----------------------------------------------------------------------------------------------------------------------
# Image loading
# ----------------------------------------------------------------------------------------------------------------------

class BadImageError(UserError):
    """An image file that cannot be decoded; ``str()`` is one line naming the file.

    DataLoader workers re-raise exceptions in the main process as ``type(exc)(multi_line_traceback_text)``; the
    constructor recognises that text and keeps only our original one-line message, so ``main.py`` still prints one
    line naming the file. ``reason`` is the decoder's complaint alone (for the --skip_bad_images warning).
    """

    def __init__(self, message: str, path: Optional[str] = None, reason: Optional[str] = None) -> None:
        self.path = path
        self.reason = reason
        super().__init__(_one_line_bad_image_message(message))


def _one_line_bad_image_message(message: str) -> str:
    """Recover our one-line message from a DataLoader worker's 'Caught ... Original Traceback ...' text."""
    if '\n' not in message:
        return message
    marker = BadImageError.__name__ + ': '
    for line in reversed(message.splitlines()):
        pos = line.find(marker)
        if pos >= 0:
            return line[pos + len(marker):].strip()
    return ' '.join(part.strip() for part in message.splitlines() if part.strip())


def load_image(path: str) -> Image.Image:
    """Decode ``path`` fully to RGB now, so corrupt or truncated files fail here with the file named."""
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except MemoryError:
        raise
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, struct.error, ...)
        if isinstance(exc, UnidentifiedImageError):
            reason = 'not a recognised image format'  # PIL's own text repeats the path
        else:
            reason = (str(exc).splitlines() or [''])[0] or type(exc).__name__
        raise BadImageError(f"cannot read image file '{path}' ({reason}); delete or replace it, "
                            f"or pass --skip_bad_images to skip unreadable images", path=path, reason=reason) from None


# The first bytes of the formats in IMG_EXTENSIONS (and GIF). A file that starts otherwise is opened by PIL, which
# reads only its header, before it is called unreadable: PIL knows more formats than this table.
_IMAGE_SIGNATURES = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'GIF87a', b'GIF89a', b'BM', b'II*\x00', b'MM\x00*')
_HEADER_BYTES = 32


def image_header_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be an image, judged from its first bytes only (None: it looks like one).

    Cheap enough for every file of a data set (one open and a 32-byte read, ~10 us on a local disk): it catches
    text, HTML error pages, empty files, broken links and unreadable permissions before training starts. A file
    cut short after its header passes and is reported when it is decoded.
    """
    try:
        with open(path, 'rb') as f:
            head = f.read(_HEADER_BYTES)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    if not head:
        return 'empty file'
    if head.startswith(_IMAGE_SIGNATURES) or (head[:4] == b'RIFF' and head[8:12] == b'WEBP') or \
            (len(head) > 2 and head[:1] == b'P' and head[1:2] in b'1234567' and head[2:3].isspace()):
        return None
    try:
        with Image.open(path):  # header only; the pixels are not read
            return None
    except MemoryError:
        raise
    except Exception:  # PIL raises many types
        return f'not an image: it starts with {head[:16]!r}'


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


# ----------------------------------------------------------------------------------------------------------------------
# Folder datasets
# ----------------------------------------------------------------------------------------------------------------------

def _layout_hint(root: str) -> str:
    return f'expected {root}/<class_name>/<image files ({", ".join(IMG_EXTENSIONS)})>'


def _scandir_sorted(path: str) -> List[os.DirEntry]:
    """Directory entries sorted by name (scandir order is filesystem dependent; sample order must not be)."""
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except PermissionError:
        raise UserError(f"cannot read directory '{path}' (permission denied); fix its permissions") from None
    except OSError as exc:
        raise UserError(f"cannot read directory '{path}' ({exc.strerror or exc}); check that path") from None


def _dir_id(path: str) -> Tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def find_classes(root: str, role: str = 'training') -> List[str]:
    """Sorted class-folder names under ``root`` (ImageFolder order), rejecting layouts that would mislabel data."""
    if not root or not os.path.isdir(root):
        raise UserError(f"{role} data folder '{root}' does not exist or is not a directory; {_layout_hint(root)}")
    entries = _scandir_sorted(root)
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


def _list_images(class_dir: str, ancestors: Dict[Tuple[int, int], str]) -> List[str]:
    """Image files under ``class_dir`` (recursive, following symlinks, sorted), failing fast on symlink loops."""
    found: List[str] = []
    for entry in _scandir_sorted(class_dir):
        if entry.name.startswith('.'):
            continue  # hidden files/dirs inside a class (e.g. macOS '._x.jpg' resource forks) are not samples
        path = os.path.join(class_dir, entry.name)
        if entry.is_dir():
            ident = _dir_id(path)
            if ident in ancestors:
                raise UserError(f"symlink loop: '{path}' leads back to '{ancestors[ident]}'; remove that link")
            found.extend(_list_images(path, {**ancestors, ident: path}))
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
        self.loader = loader or load_image  # loaders.load_image_fast for the uint8 training pipeline
        self.skip_bad_images = skip_bad_images
        found = find_classes(root, role)
        if classes is not None:
            _require_same_classes(list(classes), found, reference_root or '<training data>', root)
        self.classes: List[str] = found
        self.class_to_idx: Dict[str, int] = {name: i for i, name in enumerate(found)}
        self.samples: List[Tuple[str, int]] = []
        root_id = _dir_id(root)
        for name in found:
            class_dir = os.path.join(root, name)
            class_id = _dir_id(class_dir)
            if class_id == root_id:
                raise UserError(f"symlink loop: '{class_dir}' leads back to '{root}'; remove that link")
            images = _list_images(class_dir, {root_id: root, class_id: class_dir})
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


def _build_cifar(is_train: bool, root: str, transform: Callable, ten: bool) -> Dataset:
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
        fast = None
        if _uint8_pipeline(args):
            from loaders import load_image_fast
            fast = load_image_fast
        return ImageFolderDataset(train_root, transform, skip, role='training', loader=fast)
    train_classes = find_classes(train_root, 'training')
    return ImageFolderDataset(val_root, transform, skip, role='validation', classes=train_classes,
                              reference_root=train_root)


def _uint8_pipeline(args: Any) -> bool:
    """``--data_backend pil`` (main.py's default) or ``dali``: uint8 samples (loaders.py, dali_backend.py)."""
    return getattr(args, 'data_backend', None) in ('pil', 'dali')


def build_dataset(is_train: bool, args: Any) -> Tuple[Dataset, int]:
    """Return ``(dataset, nb_classes)`` for ``args.data_set``; every layout problem is a one-line UserError.

    With ``args.data_backend == 'pil'`` the transforms are loaders.build_uint8_transform's (uint8 samples; training
    samples are ``(image, erasing boxes)``), to be normalised on the device by ``loaders.wrap_loader``. Without that
    attribute they are the float transforms of :func:`build_transform`.
    """
    if _uint8_pipeline(args):
        from loaders import build_uint8_transform
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
        dataset = _build_cifar(is_train, data_path, transform, ten=data_set == 'CIFAR10')
        nb_classes = len(dataset.classes)
        _check_nb_classes(args, nb_classes, f'--data_set {data_set}')
    elif data_set in ('IMNET', 'QUICKSTART'):
        if data_set == 'QUICKSTART':
            data_path = _ensure_quickstart(data_path or os.path.join('.', 'data', 'quickstart'))
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

def _mix(seed: int, *keys: int) -> np.random.SeedSequence:
    """A stable hash of integers (unlike Python's hash(), identical across processes, runs and platforms)."""
    if any(k < 0 for k in keys):
        raise ValueError(f'seed keys must be non-negative, got {keys}')
    return np.random.SeedSequence(entropy=int(seed) % _U64, spawn_key=tuple(int(k) for k in keys))


def seed_sample_rngs(base_seed: int, epoch: int, index: int) -> None:
    """Seed python ``random``, ``numpy.random`` and torch's CPU generator for one sample.

    Only the CPU generator is seeded (not ``torch.manual_seed``), so with num_workers=0 the CUDA RNG used by training
    (dropout, drop-path) is left alone; CPU transforms only use the CPU generator.
    """
    words = _mix(base_seed, _SAMPLE_TAG, epoch, index).generate_state(10, np.uint32)
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
            g.manual_seed(int(_mix(self.seed, _ORDER_TAG, epoch).generate_state(1, np.uint64)[0]))
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


# ----------------------------------------------------------------------------------------------------------------------
# QUICKSTART: a procedurally generated, learnable image-folder dataset
# ----------------------------------------------------------------------------------------------------------------------

QUICKSTART_CLASSES = ('circle', 'square', 'triangle', 'cross', 'ring', 'horizontal_stripes', 'vertical_stripes',
                      'checkerboard', 'diagonal_stripes', 'dots')
QUICKSTART_MARKER = 'QUICKSTART.json'
_QUICKSTART_FORMAT = 3


def _shape_mask(kind: int, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean mask of one shape of class ``kind`` centred at (cx, cy) with half-extent ``r``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xx - cx, yy - cy
    box = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    dist = np.hypot(dx, dy)
    w = max(2.0, r / 3.0)  # stripe / cell width
    name = QUICKSTART_CLASSES[kind]
    if name == 'circle':
        return dist <= r
    if name == 'square':
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if name == 'triangle':
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) * 0.5)
    if name == 'cross':
        t = 0.28 * r
        return ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))
    if name == 'ring':
        return (dist <= r) & (dist >= 0.6 * r)
    if name == 'horizontal_stripes':
        return box & (np.floor((dy + r) / w) % 2 == 0)
    if name == 'vertical_stripes':
        return box & (np.floor((dx + r) / w) % 2 == 0)
    if name == 'checkerboard':
        return box & ((np.floor((dx + r) / w) + np.floor((dy + r) / w)) % 2 == 0)
    if name == 'diagonal_stripes':
        return box & (np.floor((dx + dy + 2 * r) / (w * 1.4)) % 2 == 0)
    # dots: a 4x4 grid of small discs
    p = 2 * r / 4
    mx, my = (dx + r) % p - p / 2, (dy + r) % p - p / 2
    return box & (np.hypot(mx, my) <= 0.3 * p)


def _place_objects(size: int, rng: np.random.Generator) -> List[Tuple[float, float, float]]:
    """One large (cx, cy, r) box: at 64 px and a stride-4 stem, a big single shape keeps the class learnable within
    a few CPU minutes (small, repeated shapes took many more steps to rise above chance)."""
    wanted = 1
    placed: List[Tuple[float, float, float]] = []
    for _ in range(50):
        if len(placed) == wanted:
            break
        r = rng.uniform(0.28, 0.45) * size
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        if all(max(abs(cx - x), abs(cy - y)) > r + q + 1 for x, y, q in placed):
            placed.append((cx, cy, r))
    return placed


def _quickstart_image(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One HxWx3 uint8 image: random background, a shape of the class in a contrasting colour, Gaussian noise."""
    bg = rng.integers(0, 256, 3).astype(np.float64)
    for _ in range(100):
        fg = rng.integers(0, 256, 3).astype(np.float64)
        if np.abs(fg - bg).sum() >= 180:
            break
    mask = np.zeros((size, size), dtype=bool)
    for cx, cy, r in _place_objects(size, rng):
        mask |= _shape_mask(kind, size, cx, cy, r)
    img = np.where(mask[..., None], fg, bg)
    img = img + rng.normal(0.0, rng.uniform(4.0, 16.0), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def quickstart_class_names(num_classes: int = len(QUICKSTART_CLASSES)) -> List[str]:
    """The quick-start class names in the model's label order: the class folders sorted by name, as every folder
    data set is labelled (``find_classes``), not the generation order of ``QUICKSTART_CLASSES``."""
    return sorted(QUICKSTART_CLASSES[:num_classes])


def _repair_marker_class_order(root: str, marker: Dict[str, Any]) -> None:
    """Markers written before the fix list the classes in generation order, which is not the label order: rewrite
    the list (best effort, atomically; the images are unchanged, a read-only folder is left as it is)."""
    classes = marker.get('classes')
    if not isinstance(classes, list) or classes == sorted(classes):
        return
    path = os.path.join(root, QUICKSTART_MARKER)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix='.' + QUICKSTART_MARKER, dir=root)
        with os.fdopen(fd, 'w') as f:
            json.dump({**marker, 'classes': sorted(classes)}, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        logger.debug('could not rewrite %s in label order: %s', path, exc)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _read_marker(root: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(root, QUICKSTART_MARKER)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"'{os.path.join(root, QUICKSTART_MARKER)}' is unreadable ({exc}); delete '{root}' so the "
                        f"QUICKSTART dataset is regenerated") from None


def make_quickstart_dataset(root: str, num_classes: int = 10, train_per_class: int = 200, val_per_class: int = 50,
                            image_size: int = 64, seed: int = 0) -> str:
    """Write (once) a deterministic shapes dataset as ``root/{train,val}/<class>/*.png`` and return ``root``.

    The dataset is built in a temporary sibling directory and renamed into place with its completeness marker
    already inside, so an interrupted run never leaves a half dataset and concurrent ranks cannot both publish one.
    An existing complete dataset with the same parameters is reused.
    """
    if not 1 <= num_classes <= len(QUICKSTART_CLASSES):
        raise UserError(f'QUICKSTART supports 1..{len(QUICKSTART_CLASSES)} classes, got {num_classes}')
    if train_per_class < 1 or val_per_class < 1 or image_size < 8:
        raise UserError('QUICKSTART needs train_per_class >= 1, val_per_class >= 1 and image_size >= 8')
    params = dict(format=_QUICKSTART_FORMAT, num_classes=num_classes, train_per_class=train_per_class,
                  val_per_class=val_per_class, image_size=image_size, seed=seed)
    root = os.path.abspath(root)

    def reuse_or_fail() -> Optional[str]:
        marker = _read_marker(root)
        if marker is None:
            if os.path.isdir(root) and os.listdir(root):
                raise UserError(f"'{root}' exists but is not a complete QUICKSTART dataset (no {QUICKSTART_MARKER}); "
                                f"delete it or pass another --data_path")
            if os.path.exists(root) and not os.path.isdir(root):
                raise UserError(f"'{root}' is a file, not a directory; pass another --data_path for QUICKSTART")
            return None
        if {k: marker.get(k) for k in params} != params:
            raise UserError(f"'{root}' holds a QUICKSTART dataset made with different parameters ({marker}); "
                            f"delete it or pass another --data_path")
        return root

    if reuse_or_fail():
        logger.info('Reusing QUICKSTART dataset at %s', root)
        _repair_marker_class_order(root, _read_marker(root) or {})
        return root

    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(root)}.tmp-', dir=parent)
    logger.info('Generating QUICKSTART dataset (%d classes, %d+%d images per class, %d px) at %s',
                num_classes, train_per_class, val_per_class, image_size, root)
    try:
        for split_id, (split, count) in enumerate((('train', train_per_class), ('val', val_per_class))):
            for kind in range(num_classes):
                name = QUICKSTART_CLASSES[kind]
                class_dir = os.path.join(tmp, split, name)
                os.makedirs(class_dir)
                for i in range(count):
                    rng = np.random.default_rng(_mix(seed, split_id, kind, i))
                    Image.fromarray(_quickstart_image(kind, image_size, rng)).save(
                        os.path.join(class_dir, f'{name}_{i:05d}.png'), format='PNG')
        with open(os.path.join(tmp, QUICKSTART_MARKER), 'w') as f:
            json.dump({**params, 'classes': quickstart_class_names(num_classes)}, f, indent=1)
        try:
            os.rename(tmp, root)  # atomic; succeeds onto a missing or empty directory only
        except OSError:
            if reuse_or_fail() is None:  # someone else did not publish one either: a real failure
                raise
            logger.info('Another process created the QUICKSTART dataset at %s first; reusing it', root)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _ensure_quickstart(root: str) -> str:
    """Reuse any complete QUICKSTART dataset at ``root`` (whatever its parameters), else generate the default one."""
    root = os.path.abspath(root)
    marker = _read_marker(root)
    if marker is not None:
        _repair_marker_class_order(root, marker)
        return root
    return make_quickstart_dataset(root)
