"""engine.train_one_epoch reads device values on the host only at print steps and once per optimizer step.

On a GPU every such read (``.item()``, ``.tolist()``, ``bool(t)``, ``float(t)``, ``.cpu()``...) waits for all queued
kernels. The test counts them on a real CPU run with a ``TorchFunctionMode`` that sees every tensor method call.
Values built on the host from Python numbers (``torch.tensor([...])`` with no device, e.g. the progress meters'
median and the optimizer's CPU step counters) are not device values; they are tracked, with everything computed
only from them, and their reads are not counted.
"""
from __future__ import annotations

import collections
import logging
import sys
import weakref

import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import engine
from models.hornet import HorNet

READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
         torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.cpu}
HOST_FACTORIES = {torch.tensor, torch.as_tensor, torch.scalar_tensor, torch.full}


class HostReads(TorchFunctionMode):
    """Counts host reads of device values, per micro-batch index (``self.step``, set by the loader)."""

    def __init__(self) -> None:
        super().__init__()
        self._host = {}  # id -> weakref of tensors holding host-made values (and what is computed only from them)
        self.step = -1
        self.reads = collections.Counter()
        self.sites = collections.Counter()

    def _is_host(self, t: torch.Tensor) -> bool:
        ref = self._host.get(id(t))
        return ref is not None and ref() is t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if func in READS and ins and not self._is_host(ins[0]):
            self.reads[self.step] += 1
            f = sys._getframe(1)
            self.sites[f'{f.f_code.co_filename.rsplit("/", 1)[-1]}:{f.f_lineno}'] += 1
        out = func(*args, **kwargs)
        host_made = func in HOST_FACTORIES and kwargs.get('device') is None
        if host_made or (ins and all(self._is_host(t) for t in ins)):
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self._host[id(t)] = weakref.ref(t)
        return out


def _epoch(counter: HostReads, n: int, update_freq: int, print_freq: int, clip, amp_dtype=None):
    torch.manual_seed(0)
    model = HorNet(num_classes=4, depths=(1, 1, 1, 1), base_dim=8)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 4, (2,), generator=g)) for _ in range(n)]

    def loader():
        for i, b in enumerate(batches):
            counter.step = i
            yield b

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)  # main.py's default optimizer kernel
    for group in opt.param_groups:
        group['lr_scale'] = 1.0
    cfg = engine.StepConfig(update_freq=update_freq, batch_size=2, print_freq=print_freq, clip_grad=clip,
                            amp_dtype=amp_dtype, lr_fn=lambda s: 1e-3, wd_fn=lambda s: 0.05)
    with counter:
        stats = engine.train_one_epoch(model, nn.CrossEntropyLoss(), loader(), n, opt,
                                       torch.amp.GradScaler('cpu', enabled=False), engine.TrainState(), cfg)
    return stats


@pytest.mark.parametrize('amp_dtype', [None, torch.bfloat16])
def test_one_host_read_per_optimizer_step_plus_one_per_meter_at_print_steps(amp_dtype, caplog):
    caplog.set_level(logging.INFO, logger='hornet')  # progress lines are formatted (and meters read) when emitted
    counter = HostReads()
    stats = _epoch(counter, n=8, update_freq=2, print_freq=1000, clip=1.0, amp_dtype=amp_dtype)
    # optimizer steps end at micro-batches 1, 3, 5, 7: one read each (the non-finite/stop flags). Progress lines
    # are printed after micro-batches 0 and 7 (first and last): one read per device meter with pending values
    # (at 0: the loss; at 7: the loss and the gradient norm). Nothing else: no read per micro-batch.
    assert dict(counter.reads) == {0: 1, 1: 1, 3: 1, 5: 1, 7: 3}, (dict(counter.reads), dict(counter.sites))
    assert all(site.startswith('engine.py') for site in counter.sites), dict(counter.sites)
    assert set(stats) >= {'loss', 'grad_norm', 'lr'} and all(isinstance(v, float) for v in stats.values())
    assert sum('loss:' in r.getMessage() for r in caplog.records) == 2


def test_host_reads_do_not_grow_with_micro_batches_between_prints(caplog):
    caplog.set_level(logging.INFO, logger='hornet')
    counter = HostReads()
    _epoch(counter, n=12, update_freq=3, print_freq=1000, clip=None)
    assert sum(counter.reads.values()) == 4 + 2  # 4 optimizer steps; prints at 0 and 11 read the loss meter
    assert set(counter.reads) == {0, 2, 5, 8, 11}


def test_the_counter_sees_a_read_per_micro_batch_in_the_pattern_it_replaced():
    """The mechanism itself: ``loss.item()`` per micro-batch (the former engine) is counted every time."""
    counter = HostReads()
    model = nn.Linear(4, 2)
    with counter:
        for i in range(3):
            counter.step = i
            loss = model(torch.randn(5, 4)).pow(2).mean()
            loss.item()
            torch.tensor([1.0, 2.0]).median().item()  # host-made: not a device read
    assert dict(counter.reads) == {0: 1, 1: 1, 2: 1}
