"""What a checkpoint records about the run that wrote it: its flags, its class names, its head, its identity.

One module reads this for every user: ``main.py`` (the settings a run takes from the checkpoint it evaluates or
resumes, see run_settings.py; the class-names check; the head size of ``--eval_sets``; eval.json's sha256),
``checkpoints.py`` (plain ``args`` on save and load) and the tools ``scripts/predict.py`` and ``scripts/export.py``.

``main.py`` stores its flags in every checkpoint (``args``: a dict; the original release stored an
``argparse.Namespace`` with the same names). From them the tools take the variant (``model``), the resolution the
model was trained and evaluated at (``input_size``), the evaluation transform's settings (``crop_pct``,
``imagenet_default_mean_and_std``) and the class names: a ``class_names`` list stored in the checkpoint where there
is one, else the class folders of the data set the run was trained on (``data_set``/``data_path``), read in the
order ``datasets.py`` gives labels (sorted folder names), when that folder still exists.

Only the standard library is imported when this module loads: the tools check their arguments before torch is
imported, so a mistyped path is reported at once. torch, the data sets and the models are imported by the functions
that need them.
"""
from __future__ import annotations

import argparse
import enum
import hashlib
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from errors import UserError

_logger = logging.getLogger('checkpoint_meta')
_HEAD_KEY = re.compile(r'^(?:module\.|_orig_mod\.)*head(?:\.fc)?\.weight$')  # this project, DDP, compile, mmpretrain

# main.py's defaults for the evaluation transform (see transforms.build_transform)
EVAL_DEFAULTS = {'crop_pct': None, 'imagenet_default_mean_and_std': True}


@dataclass
class CheckpointInfo:
    """The run settings a checkpoint records (empty for a bare state dict)."""
    args: Dict[str, Any] = field(default_factory=dict)
    class_names: Optional[List[str]] = None  # stored in the checkpoint itself

    @property
    def model(self) -> Optional[str]:
        value = self.args.get('model')
        return value if isinstance(value, str) and value else None

    @property
    def input_size(self) -> Optional[int]:
        value = self.args.get('input_size')
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def read_info(raw: Any) -> CheckpointInfo:
    """The ``args`` (dict or original ``Namespace``, as plain data) and ``class_names`` of a loaded checkpoint."""
    if not isinstance(raw, Mapping):
        return CheckpointInfo()
    args = raw.get('args')
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    args = to_plain(args) if isinstance(args, Mapping) else {}
    names = raw.get('class_names')
    if not (isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names)):
        names = None
    return CheckpointInfo(args=args, class_names=list(names) if names else None)


def to_plain(obj: Any) -> Any:
    """argparse args (Paths, enums, numpy values...) as plain data that ``torch.load(weights_only=True)`` accepts:
    what a checkpoint's ``args`` hold, on save and on load."""
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj) if type(obj) in (list, tuple) else [to_plain(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_plain(v) for v in obj), key=repr)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if type(obj).__module__ == 'numpy' and hasattr(obj, 'tolist'):  # numpy scalars and arrays
        return to_plain(obj.tolist())
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)  # torch.dtype, torch.device and anything else: its name


def load_without_tensors(path: str) -> Any:
    """The checkpoint object with its tensors memory-mapped, not read: its small fields cost no I/O. Raises what
    loading raises (never runs code: weights_only)."""
    import torch
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except RuntimeError as e:
        if 'mmap' not in str(e):
            raise
    from models.weights import safe_load
    return safe_load(str(path))  # a legacy (non-zip) file cannot be mmapped: read it normally


def recorded_args(path: str) -> Dict[str, Any]:
    """The flags a checkpoint file records (``args``), without reading its tensors; {} when it records none or
    cannot be read (loading it later reports why)."""
    try:
        raw = load_without_tensors(path)
    except Exception:  # noqa: BLE001  (any unreadable file: the load that needs it says why)
        return {}
    return read_info(raw).args


def head_classes(state_dict: Mapping[str, Any]) -> Optional[int]:
    """Rows of the checkpoint's classifier (``head.weight``, also under DDP/compile/mmpretrain names); None for a
    backbone-only state dict."""
    for key, value in state_dict.items():
        if _HEAD_KEY.match(str(key)) and getattr(value, 'ndim', 0) == 2:
            return int(value.shape[0])
    return None


def class_names_warning(recorded: Any, found: Optional[Sequence[str]], checkpoint: str, data: str) -> Optional[str]:
    """A warning when the checkpoint's class names (label order) are not the data's: same count, other labels,
    so every accuracy would be silently wrong; None when they agree or either is unknown."""
    if not isinstance(recorded, (list, tuple)) or not recorded or found is None:
        return None
    recorded, found = [str(n) for n in recorded], [str(n) for n in found]
    if recorded == found:
        return None
    if len(recorded) != len(found):
        return (f'{checkpoint} was trained on {len(recorded)} classes, {data} has {len(found)}: its labels do not '
                f'correspond')
    i = next(i for i, (a, b) in enumerate(zip(recorded, found)) if a != b)
    return (f'the classes of {data} are not those {checkpoint} was trained on (label {i} is {found[i]!r} here, '
            f'{recorded[i]!r} in the checkpoint): accuracies compare the wrong labels; use its training classes')


def file_sha256(path: str) -> str:
    """The sha256 of a checkpoint file (of its cached download for a URL): which file eval.json's numbers are of."""
    from models.downloads import resolve_local_path
    h = hashlib.sha256()
    with open(resolve_local_path(path), 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def check_checkpoint_arg(checkpoint: Optional[str]) -> Optional[str]:
    """``--checkpoint``: a file, an http(s) URL or the name of a released file (``hornet_tiny_7x7.in1k``, which the
    loaders download once into the hash-checked cache). Returns the variant a released name is of (else None); a
    one-line ``UserError`` for a missing file. The models (torch, timm) are imported only for a name."""
    if checkpoint is None or checkpoint.startswith(('http://', 'https://')) or os.path.isfile(checkpoint):
        return None
    from models.downloads import find_released, not_a_released_name
    found = find_released(checkpoint)
    if found is not None:
        return found.variant
    why = not_a_released_name(checkpoint)
    raise UserError(f"checkpoint not found: {checkpoint}" + (f", and {why}" if why else ' (check the path)'))


def resolve_input_size(cli_size: Optional[int], info: CheckpointInfo, model_default: int) -> int:
    """``--input_size`` if given (warned when it differs from the checkpoint's), else the checkpoint's, else the
    model's default."""
    recorded = info.input_size
    if cli_size is not None:
        if recorded is not None and cli_size != recorded:
            _logger.warning(
                '--input_size %d differs from the %d px the checkpoint was trained at (its args.input_size); '
                'accuracy may drop: omit --input_size to use %d', cli_size, recorded, recorded)
        return int(cli_size)
    if recorded is not None:
        _logger.info('input size %d px, from the checkpoint (args.input_size)', recorded)
        return recorded
    return int(model_default)


def eval_transform_args(info: CheckpointInfo, input_size: int) -> argparse.Namespace:
    """The flags ``transforms.build_transform(False, args)`` reads, as ``main.py --eval`` would set them for this
    checkpoint: its recorded values, else main.py's defaults."""
    values = {k: info.args.get(k, v) for k, v in EVAL_DEFAULTS.items()}
    return argparse.Namespace(input_size=int(input_size), **values)


def training_class_names(info: CheckpointInfo, num_classes: int) -> Optional[tuple]:
    """``(names, source)``: the class names in label order, from the checkpoint or the training data's folders;
    None when neither is available (or their count is not ``num_classes``)."""
    if info.class_names is not None:
        if len(info.class_names) == num_classes:
            return info.class_names, 'the checkpoint (class_names)'
        _logger.warning('the checkpoint lists %d class names but its head has %d classes: ignoring them',
                        len(info.class_names), num_classes)
    found = _names_from_data(info.args)
    if found is None:
        return None
    names, where = found
    if len(names) != num_classes:
        _logger.warning('%s has %d classes but the checkpoint has %d: not using its names', where, len(names),
                        num_classes)
        return None
    return names, where


def _names_from_data(args: Mapping[str, Any]) -> Optional[tuple]:
    data_set = args.get('data_set')
    data_path = args.get('data_path') or ''
    if data_set == 'QUICKSTART' and not data_path:
        data_path = os.path.join('.', 'data', 'quickstart')
    if data_set in ('IMNET', 'QUICKSTART'):
        folder = os.path.join(str(data_path), 'train')
    elif data_set == 'image_folder':
        folder = str(data_path)
    elif data_set in ('CIFAR', 'CIFAR10'):
        return _cifar_names(str(data_path), ten=data_set == 'CIFAR10')
    else:
        return None
    if not data_path or not os.path.isdir(folder):
        _logger.info('training data folder %s (args.data_path) not found here: no class names from it', folder)
        return None
    import datasets
    try:
        names = datasets.find_classes(folder)  # exactly the label order training used
    except UserError as e:
        _logger.warning('cannot read class names from %s: %s', folder, e)
        return None
    return names, f'the class folders of {folder}'


def _cifar_names(root: str, ten: bool) -> Optional[tuple]:
    folder, meta, key = (('cifar-10-batches-py', 'batches.meta', 'label_names') if ten
                         else ('cifar-100-python', 'meta', 'fine_label_names'))
    path = os.path.join(root, folder, meta)
    try:
        with open(path, 'rb') as f:
            names = list(pickle.load(f, encoding='latin1')[key])  # the file datasets.py reads for training
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError):
        return None
    return names, path


def eval_preprocessing(info: CheckpointInfo, input_size: int) -> Dict[str, Any]:
    """The evaluation preprocessing of ``main.py --eval`` for this checkpoint, step by step, read off the transform
    ``transforms.build_transform`` builds (so it cannot drift from it): ``description`` (one line) and the values a
    runtime needs (``resize``, ``interpolation``, ``center_crop``, ``mean``, ``std``...), for an exported model."""
    import transforms
    args = eval_transform_args(info, input_size)
    out: Dict[str, Any] = {'input_size': [3, int(input_size), int(input_size)], 'layout': 'NCHW', 'color': 'RGB'}
    words = []
    for step in transforms.build_transform(False, args).transforms:
        kind = type(step).__name__
        if kind == 'Resize':
            interp = getattr(step.interpolation, 'value', str(step.interpolation))
            out['interpolation'] = interp
            if isinstance(step.size, int):
                out['resize'] = {'shorter_side': int(step.size)}
                out['crop_pct'] = 224 / 256 if args.crop_pct is None else float(args.crop_pct)
                words.append(f'resize the shorter side to {step.size} px, the longer in proportion rounded down '
                             f'({interp}, antialiased as PIL)')
            else:
                out['resize'] = {'height': int(step.size[0]), 'width': int(step.size[1])}
                words.append(f'resize to {step.size[0]}x{step.size[1]} px, aspect not kept ({interp}, antialiased '
                             f'as PIL)')
        elif kind == 'CenterCrop':
            out['center_crop'] = [int(step.size[0]), int(step.size[1])]
            words.append(f'center crop {step.size[0]}x{step.size[1]}')
        elif kind == 'ToTensor':
            words.append('RGB values / 255, NCHW float32')
        elif kind == 'Normalize':
            out['mean'], out['std'] = [float(m) for m in step.mean], [float(s) for s in step.std]
            words.append(f"subtract mean {tuple(round(m, 4) for m in step.mean)}, divide by std "
                         f"{tuple(round(s, 4) for s in step.std)}")
        else:  # not expected from build_transform(False, ...); named rather than dropped
            words.append(repr(step))
    out['description'] = '; '.join(words)
    return out
