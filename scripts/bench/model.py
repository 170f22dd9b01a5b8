"""``--mode model``: training / inference throughput and peak memory of model x setting cases, and their profile.

Every model x setting combination ("case") is built once and warmed up, then ``--repeats`` rounds run; in every
round each case is timed once (training: ``--iters`` steps of forward, backward and AdamW on one fixed batch;
inference: ``--iters`` forward passes under ``torch.inference_mode``). Cases alternate inside a round (and the order
flips every other round) so machine-load drift hits all of them alike; medians, min/max and IQR over rounds are
reported, and each case's per-round ratio to a baseline case.

Peak memory is measured on a separate, untimed step per case:
  * CUDA: ``torch.cuda.max_memory_allocated`` during the step minus the allocation before it, plus this case's
    parameters and optimizer state (what a process holding only this model would report).
  * CPU: peak resident set size (RSS, ``/proc/self/statm`` sampled every 1 ms by a thread) during the step minus
    RSS just before it (after ``gc.collect()`` and glibc ``malloc_trim(0)``), plus parameters and optimizer state.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from errors import UserError
from scripts.bench.common import (DTYPES, LEVERS, ORIG_PREFIX, apply_checkpointing, apply_lever, build_model,
                                  check_models, check_triton_dwconv, device_name, environment, error_text, fmt_stats,
                                  has_global_filter, load_original_module, loadavg, resolve_device, settings_dict,
                                  summarize)
from scripts.bench.profiling import format_profile, profile_step

_logger = logging.getLogger('benchmark')
LEVER_TAGS = dict(fused_gating='fused-gating', triton_dwconv='triton-dw')  # in case labels


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


class Case:
    """One model under one setting, with its optimizer, fixed batch and step functions."""

    def __init__(self, name: str, dtype: str, channels_last: bool, compile_: bool, gf_impl: Optional[str],
                 args: argparse.Namespace, device: torch.device, original: Any, grad_ckpt: str = 'off',
                 levers: Optional[Dict[str, bool]] = None):
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
        if not has_global_filter(model):
            self.gf_impl = None  # gf_impl does not apply
        # each lever: True / False (the default path), or None where the model has no such switch
        self.levers: Dict[str, Optional[bool]] = {
            lv: apply_lever(model, lv, bool((levers or {}).get(lv))) for lv in LEVERS}
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
            self.fwd = (torch.compile(model, mode=mode) if backend == 'inductor'
                        else torch.compile(model, backend=backend))

    @property
    def label(self) -> str:
        parts = [self.name, self.dtype, 'cl' if self.channels_last else 'nchw']
        if self.compile:
            parts.append('compile' if self.compile_mode in (None, 'default') else f'compile:{self.compile_mode}')
        if self.grad_ckpt != 'off':
            parts.append('ckpt' if self.grad_ckpt == 'on' else 'sel-ckpt')
        if self.gf_impl:
            parts.append(f'gf={self.gf_impl}')
        parts += [LEVER_TAGS[lv] for lv, on in self.levers.items() if on]
        return ' '.join(parts)

    def key(self) -> Dict[str, Any]:
        return dict(model=self.name, dtype=self.dtype, channels_last=self.channels_last, compile=self.compile,
                    compile_mode=self.compile_mode, gf_impl=self.gf_impl, grad_checkpointing=self.grad_ckpt,
                    **self.levers)

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
            self.profile = dict(device=self.device.type, error=error_text(e))


def build_cases(args: argparse.Namespace, device: torch.device, original: Any) -> List[Case]:
    """Every model x dtype x layout x compile x gf_impl x checkpointing x lever combination.

    A dimension that does not apply to a model (gf_impl to a model without a Global Filter, a lever to a model
    without its switch) is not varied for it: only its first listed value is built, recorded as None.
    """
    dims = {lv: list(dict.fromkeys(getattr(args, lv, None) or ['off'])) for lv in LEVERS}
    dims = dict(gf_impl=list(dict.fromkeys(args.gf_impl)), **dims)
    cases: List[Case] = []
    not_applicable: Dict[str, set] = {}  # model -> dimensions found not to apply on its first case
    for name, dtype, cl, comp, gf, ck, *lever_values in itertools.product(
            dict.fromkeys(args.models), dict.fromkeys(args.dtype), dict.fromkeys(args.channels_last),
            dict.fromkeys(args.compile), dims['gf_impl'], dict.fromkeys(args.grad_checkpointing),
            *(dims[lv] for lv in LEVERS)):
        wanted = dict(gf_impl=gf, **dict(zip(LEVERS, lever_values)))
        na = not_applicable.setdefault(name, set())
        if any(d in na and v != dims[d][0] for d, v in wanted.items()):
            continue
        levers = {lv: wanted[lv] == 'on' for lv in LEVERS}
        try:
            c = Case(name, dtype, cl == 'on', comp == 'on', gf, args, device, original, grad_ckpt=ck, levers=levers)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a model that cannot be built is a user problem
            raise UserError(f"cannot build {name}: {error_text(e)}") from None
        got = dict(gf_impl=c.gf_impl, **c.levers)
        na.update(d for d, v in got.items() if v is None)
        if any(got[d] is None and wanted[d] != dims[d][0] for d in dims):
            continue  # the same as the case with the first value (e.g. triton_dwconv on a GF-only model)
        cases.append(c)
    return cases


def run_models(args: argparse.Namespace) -> Dict[str, Any]:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = loadavg()
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    original = load_original_module(args.original) if args.original else None
    if original is not None and not any(n.startswith(ORIG_PREFIX) for n in args.models):
        args.models = list(args.models) + [ORIG_PREFIX + 'hornet_tiny_7x7']
    check_models(args.models, args.original)
    if 'on' in (getattr(args, 'triton_dwconv', None) or []):
        check_triton_dwconv(device)
    cases = build_cases(args, device, original)
    _logger.info('%d case(s) on %s: %s', len(cases), device_name(device), '; '.join(c.label for c in cases))

    def guarded(c: Case, fn: Callable[[], Any]) -> Any:
        if c.error:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one failing case (OOM, compile, dtype) must not stop the rest
            c.error = error_text(e)
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


def on_sigterm(signum: int, frame: Any) -> None:  # noqa: ARG001
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



def _compile_cell(r: Dict[str, Any]) -> str:
    if not r['compile']:
        return 'off'
    mode = r.get('compile_mode')
    return 'on' if mode in (None, 'default') else mode


def format_model_table(res: Dict[str, Any]) -> str:
    """The markdown table of :func:`run_models`' result, then each case's profile."""
    head = ['model', 'dtype', 'layout', 'compile', 'gf_impl', 'ckpt', 'levers', 'train img/s med [min-max]',
            'infer img/s med [min-max]', 'train ratio', 'infer ratio', 'train ratio (CPU time)', 'train peak MB',
            'infer peak MB']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---'] * 7 + ['--:'] * 7) + '|']
    for r in res['results']:
        setting = [r['model'], r['dtype'], 'cl' if r['channels_last'] else 'nchw', _compile_cell(r),
                   r['gf_impl'] or '-', r.get('grad_checkpointing') or 'off',
                   ', '.join(LEVER_TAGS[lv] for lv in LEVERS if r.get(lv)) or '-']
        if r['error']:
            cells = setting + [f"error: {r['error'][:80]}"] + [''] * 6
        else:
            mem = r['memory']
            cells = setting + [
                fmt_stats(r['train_img_s']), fmt_stats(r['infer_img_s']),
                fmt_stats(r.get('train_ratio_vs_baseline', {}), 3), fmt_stats(r.get('infer_ratio_vs_baseline', {}), 3),
                fmt_stats(r.get('train_cpu_time_ratio_vs_baseline', {}), 3),
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

