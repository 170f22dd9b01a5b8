#!/usr/bin/env python3
"""Roofline lower bound of one training (and inference) step on a named GPU, computed without a GPU.

Every aten op of one steady-state training step (forward, backward, fused AdamW update) runs on fake tensors
(``FakeTensorMode``: real shapes, strides and dtypes, no arithmetic), so any model at any batch size takes
seconds on a CPU. A ``TorchDispatchMode`` records each op below autograd, i.e. the ops eager mode launches:

* **bytes**: every tensor the op reads plus every tensor it writes (mutated arguments and fresh outputs), each
  counted once at its size without broadcast dimensions (an expanded bias counts C elements, not B*H*W*C).
  This is a lower bound of the op's DRAM traffic: it assumes each operand crosses the memory bus exactly once.
* **FLOPs**: ``torch.utils.flop_counter``'s formulas for matmuls, convolutions and attention (2 per
  multiply-add), this project's FFT formulas (``models.flops.fft_flop_formulas``), and one FLOP per element of the
  largest operand for every other op (elementwise ops are memory-bound at any plausible count).
* **time**: ``max(bytes / bandwidth, FLOPs / peak)`` per op, where the peak is the tensor-core peak for
  matmuls and convolutions in bf16/fp16 (the TF32 tensor peak for fp32 ones, ``--tf32 off``: the fp32 peak),
  and the fp32 (CUDA-core) peak for all other ops. The step's bound is the sum over its ops: a perfect kernel
  per op, no launch gaps, no overlap between ops. Depthwise convolutions are counted at the tensor-core peak
  like every convolution (the brief's rule, a lower bound); the totals also give the bound with depthwise
  convolutions on CUDA cores, where cuDNN's depthwise kernels run.
* **ops**: the number of ops that launch work (views and allocations excluded). In eager mode that is about
  the number of kernel launches; some ops launch several kernels, fused AdamW one per chunk of tensors.
* **module**: each op is attributed to the innermost module running it (``torch.utils.module_tracker``;
  backward ops to the module whose backward runs them); blocks are the module paths up to their second index
  (``stages.2.0`` in HorNet, ``stages.2.blocks.0`` in timm's ConvNeXt).

Autocast: the fake tensors are CPU tensors (the autograd engine needs a real device for CUDA ones), so the CUDA
autocast policy is installed on the CPU autocast key for the duration of the trace: matmuls and convolutions
in bf16/fp16, LayerNorm, softmax, sums, exp/log/pow in fp32, exactly as ``torch.autocast('cuda')`` lists them
(``aten/src/ATen/autocast_mode.h``). Ops that run in fp32 under autocast are listed in the output.

Measured/bound: ``--measured MODEL=TRAIN[:INFER]`` (img/s) or ``--measured_json`` (a ``benchmark.py --json``
file; the row with the same model, dtype, layout, compile off and gf_impl is used) give measured step time /
bound, and the time per op the gap would be if it were all launch overhead ((measured - bound) / ops).

Examples::

    python scripts/bench/roofline.py --models hornet_tiny_7x7 hornet_tiny_gf convnext_tiny --batch_size 128 \\
        --dtype bf16 --gpu h200 --measured_json ../shared/gpu/h200-baseline/eager.json --json roofline.json
    python scripts/bench/roofline.py --models hornet_micro_7x7 --batch_size 2 --input_size 64 --gpu a100
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

try:
    from errors import UserError
    from scripts.bench.common import check_models, load_original_module
    from scripts.bench.roofline_trace import DTYPES, trace_step
except ModuleNotFoundError as e:  # run as a file from a checkout that is not installed
    if e.name not in ('errors', 'scripts', 'scripts.bench', 'models'):
        raise
    sys.exit(f"error: cannot import {e.name!r}: pip install -e . in the repository root "
             f"(or run python -m scripts.bench.roofline from it)")

_logger = logging.getLogger('roofline')

# Peak numbers. bw: DRAM bytes/s; tensor: dense bf16/fp16 tensor-core FLOP/s; tf32: dense TF32 tensor-core
# FLOP/s; fp32: non-tensor (CUDA-core) fp32 FLOP/s.
GPUS: Dict[str, Dict[str, Any]] = {
    'h200': dict(bw=4.3e12, tensor=790e12, tf32=395e12, fp32=67e12,
                 source='NVIDIA H200 as measured on the lent machine: device-to-device copy 4.3 TB/s, 8192^3 bf16 '
                        'matmul 790 TFLOP/s; fp32 67 TFLOP/s (datasheet); TF32 taken as half the bf16 rate'),
    'h200-spec': dict(bw=4.8e12, tensor=989.4e12, tf32=494.7e12, fp32=66.9e12,
                      source='NVIDIA H200 SXM datasheet (dense): 4.8 TB/s, bf16 989 TFLOP/s, TF32 495, fp32 67'),
    'h100': dict(bw=3.35e12, tensor=989.4e12, tf32=494.7e12, fp32=66.9e12,
                 source='NVIDIA H100 SXM5 datasheet (dense): 3.35 TB/s, bf16 989 TFLOP/s, TF32 495, fp32 67'),
    'h100-pcie': dict(bw=2.0e12, tensor=756e12, tf32=378e12, fp32=51.2e12,
                      source='NVIDIA H100 PCIe datasheet (dense): 2.0 TB/s, bf16 756 TFLOP/s, TF32 378, fp32 51'),
    'a100': dict(bw=2.039e12, tensor=312e12, tf32=156e12, fp32=19.5e12,
                 source='NVIDIA A100 SXM4 80GB datasheet (dense): 2.04 TB/s, bf16 312 TFLOP/s, TF32 156, fp32 19.5'),
}




# -------------------------------------------------------------------------------------------- the bound
def op_time(r: Dict[str, Any], gpu: Dict[str, Any], tf32: bool = True, depthwise_on_cuda_cores: bool = False
            ) -> Tuple[float, str]:
    """Lower-bound seconds of one op and what bounds it ('memory' or 'compute')."""
    if r['unit'] == 'tensor' and not (depthwise_on_cuda_cores and r['kind'] == 'depthwise conv'):
        if r['compute_dtype'] in ('bfloat16', 'float16'):
            peak = gpu['tensor']
        else:
            peak = gpu['tf32'] if tf32 else gpu['fp32']
    else:
        peak = gpu['fp32']
    t_mem, t_comp = r['bytes'] / gpu['bw'], r['flops'] / peak
    return (t_mem, 'memory') if t_mem >= t_comp else (t_comp, 'compute')


def module_pattern(path: str) -> str:
    """``stages.2.5.gnconv.pws.1`` -> ``stages.2.*.gnconv.pws.*``: the stage index stays, later indices go."""
    parts = path.split('.') if path else []
    out, seen = [], 0
    for p in parts:
        if p.isdigit():
            seen += 1
            out.append(p if seen == 1 else '*')
        else:
            out.append(p)
    return '.'.join(out) if out else '(top level)'


def block_of(path: str) -> str:
    """The module path up to its second numeric component (a block), else the whole path."""
    parts = path.split('.') if path else []
    seen = 0
    for i, p in enumerate(parts):
        if p.isdigit():
            seen += 1
            if seen == 2:
                return '.'.join(parts[:i + 1])
    return path or '(top level)'


def analyse(trace: Dict[str, Any], gpu: Dict[str, Any], tf32: bool = True) -> Dict[str, Any]:
    """Totals, categories, grouped ops and blocks with their share of the bound."""
    recs = trace['records']
    for r in recs:
        r['time_s'], r['bound_by'] = op_time(r, gpu, tf32)
        r['time_dw_cuda_core_s'] = op_time(r, gpu, tf32, depthwise_on_cuda_cores=True)[0]
    total = sum(r['time_s'] for r in recs) or 1e-30

    def group(key: Callable[[Dict[str, Any]], Tuple], extra: Callable[[Dict[str, Any]], Dict[str, Any]] = None
              ) -> List[Dict[str, Any]]:
        acc: Dict[Tuple, Dict[str, Any]] = {}
        for r in recs:
            k = key(r)
            g = acc.get(k)
            if g is None:
                g = acc[k] = dict(calls=0, bytes=0, flops=0, time_s=0.0, memory_bound_s=0.0)
                if extra:
                    g.update(extra(r))
            g['calls'] += 1
            g['bytes'] += r['bytes']
            g['flops'] += r['flops']
            g['time_s'] += r['time_s']
            if r['bound_by'] == 'memory':
                g['memory_bound_s'] += r['time_s']
        rows = sorted(acc.values(), key=lambda g: -g['time_s'])
        for g in rows:
            g['share'] = g['time_s'] / total
        return rows

    ops = group(lambda r: (module_pattern(r['module']), r['site'], r['op'], r['phase'], r['dtype']),
                lambda r: dict(module=module_pattern(r['module']), site=r['site'], op=r['op'], phase=r['phase'],
                               dtype=r['dtype'], kind=r['kind'], bound_by=r['bound_by']))
    op_types = group(lambda r: (r['op'],), lambda r: dict(op=r['op'], kind=r['kind']))
    kinds = group(lambda r: (r['kind'],), lambda r: dict(kind=r['kind']))
    phases = group(lambda r: (r['phase'],), lambda r: dict(phase=r['phase']))
    blocks = group(lambda r: (block_of(r['module']) if r['phase'] != 'opt' else '(optimizer)',),
                   lambda r: dict(block=block_of(r['module']) if r['phase'] != 'opt' else '(optimizer)'))
    # blocks of one stage summed: 'stages.2.*' with the number of blocks
    stage_acc: Dict[str, Dict[str, Any]] = {}
    for b in blocks:
        pat = module_pattern(b['block']) if b['block'] not in ('(top level)', '(optimizer)') else b['block']
        s = stage_acc.setdefault(pat, dict(group=pat, blocks=0, calls=0, bytes=0, flops=0, time_s=0.0, share=0.0))
        s['blocks'] += 1
        for k in ('calls', 'bytes', 'flops', 'time_s', 'share'):
            s[k] += b[k]
    stages = sorted(stage_acc.values(), key=lambda s: -s['time_s'])
    fp32_ops = sorted({r['op'] for r in recs if r['phase'] == 'fwd' and r['compute_dtype'] == 'float32'
                       and r['kind'] not in ('optimizer',)})
    totals = dict(
        bound_s=total, ops=len(recs), bytes=sum(r['bytes'] for r in recs), flops=sum(r['flops'] for r in recs),
        tensor_flops=sum(r['flops'] for r in recs if r['unit'] == 'tensor'),
        memory_bound_s=sum(r['time_s'] for r in recs if r['bound_by'] == 'memory'),
        compute_bound_s=sum(r['time_s'] for r in recs if r['bound_by'] == 'compute'),
        bound_dw_on_cuda_cores_s=sum(r['time_dw_cuda_core_s'] for r in recs),
        all_bytes_s=sum(r['bytes'] for r in recs) / gpu['bw'],
        all_flops_tensor_s=sum(r['flops'] for r in recs if r['unit'] == 'tensor') / gpu['tensor'],
        host_syncs=trace['host_syncs'])
    return dict(totals=totals, kinds=kinds, phases=phases, op_types=op_types, ops=ops, blocks=blocks,
                stages=stages, fp32_forward_ops=fp32_ops, params=trace['params'])


# -------------------------------------------------------------------------------------------- measured
def load_measured_json(path: str, dtype: str, channels_last: bool, gf_impl: str) -> Dict[str, Dict[str, float]]:
    """{model: {'train': img/s, 'infer': img/s}} from a ``benchmark.py --json`` file: eager rows of the default path
    (no checkpointing, no opt-in lever; the bound is the default path's)."""
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"--measured_json {path}: cannot read it ({e})") from None
    out: Dict[str, Dict[str, float]] = {}
    for r in res.get('results', []):
        if r.get('error') or r.get('compile') or r.get('dtype') != dtype:
            continue
        if bool(r.get('channels_last')) != channels_last or r.get('grad_checkpointing', 'off') != 'off':
            continue
        if r.get('gf_impl') not in (None, gf_impl) or r.get('fused_gating') or r.get('triton_dwconv'):
            continue
        m = out.setdefault(r['model'], {})
        for what in ('train', 'infer'):
            v = (r.get(f'{what}_img_s') or {}).get('median')
            if v:
                m[what] = float(v)
    return out


def parse_measured(items: Sequence[str]) -> Dict[str, Dict[str, float]]:
    out: Dict[str, Dict[str, float]] = {}
    for it in items:
        try:
            model, vals = it.split('=', 1)
            parts = vals.split(':')
            m = out.setdefault(model, {})
            if parts[0]:
                m['train'] = float(parts[0])
            if len(parts) > 1 and parts[1]:
                m['infer'] = float(parts[1])
        except ValueError:
            raise UserError(f"--measured {it!r}: expected MODEL=TRAIN_IMG_S[:INFER_IMG_S], e.g. "
                            f"hornet_tiny_7x7=1305:5432") from None
    return out


# ---------------------------------------------------------------------------------------------- output
def _ms(s: float) -> str:
    return f'{s * 1e3:.2f}'


def _gb(b: float) -> str:
    return f'{b / 1e9:.2f}'


def format_markdown(res: Dict[str, Any], top: int = 15) -> str:
    st = res['settings']
    gpu = res['gpu']
    lines = [f"Roofline bound on **{st['gpu']}** ({gpu['bw'] / 1e12:.2f} TB/s, {gpu['tensor'] / 1e12:.0f} TFLOP/s "
             f"bf16 tensor, {gpu['fp32'] / 1e12:.0f} TFLOP/s fp32; {gpu['source']}), batch {st['batch_size']}, "
             f"{st['input_size']} px, {st['dtype']} autocast (CUDA policy), "
             f"{'channels_last' if st['channels_last'] else 'NCHW'}, fused AdamW.", '']
    # summary across models
    lines += ['| model | step | bound (ms) | bound, depthwise on CUDA cores (ms) | of which memory-bound ops | '
              'GB moved | GFLOP (tensor) | ops (~launches) | fwd / bwd / opt bound (ms) | measured img/s | '
              'measured ms | measured / bound | gap per op (us) |',
              '|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|']
    for m in res['models']:
        for what, a in m['steps'].items():
            if 'error' in a:
                lines.append(f"| {m['model']} | {what} | error: {a['error'][:100]} |")
                continue
            t = a['totals']
            ph = {p['phase']: p['time_s'] for p in a['phases']}
            meas = a.get('measured') or {}
            mcells = ['-'] * 4
            if meas:
                mcells = [f"{meas['img_s']:.0f}", _ms(meas['step_s']), f"{meas['ratio']:.2f}x",
                          f"{meas['gap_per_op_us']:.1f}"]
            phases = ' / '.join(_ms(ph.get(p, 0.0)) for p in ('fwd', 'bwd', 'opt')) if what == 'train' else \
                _ms(ph.get('fwd', 0.0))
            lines.append(f"| {m['model']} | {what} | {_ms(t['bound_s'])} | {_ms(t['bound_dw_on_cuda_cores_s'])} | "
                         f"{100 * t['memory_bound_s'] / t['bound_s']:.0f}% | {_gb(t['bytes'])} | "
                         f"{t['tensor_flops'] / 1e9:.0f} | {t['ops']} | {phases} | " + ' | '.join(mcells) + ' |')
    lines.append('')
    lines.append('measured / bound: the measured step time over the sum of per-op bounds; gap per op: '
                 '(measured - bound) / ops, the time each launch would cost if the whole gap were launch overhead.')
    for m in res['models']:
        a = m['steps'].get('train') or next(iter(m['steps'].values()))
        if 'error' in a:
            continue
        what = 'train' if 'train' in m['steps'] else next(iter(m['steps']))
        t = a['totals']
        lines += ['', f"#### {m['model']}, {what} step: bound {_ms(t['bound_s'])} ms, {t['ops']} ops", '',
                  '| kind | ops | GB | GFLOP | bound (ms) | share | memory-bound part |',
                  '|---|--:|--:|--:|--:|--:|--:|']
        for k in a['kinds']:
            lines.append(f"| {k['kind']} | {k['calls']} | {_gb(k['bytes'])} | {k['flops'] / 1e9:.0f} | "
                         f"{_ms(k['time_s'])} | {100 * k['share']:.1f}% | "
                         f"{100 * k['memory_bound_s'] / max(k['time_s'], 1e-30):.0f}% |")
        lines += ['', f"Top {top} ops (module pattern, `*` = every block of the stage):", '',
                  '| module | source line | op | phase | dtype | calls | GB | GFLOP | bound (ms) | share | bound by |',
                  '|---|---|---|---|---|--:|--:|--:|--:|--:|---|']
        for o in a['ops'][:top]:
            lines.append(f"| {o['module']} | {o['site'] or '-'} | {o['op']} | {o['phase']} | {o['dtype']} | "
                         f"{o['calls']} | {_gb(o['bytes'])} | {o['flops'] / 1e9:.1f} | {_ms(o['time_s'])} | "
                         f"{100 * o['share']:.1f}% | {o['bound_by']} |")
        lines += ['', 'Blocks by stage:', '', '| blocks | count | ops | GB | bound (ms) | per block (ms) | share |',
                  '|---|--:|--:|--:|--:|--:|--:|']
        for s in a['stages']:
            lines.append(f"| {s['group']} | {s['blocks']} | {s['calls']} | {_gb(s['bytes'])} | {_ms(s['time_s'])} | "
                         f"{_ms(s['time_s'] / max(s['blocks'], 1))} | {100 * s['share']:.1f}% |")
        if a['fp32_forward_ops']:
            lines += ['', 'Forward ops in fp32 under autocast: ' + ', '.join(a['fp32_forward_ops'])]
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------- CLI
def run(args: argparse.Namespace) -> Dict[str, Any]:
    import models  # noqa: F401 - registers the HorNet variants with timm
    check_models(args.models, args.original)
    original = load_original_module(args.original) if args.original else None
    gpu = dict(GPUS[args.gpu])
    if args.bandwidth:
        gpu['bw'] = args.bandwidth * 1e12
    if args.tensor_tflops:
        gpu['tensor'] = args.tensor_tflops * 1e12
    if args.fp32_tflops:
        gpu['fp32'] = args.fp32_tflops * 1e12
    channels_last = args.channels_last == 'on'
    measured: Dict[str, Dict[str, float]] = {}
    for path in args.measured_json or []:
        for k, v in load_measured_json(path, args.dtype, channels_last, args.gf_impl).items():
            measured.setdefault(k, {}).update(v)
    for k, v in parse_measured(args.measured or []).items():
        measured.setdefault(k, {}).update(v)
    out_models = []
    for name in dict.fromkeys(args.models):
        steps: Dict[str, Any] = {}
        for what in args.what:
            t0 = time.perf_counter()
            try:
                tr = trace_step(name, args.batch_size, args.input_size, args.dtype, channels_last, args.gf_impl,
                                what, original)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - one model that cannot be traced must not stop the rest
                steps[what] = dict(error=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
                _logger.warning('%s %s: %s', name, what, steps[what]['error'])
                continue
            a = analyse(tr, gpu, tf32=args.tf32 == 'on')
            m = measured.get(name, {}).get(what)
            if m:
                step_s = args.batch_size / m
                a['measured'] = dict(img_s=m, step_s=step_s, ratio=step_s / a['totals']['bound_s'],
                                     gap_per_op_us=1e6 * (step_s - a['totals']['bound_s']) / max(a['totals']['ops'], 1))
            a['bound_img_s'] = args.batch_size / a['totals']['bound_s']
            if not args.all_ops:
                a['ops'] = a['ops'][:max(args.top * 4, 60)]
            steps[what] = a
            _logger.info('%s %s: bound %.2f ms, %d ops (%.1fs)', name, what, a['totals']['bound_s'] * 1e3,
                         a['totals']['ops'], time.perf_counter() - t0)
        out_models.append(dict(model=name, steps=steps))
    settings = {k: v for k, v in vars(args).items() if k not in ('json', 'markdown')}
    return dict(settings=settings, gpu=gpu, torch=torch.__version__, models=out_models,
                method='FakeTensorMode + TorchDispatchMode per aten op; time_op = max(bytes / bw, flops / peak)')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--models', nargs='+', default=['hornet_tiny_7x7', 'hornet_tiny_gf', 'convnext_tiny'],
                   help='timm names (any registered model); orig:<name> with --original')
    p.add_argument('--original', default=None, help="the original release's hornet.py (for orig: names)")
    p.add_argument('--batch_size', type=int, default=128)
    p.add_argument('--input_size', type=int, default=224)
    p.add_argument('--dtype', choices=tuple(DTYPES), default='bf16', help='autocast dtype (fp32: no autocast)')
    p.add_argument('--channels_last', choices=('on', 'off'), default='on')
    p.add_argument('--gf_impl', default='fft', help='Global Filter implementation of GF models')
    p.add_argument('--what', nargs='+', choices=('train', 'infer'), default=['train', 'infer'])
    p.add_argument('--gpu', choices=tuple(GPUS), default='h200')
    p.add_argument('--bandwidth', type=float, default=None, help='override: DRAM TB/s')
    p.add_argument('--tensor_tflops', type=float, default=None, help='override: bf16 tensor-core TFLOP/s')
    p.add_argument('--fp32_tflops', type=float, default=None, help='override: fp32 CUDA-core TFLOP/s')
    p.add_argument('--tf32', choices=('on', 'off'), default='on',
                   help='fp32 matmuls/convs at the TF32 tensor peak (main.py enables TF32)')
    p.add_argument('--measured', nargs='*', default=None, metavar='MODEL=TRAIN[:INFER]',
                   help='measured img/s to compare with the bound, e.g. hornet_tiny_7x7=1305:5432')
    p.add_argument('--measured_json', nargs='*', default=None,
                   help='benchmark.py --json file(s): eager rows with the same dtype/layout/gf_impl give img/s')
    p.add_argument('--top', type=int, default=15, help='rows of the top-ops table per model')
    p.add_argument('--all_ops', action='store_true', help='keep every grouped op in the JSON (default: top rows)')
    p.add_argument('--json', default=None, help='write the full result here')
    p.add_argument('--markdown', default=None, help='write the markdown tables here (also printed)')
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.input_size < 32:
        p.error('--batch_size must be >= 1 and --input_size >= 32')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format='[roofline] %(message)s')
    args = parse_args(argv)
    try:
        for path in (args.json, args.markdown):
            if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise UserError(f"{path}: directory {os.path.dirname(os.path.abspath(path))} does not exist")
        res = run(args)
        md = format_markdown(res, args.top)
        print(md)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(res, f, indent=1)
            _logger.info('wrote %s', args.json)
        if args.markdown:
            with open(args.markdown, 'w') as f:
                f.write(md + '\n')
        failed = [(m['model'], w) for m in res['models'] for w, a in m['steps'].items() if 'error' in a]
        if failed:
            print('error: could not trace ' + ', '.join(f'{m} ({w})' for m, w in failed), file=sys.stderr)
            return 1
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
