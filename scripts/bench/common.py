"""Code shared by the ``scripts/benchmark.py`` modes: statistics, model building, the environment record.

Model names: timm names (this project's ``hornet_*`` are registered by ``models``), or ``orig:<variant>`` for the
original release's ``hornet.py`` loaded from a file (``--original``) without touching timm's registry.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.util
import io
import math
import os
import platform
import statistics
import time
from functools import partial
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from errors import UserError

DEFAULT_MODELS = ('hornet_tiny_7x7', 'hornet_tiny_gf', 'convnext_tiny', 'swin_tiny_patch4_window7_224')
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
ORIG_PREFIX = 'orig:'


# --------------------------------------------------------------------------------------------- statistics
def summarize(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Median, min, max and inter-quartile range of per-repeat values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return dict(median=None, min=None, max=None, q1=None, q3=None, iqr=None)
    if len(vals) >= 2:
        q1, _, q3 = statistics.quantiles(vals, n=4, method='inclusive')
    else:
        q1 = q3 = vals[0]
    return dict(median=statistics.median(vals), min=min(vals), max=max(vals), q1=q1, q3=q3, iqr=q3 - q1)


# ------------------------------------------------------------------------------------------------ models
def load_original_module(path: str) -> Any:
    """Import the original release's ``hornet.py`` from a file, without letting it touch timm's registry
    (its ``@register_model`` would overwrite this project's variants of the same names)."""
    if not os.path.isfile(path):
        raise UserError(f"--original {path}: file not found (point it at the original release's hornet.py)")
    import timm.models._registry as registry
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        import timm.models.registry as old_registry  # the deprecated path the original imports from
    spec = importlib.util.spec_from_file_location('hornet_original_release', path)
    mod = importlib.util.module_from_spec(spec)
    saved = (old_registry.register_model, registry.register_model)
    old_registry.register_model = registry.register_model = lambda fn: fn
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            spec.loader.exec_module(mod)
    except Exception as e:  # any import-time failure of foreign code becomes one line
        raise UserError(f"--original {path}: cannot import it ({type(e).__name__}: {e})") from None
    finally:
        old_registry.register_model, registry.register_model = saved
    for attr in ('HorNet', 'Block', 'gnconv'):
        if not hasattr(mod, attr):
            raise UserError(f"--original {path}: no {attr} defined; is this the original HorNet hornet.py?")
    return mod


def build_original(mod: Any, name: str) -> nn.Module:
    """HorNet-T 7x7 exactly as the original README builds it; other names through the file's own factories."""
    with contextlib.redirect_stdout(io.StringIO()):  # its gnconv prints a line per block
        if name == 'hornet_tiny_7x7':
            s = 1.0 / 3.0
            return mod.HorNet(depths=[2, 3, 18, 2], base_dim=64, block=mod.Block, gnconv=[
                partial(mod.gnconv, order=2, s=s), partial(mod.gnconv, order=3, s=s),
                partial(mod.gnconv, order=4, s=s), partial(mod.gnconv, order=5, s=s)])
        factory = getattr(mod, name, None)
        if not callable(factory):
            raise UserError(f"{ORIG_PREFIX}{name}: the original file defines no factory {name}()")
        return factory()


def build_model(name: str, input_size: int, gf_impl: str, original: Any = None) -> nn.Module:
    """A model by timm name (ours: ``hornet_*``), or ``orig:<name>`` from the original release file."""
    if name.startswith(ORIG_PREFIX):
        return build_original(original, name[len(ORIG_PREFIX):])
    import timm
    kwargs: Dict[str, Any] = {}
    default = timm.models.get_pretrained_cfg(name)
    default_size = (default.input_size[-1] if default is not None and default.input_size else 224)
    if input_size != default_size and not name.startswith('hornet_'):
        kwargs['img_size'] = input_size  # ViT/Swin-style models fix their grid at construction
    kwargs['num_classes'] = 1000  # ImageNet-1K heads for all (HorNet-L's default cfg is its 21841-class 22K head)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError:
        model = timm.create_model(name, pretrained=False, num_classes=1000)
    from models import fast_ops
    fast_ops.enable(model, gf_impl=gf_impl)  # HorNet's Global Filters; other models have none
    return model


def check_models(names: Sequence[str], original_path: Optional[str]) -> None:
    """One-line UserError for names that cannot be built, with close matches."""
    import timm
    import models
    avail = list(models.HORNET_VARIANTS) + [n for n in timm.list_models() if n not in models.HORNET_VARIANTS]
    avail_set = set(avail)
    for name in names:
        if name.startswith(ORIG_PREFIX):
            base = name[len(ORIG_PREFIX):]
            if not original_path:
                raise UserError(f"{name} needs --original PATH/to/original/hornet.py")
            if base not in models.HORNET_VARIANTS:
                close = difflib.get_close_matches(base, models.HORNET_VARIANTS, n=3, cutoff=0.5)
                hint = f"; did you mean: {', '.join(ORIG_PREFIX + c for c in close)}" if close else ''
                raise UserError(f"unknown original model {name!r}{hint}")
        elif name not in avail_set:
            close = difflib.get_close_matches(name, avail, n=5, cutoff=0.5)
            hint = f"; did you mean: {', '.join(close)}" if close else ''
            raise UserError(f"unknown model {name!r}{hint}")


def has_global_filter(model: nn.Module) -> bool:
    from models import GlobalLocalFilter
    return any(isinstance(m, GlobalLocalFilter) for m in model.modules())


# ------------------------------------------------------------------------------------------------- cases
def apply_checkpointing(model: nn.Module, name: str, mode: str) -> None:
    """``--grad_checkpointing`` value: off, on (timm's set_grad_checkpointing) or selective (HorNet's)."""
    if mode == 'off':
        return
    method = 'set_grad_checkpointing' if mode == 'on' else 'set_selective_checkpointing'
    if not hasattr(model, method):
        raise UserError(f"{name} has no {method}(); leave it out of --grad_checkpointing {mode} runs")
    getattr(model, method)(True)


# the opt-in levers of the HorNet block (``models.fast_ops.enable``) that are a ``--<lever> off on`` flag each;
# gf_impl (``--gf_impl``) and selective checkpointing (``--grad_checkpointing selective``) have their own flags
LEVERS = ('fused_gating', 'triton_dwconv')


def apply_lever(model: nn.Module, lever: str, enable: bool) -> Optional[bool]:
    """Set one of :data:`LEVERS` with ``models.fast_ops.enable``.

    Returns whether it is on, or None where it does not apply: no block of the model takes it (timm's models, the
    original code, or ``triton_dwconv`` on a model whose blocks are all Global Filters).
    """
    from models import fast_ops
    return enable if fast_ops.enable(model, **{lever: enable})[lever] else None


def check_triton_dwconv(device: torch.device) -> None:
    """One-line error unless the Triton depthwise conv can run on ``device`` (timing torch's fallback under the
    lever's name would be a wrong number)."""
    from models.kernels import interpreting, triton_available
    reason = triton_available()
    if reason is not None:
        raise UserError(f"--triton_dwconv on needs triton ({reason}); install it or leave the lever off")
    if device.type != 'cuda' and not interpreting():
        raise UserError("--triton_dwconv on: the Triton kernel runs on CUDA, and on the CPU only under "
                        "TRITON_INTERPRET=1 (set it in the environment, slow: for smoke tests) or use --device cuda")


def error_text(e: BaseException) -> str:
    """An exception as one short line (type and message), for a result row or a one-line error."""
    text = ' '.join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


# ----------------------------------------------------------------------------------------- environment
def resolve_device(name: str) -> torch.device:
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu)")
    return torch.device(name)


def loadavg() -> Optional[Tuple[float, float, float]]:
    try:
        return os.getloadavg()
    except OSError:
        return None


def cpu_model_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.lower().startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{cpu_model_name()} ({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads)'


def environment(device: torch.device) -> Dict[str, Any]:
    import timm
    meta = dict(device=device.type, device_name=device_name(device), cpu=cpu_model_name(),
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                timm=timm.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                platform=platform.platform(), time=time.strftime('%Y-%m-%dT%H:%M:%S%z'))
    if device.type == 'cuda':
        meta.update(cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    tf32_cudnn=torch.backends.cudnn.allow_tf32)
    try:
        meta['loadavg_1_5_15min'] = os.getloadavg()
    except OSError:
        pass
    return meta


def settings_dict(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ('json', 'markdown')}


# ---------------------------------------------------------------------------------------------- output
def fmt_stats(s: Dict[str, Any], digits: int = 2) -> str:
    """A :func:`summarize` result as 'median [min-max]' for the tables."""
    if s.get('median') is None:
        return '-'
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"

