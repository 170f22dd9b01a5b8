"""Evaluate one checkpoint on the ImageNet test sets papers report: ImageNet-1K val, ReaL, V2, -A, -R and -Sketch.

``main.py --eval true --resume CKPT --eval_sets KIND=PATH [KIND=PATH ...] [--eval_labels FILE]`` builds the model
once and scores it on every set, with the same evaluation transform and the same exact distributed evaluation as
``--eval`` (``datasets.EvalShardSampler``: every image once, no padding; sums reduced over the processes).

How each set is scored (the conventions of the papers and of timm's ``validate.py``):

* ``imagenet``, ``v2``, ``sketch``: top-1/top-5 and cross-entropy over the 1000 ImageNet-1K classes. Labels are the
  index of the class's wnid in the sorted 1000-wnid list (timm's ``imagenet_synsets.txt``, which is also the
  ImageFolder order the models were trained with); ImageNetV2 names its folders by that index.
* ``a``, ``r``: the logits are restricted to the set's 200 classes (timm's ``imagenet_{a,r}_indices.txt``, in that
  order) before top-k and cross-entropy, as the ImageNet-A/-R papers do.
* ``real``: top-k is correct when any of the k best classes is in the image's ReaL label set (timm's
  ``imagenet_real_labels.json``, indexed by validation image order, so looked up by file name); images whose set is
  empty are left out, as the ReaL paper and timm do, and counted. No loss is defined.
* A model with the original release's 21841-class ImageNet-22K head is scored through its 1000 ImageNet-1K rows
  (``models.weights.in1k_to_21k_map``), as fine-tuning from it keeps them.

The class lists and labels are read from timm's package data (``timm/data/_info``), identical in timm 1.0.12 (the
floor in requirements.txt) and 1.0.29; a timm without them is a one-line error naming the version needed.

API for main.py: :func:`parse_eval_sets` (flags, validated once) -> :func:`build_eval_set` per spec (scans the
folders; every layout problem is one :class:`errors.UserError` line naming the set, the folder and what was expected)
-> :func:`evaluate_sets` -> :func:`format_table` (the log) and :func:`results_json` (``eval.json``).
"""
from __future__ import annotations

import json
import logging
import os
import pkgutil
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, \
    IMAGENET_INCEPTION_STD
from torch.utils.data import Dataset

import datasets
import engine
import loaders
import runlog
import transforms
import utils
from errors import UserError
from models.weights import IN22K_CLASSES, in1k_to_21k_map

_logger = logging.getLogger('hornet')

KINDS = ('imagenet', 'real', 'v2', 'a', 'r', 'sketch')
# Images in each set as released (a set with another count is evaluated, with a warning: numbers are not comparable)
RELEASED_IMAGES = {'imagenet': 50000, 'real': 50000, 'v2': 10000, 'a': 7500, 'r': 30000, 'sketch': 50889}
_TITLES = {'imagenet': 'ImageNet-1K val', 'real': 'ImageNet ReaL', 'v2': 'ImageNetV2', 'a': 'ImageNet-A',
           'r': 'ImageNet-R', 'sketch': 'ImageNet-Sketch'}
_MIN_TIMM = '1.0.12'
_VAL_NAME = re.compile(r'^ILSVRC2012_val_(\d{8})$')
_WNID = re.compile(r'^n\d{8}$')
_LABELS_HELP = "Kaggle's LOC_val_solution.csv, or lines '<file name> <wnid>'"


# ----------------------------------------------------------------------------------------------------------------------
# timm's package data
# ----------------------------------------------------------------------------------------------------------------------

_INFO_CACHE: Dict[str, Any] = {}


def _timm_info(name: str, what: str) -> str:
    """A file of ``timm/data/_info`` as text; a timm without it is a one-line error naming the version needed."""
    if name not in _INFO_CACHE:
        try:
            data = pkgutil.get_data('timm.data', f'_info/{name}')
        except (OSError, ImportError):
            data = None
        if data is None:
            raise UserError(f"{what} needs timm's data file timm/data/_info/{name}, which timm {timm.__version__} "
                            f"lacks; install timm >= {_MIN_TIMM} (pip install -U 'timm>={_MIN_TIMM}')")
        _INFO_CACHE[name] = data.decode('utf-8')
    return _INFO_CACHE[name]


def in1k_synsets() -> List[str]:
    """The 1000 ImageNet-1K wnids in label order (sorted; timm's imagenet_synsets.txt)."""
    return _timm_info('imagenet_synsets.txt', 'ImageNet-1K evaluation').split()


def subset_indices(kind: str) -> List[int]:
    """The 200 ImageNet-1K class indices of ImageNet-A (``kind='a'``) or -R (``'r'``), in timm's order."""
    return [int(x) for x in _timm_info(f'imagenet_{kind}_indices.txt', _TITLES[kind]).split()]


def real_label_sets() -> List[List[int]]:
    """The ReaL label set of each of the 50000 validation images, in file order (ILSVRC2012_val_00000001 first)."""
    key = '__real__'
    if key not in _INFO_CACHE:
        _INFO_CACHE[key] = json.loads(_timm_info('imagenet_real_labels.json', 'ReaL evaluation'))
    return _INFO_CACHE[key]


# ----------------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalSetSpec:
    """One ``--eval_sets KIND=PATH`` entry, validated: the folder exists and its layout fits the kind."""
    kind: str
    path: str                     # as given (absolute or relative)
    name: str                     # the row name in the table and eval.json ('v2', or 'v2:<folder>' when repeated)
    layout: str                   # 'folders' (one folder per class) or 'flat' (ILSVRC2012 val images, no folders)
    labels_file: Optional[str] = None
    labels: Optional[Dict[str, str]] = field(default=None, compare=False, repr=False)  # file stem -> wnid (flat)

    @property
    def flag(self) -> str:
        return f'--eval_sets {self.kind}={self.path}'


def _top_level(path: str) -> Tuple[List[str], List[str]]:
    """Names of the non-hidden folders and image files directly in ``path`` (sorted)."""
    dirs, images = [], []
    for entry in datasets.scandir_sorted(path):
        if entry.name.startswith('.'):
            continue  # hidden entries (.DS_Store, .ipynb_checkpoints) are neither classes nor images
        if entry.is_dir():
            dirs.append(entry.name)
        elif entry.name.lower().endswith(datasets.IMG_EXTENSIONS):
            images.append(entry.name)
    return dirs, images


def _layout(kind: str, path: str, flag: str) -> str:
    dirs, images = _top_level(path)
    if dirs and images:
        raise UserError(f"{flag}: '{path}' holds both class folders ({dirs[0]}, ...) and image files ({images[0]}, "
                        f"...); expected one folder per class, or (imagenet, real) only the ILSVRC2012 val images")
    if images:
        if kind not in ('imagenet', 'real'):
            raise UserError(f"{flag}: '{path}' holds image files but no class folders; {_TITLES[kind]} as released "
                            f"has {_expected_folders(kind)}")
        return 'flat'
    if not dirs:
        raise UserError(f"{flag}: '{path}' holds no class folders and no images; expected {_expected_folders(kind)}")
    return 'folders'


def _expected_folders(kind: str) -> str:
    return {'imagenet': "1000 folders named by wnid (n01440764, ...), or the flat ILSVRC2012 val folder with "
                        "--eval_labels",
            'real': "the ILSVRC2012 val images (ILSVRC2012_val_00000001.JPEG, ...), flat or in wnid folders",
            'v2': "1000 folders named by class index (0, 1, ..., 999)",
            'a': "200 folders named by wnid (timm's imagenet_a_synsets.txt)",
            'r': "200 folders named by wnid (timm's imagenet_r_synsets.txt)",
            'sketch': "1000 folders named by wnid (n01440764, ...)"}[kind]


def read_labels_file(path: str) -> Dict[str, str]:
    """``--eval_labels``: file stem -> wnid, from Kaggle's LOC_val_solution.csv or lines ``<file name> <wnid>``."""
    try:
        with open(path, encoding='utf-8-sig') as f:  # -sig: a CSV saved with a byte-order mark reads the same
            lines = f.read().splitlines()
    except OSError as exc:
        raise UserError(f"--eval_labels '{path}' cannot be read ({exc.strerror or exc}); pass {_LABELS_HELP}") \
            from None
    except UnicodeDecodeError:
        raise UserError(f"--eval_labels '{path}' is not a text file; pass {_LABELS_HELP}") from None
    wnids = set(in1k_synsets())
    labels: Dict[str, str] = {}
    kaggle = bool(lines) and lines[0].replace(' ', '').lower().startswith('imageid,predictionstring')
    for number, line in enumerate(lines[1:] if kaggle else lines, start=2 if kaggle else 1):
        if not line.strip():
            continue
        if kaggle:
            name, _, prediction = line.partition(',')
            wnid = (prediction.split() or [''])[0]
        else:
            parts = line.split()
            name, wnid = (parts[0], parts[1]) if len(parts) == 2 else ('', '')
        name = name.strip()
        if not name or not _WNID.match(wnid):
            raise UserError(f"--eval_labels '{path}' line {number}: expected "
                            f"{'ImageId,PredictionString starting with a wnid' if kaggle else '<file name> <wnid>'}, "
                            f"got {line.strip()[:80]!r}; pass {_LABELS_HELP}")
        if wnid not in wnids:
            raise UserError(f"--eval_labels '{path}' line {number}: '{wnid}' is not one of the 1000 ImageNet-1K "
                            f"wnids (timm's imagenet_synsets.txt)")
        stem = os.path.splitext(os.path.basename(name))[0]
        if labels.get(stem, wnid) != wnid:
            raise UserError(f"--eval_labels '{path}' line {number}: '{stem}' is labelled twice ({labels[stem]} and "
                            f"{wnid}); fix the file")
        labels[stem] = wnid
    if not labels:
        raise UserError(f"--eval_labels '{path}' holds no labels; pass {_LABELS_HELP}")
    return labels


def parse_eval_sets(specs: Sequence[str], labels_file: Optional[str] = None) -> List[EvalSetSpec]:
    """Validate ``--eval_sets KIND=PATH ...`` and ``--eval_labels`` once, before any model is built.

    Checks the kinds, that each folder exists, its top-level layout (class folders or flat images) against the kind,
    and reads ``labels_file`` when a flat ``imagenet`` folder needs it. The class folders themselves are checked by
    :func:`build_eval_set`."""
    parsed: List[Tuple[str, str, str]] = []
    for spec in specs:
        kind, sep, path = str(spec).partition('=')
        kind = kind.strip().lower()
        if not sep or kind not in KINDS or not path:
            raise UserError(f"--eval_sets '{spec}': expected KIND=PATH with KIND one of {', '.join(KINDS)} "
                            f"(e.g. --eval_sets v2=/data/imagenetv2-matched-frequency-format-val)")
        flag = f'--eval_sets {kind}={path}'
        if not os.path.isdir(path):
            raise UserError(f"{flag}: '{path}' does not exist or is not a folder; expected {_expected_folders(kind)}")
        if any(k == kind and os.path.realpath(p) == os.path.realpath(path) for k, p, _ in parsed):
            raise UserError(f"{flag} is given twice; give each set once")
        parsed.append((kind, path, _layout(kind, path, flag)))
    if labels_file and not os.path.isfile(labels_file):
        raise UserError(f"--eval_labels '{labels_file}' does not exist or is not a file; pass {_LABELS_HELP}")
    needs_labels = [(k, p) for k, p, layout in parsed if k == 'imagenet' and layout == 'flat']
    labels = None
    if needs_labels:
        if not labels_file:
            kind, path = needs_labels[0]
            raise UserError(f"--eval_sets {kind}={path}: '{path}' is the flat ILSVRC2012 val folder (images, no class "
                            f"folders), which needs --eval_labels FILE ({_LABELS_HELP})")
        labels = read_labels_file(labels_file)
    elif labels_file:
        _logger.warning('--eval_labels %s is not used: only a flat imagenet folder needs labels', labels_file)
    counts: Dict[str, int] = {}
    for kind, _, _ in parsed:
        counts[kind] = counts.get(kind, 0) + 1
    out: List[EvalSetSpec] = []
    for kind, path, layout in parsed:
        name = kind if counts[kind] == 1 else f'{kind}:{os.path.basename(os.path.normpath(path))}'
        if any(s.name == name for s in out):
            name = f'{kind}:{os.path.normpath(path)}'
        flat_labels = labels if kind == 'imagenet' and layout == 'flat' else None
        out.append(EvalSetSpec(kind, path, name, layout, labels_file if flat_labels else None, flat_labels))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Data sets
# ----------------------------------------------------------------------------------------------------------------------

class EvalSet(Dataset):
    """The images of one set as ``(image, target)``, with what scoring them needs.

    ``target`` is the class index among the classes scored (0..999, or 0..199 for -A/-R); for ReaL it is the
    image's row in ``label_sets`` (its position in this data set)."""

    def __init__(self, spec: EvalSetSpec, samples: List[Tuple[str, int]], transform: Optional[Callable],
                 class_folders: int, class_indices: Optional[List[int]] = None,
                 label_sets: Optional[torch.Tensor] = None, left_out: int = 0) -> None:
        self.spec = spec
        self.samples = samples
        self.transform = transform
        self.loader: Callable[[str], Any] = transforms.load_image  # as --eval's validation set
        self.class_folders = class_folders      # class folders found (0 for a flat folder)
        self.class_indices = class_indices      # -A/-R: the 1000-class logit columns scored, in timm's order
        self.label_sets = label_sets            # ReaL: (images, max set size) int64, padded with -1
        self.left_out = left_out                # ReaL: images in the folder with an empty label set, not scored

    @property
    def num_classes(self) -> int:
        """Classes the logits are restricted to before scoring."""
        return len(self.class_indices) if self.class_indices is not None else 1000

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        path, target = self.samples[index]
        img = self.loader(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def _class_images(spec: EvalSetSpec, folders: List[str]) -> List[Tuple[str, str]]:
    """``(folder name, image path)`` for every image under each class folder (recursive, sorted)."""
    root_id = datasets.dir_id(spec.path)
    found: List[Tuple[str, str]] = []
    for name in folders:
        class_dir = os.path.join(spec.path, name)
        class_id = datasets.dir_id(class_dir)
        if class_id == root_id:
            raise UserError(f"{spec.flag}: symlink loop: '{class_dir}' leads back to '{spec.path}'; remove that link")
        images = datasets.list_images(class_dir, {root_id: spec.path, class_id: class_dir})
        if not images:
            raise UserError(f"{spec.flag}: class folder '{class_dir}' has no image files "
                            f"({', '.join(datasets.IMG_EXTENSIONS)}); add its images or remove the folder")
        found.extend((name, p) for p in images)
    return found


def _wnid_targets(spec: EvalSetSpec, folders: List[str], wnids: List[str], what: str) -> Dict[str, int]:
    """Folder name -> index in ``wnids``; a folder that is not one of them is an error naming it."""
    index = {w: i for i, w in enumerate(wnids)}
    bad = [f for f in folders if f not in index]
    if bad:
        if all(f.isdigit() for f in bad) and spec.kind != 'v2':
            hint = ' (folders named by class index are ImageNetV2\'s layout: use v2=PATH)'
        elif spec.kind in ('a', 'r') and len(folders) > 200:
            hint = (f' (there are {len(folders)} class folders, {_TITLES[spec.kind]} has 200; for 1000 classes use '
                    f'imagenet=PATH or sketch=PATH)')
        else:
            hint = ''
        raise UserError(f"{spec.flag}: folder '{os.path.join(spec.path, bad[0])}' is not one of {what}{hint}; "
                        f"expected {_expected_folders(spec.kind)}")
    return index


def _v2_targets(spec: EvalSetSpec, folders: List[str]) -> Dict[str, int]:
    bad = [f for f in folders if not (f.isdigit() and str(int(f)) == f and int(f) < 1000)]
    if bad:
        hint = ' (wnid folders: use imagenet=PATH or sketch=PATH)' if _WNID.match(bad[0]) else ''
        raise UserError(f"{spec.flag}: folder '{os.path.join(spec.path, bad[0])}' is not a class index 0..999; "
                        f"ImageNetV2 as released has {_expected_folders('v2')}{hint}")
    return {f: int(f) for f in folders}


def _warn_if_partial(spec: EvalSetSpec, images: int, class_folders: int, classes: int) -> None:
    released = RELEASED_IMAGES[spec.kind]
    if images != released or (class_folders and class_folders != classes):
        folders = f', {class_folders} of {classes} class folders' if class_folders else ''
        _logger.warning('%s: %d images%s; %s as released has %d, so the numbers are not comparable with published '
                        'ones', spec.flag, images, folders, _TITLES[spec.kind], released)


def _real_set(spec: EvalSetSpec, transform: Optional[Callable]) -> EvalSet:
    if spec.layout == 'flat':
        paths = [os.path.join(spec.path, n) for n in _top_level(spec.path)[1]]
        folders = 0
    else:
        names = _top_level(spec.path)[0]
        paths = [p for _, p in _class_images(spec, names)]
        folders = len(names)
    all_sets = real_label_sets()
    seen: Dict[int, str] = {}
    samples: List[Tuple[str, int]] = []
    rows: List[List[int]] = []
    left_out = 0
    for path in paths:
        match = _VAL_NAME.match(os.path.splitext(os.path.basename(path))[0])
        number = int(match.group(1)) if match else 0
        if not 1 <= number <= len(all_sets):
            raise UserError(f"{spec.flag}: '{path}' is not an ILSVRC2012 validation file name "
                            f"(ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_00050000.JPEG); ReaL labels are "
                            f"looked up by file name, so keep the original names")
        if number in seen:
            raise UserError(f"{spec.flag}: '{path}' and '{seen[number]}' are the same validation image; keep one")
        seen[number] = path
        labels = all_sets[number - 1]
        if not labels:
            left_out += 1  # the ReaL paper and timm leave images without a ReaL label out
            continue
        samples.append((path, len(samples)))
        rows.append(labels)
    if not samples:
        raise UserError(f"{spec.flag}: none of the {len(paths)} images in '{spec.path}' has a ReaL label; "
                        f"expected {_expected_folders('real')}")
    width = max(len(r) for r in rows)
    table = torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.int64)  # padded with -1
    _warn_if_partial(spec, len(paths), 0, 1000)
    return EvalSet(spec, samples, transform, folders, label_sets=table, left_out=left_out)


def build_eval_set(spec: EvalSetSpec, transform: Optional[Callable]) -> EvalSet:
    """Scan ``spec``'s folder into an :class:`EvalSet`; every layout problem is a one-line UserError.

    ``transform`` is --eval's (:func:`eval_transform`), so every set is preprocessed as the validation set is."""
    if spec.kind == 'real':
        return _real_set(spec, transform)
    if spec.layout == 'flat':  # imagenet only (parse_eval_sets); labels from --eval_labels
        assert spec.labels is not None
        index = {w: i for i, w in enumerate(in1k_synsets())}
        samples = []
        for name in _top_level(spec.path)[1]:
            wnid = spec.labels.get(os.path.splitext(name)[0])
            if wnid is None:
                raise UserError(f"{spec.flag}: '{os.path.join(spec.path, name)}' is missing from --eval_labels "
                                f"'{spec.labels_file}'; pass the labels of this folder ({_LABELS_HELP})")
            samples.append((os.path.join(spec.path, name), index[wnid]))
        _warn_if_partial(spec, len(samples), 0, 1000)
        return EvalSet(spec, samples, transform, 0)
    folders = _top_level(spec.path)[0]
    class_indices = None
    if spec.kind == 'v2':
        targets = _v2_targets(spec, folders)
        classes = 1000
    elif spec.kind in ('a', 'r'):
        class_indices = subset_indices(spec.kind)
        all_wnids = in1k_synsets()
        targets = _wnid_targets(spec, folders, [all_wnids[i] for i in class_indices],
                                f"the 200 classes of {_TITLES[spec.kind]}")
        classes = 200
    else:
        targets = _wnid_targets(spec, folders, in1k_synsets(), "the 1000 ImageNet-1K wnids")
        classes = 1000
    samples = [(path, targets[name]) for name, path in _class_images(spec, folders)]
    _warn_if_partial(spec, len(samples), len(folders), classes)
    return EvalSet(spec, samples, transform, len(folders), class_indices=class_indices)


def eval_transform(args: Any) -> Callable:
    """The transform ``--eval`` gives its validation set (datasets.build_dataset), so the sets are preprocessed alike:
    uint8 output for ``--data_backend pil|dali`` (normalised on the device by ``loaders.wrap_loader``), else floats."""
    if transforms.uint8_pipeline(args):
        return transforms.build_uint8_transform(False, args)
    return transforms.build_transform(False, args)


def build_eval_sets(specs: Sequence[EvalSetSpec], transform: Optional[Callable]) -> List[EvalSet]:
    """:func:`build_eval_set` for each spec, logging what was found."""
    sets = []
    for spec in specs:
        s = build_eval_set(spec, transform)
        extra = f', {s.left_out} left out (empty ReaL label set)' if spec.kind == 'real' else ''
        _logger.info('Eval set %s (%s, %s layout): %d images%s, %d classes scored', spec.name, spec.path,
                     spec.layout, len(s), extra, s.num_classes)
        sets.append(s)
    return sets


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------

def head_columns(num_classes: int) -> Optional[torch.Tensor]:
    """The model's logit columns holding the 1000 ImageNet-1K classes: None for a 1000-class head (all of them), the
    original release's map for a 21841-class ImageNet-22K head; any other head is a UserError."""
    if num_classes == 1000:
        return None
    if num_classes == IN22K_CLASSES:
        return in1k_to_21k_map()
    raise UserError(f'--eval_sets scores the 1000 ImageNet-1K classes, but the model has {num_classes} classes; '
                    f'evaluate a 1000-class model (--nb_classes 1000) or an ImageNet-22K one (--nb_classes '
                    f'{IN22K_CLASSES}, scored through its ImageNet-1K rows)')


class ScoredColumns(nn.Module):
    """``model`` with its output restricted to ``columns`` (in that order): the 1K rows of a 22K head, -A/-R's 200."""

    def __init__(self, model: nn.Module, columns: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer('columns', columns.to(torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).index_select(1, self.columns)


@dataclass
class SetResult:
    """The numbers of one set, identical whatever the number of processes (sums over every image once)."""
    name: str
    kind: str
    path: str
    images: int                 # images scored
    acc1: float
    acc5: float
    loss: Optional[float]       # mean cross-entropy over the classes scored; None for ReaL
    seconds: float
    classes: int                # classes the logits were restricted to (1000, or 200 for -A/-R)
    left_out: int = 0           # ReaL: images with an empty label set, not scored

    @property
    def img_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float('nan')


def eval_loader(dataset: Dataset, *, batch_size: int, num_workers: int = 0, pin_memory: bool = False,
                dist_eval: bool = True, wrap: Optional[Callable[[Any], Iterable]] = None) -> Iterable:
    """The exact evaluation loader of ``--eval`` (``main.Evaluator`` builds its validation and test set loaders
    here): ``datasets.EvalShardSampler`` (rank r takes images r::world, no padding; rank 0 alone under
    ``dist_eval=False``), then ``wrap`` (``loaders.wrap_loader``)."""
    ds = utils.dist_state()
    if not dist_eval and ds.distributed:
        sampler = datasets.EvalShardSampler(len(dataset) if ds.is_main else 0, 1, 0)  # type: ignore[arg-type]
    else:
        sampler = datasets.EvalShardSampler(len(dataset), ds.world_size, ds.rank)  # type: ignore[arg-type]
    loader = datasets.build_loader(dataset, sampler, batch_size, num_workers, pin_memory, drop_last=False,
                                   persistent_workers=False)
    return wrap(loader) if wrap is not None else loader


@torch.no_grad()
def _evaluate_real(model: nn.Module, loader: Any, label_sets: torch.Tensor, amp_dtype: Optional[torch.dtype],
                   channels_last: bool, print_freq: int, header: str) -> Dict[str, float]:
    """ReaL top-1/top-5 (any of the k best classes in the image's label set), summed exactly as engine.evaluate
    sums: every image once, integer counts reduced over the processes."""
    ds = utils.dist_state()
    model.eval()
    table = label_sets.to(ds.device)
    correct = torch.zeros(2, dtype=torch.int64, device=ds.device)
    count = 0
    metric_logger = runlog.MetricLogger()
    evaluating = getattr(getattr(loader, 'sampler', None), 'num_replicas', ds.world_size)
    for images, rows in metric_logger.log_every(loader, print_freq, header, len(loader), world_size=evaluating):
        images = images.to(ds.device, non_blocking=True)
        rows = rows.to(ds.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with engine.autocast(ds.device, amp_dtype):
            output = model(images)
        top = output.float().topk(5, dim=1).indices                     # (B, 5)
        hits = top.unsqueeze(2).eq(table[rows].unsqueeze(1)).any(2)     # (B, 5): k-th best class in the set
        correct[0] += hits[:, 0].sum()
        correct[1] += hits.any(1).sum()
        count += int(rows.numel())
    correct1, correct5, count = utils.all_reduce_sum([*correct.tolist(), count])
    if count == 0:
        raise UserError(f'{header} no image was evaluated')
    return {'acc1': 100.0 * correct1 / count, 'acc5': 100.0 * correct5 / count, 'num_samples': int(count)}


def evaluate_sets(model: nn.Module, sets: Sequence[EvalSet], *, num_classes: int,
                  make_loader: Callable[[Dataset], Any], amp_dtype: Optional[torch.dtype] = None,
                  channels_last: bool = False, print_freq: int = 10) -> List[SetResult]:
    """Score ``model`` (built and loaded once; DDP-wrapped or not) on every set, in order.

    ``num_classes`` is the model's head size (1000, or 21841: scored through its ImageNet-1K rows).
    ``make_loader(dataset)`` returns the exact sharded loader --eval uses (``lambda d: Evaluator(run, d).loader()`` in
    main.py, or :func:`eval_loader`); the standard sets then run through ``engine.evaluate`` itself, ReaL through
    the same loop with its label sets. Must be called on every process."""
    base = head_columns(num_classes)
    results = []
    for s in sets:
        columns = base
        if s.class_indices is not None:
            sub = torch.tensor(s.class_indices, dtype=torch.int64)
            columns = sub if base is None else base[sub]
        scored = model if columns is None else ScoredColumns(model, columns.to(utils.dist_state().device))
        loader = make_loader(s)
        header = f'Eval {s.spec.name}:'
        start = time.perf_counter()
        if s.label_sets is not None:
            stats = _evaluate_real(scored, loader, s.label_sets, amp_dtype, channels_last, print_freq, header)
            loss = None
        else:
            stats = engine.evaluate(scored, loader, len(loader), amp_dtype=amp_dtype, channels_last=channels_last,
                                    print_freq=print_freq, header=header, log_result=False)
            loss = float(stats['loss'])
        seconds = time.perf_counter() - start
        results.append(SetResult(name=s.spec.name, kind=s.spec.kind, path=s.spec.path, images=int(stats['num_samples']),
                                 acc1=float(stats['acc1']), acc5=float(stats['acc5']), loss=loss, seconds=seconds,
                                 classes=s.num_classes, left_out=s.left_out))
    return results


# ----------------------------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------------------------

def format_table(results: Sequence[SetResult]) -> str:
    """The results as one aligned text table (set, images, Acc@1, Acc@5, loss, img/s), plus a note per ReaL set on
    the images left out."""
    header = ('set', 'images', 'Acc@1', 'Acc@5', 'loss', 'img/s')
    rows = [(r.name, str(r.images), f'{r.acc1:.3f}', f'{r.acc5:.3f}', 'n/a' if r.loss is None else f'{r.loss:.4f}',
             f'{r.img_per_s:.1f}') for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return '  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = [line(header), line(['-' * w for w in widths]), *(line(r) for r in rows)]
    for r in results:
        if r.kind == 'real':
            out.append(f'{r.name}: {r.left_out} images with an empty ReaL label set left out (as the ReaL paper '
                       f'and timm do); Acc@k: a ReaL label among the k best')
        elif r.classes != 1000:
            out.append(f'{r.name}: logits restricted to its {r.classes} classes')
    return '\n'.join(out)


def results_json(results: Sequence[SetResult], checkpoint: str, sha256: Optional[str],
                 settings: Dict[str, Any], ema: Optional[Sequence[SetResult]] = None) -> Dict[str, Any]:
    """``eval.json``: the checkpoint (path and sha256), the eval settings and the numbers of each set, by name;
    with ``ema`` (``--model_ema_eval``), the EMA weights' numbers under ``sets_ema`` alike."""
    def by_name(rows: Sequence[SetResult]) -> Dict[str, Dict[str, Any]]:
        return {r.name: {'kind': r.kind, 'path': r.path, 'images': r.images, 'left_out': r.left_out,
                         'classes': r.classes, 'acc1': r.acc1, 'acc5': r.acc5, 'loss': r.loss,
                         'img_per_s': r.img_per_s, 'seconds': r.seconds} for r in rows}
    doc = {'checkpoint': checkpoint, 'sha256': sha256, 'settings': dict(settings), 'sets': by_name(results)}
    if ema is not None:
        doc['sets_ema'] = by_name(ema)
    return doc


def eval_settings(args: Any, *, num_classes: int, processes: Optional[int] = None) -> Dict[str, Any]:
    """What the numbers depend on besides the weights, for eval.json (read from main.py's flags). ``processes``:
    those that evaluated (default: every process, or 1 under ``--dist_eval false``)."""
    if processes is None:
        processes = utils.dist_state().world_size if getattr(args, 'dist_eval', True) else 1
    input_size = int(args.input_size)
    default_mean = bool(getattr(args, 'imagenet_default_mean_and_std', False))
    crop_pct = getattr(args, 'crop_pct', None)
    if input_size <= 32:
        resize = f'center crop {input_size} (no resize)'
    elif input_size >= 384:
        resize = f'bicubic resize to {input_size}x{input_size} (no crop)'
    else:
        pct = 224 / 256 if crop_pct is None else float(crop_pct)
        resize = f'bicubic resize to {int(input_size / pct)}, center crop {input_size} (crop_pct {pct:.4f})'
    return {
        'model': getattr(args, 'model', None),
        'head_classes': num_classes,
        'scored_through': 'ImageNet-1K rows of the ImageNet-22K head' if num_classes != 1000 else 'all 1000 classes',
        'input_size': input_size,
        'preprocessing': resize,
        'mean': list(IMAGENET_DEFAULT_MEAN if default_mean else IMAGENET_INCEPTION_MEAN),
        'std': list(IMAGENET_DEFAULT_STD if default_mean else IMAGENET_INCEPTION_STD),
        'precision': str(getattr(args, 'amp_dtype', 'float16')) if getattr(args, 'use_amp', False) else 'float32',
        'channels_last': bool(getattr(args, 'channels_last', False)),
        'batch_size_per_process': int(1.5 * int(args.batch_size)),
        'processes': int(processes),
        'dist_eval': bool(getattr(args, 'dist_eval', True)),
        'device': str(getattr(args, 'device', '')),
        'eval_labels': getattr(args, 'eval_labels', None),
        'timm': timm.__version__,
        'torch': torch.__version__,
    }
