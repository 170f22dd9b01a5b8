"""Reading HorNet weights from every format users hold, safely; nothing here knows the model's modules.

Formats: the original release (``{'model': sd, 'model_ema'?: sd, ...}``, training files pickle an
``argparse.Namespace``), mmpretrain (``{'state_dict': sd}`` with renamed keys), this project's checkpoints,
bare state dicts and ``.safetensors`` files. Nothing here can run code from a file: pickles go through
``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allowed beyond plain data.

Fitting a state dict to a model (strict checks, resized filters, a new head) is the model's business:
``models.hornet.checkpoint_filter_fn``, beside the model as in timm.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import zipfile
from typing import Any, Dict, Mapping, Optional

import torch

from .downloads import IN22K_CLASSES, resolve_local_path
from .errors import CheckpointError

__all__ = ['CheckpointError', 'IN22K_CLASSES', 'safe_load', 'extract_state_dict', 'convert_keys', 'guess_variant',
           'select_in1k_head_rows', 'in1k_to_21k_map']

_logger = logging.getLogger(__name__)


def safe_load(path: str) -> Any:
    """Load a checkpoint file without executing code from it (``weights_only=True``; .safetensors supported).

    ``path`` may be an http(s) URL: the file is downloaded into the cache first (:func:`resolve_local_path`).
    """
    path = resolve_local_path(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path} (check the path)")
    if path.endswith('.safetensors'):
        try:
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {path}: not a valid .safetensors file ({_short(e)})") from None
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read {path}: the file is empty (re-download or re-save it)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        msg, full = _short(e), str(e)
        if 'Unsupported global' in full or 'GLOBAL ' in full:
            found = re.search(r'GLOBAL ([\w.]+)', full)
            what = f" ({found.group(1)})" if found else ''
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled code objects{what} that could run code; "
                f"only tensors and plain data are accepted (re-save the state dict with torch.save)") from None
        raise CheckpointError(f"cannot read {path}: not a PyTorch checkpoint or corrupt ({msg})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as e:
        raise CheckpointError(
            f"cannot read {path}: truncated, corrupt or not a PyTorch checkpoint ({_short(e)})") from None


def _short(e: BaseException) -> str:
    """One line of an exception's text. torch's weights_only refusal also advises retrying with
    weights_only=False, which would run code from the file: only its reason (the unpickler's error) is kept."""
    text = str(e)
    if 'Weights only load failed' in text:
        found = re.search(r'WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|$)', text, re.S)
        text = found.group(1) if found else 'refused by the safe (weights_only) loader'
    text = ' '.join(text.split())
    return (text[:200] + '...') if len(text) > 200 else text


def extract_state_dict(checkpoint: Any, use_ema: bool = False, path: str = '<checkpoint>') -> Dict[str, torch.Tensor]:
    """Pick the weights out of a loaded checkpoint of any supported layout."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a state dict or checkpoint dict")
    order = ('model_ema', 'state_dict_ema', 'model', 'state_dict') if use_ema else ('model', 'state_dict', 'model_ema')
    for key in order:
        value = checkpoint.get(key)
        if isinstance(value, Mapping) and value:
            sd = value
            break
    else:
        sd = checkpoint
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} has no model weights (top-level keys: {sorted(map(str, checkpoint))[:8]})")
    return dict(sd)


_MMPRETRAIN_RULES = [
    (re.compile(r'^backbone\.norm3\.'), 'norm.'),
    (re.compile(r'^backbone\.'), ''),
    (re.compile(r'^head\.fc\.'), 'head.'),
    (re.compile(r'\.gnconv\.projs\.'), '.gnconv.pws.'),
    (re.compile(r'\.(gamma[12])\.weight$'), r'.\1'),
]


def convert_keys(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map mmpretrain/DDP/compiled key names onto the original release's names."""
    out = {}
    is_mm = any(k.startswith('backbone.') for k in sd)
    for k, v in sd.items():
        for prefix in ('module.', '_orig_mod.'):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if is_mm:
            for pattern, repl in _MMPRETRAIN_RULES:
                k = pattern.sub(repl, k)
        out[k] = v
    return out


def guess_variant(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Name the released variant a (converted) state dict looks like, to make mismatch errors actionable."""
    stem = sd.get('downsample_layers.0.0.weight')
    if stem is None or stem.ndim != 4:
        return None
    size = {64: 'tiny', 96: 'small', 128: 'base', 192: 'large'}.get(stem.shape[0])
    if size is None:
        return None
    gf = [v for k, v in sd.items() if k.endswith('complex_weight')]
    if not gf:
        return f'hornet_{size}_7x7'
    return f'hornet_{size}_gf_img384' if gf[0].shape[1] > 14 else f'hornet_{size}_gf'


_IN1K_MAP_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'in1k_to_21k_map.pth')
_IN1K_MAP: Optional[torch.Tensor] = None


def in1k_to_21k_map() -> torch.Tensor:
    """The original release's ``in1k_to_21k_map.pth``: 1000 int64 indices, row i of an ImageNet-1K head is row
    map[i] of the 21841-class ImageNet-22K head (ImageNet-1K class order of torchvision's ImageFolder)."""
    global _IN1K_MAP
    if _IN1K_MAP is None:
        rows = torch.load(_IN1K_MAP_FILE, map_location='cpu', weights_only=True)
        assert rows.dtype == torch.int64 and rows.shape == (1000,), (rows.dtype, rows.shape)
        _IN1K_MAP = rows
    return _IN1K_MAP.clone()


def select_in1k_head_rows(state_dict: Mapping[str, Any], num_classes: Optional[int],
                          path: str = '<checkpoint>') -> Mapping[str, Any]:
    """For fine-tuning an ImageNet-22K model on ImageNet-1K, as the original ``main.py --finetune`` does: when the
    checkpoint's classifier has 21841 rows and the new model has 1000 classes, keep exactly the 1000 ImageNet-1K
    rows (``head.weight[map]``, ``head.bias[map]`` with :func:`in1k_to_21k_map`) instead of a new random head.

    Any other state dict (or class count) is returned unchanged. The result has the original release's key names
    (mmpretrain/DDP names converted), which ``models.hornet.checkpoint_filter_fn`` accepts.
    """
    if num_classes != 1000:
        return state_dict
    sd = convert_keys(extract_state_dict(state_dict, path=path))
    weight, bias = sd.get('head.weight'), sd.get('head.bias')
    if weight is None or weight.ndim != 2 or weight.shape[0] != IN22K_CLASSES:
        return state_dict
    rows = in1k_to_21k_map()
    sd['head.weight'] = weight[rows].contiguous()
    if bias is not None and bias.shape == (IN22K_CLASSES,):
        sd['head.bias'] = bias[rows].contiguous()
    _logger.info('%s: kept the 1000 ImageNet-1K rows of its %d-class ImageNet-22K head (in1k_to_21k_map.pth, '
                 'as the original release does)', path, IN22K_CLASSES)
    return sd
