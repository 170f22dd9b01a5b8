"""Training / inference throughput and peak memory of HorNet against peers, or data-pipeline throughput.

The command line of ``scripts/benchmark.py``; each mode lives in its own module:

``--mode model`` (default, ``scripts/bench/model.py``) times every model x setting case, training and inference,
with peak memory and per-repeat ratios to a baseline case; ``--profile TOP`` then profiles one training step per
case (``profiling.py``: on a GPU the TOP kernels by CUDA time, the kernel launches per step and the share of the
step the GPU was busy; on the CPU the ops by self time and the leaf aten ops per step). ``--time_limit`` (or
SIGTERM) stops starting new work and still writes the JSON; ``--compile_mode`` picks torch.compile's mode
(``reduce-overhead``: CUDA graphs); ``--markdown`` saves the tables. The opt-in levers of the HorNet block are case
dimensions like the others, each timed against the default path in the same run: ``--gf_impl`` (fft / matmul /
kron), ``--fused_gating off on`` and ``--triton_dwconv off on`` (CUDA, or CPU under ``TRITON_INTERPRET=1``).

``--mode memory`` (``memory.py``) counts the exact tensor memory of one training step (parameters, AdamW state,
gradients, activations) on fake tensors: no arithmetic runs, so any model and batch size takes seconds.

``--mode data`` (``data.py``) times the training input pipeline (the original recipe: RandAugment
rand-m9-mstd0.5-inc1, bicubic RandomResizedCrop, flip, random erasing 0.25) through a DataLoader for each
``--pipelines`` x ``--workers`` case on ``--data_path`` (an ImageFolder) or on a generated folder of random JPEGs:
``reference`` is today's kind (timm ``create_transform``, float output), ``uint8`` the default ``--data_backend pil``
(uint8 output). It reports img/s, img/s per worker and the loading processes' CPU-seconds per image.

Examples::

    python scripts/benchmark.py --device cpu --batch_size 16 --repeats 5 --json cpu.json
    python scripts/benchmark.py --models hornet_tiny_7x7 orig:hornet_tiny_7x7 --original /tmp/orig/hornet.py
    python scripts/benchmark.py --device cuda --dtype fp32 bf16 fp16 --channels_last off on --compile off on
    python scripts/benchmark.py --device cuda --models hornet_tiny_7x7 --fused_gating off on --triton_dwconv off on
    python scripts/benchmark.py --mode data --workers 0 1 2
    python scripts/benchmark.py --mode memory --models hornet_large_7x7 --grad_checkpointing off on selective \\
        --batch_size 32
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Callable, Optional, Sequence

import torch

from errors import UserError
from scripts.bench.common import DEFAULT_MODELS, DTYPES, ORIG_PREFIX
from scripts.bench.data import DATA_PIPELINES, format_data_table, run_data
from scripts.bench.memory import format_memory_table, run_memory
from scripts.bench.model import format_model_table, on_sigterm, run_models

_logger = logging.getLogger('benchmark')


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
    p.add_argument('--fused_gating', nargs='+', type=_on_off, default=['off'], metavar='{on,off}',
                   help="opt-in lever: each gnConv's gating chain as one autograd Function (HorNet's "
                        "fast_ops.enable; other models get only the first value); off on: both, paired")
    p.add_argument('--triton_dwconv', nargs='+', type=_on_off, default=['off'], metavar='{on,off}',
                   help="opt-in lever: the 7x7 depthwise conv + scale + first gating multiply as one Triton kernel "
                        "(HorNet's fast_ops.enable; CUDA, or the CPU under TRITON_INTERPRET=1; --mode model only)")
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
    previous_term = signal.signal(signal.SIGTERM, on_sigterm) if args.mode == 'model' else None
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
            print(f"error: {len(failed)} case(s) failed: "
                  + '; '.join(f"{r.get('label', r['model'])}: {r['error']}" for r in failed), file=sys.stderr)
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
