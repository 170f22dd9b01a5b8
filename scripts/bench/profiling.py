"""``--profile TOP``: one training step under ``torch.profiler``, summarised as the top kernels (GPU) or ops (CPU)
and the kernel launches per step (GPU: CUDA kernel events; CPU: leaf aten ops, the CPU analogue)."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Sequence

import torch

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

