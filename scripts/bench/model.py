#!/usr/bin/env python3
"""Training / inference throughput and peak memory of HorNet against peers, or data-pipeline throughput.

``--mode model`` (default) builds every model x setting combination ("case") once, warms each up, then runs
``--repeats`` rounds; in every round each case is timed once (training: ``--iters`` steps of forward, backward
and AdamW on one fixed batch; inference: ``--iters`` forward passes under ``torch.inference_mode``). Cases
alternate inside a round (and the order flips every other round) so machine-load drift hits all of them alike;
medians, min/max and IQR over rounds are reported, and each case's per-round ratio to a baseline case.

Peak memory is measured on a separate, untimed step per case:
  * CUDA: ``torch.cuda.max_memory_allocated`` during the step minus the allocation before it, plus this case's
    parameters and optimizer state (what a process holding only this model would report).
  * CPU: peak resident set size (RSS, ``/proc/self/statm`` sampled every 1 ms by a thread) during the step minus
    RSS just before it (after ``gc.collect()`` and glibc ``malloc_trim(0)``), plus parameters and optimizer state.

``--profile TOP`` then profiles one training step per case (``torch.profiler``): on a GPU the TOP kernels by CUDA
time, the kernel launches per step and the share of the step the GPU was busy; on the CPU the ops by self time and
the leaf aten ops per step. ``--time_limit`` (or SIGTERM) stops starting new work and still writes the JSON;
``--compile_mode`` picks torch.compile's mode (``reduce-overhead``: CUDA graphs); ``--markdown`` saves the tables.

``--mode memory`` counts the exact tensor memory of one training step (parameters, AdamW state, gradients,
activations) on fake tensors: no arithmetic runs, so any model and batch size takes seconds on any machine.

``--mode data`` times the training input pipeline (the original recipe: RandAugment rand-m9-mstd0.5-inc1, bicubic
RandomResizedCrop, flip, random erasing 0.25) through a DataLoader for each ``--pipelines`` x ``--workers`` case on
``--data_path`` (an ImageFolder) or on a generated folder of random JPEGs: ``reference`` is today's kind (timm
``create_transform``, float output), ``uint8`` the default ``--data_backend pil`` (uint8 output). It reports img/s,
img/s per worker and the loading processes' CPU-seconds per image.

Examples::

    python scripts/benchmark.py --device cpu --batch_size 16 --repeats 5 --json cpu.json
    python scripts/benchmark.py --models hornet_tiny_7x7 orig:hornet_tiny_7x7 --original /tmp/orig/hornet.py
    python scripts/benchmark.py --device cuda --dtype fp32 bf16 fp16 --channels_last off on --compile off on
    python scripts/benchmark.py --mode data --workers 0 1 2
    python scripts/benchmark.py --mode memory --models hornet_large_7x7 --grad_checkpointing off on selective --batch_size 32
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import difflib
import gc
import importlib.util
import io
import json
import logging
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from errors import UserError  # noqa: E402

_logger = logging.getLogger('benchmark')

DEFAULT_MODELS = ('hornet_tiny_7x7', 'hornet_tiny_gf', 'convnext_tiny', 'swin_tiny_patch4_window7_224')
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
ORIG_PREFIX = 'orig:'
IMG_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.ppm', '.tif', '.tiff')


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


# ------------------------------------------------------------------------------------------------ memory
_PAGE = os.sysconf('SC_PAGE_SIZE') if hasattr(os, 'sysconf') else 4096


def _rss_bytes() -> Optional[int]:
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Context manager: peak RSS above the RSS at entry, sampled by a thread every ``interval`` seconds.

    Falls back to the growth of ``ru_maxrss`` (a process-lifetime high-water mark) where /proc is missing."""

    method = 'rss_sampled_1ms_minus_baseline'

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak_delta = 0
        self._stop = threading.Event()
        self._peak = 0
        self._thread: Optional[threading.Thread] = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            v = _rss_bytes() or 0
            if v > self._peak:
                self._peak = v
            time.sleep(self.interval)

    def __enter__(self) -> 'PeakRSS':
        gc.collect()
        _malloc_trim()
        self._base = _rss_bytes()
        if self._base is None:
            import resource
            self.method = 'ru_maxrss_growth'
            self._base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        else:
            self._peak = self._base
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes() or 0)
            self.peak_delta = self._peak - self._base
        else:
            import resource
            self.peak_delta = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._base_max


@contextlib.contextmanager
def cuda_peak(device: torch.device) -> Iterator[Dict[str, int]]:
    """Yield a dict that gets ``peak_delta``: max allocated during the block minus allocated before it."""
    out: Dict[str, int] = {}
    torch.cuda.synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    yield out
    torch.cuda.synchronize(device)
    out['peak_delta'] = torch.cuda.max_memory_allocated(device) - before


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
    if hasattr(model, 'set_gf_impl'):
        model.set_gf_impl(gf_impl)
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
    return hasattr(model, 'set_gf_impl') and any(hasattr(m, 'complex_weight') for m in model.modules())


# ------------------------------------------------------------------------------------------------- cases
def apply_checkpointing(model: nn.Module, name: str, mode: str) -> None:
    """``--grad_checkpointing`` value: off, on (timm's set_grad_checkpointing) or selective (HorNet's)."""
    if mode == 'off':
        return
    method = 'set_grad_checkpointing' if mode == 'on' else 'set_selective_checkpointing'
    if not hasattr(model, method):
        raise UserError(f"{name} has no {method}(); leave it out of --grad_checkpointing {mode} runs")
    getattr(model, method)(True)


class Case:
    """One model under one setting, with its optimizer, fixed batch and step functions."""

    def __init__(self, name: str, dtype: str, channels_last: bool, compile_: bool, gf_impl: Optional[str],
                 args: argparse.Namespace, device: torch.device, original: Any, grad_ckpt: str = 'off'):
        self.name, self.dtype, self.channels_last, self.compile, self.gf_impl = (
            name, dtype, channels_last, compile_, gf_impl)
        self.grad_ckpt = grad_ckpt
        self.device = device
        self.batch = args.batch_size
        self.error: Optional[str] = None
        self.train_s: List[float] = []
        self.infer_s: List[float] = []
        self.train_cpu: List[float] = []  # images per process CPU-second (all threads): less load-sensitive
        self.infer_cpu: List[float] = []
        self.mem: Dict[str, Any] = {}
        self.profile: Dict[str, Any] = {}
        self.compile_mode = getattr(args, 'compile_mode', 'default') if compile_ else None
        torch.manual_seed(args.seed)
        model = build_model(name, args.input_size, gf_impl or 'fft', original).to(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=fmt)
        apply_checkpointing(model, name, grad_ckpt)
        self.params = sum(p.numel() for p in model.parameters())
        self.x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
        self.x = self.x.contiguous(memory_format=fmt)
        num_classes = getattr(model, 'num_classes', 1000) or 1000
        self.y = torch.randint(0, num_classes, (args.batch_size,), device=device)
        # every model gets torch's fused AdamW where it exists (the setting main.py uses by default)
        fused = args.fused_adamw == 'on' and device.type in ('cpu', 'cuda')
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=fused or None)
        use_scaler = dtype == 'fp16' and device.type == 'cuda'
        self.scaler = torch.amp.GradScaler('cuda') if use_scaler else None
        self.fwd: Callable[[torch.Tensor], torch.Tensor] = model
        if compile_:
            mode = None if self.compile_mode == 'default' else self.compile_mode
            backend = getattr(args, 'compile_backend', 'inductor')
            self.fwd = torch.compile(model, mode=mode) if backend == 'inductor' else torch.compile(model, backend=backend)

    @property
    def label(self) -> str:
        parts = [self.name, self.dtype, 'cl' if self.channels_last else 'nchw']
        if self.compile:
            parts.append('compile' if self.compile_mode in (None, 'default') else f'compile:{self.compile_mode}')
        if self.grad_ckpt != 'off':
            parts.append('ckpt' if self.grad_ckpt == 'on' else 'sel-ckpt')
        if self.gf_impl:
            parts.append(f'gf={self.gf_impl}')
        return ' '.join(parts)

    def key(self) -> Dict[str, Any]:
        return dict(model=self.name, dtype=self.dtype, channels_last=self.channels_last, compile=self.compile,
                    compile_mode=self.compile_mode, gf_impl=self.gf_impl, grad_checkpointing=self.grad_ckpt)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == 'fp32':
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.dtype])

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def train_step(self) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = F.cross_entropy(self.fwd(self.x).float(), self.y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()

    def infer_step(self) -> None:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            self.fwd(self.x)

    def timed(self, step: Callable[[], None], iters: int) -> Tuple[float, float]:
        """Images per wall-clock second and per process CPU-second over ``iters`` back-to-back steps."""
        self._sync()
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(iters):
            step()
        self._sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return self.batch * iters / wall, self.batch * iters / max(cpu, 1e-9)

    def state_bytes(self) -> int:
        """Parameters plus optimizer state (AdamW: two moments per parameter once it has stepped)."""
        n = sum(p.numel() * p.element_size() for p in self.model.parameters())
        for st in self.opt.state.values():
            n += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
        return n

    def measure_memory(self, whats: Sequence[str] = ('train', 'infer')) -> None:
        for what, step in (('train', self.train_step), ('infer', self.infer_step)):
            if what not in whats:
                continue
            self.opt.zero_grad(set_to_none=True)
            if self.device.type == 'cuda':
                with cuda_peak(self.device) as out:
                    step()
                delta, method = out['peak_delta'], 'cuda_max_memory_allocated_minus_before'
            else:
                with PeakRSS() as rss:
                    step()
                delta, method = rss.peak_delta, rss.method
            state = self.state_bytes() if what == 'train' else sum(
                p.numel() * p.element_size() for p in self.model.parameters())
            self.mem[what] = dict(peak_mb=(delta + state) / 2 ** 20, step_delta_mb=delta / 2 ** 20,
                                  state_mb=state / 2 ** 20, method=method)

    def run_profile(self, top: int) -> None:
        """One training step under ``torch.profiler``: what :func:`profile_step` returns, kept in ``self.profile``.

        A profiler failure is reported in the profile (``error``) and does not fail the timed case."""
        try:
            self.profile = profile_step(self.train_step, self.device, top, sync=self._sync)
        except Exception as e:  # noqa: BLE001 - the timings stand without the profile
            self.profile = dict(device=self.device.type, error=_err(e))


def _ev_time(e: Any, attr: str) -> float:
    """A profiler time attribute in microseconds (``*_device_*`` names; older torch: ``*_cuda_*``)."""
    v = getattr(e, attr, None)
    if v is None:
        v = getattr(e, attr.replace('device', 'cuda'), 0.0)
    return float(v or 0.0)


# aten ops that launch no kernel: allocations, metadata, host-side queries (views are found from their schemas)
_NO_KERNEL_ATEN = frozenset({
    'empty', 'empty_strided', 'empty_like', 'new_empty', 'new_empty_strided', 'detach', 'detach_', 'lift_fresh',
    'alias', 'set_', 'resize_', 'resize_as_', '_local_scalar_dense', 'item', 'result_type', 'promote_types',
    '_unsafe_view', 'is_same_size', 'is_nonzero', 'size', 'stride', 'to', 'contiguous', 'reshape', 'flatten',
    'record_stream', '_has_compatible_shallow_copy_type', 'lift_fresh_copy', 'is_pinned', 'dim', 'numel',
})


def _launches_kernel(event_name: str) -> bool:
    """False for an ``aten::`` op that only allocates, aliases (views) or reads metadata."""
    name = event_name.split('::', 1)[-1]
    if name in _NO_KERNEL_ATEN:
        return False
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return True
    try:
        overloads = [getattr(packet, o) for o in packet.overloads()]
    except Exception:  # noqa: BLE001 - an op torch cannot describe is counted
        return True
    if not overloads:
        return True
    for op in overloads:
        rets = op._schema.returns
        is_view = bool(rets) and all(r.alias_info is not None and not r.alias_info.is_write for r in rets)
        if not (is_view or torch.Tag.inplace_view in op.tags):
            return True
    return False


def profile_step(step: Callable[[], None], device: torch.device, top: int,
                 sync: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
    """Per-kernel (CUDA) or per-op (CPU) time of one call of ``step`` under ``torch.profiler``.

    CUDA: ``kernels`` are the device kernels by self CUDA time (name, count, total, share of all kernel time),
    ``launches`` the number of kernel executions in the step, ``kernel_ms`` their summed time and ``busy`` that
    time over the step's wall time (the rest: launch gaps, host syncs, allocator work). CPU: ``ops`` by self CPU
    time; ``launches`` counts leaf aten ops (ops that call no other aten op; views and allocations excluded),
    the CPU analogue of kernel launches.
    ``ops`` (both devices) are aten ops by self CPU time, with their CUDA time on a GPU."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == 'cuda'
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        step()
        if sync is not None:
            sync()
    wall_ms = (time.perf_counter() - t0) * 1e3
    return summarize_profile(prof.events(), cuda, wall_ms, top)


def summarize_profile(events: Sequence[Any], cuda: bool, wall_ms: float, top: int) -> Dict[str, Any]:
    """The tables of :func:`profile_step` from a profiler's ``events()`` (``FunctionEvent`` objects)."""
    from torch.autograd import DeviceType
    out: Dict[str, Any] = dict(device='cuda' if cuda else 'cpu', wall_ms=wall_ms, top=top)
    cpu_ops = [e for e in events if getattr(e, 'device_type', DeviceType.CPU) == DeviceType.CPU]
    aten = [e for e in cpu_ops if e.name.startswith('aten::')]
    leaf = [e for e in aten if not any(c.name.startswith('aten::') for c in e.cpu_children)]
    kernel_cache: Dict[str, bool] = {}
    leaf = [e for e in leaf if kernel_cache.setdefault(e.name, _launches_kernel(e.name))]
    out['aten_ops'] = len(aten)
    out['leaf_aten_ops'] = len(leaf)
    # ops by self CPU time (with their CUDA time on a GPU)
    by_op: Dict[str, Dict[str, float]] = {}
    for e in cpu_ops:
        d = by_op.setdefault(e.name, dict(calls=0, self_cpu_us=0.0, device_us=0.0))
        d['calls'] += 1
        d['self_cpu_us'] += _ev_time(e, 'self_cpu_time_total')
        if cuda:
            d['device_us'] += _ev_time(e, 'self_device_time_total')
    total_cpu = sum(d['self_cpu_us'] for d in by_op.values()) or 1.0
    ops = sorted(by_op.items(), key=lambda kv: -kv[1]['self_cpu_us'])[:top]
    out['ops'] = [dict(op=k, calls=int(d['calls']), self_cpu_ms=d['self_cpu_us'] / 1e3,
                       share=d['self_cpu_us'] / total_cpu, **({'self_cuda_ms': d['device_us'] / 1e3} if cuda else {}))
                  for k, d in ops]
    out['self_cpu_ms'] = total_cpu / 1e3
    if cuda:
        kern = [e for e in events if getattr(e, 'device_type', None) == DeviceType.CUDA]
        is_copy = lambda n: n.lower().startswith(('memcpy', 'memset'))  # noqa: E731
        by_k: Dict[str, Dict[str, float]] = {}
        for e in kern:
            d = by_k.setdefault(e.name, dict(calls=0, us=0.0))
            d['calls'] += 1
            us = _ev_time(e, 'self_device_time_total') or _ev_time(e, 'device_time_total')
            if not us and getattr(e, 'time_range', None) is not None:
                us = float(e.time_range.elapsed_us())
            d['us'] += us
        total_k = sum(d['us'] for d in by_k.values()) or 1.0
        out['launches'] = sum(int(d['calls']) for k, d in by_k.items() if not is_copy(k))
        out['memcpy_memset'] = sum(int(d['calls']) for k, d in by_k.items() if is_copy(k))
        out['kernel_ms'] = total_k / 1e3
        out['busy'] = out['kernel_ms'] / wall_ms if wall_ms else None
        out['kernels'] = [dict(kernel=k, calls=int(d['calls']), ms=d['us'] / 1e3, share=d['us'] / total_k,
                               avg_us=d['us'] / max(d['calls'], 1))
                          for k, d in sorted(by_k.items(), key=lambda kv: -kv[1]['us'])[:top]]
        out['launch_count_method'] = 'CUDA kernel events in one step (torch.profiler/CUPTI); memcpy/memset apart'
        out['host_launch_calls'] = sum(1 for e in cpu_ops if e.name.startswith(('cudaLaunchKernel', 'cuLaunchKernel')))
    else:
        out['launches'] = len(leaf)
        out['launch_count_method'] = ('leaf aten ops in one step (ops that call no other aten op), views and '
                                      'allocations excluded')
    return out


def format_profile(label: str, p: Dict[str, Any], top: Optional[int] = None) -> str:
    """Markdown: the step's launch count, then the top kernels (GPU) and the top ops by self CPU time."""
    top = top or p.get('top') or 20
    if p.get('error'):
        return f"**Profile of one training step, {label}**: failed ({p['error']})"
    lines = [f"**Profile of one training step, {label}** ({p['device']}): wall {p['wall_ms']:.1f} ms under the "
             f"profiler, {p['launches']} launches ({p['launch_count_method']})"
             + (f", kernel time {p['kernel_ms']:.1f} ms = {100 * p['busy']:.0f}% of the wall time"
                if p.get('kernel_ms') is not None and p.get('busy') is not None else '') + '.', '']
    if p.get('kernels'):
        lines += ['| kernel | calls | CUDA ms | share | avg us |', '|---|--:|--:|--:|--:|']
        for k in p['kernels'][:top]:
            name = k['kernel'] if len(k['kernel']) <= 90 else k['kernel'][:87] + '...'
            lines.append(f"| `{name.replace('|', '/')}` | {k['calls']} | {k['ms']:.2f} | {100 * k['share']:.1f}% "
                         f"| {k['avg_us']:.1f} |")
        lines.append('')
    cuda = p['device'] == 'cuda'
    lines += ['| op | calls | self CPU ms | share of CPU time |' + (' self CUDA ms |' if cuda else ''),
              '|---|--:|--:|--:|' + ('--:|' if cuda else '')]
    for o in p['ops'][:top]:
        lines.append(f"| `{o['op']}` | {o['calls']} | {o['self_cpu_ms']:.2f} | {100 * o['share']:.1f}% |"
                     + (f" {o.get('self_cuda_ms', 0.0):.2f} |" if cuda else ''))
    return '\n'.join(lines)


def build_cases(args: argparse.Namespace, device: torch.device, original: Any) -> List[Case]:
    """Every model x dtype x layout x compile x gf_impl combination; gf_impl only varies for GF models."""
    cases: List[Case] = []
    plain: set = set()  # models without a Global Filter: gf_impl does not apply
    for name in dict.fromkeys(args.models):
        for dtype in dict.fromkeys(args.dtype):
            for cl in dict.fromkeys(args.channels_last):
                for comp in dict.fromkeys(args.compile):
                    for gf in dict.fromkeys(args.gf_impl):
                        for ck in dict.fromkeys(args.grad_checkpointing):
                            if name in plain and gf != args.gf_impl[0]:
                                continue
                            try:
                                c = Case(name, dtype, cl == 'on', comp == 'on', gf, args, device, original,
                                         grad_ckpt=ck)
                            except UserError:
                                raise
                            except Exception as e:  # noqa: BLE001 - a model that cannot be built is a user problem
                                raise UserError(f"cannot build {name}: {_err(e)}") from None
                            if not has_global_filter(c.model):
                                c.gf_impl = None
                                plain.add(name)
                            cases.append(c)
    return cases


def _err(e: BaseException) -> str:
    text = ' '.join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def run_models(args: argparse.Namespace) -> Dict[str, Any]:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = _loadavg()
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    original = load_original_module(args.original) if args.original else None
    if original is not None and not any(n.startswith(ORIG_PREFIX) for n in args.models):
        args.models = list(args.models) + [ORIG_PREFIX + 'hornet_tiny_7x7']
    check_models(args.models, args.original)
    cases = build_cases(args, device, original)
    _logger.info('%d case(s) on %s: %s', len(cases), device_name(device), '; '.join(c.label for c in cases))

    def guarded(c: Case, fn: Callable[[], Any]) -> Any:
        if c.error:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one failing case (OOM, compile, dtype) must not stop the rest
            c.error = _err(e)
            _logger.warning('%s failed: %s', c.label, c.error)
            c.opt.zero_grad(set_to_none=True)
            if device.type == 'cuda':
                torch.cuda.empty_cache()
            return None

    deadline = time.perf_counter() + args.time_limit if args.time_limit else None
    stopped: List[str] = []

    def out_of_time(what: str) -> bool:
        """--time_limit passed or SIGTERM received (e.g. from `timeout`): skip the rest, keep what is measured."""
        late = _TERM.get('signum') is not None or (deadline is not None and time.perf_counter() > deadline)
        if late and not stopped:
            stopped.append(what)
            _logger.warning('time limit reached (%s): skipping the rest, writing what was measured', what)
        return late

    steps = [(w, s) for w, s in (('train', 'train_step'), ('infer', 'infer_step')) if w in args.what]
    for c in cases:
        if out_of_time(f'before warming up {c.label}'):
            c.error = c.error or 'not run: --time_limit reached (or SIGTERM) before this case'
            continue
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            for _what, step_name in steps:  # only the timed steps: a compiled model compiles what it runs
                guarded(c, getattr(c, step_name))
        guarded(c, lambda: c.measure_memory(args.what))
        _logger.info('warmed up %s in %.1fs', c.label, time.perf_counter() - t0)
    for r in range(args.repeats):
        if out_of_time(f'after {r} of {args.repeats} repeats'):
            break
        order = cases if r % 2 == 0 else cases[::-1]
        for c in order:
            for what, step in (('train', c.train_step), ('infer', c.infer_step)):
                if what in args.what:
                    v = guarded(c, lambda: c.timed(step, args.iters))
                    if v is not None:
                        getattr(c, f'{what}_s').append(v[0])
                        getattr(c, f'{what}_cpu').append(v[1])
        _logger.info('repeat %d/%d: %s', r + 1, args.repeats, '; '.join(
            f"{c.label}: {c.train_s[-1] if c.train_s else float('nan'):.2f}" for c in cases))
    if args.profile:
        for c in cases:
            if 'train' in args.what and not out_of_time(f'before profiling {c.label}'):
                guarded(c, lambda: c.run_profile(args.profile))

    baseline = pick_baseline(cases, args.baseline)
    results = []
    for c in cases:
        row = dict(c.key(), label=c.label, params_m=c.params / 1e6, error=c.error,
                   train_img_s=dict(summarize(c.train_s), raw=c.train_s),
                   infer_img_s=dict(summarize(c.infer_s), raw=c.infer_s),
                   train_img_per_cpu_s=dict(summarize(c.train_cpu), raw=c.train_cpu),
                   infer_img_per_cpu_s=dict(summarize(c.infer_cpu), raw=c.infer_cpu), memory=c.mem)
        if baseline is not None:
            row['baseline'] = baseline.label
            for what in ('train', 'infer'):
                for suffix, key in (('s', 'ratio_vs_baseline'), ('cpu', 'cpu_time_ratio_vs_baseline')):
                    mine, base = getattr(c, f'{what}_{suffix}'), getattr(baseline, f'{what}_{suffix}')
                    paired = [a / b for a, b in zip(mine, base) if b]
                    row[f'{what}_{key}'] = dict(summarize(paired), raw=paired)
        if c.profile:
            row['profile'] = c.profile
        results.append(row)
    meta = dict(environment(device), loadavg_at_start=load_start)
    if stopped:
        meta['stopped_early'] = stopped[0]
    return dict(meta=meta, settings=settings_dict(args), results=results)


_TERM: Dict[str, Any] = {}


def _on_sigterm(signum: int, frame: Any) -> None:  # noqa: ARG001
    """SIGTERM (``timeout``, a scheduler) ends the run at the next case or repeat boundary with a JSON."""
    _TERM['signum'] = signum


def pick_baseline(cases: Sequence[Case], wanted: Optional[str]) -> Optional[Case]:
    """``--baseline`` (a model name; first matching case), else the first ``orig:`` case, else the first case."""
    for c in cases:
        if wanted and c.name == wanted:
            return c
    if wanted:
        raise UserError(f"--baseline {wanted}: not among --models ({', '.join(dict.fromkeys(c.name for c in cases))})")
    for c in cases:
        if c.name.startswith(ORIG_PREFIX):
            return c
    return cases[0] if cases else None


# -------------------------------------------------------------------------------------------------- data
def make_random_jpegs(root: str, num: int, size: Tuple[int, int], seed: int = 0) -> None:
    """``num`` smooth-noise JPEGs (quality 90) in two class folders: photo-like sizes without real data."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(num):
        d = os.path.join(root, f'class{i % 2}')
        os.makedirs(d, exist_ok=True)
        low = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-12, 13, (h, w, 3))
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(os.path.join(d, f'img{i:05d}.jpg'), quality=90)


DATA_RECIPE = dict(color_jitter=0.4, aa='rand-m9-mstd0.5-inc1', train_interpolation='bicubic', reprob=0.25,
                   remode='pixel', recount=1, imagenet_default_mean_and_std=True)
DATA_PIPELINES = ('reference', 'uint8', 'dali')


def train_transform(input_size: int, pipeline: str = 'reference') -> Tuple[Callable, Optional[Callable], str]:
    """``(transform, image loader or None for PIL's, source)`` of one pipeline, both with the original recipe.

    reference: today's kind, ``datasets.build_transform`` (timm create_transform, float output normalised and
    random-erased in the worker; plain timm where this project is missing). uint8: ``loaders.build_uint8_transform``
    with ``loaders.load_image_fast`` (uint8 output; normalising and erasing happen later on the device).
    """
    recipe = dict(DATA_RECIPE, input_size=input_size)
    if pipeline == 'uint8':
        import loaders
        return loaders.build_uint8_transform(True, argparse.Namespace(**recipe)), loaders.load_image_fast, \
            'loaders.build_uint8_transform + load_image_fast'
    try:
        import datasets
        return datasets.build_transform(True, argparse.Namespace(**recipe)), None, 'datasets.build_transform'
    except (ImportError, AttributeError):
        from timm.data import create_transform
        return create_transform(input_size, is_training=True, color_jitter=0.4, auto_augment=recipe['aa'],
                                interpolation='bicubic', re_prob=0.25, re_mode='pixel', re_count=1), None, 'timm'


def _image_folder(root: str, transform: Callable, loader: Optional[Callable] = None) -> Any:
    """This project's strict ImageFolderDataset where available, else torchvision's ImageFolder."""
    try:
        from datasets import ImageFolderDataset
        return ImageFolderDataset(root, transform=transform, loader=loader)
    except ImportError:
        from torchvision.datasets import ImageFolder
        try:
            return ImageFolder(root, transform=transform)
        except (FileNotFoundError, RuntimeError) as e:
            raise UserError(f"--data_path {root}: no images in class sub-folders ({' '.join(str(e).split())[:150]})")


def tensor_memory_of_step(name: str, batch: int, input_size: int, grad_ckpt: str, dtype: str) -> Dict[str, float]:
    """Exact live-tensor bytes at the peak of one steady-state training step, by category, without running it.

    The model, optimizer and batch are fake tensors (``FakeTensorMode``): shapes and allocations are real, no
    arithmetic happens, so HorNet-L at batch 32 takes seconds on any machine. torch's ``MemTracker`` attributes
    every live tensor to parameters, gradients, optimizer state, activations or temporaries. This is what a
    GPU's ``max_memory_allocated`` reports, less allocator fragmentation and cuDNN workspaces.
    """
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError as e:  # pragma: no cover - present in torch >= 2.5
        raise UserError(f"--mode memory needs torch's MemTracker (torch >= 2.5): {e}") from None
    import timm
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=1000)  # 1K head (HorNet-L's default cfg is its 22K head)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device='cpu')
        apply_checkpointing(model, name, grad_ckpt)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)  # same state bytes as fused
        x = torch.randn(batch, 3, input_size, input_size)
        y = torch.randint(0, 1000, (batch,))

        def step() -> None:
            ctx = torch.autocast('cpu', dtype=DTYPES[dtype]) if dtype != 'fp32' else contextlib.nullcontext()
            with ctx:
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # the optimizer state exists from the second step on
        tracker = MemTracker()
        tracker.track_external(model, opt)
        with tracker:
            step()
        peak = tracker.get_tracker_snapshot('peak')
    per_device = next(iter(peak.values()))
    return {str(k).split('.')[-1].lower(): v / 2 ** 30 for k, v in per_device.items()}


def run_memory(args: argparse.Namespace) -> Dict[str, Any]:
    check_models(args.models, None)
    results = []
    for name in dict.fromkeys(args.models):
        for dtype in dict.fromkeys(args.dtype):
            for ck in dict.fromkeys(args.grad_checkpointing):
                t0 = time.perf_counter()
                row: Dict[str, Any] = dict(model=name, dtype=dtype, grad_checkpointing=ck, error=None)
                try:
                    row['gib'] = tensor_memory_of_step(name, args.batch_size, args.input_size, ck, dtype)
                except UserError:
                    raise
                except Exception as e:  # noqa: BLE001 - one model that cannot be traced must not stop the rest
                    row['error'] = _err(e)
                _logger.info('%s %s ckpt=%s: %s (%.0fs)', name, dtype, ck,
                             row.get('gib', {}).get('total', row['error']), time.perf_counter() - t0)
                results.append(row)
    meta = dict(environment(torch.device('cpu')), method='FakeTensorMode + torch.distributed._tools.MemTracker')
    return dict(meta=meta, settings=settings_dict(args), results=results)


def format_memory_table(res: Dict[str, Any]) -> str:
    lines = ['| model | dtype | checkpointing | params | optimizer | gradients | activations | temporaries | '
             'peak total (GiB) | vs first row |', '|---|---|---|--:|--:|--:|--:|--:|--:|--:|']
    first = next((r['gib']['total'] for r in res['results'] if not r['error']), None)
    for r in res['results']:
        if r['error']:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['grad_checkpointing']} | error: {r['error'][:80]} |")
            continue
        g = r['gib']
        lines.append(f"| {r['model']} | {r['dtype']} | {r['grad_checkpointing']} | {g.get('param', 0):.2f} | "
                     f"{g.get('opt', 0):.2f} | {g.get('grad', 0):.2f} | {g.get('act', 0):.2f} | {g.get('temp', 0):.2f} "
                     f"| {g['total']:.2f} | {g['total'] / first:.2f}x |")
    return '\n'.join(lines)


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's terminated, reaped children: the finished loader workers."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_data(args: argparse.Namespace) -> Dict[str, Any]:
    """Each pipeline x worker count: img/s, img/s per worker and CPU-seconds per image of the loading processes.

    Every timed epoch builds a fresh, non-persistent DataLoader, so its workers exit and are reaped at the end and
    their CPU time (``RUSAGE_CHILDREN``) can be attributed to that epoch; with 0 workers the main process's own CPU
    time is used. Pipelines and worker counts alternate within a round (order flipped every other round).
    """
    from torch.utils.data import DataLoader, Subset
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    load_start = _loadavg()
    if args.data_path:
        if not os.path.isdir(args.data_path):
            raise UserError(f"--data_path {args.data_path}: not a directory (give an ImageFolder root)")
        root, source = args.data_path, 'folder'
    else:
        tmp = tempfile.TemporaryDirectory(prefix='hornet_bench_jpegs_')
        root, source = tmp.name, f'generated {args.num_images} random JPEGs {args.gen_size[0]}x{args.gen_size[1]}'
        make_random_jpegs(root, args.num_images, tuple(args.gen_size), args.seed)
    cases = [(p, w) for p in args.pipelines for w in args.workers]
    try:
        dsets, srcs = {}, {}
        if 'dali' in args.pipelines:
            from dali_backend import dali_missing
            missing = dali_missing()
            if missing:
                _logger.warning('skipping the dali pipeline: %s', missing)
                args.pipelines = [p for p in args.pipelines if p != 'dali']
                cases = [(p, w) for p in args.pipelines for w in args.workers]
        for p in args.pipelines:
            if p == 'dali':
                from datasets import ImageFolderDataset
                dsets[p], srcs[p] = ImageFolderDataset(root), 'dali_backend.DaliTrainLoader (CPU mode)'
                continue
            transform, loader_fn, srcs[p] = train_transform(args.data_input_size, p)
            ds = _image_folder(root, transform, loader_fn)
            if len(ds) > args.num_images:
                g = torch.Generator().manual_seed(args.seed)
                ds = Subset(ds, torch.randperm(len(ds), generator=g)[:args.num_images].tolist())
            dsets[p] = ds
        n = len(next(iter(dsets.values())))

        def dali_epoch(w: int) -> Tuple[float, float]:
            # DALI runs in this process (w threads); its per-epoch pipeline build (seconds) is not timed
            from datasets import ResumableSampler
            from dali_backend import DaliTrainLoader
            recipe = argparse.Namespace(**DATA_RECIPE, input_size=args.data_input_size)
            ds = dsets['dali']
            loader = DaliTrainLoader(ds, ResumableSampler(len(ds), seed=args.seed), args.data_batch_size, recipe,
                                     torch.device('cpu'), num_threads=max(w, 1))
            order = list(loader.sampler)[:n]
            nb = len(order) // args.data_batch_size
            pipe, _ = loader._pipeline([order[k * args.data_batch_size:(k + 1) * args.data_batch_size]
                                        for k in range(nb)], seed=args.seed + 1)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(nb):
                pipe.run()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            del pipe
            return nb * args.data_batch_size / wall, cpu / max(nb * args.data_batch_size, 1)

        def epoch(p: str, w: int) -> Tuple[float, float]:
            if p == 'dali':
                return dali_epoch(w)
            loader = DataLoader(dsets[p], batch_size=args.data_batch_size, shuffle=True, num_workers=w,
                                persistent_workers=False, drop_last=False)
            c0, t0, own0 = _children_cpu(), time.perf_counter(), time.process_time()
            count = 0
            for b in loader:
                count += int(b[1].shape[0])
            del loader  # workers exit and are reaped here
            gc.collect()
            wall = time.perf_counter() - t0
            cpu = (time.process_time() - own0) if w == 0 else (_children_cpu() - c0)
            return count / wall, cpu / max(count, 1)

        for c in cases:  # warm-up: page cache, imports in workers
            epoch(*c)
        raw: Dict[Tuple[str, int], List[float]] = {c: [] for c in cases}
        cpu: Dict[Tuple[str, int], List[float]] = {c: [] for c in cases}
        for r in range(args.repeats):
            for c in (cases if r % 2 == 0 else cases[::-1]):
                ips, cpi = epoch(*c)
                raw[c].append(ips)
                cpu[c].append(cpi * 1e3)
            _logger.info('repeat %d/%d: %s', r + 1, args.repeats,
                         ', '.join(f'{p} w={w}: {raw[(p, w)][-1]:.1f} img/s, {cpu[(p, w)][-1]:.2f} ms CPU/img'
                                   for p, w in cases))
    finally:
        if tmp is not None:
            tmp.cleanup()
    results = []
    for p, w in cases:
        s = summarize(raw[(p, w)])
        cs = summarize(cpu[(p, w)])
        results.append(dict(pipeline=p, workers=w, img_s=dict(s, raw=raw[(p, w)]),
                            img_s_per_worker=(s['median'] / max(w, 1)) if s['median'] else None,
                            cpu_ms_per_img=dict(cs, raw=cpu[(p, w)]),
                            img_per_cpu_s=(1e3 / cs['median']) if cs['median'] else None))
    meta = dict(environment(torch.device('cpu')), loadavg_at_start=load_start, loadavg_at_end=_loadavg())
    return dict(meta=meta, settings=dict(settings_dict(args), source=source, num_images=n, transform=srcs.get(
        'reference', next(iter(srcs.values()))), transforms=srcs, recipe=DATA_RECIPE), results=results)


# ----------------------------------------------------------------------------------------- environment
def resolve_device(name: str) -> torch.device:
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu)")
    return torch.device(name)


def _loadavg() -> Optional[Tuple[float, float, float]]:
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
def _fmt(s: Dict[str, Any], digits: int = 2) -> str:
    if s.get('median') is None:
        return '-'
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def _compile_cell(r: Dict[str, Any]) -> str:
    if not r['compile']:
        return 'off'
    mode = r.get('compile_mode')
    return 'on' if mode in (None, 'default') else mode


def format_model_table(res: Dict[str, Any]) -> str:
    head = ['model', 'dtype', 'layout', 'compile', 'gf_impl', 'ckpt', 'train img/s med [min-max]',
            'infer img/s med [min-max]', 'train ratio', 'infer ratio', 'train ratio (CPU time)', 'train peak MB',
            'infer peak MB']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---'] * 6 + ['--:'] * 7) + '|']
    for r in res['results']:
        if r['error']:
            cells = [r['model'], r['dtype'], 'cl' if r['channels_last'] else 'nchw', _compile_cell(r),
                     r['gf_impl'] or '-', r.get('grad_checkpointing') or 'off',
                     f"error: {r['error'][:80]}"] + [''] * 6
        else:
            mem = r['memory']
            cells = [r['model'], r['dtype'], 'cl' if r['channels_last'] else 'nchw', _compile_cell(r),
                     r['gf_impl'] or '-', r.get('grad_checkpointing') or 'off',
                     _fmt(r['train_img_s']), _fmt(r['infer_img_s']),
                     _fmt(r.get('train_ratio_vs_baseline', {}), 3), _fmt(r.get('infer_ratio_vs_baseline', {}), 3),
                     _fmt(r.get('train_cpu_time_ratio_vs_baseline', {}), 3),
                     f"{mem['train']['peak_mb']:.0f}" if 'train' in mem else '-',
                     f"{mem['infer']['peak_mb']:.0f}" if 'infer' in mem else '-']
        lines.append('| ' + ' | '.join(cells) + ' |')
    base = next((r.get('baseline') for r in res['results'] if r.get('baseline')), None)
    if base:
        lines.append(f"\nratio = median [min-max] over repeats of (case img/s / baseline img/s in the same repeat); "
                     f"CPU-time ratio: the same with images per process CPU-second; baseline: {base}")
    for r in res['results']:
        if r.get('profile'):
            lines.append('\n' + format_profile(r['label'], r['profile']))
    return '\n'.join(lines)


def format_data_table(res: Dict[str, Any]) -> str:
    lines = ['| pipeline | workers | img/s med [min-max] | img/s per worker | CPU ms/img med [min-max] | '
             'img per CPU-s | vs reference (CPU) |', '|---|--:|--:|--:|--:|--:|--:|']
    ref = {r['workers']: r['cpu_ms_per_img']['median'] for r in res['results'] if r['pipeline'] == 'reference'}
    for r in res['results']:
        per = f"{r['img_s_per_worker']:.1f}" if r['img_s_per_worker'] else '-'
        cpu_med = r['cpu_ms_per_img']['median']
        base = ref.get(r['workers'])
        rel = f"{base / cpu_med:.2f}x" if base and cpu_med else '-'
        ipc = f"{r['img_per_cpu_s']:.1f}" if r['img_per_cpu_s'] else '-'
        lines.append(f"| {r['pipeline']} | {r['workers']} | {_fmt(r['img_s'], 1)} | {per} | "
                     f"{_fmt(r['cpu_ms_per_img'], 2)} | {ipc} | {rel} |")
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------- CLI
def _on_off(v: str) -> str:
    if v not in ('on', 'off'):
        raise argparse.ArgumentTypeError(f"expected on or off, got {v!r}")
    return v


def _int_at_least(lowest: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``lowest``, else a one-line error saying ``what`` was expected."""
    def parse(v: str) -> int:
        try:
            i = int(v)
        except ValueError:
            i = lowest - 1
        if i < lowest:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v!r}")
        return i
    return parse


_positive = _int_at_least(1, 'a positive integer')
_non_negative = _int_at_least(0, 'an integer >= 0')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--mode', choices=('model', 'data', 'memory'), default='model',
                   help='model: timed throughput and measured peak memory; data: the input pipeline; memory: exact '
                        'tensor memory of a training step on fake tensors (no compute, any batch size)')
    p.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                   help=f'timm names; {ORIG_PREFIX}<hornet variant> for the original release (needs --original)')
    p.add_argument('--original', default=None, help="the original release's hornet.py (adds orig:hornet_tiny_7x7)")
    p.add_argument('--baseline', default=None, help='model name the ratios are relative to '
                   '(default: the first orig: model, else the first model)')
    p.add_argument('--device', choices=('cpu', 'cuda'), default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--dtype', nargs='+', choices=tuple(DTYPES), default=['fp32'], help='autocast dtype(s)')
    p.add_argument('--channels_last', nargs='+', type=_on_off, default=['off'], metavar='{on,off}')
    p.add_argument('--compile', nargs='+', type=_on_off, default=['off'], metavar='{on,off}')
    p.add_argument('--gf_impl', nargs='+', choices=('fft', 'matmul', 'kron'), default=['fft'],
                   help='Global Filter implementation(s) for our GF models')
    p.add_argument('--grad_checkpointing', nargs='+', choices=('off', 'on', 'selective'), default=['off'],
                   help="on: the model's set_grad_checkpointing(); selective: HorNet's set_selective_checkpointing()")
    p.add_argument('--batch_size', type=_positive, default=16)
    p.add_argument('--input_size', type=_positive, default=224)
    p.add_argument('--fused_adamw', type=_on_off, default='on', metavar='{on,off}',
                   help="torch's fused AdamW kernel for every model (off: the per-tensor loop)")
    p.add_argument('--repeats', type=_non_negative, default=5,
                   help='timed rounds (every case once per round); 0 measures peak memory only')
    p.add_argument('--warmup', type=_non_negative, default=2,
                   help='untimed steps (each of --what) per case first; a compiled case compiles here')
    p.add_argument('--iters', type=_positive, default=1, help='steps per timed repeat')
    p.add_argument('--what', nargs='+', choices=('train', 'infer'), default=['train', 'infer'])
    p.add_argument('--compile_mode', default='default',
                   choices=('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'),
                   help='torch.compile mode of the --compile on cases (reduce-overhead: CUDA graphs)')
    p.add_argument('--compile_backend', default='inductor', choices=('inductor', 'aot_eager', 'eager'),
                   help='torch.compile backend (aot_eager/eager: quick smoke tests of the compile path)')
    p.add_argument('--profile', type=_non_negative, default=0, metavar='TOP',
                   help='after timing, profile one training step per case (torch.profiler): the TOP kernels by CUDA '
                        'time (GPU) and ops by self CPU time, and the kernel launches per step (GPU: CUDA kernel '
                        'events; CPU: leaf aten ops); in the JSON under "profile" and in the markdown')
    p.add_argument('--threads', type=_positive, default=None, help='torch intra-op threads (default: torch\'s)')
    p.add_argument('--time_limit', type=float, default=0.0,
                   help='seconds: past this (or on SIGTERM) no further case is warmed up, repeat started or profile '
                        'taken; the JSON gets what was measured (0: no limit)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default=None, help='write settings, environment and per-repeat raw numbers here')
    p.add_argument('--markdown', default=None, help='also write the printed table(s) to this file')
    g = p.add_argument_group('--mode data')
    g.add_argument('--data_path', default=None, help='ImageFolder root (default: generate random JPEGs)')
    g.add_argument('--workers', nargs='+', type=_non_negative, default=[0, 1, 2])
    g.add_argument('--num_images', type=_positive, default=256, help='images per epoch (generated or sampled)')
    g.add_argument('--gen_size', nargs=2, type=_positive, default=[500, 375], metavar=('W', 'H'))
    g.add_argument('--data_batch_size', type=_positive, default=32)
    g.add_argument('--data_input_size', type=_positive, default=224)
    g.add_argument('--pipelines', nargs='+', choices=DATA_PIPELINES, default=list(DATA_PIPELINES),
                   help='reference: float output normalised/erased in the workers (today\'s kind); uint8: the '
                        'default --data_backend pil (uint8 output, normalise/erase on the device); dali: '
                        '--data_backend dali in DALI\'s CPU mode, its threads = --workers (skipped if not installed)')
    args = p.parse_args(argv)
    if args.mode == 'model' and args.input_size < 32:
        p.error(f"--input_size must be >= 32 (got {args.input_size})")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format='[benchmark] %(message)s')
    args = parse_args(argv)
    previous_term = signal.signal(signal.SIGTERM, _on_sigterm) if args.mode == 'model' else None
    try:
        for opt in ('json', 'markdown'):
            path = getattr(args, opt)
            d = os.path.dirname(os.path.abspath(path)) if path else None
            if d and not os.path.isdir(d):
                raise UserError(f"--{opt} {path}: directory {d} does not exist")
        res = {'data': run_data, 'memory': run_memory, 'model': run_models}[args.mode](args)
        print(f"\n{res['meta']['device_name']} | torch {res['meta']['torch']} | CUDA {res['meta']['cuda']} | "
              f"batch {args.batch_size if args.mode != 'data' else args.data_batch_size} | "
              f"input {args.input_size if args.mode != 'data' else args.data_input_size}")
        table = {'data': format_data_table, 'memory': format_memory_table, 'model': format_model_table}[args.mode](res)
        print(table)
        if args.markdown:
            with open(args.markdown, 'w') as f:
                f.write(table + '\n')
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(res, f, indent=2)
            _logger.info('wrote %s', args.json)
        failed = [r for r in res['results'] if r.get('error')]
        if failed:
            print(f"error: {len(failed)} case(s) failed: " + '; '.join(f"{r.get('label', r['model'])}: {r['error']}" for r in failed),
                  file=sys.stderr)
            return 1
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('error: interrupted', file=sys.stderr)
        return 130
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    return 0


if __name__ == '__main__':
    sys.exit(main())
