"""``--mode memory``: the exact tensor memory of one training step (parameters, AdamW state, gradients,
activations) on fake tensors: no arithmetic runs, so any model and batch size takes seconds on any machine."""
from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import time
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from errors import UserError
from scripts.bench.common import (DTYPES, apply_checkpointing, apply_lever, check_models, environment, error_text,
                                  settings_dict)

_logger = logging.getLogger('benchmark')


def tensor_memory_of_step(name: str, batch: int, input_size: int, grad_ckpt: str, dtype: str,
                          fused_gating: bool = False) -> Tuple[Dict[str, float], Optional[bool]]:
    """Exact live-tensor bytes at the peak of one steady-state training step, by category, without running it.

    The model, optimizer and batch are fake tensors (``FakeTensorMode``): shapes and allocations are real, no
    arithmetic happens, so HorNet-L at batch 32 takes seconds on any machine. torch's ``MemTracker`` attributes
    every live tensor to parameters, gradients, optimizer state, activations or temporaries. This is what a
    GPU's ``max_memory_allocated`` reports, less allocator fragmentation and cuDNN workspaces.

    Returns GiB by category and whether ``fused_gating`` is on (None: the model has no such switch).
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
        fused = apply_lever(model, 'fused_gating', fused_gating)
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
    return {str(k).split('.')[-1].lower(): v / 2 ** 30 for k, v in per_device.items()}, fused


def run_memory(args: argparse.Namespace) -> Dict[str, Any]:
    """Every model x dtype x checkpointing x fused_gating row (fused_gating only varies for HorNet models)."""
    check_models(args.models, None)
    if 'on' in (getattr(args, 'triton_dwconv', None) or []):
        raise UserError("--triton_dwconv on is timed by --mode model only (fake tensors cannot run a Triton kernel)")
    gating = list(dict.fromkeys(getattr(args, 'fused_gating', None) or ['off']))
    results = []
    no_switch: set = set()  # models without the fused_gating lever: only the first --fused_gating value
    for name, dtype, ck, fg in itertools.product(dict.fromkeys(args.models), dict.fromkeys(args.dtype),
                                                 dict.fromkeys(args.grad_checkpointing), gating):
        if name in no_switch and fg != gating[0]:
            continue
        t0 = time.perf_counter()
        row: Dict[str, Any] = dict(model=name, dtype=dtype, grad_checkpointing=ck, fused_gating=None, error=None)
        try:
            row['gib'], row['fused_gating'] = tensor_memory_of_step(name, args.batch_size, args.input_size, ck,
                                                                    dtype, fg == 'on')
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - one model that cannot be traced must not stop the rest
            row['error'] = error_text(e)
        if row['fused_gating'] is None and 'gib' in row:
            no_switch.add(name)
            if fg != gating[0]:
                continue
        _logger.info('%s %s ckpt=%s fused_gating=%s: %s (%.0fs)', name, dtype, ck, fg,
                     row.get('gib', {}).get('total', row['error']), time.perf_counter() - t0)
        results.append(row)
    meta = dict(environment(torch.device('cpu')), method='FakeTensorMode + torch.distributed._tools.MemTracker')
    return dict(meta=meta, settings=settings_dict(args), results=results)


def format_memory_table(res: Dict[str, Any]) -> str:
    """The markdown table of :func:`run_memory`'s result (GiB by category, total against the first row)."""
    lines = ['| model | dtype | checkpointing | fused gating | params | optimizer | gradients | activations | '
             'temporaries | peak total (GiB) | vs first row |', '|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|']
    first = next((r['gib']['total'] for r in res['results'] if not r['error']), None)
    for r in res['results']:
        fg = {True: 'on', False: 'off'}.get(r.get('fused_gating'), '-')
        setting = f"| {r['model']} | {r['dtype']} | {r['grad_checkpointing']} | {fg} |"
        if r['error']:
            lines.append(f"{setting} error: {r['error'][:80]} |")
            continue
        g = r['gib']
        lines.append(f"{setting} {g.get('param', 0):.2f} | {g.get('opt', 0):.2f} | {g.get('grad', 0):.2f} | "
                     f"{g.get('act', 0):.2f} | {g.get('temp', 0):.2f} | {g['total']:.2f} | {g['total'] / first:.2f}x |")
    return '\n'.join(lines)
