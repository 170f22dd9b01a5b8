"""Reading HorNet weights from every format users hold, safely and strictly.

Formats: the original release (``{'model': sd, 'model_ema'?: sd, ...}``, training files pickle an
``argparse.Namespace``), mmpretrain (``{'state_dict': sd}`` with renamed keys), this project's checkpoints,
bare state dicts and ``.safetensors`` files. Nothing here can run code from a file: pickles go through
``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allowed beyond plain data.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import zipfile
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['CheckpointError', 'safe_load', 'resolve_local_path', 'extract_state_dict', 'checkpoint_filter_fn',
           'load_pretrained_file', 'guess_variant', 'create_model_with_weights', 'select_in1k_head_rows',
           'in1k_to_21k_map']

_logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file/keys and the fix."""


def resolve_local_path(path_or_url: Any) -> str:
    """A local path for ``path_or_url``: an http(s) URL, or the name of a released file (``hornet_tiny_7x7.in1k``,
    see :func:`models.pretrained.find_released`), is downloaded once into torch's hub cache (hash-checked where the
    sha256 prefix is known; see :func:`models.pretrained.download_cached`), anything else is returned as is.
    Raises a one-line :class:`CheckpointError` when the download fails."""
    path = os.fspath(path_or_url)
    if re.match(r'^https?://', path, re.IGNORECASE):
        from .pretrained import download_cached
        return download_cached(path)
    from .pretrained import DownloadError, download_cached, find_released
    released = find_released(path)
    if released is not None:
        try:
            return download_cached(released.url, file_name=released.file_name,
                                   sha256_prefix=released.sha256_prefix)
        except DownloadError as e:
            raise DownloadError(f"released weights {path}: {e}") from None
    return path


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


def _convert_keys(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
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


def _resize_filter(w: torch.Tensor, size) -> torch.Tensor:
    w2 = F.interpolate(w.permute(3, 0, 1, 2).float(), size=tuple(size), mode='bilinear', align_corners=True)
    return w2.permute(1, 2, 3, 0).to(w.dtype).contiguous()


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module, path: str = '<checkpoint>',
                         allow_new_head: bool = True) -> Dict[str, torch.Tensor]:
    """Turn any supported checkpoint into a state dict that ``model.load_state_dict(strict=True)`` accepts.

    GF filters of another resolution are interpolated (as the original does at run time); a classifier of
    another class count is replaced by the model's own with a warning (unless ``allow_new_head`` is False, as
    for resuming or evaluating, where it is an error). Any other missing, unexpected or
    mis-shaped key raises :class:`CheckpointError` naming it.
    """
    sd = _convert_keys(extract_state_dict(state_dict, path=path))
    target = model.state_dict()
    head_keys = [k for k in ('head.weight', 'head.bias') if k in target]

    for k, v in list(sd.items()):
        if k.endswith('complex_weight') and k in target and v.shape != target[k].shape \
                and v.ndim == 4 and v.shape[0] == target[k].shape[0]:
            _logger.info('Resizing GF filter %s from %s to %s', k, tuple(v.shape[1:3]), tuple(target[k].shape[1:3]))
            sd[k] = _resize_filter(v, target[k].shape[1:3])

    ck_head = sd.get('head.weight')
    if ck_head is not None and head_keys and ck_head.shape != target['head.weight'].shape \
            and ck_head.ndim == 2 and ck_head.shape[1] == target['head.weight'].shape[1] and allow_new_head:
        _logger.warning('Checkpoint classifier has %d classes, model has %d: keeping the model\'s new head',
                        ck_head.shape[0], target['head.weight'].shape[0])
        for k in head_keys:
            sd[k] = target[k]
    elif ck_head is not None and not head_keys:  # model built with num_classes=0: drop the head quietly
        sd.pop('head.weight', None)
        sd.pop('head.bias', None)

    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    mismatched = [f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}"
                  for k in target if k in sd and sd[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        looks = guess_variant(sd)
        hint = f"; the checkpoint looks like {looks}" if looks else ''
        parts = []
        for label, items in (('missing', missing), ('unexpected', unexpected), ('shape mismatch', mismatched)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
        raise CheckpointError(
            f"{path} does not fit this model: {'; '.join(parts)}{hint} "
            f"(use the matching --model / num_classes)")
    return sd


def load_pretrained_file(model: nn.Module, path: str, use_ema: bool = False) -> None:
    """Load weights of any supported format into ``model``, strictly (see :func:`checkpoint_filter_fn`)."""
    raw = safe_load(path)
    sd = extract_state_dict(raw, use_ema=use_ema, path=path)
    sd = checkpoint_filter_fn(sd, model, path=path)
    model.load_state_dict(sd, strict=True)
    _logger.info('Loaded weights from %s', path)


def create_model_with_weights(name: str, num_classes: int, state_dict: Mapping[str, Any], path: str) -> nn.Module:
    """Build registered model ``name`` on the meta device (skipping the random init, seconds on CPU) and adopt the
    checkpoint's tensors as fp32 parameters, strictly (see :func:`checkpoint_filter_fn`)."""
    import timm
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=num_classes)
    sd = checkpoint_filter_fn(state_dict, model, path=path)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):  # a tensor not in the state dict
        model = timm.create_model(name, num_classes=num_classes)
        model.load_state_dict(sd, strict=True)
    return model


_IN1K_MAP_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'in1k_to_21k_map.pth')
IN22K_CLASSES = 21841  # classes of the original release's ImageNet-22K head
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
    (mmpretrain/DDP names converted), which :func:`checkpoint_filter_fn` accepts.
    """
    if num_classes != 1000:
        return state_dict
    sd = _convert_keys(extract_state_dict(state_dict, path=path))
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
