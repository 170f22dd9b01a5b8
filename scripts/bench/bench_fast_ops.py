#!/usr/bin/env python3
"""Micro-benchmarks of the opt-in fast paths (models/fast_ops.py) against the default ones, on any device.

* ``gf``: the Global Filter alone (``gf_impl`` fft / matmul / kron), forward and forward+backward, at HorNet-T's
  stage 3 and 4 shapes, on the channels-last channel slice the block passes in.
* ``gating``: one HorBlock forward+backward with the reference gating chain, ``fused_gating`` and selective
  checkpointing (and ``triton_dwconv`` on CUDA), at HorNet-T's stage 2-4 shapes.
* ``saved``: activation bytes autograd saves for backward in one HorNet-T training forward (saved_tensors_hooks,
  distinct storages, parameters excluded), reference against ``fused_gating``.

Timings: per-call medians over interleaved repeats (the order flips every repeat); on CPU process CPU time
(robust to other load on the machine), on CUDA wall time between synchronisations.

Usage: ``python scripts/bench/bench_fast_ops.py [--device cpu] [--threads 1] [--batch_size 8] [--repeats 30]``
(the checkout installed with ``pip install -e .``, or ``python -m scripts.bench.bench_fast_ops`` from its root)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

try:
    from models import fast_ops
    from models.global_filter import global_filter_fft, global_filter_kron, global_filter_matmul
    from models.hornet import HorBlock, checkpoint_blocks
except ModuleNotFoundError as e:  # run as a file from a checkout that is not installed
    if e.name != 'models':
        raise
    sys.exit("error: cannot import 'models': pip install -e . in the repository root "
             "(or run python -m scripts.bench.bench_fast_ops from it)")


def _timer(device: torch.device) -> Callable[[], float]:
    if device.type == 'cuda':
        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return now
    return time.process_time


def _compare(fns: Dict[str, Callable[[], None]], device: torch.device, repeats: int, inner: int = 3):
    now = _timer(device)
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            t = now()
            for _ in range(inner):
                fns[k]()
            times[k].append((now() - t) / inner * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_gf(args, device) -> None:
    impls = dict(fft=global_filter_fft, matmul=global_filter_matmul, kron=global_filter_kron)
    for c, hw in [(240, 14), (480, 7)]:  # HorNet-T stages 3 and 4: half of 1.875 * C channels
        x0 = torch.randn(args.batch_size, hw, hw, 2 * c, device=device)[..., c:].permute(0, 3, 1, 2)
        weight = torch.randn(c, hw, hw // 2 + 1, 2, device=device, requires_grad=True)
        for train in (False, True):
            def make(fn):
                def step():
                    if train:
                        x = x0.detach().requires_grad_()
                        fn(x, weight).sum().backward()
                    else:
                        with torch.no_grad():
                            fn(x0, weight)
                return step
            med = _compare({k: make(fn) for k, fn in impls.items()}, device, args.repeats)
            what = 'fwd+bwd' if train else 'fwd'
            print(f"GF B{args.batch_size} C{c} {hw}x{hw} {what}: "
                  + ', '.join(f'{k} {v:.2f} ms' for k, v in med.items())
                  + f" | kron/fft {med['kron'] / med['fft']:.2f}x, matmul/fft {med['matmul'] / med['fft']:.2f}x")


def bench_gating(args, device) -> None:
    modes = ['reference', 'fused_gating', 'selective_ckpt']
    if device.type == 'cuda':
        modes += ['triton_dwconv', 'triton_dwconv+fused_gating']
    for dim, order, hw in [(128, 3, 28), (256, 4, 14), (512, 5, 7)]:
        blk = HorBlock(dim, order=order, layer_scale_init_value=1.0).to(device)
        x0 = torch.randn(args.batch_size, dim, hw, hw, device=device).contiguous(memory_format=torch.channels_last)

        def make(mode):
            def step():
                fast_ops.enable(blk, fused_gating='fused_gating' in mode, triton_dwconv='triton' in mode)
                x = x0.detach().requires_grad_()
                y = checkpoint_blocks([blk], x, selective=True) if mode == 'selective_ckpt' else blk(x)
                y.sum().backward()
            return step
        med = _compare({m: make(m) for m in modes}, device, args.repeats, inner=1)
        print(f'HorBlock dim {dim} order {order} {hw}x{hw} B{args.batch_size} fwd+bwd: '
              + ', '.join(f'{m} {v:.1f} ms ({v / med["reference"]:.3f}x)' for m, v in med.items()))


def bench_saved(args, device) -> None:
    import timm

    def saved_bytes(model, x) -> int:
        storages: Dict[int, int] = {}

        def pack(t):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        return sum(v for k, v in storages.items() if k not in params)

    for name in ('hornet_tiny_7x7', 'hornet_tiny_gf'):
        model = timm.create_model(name).to(device).train()
        x = torch.randn(2, 3, 224, 224, device=device)
        res = {}
        for fused in (False, True):
            fast_ops.enable(model, fused_gating=fused)
            res['fused_gating' if fused else 'reference'] = saved_bytes(model, x) / 2 ** 20
        print(f'{name} batch 2, 224: activations saved for backward: reference {res["reference"]:.1f} MiB, '
              f'fused_gating {res["fused_gating"]:.1f} MiB ({res["fused_gating"] / res["reference"]:.3f}x)')


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--what', nargs='+', choices=('gf', 'gating', 'saved'), default=['gf', 'gating', 'saved'])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--repeats', type=int, default=30)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f'{device} | torch {torch.__version__} | threads {torch.get_num_threads()} | batch {args.batch_size}')
    for what in args.what:
        {'gf': bench_gf, 'gating': bench_gating, 'saved': bench_saved}[what](args, device)
    return 0


if __name__ == '__main__':
    sys.exit(main())
