"""Training and evaluation loops.

One optimizer-step path for fp32/fp16/bf16: the GradScaler is enabled only for fp16, and clipping runs once per
optimizer step after unscaling in every precision. Schedules (LR, WD) and EMA advance per optimizer step, as
functions of the global step, so gradient accumulation and resumption cannot shift them.
"""
from __future__ import annotations

import contextlib
import logging
import signal
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

import runlog
import utils
from errors import UserError
from optim_factory import apply_schedules

_logger = logging.getLogger('hornet')


class TrainingInterrupted(Exception):
    """Raised after a stop signal once the current step's checkpoint is safely written."""


class NonFiniteLoss(UserError):
    """The loss became NaN/Inf: training stops and no checkpoint is written from the bad state."""


@dataclass
class TrainState:
    """Counters that must survive a resume to continue exactly where training stopped."""
    epoch: int = 0
    global_step: int = 0        # optimizer steps done since the start of training
    step_in_epoch: int = 0      # optimizer steps done in ``epoch``
    ema_updates: int = 0
    max_accuracy: float = 0.0
    max_accuracy_ema: float = 0.0


@dataclass
class StepConfig:
    """Typed, validated settings of one optimizer step (built once in main.py)."""
    update_freq: int = 1
    clip_grad: Optional[float] = None
    amp_dtype: Optional[torch.dtype] = None   # None: fp32
    channels_last: bool = False
    print_freq: int = 10
    batch_size: int = 1
    steps_per_epoch: int = 1
    lr_fn: Optional[Callable[[int], float]] = None
    wd_fn: Optional[Callable[[int], float]] = None


class DeviceSeries(runlog.SmoothedValue):
    """A progress meter fed with 0-d device tensors, read back to the host only when the meter is read.

    ``push`` keeps the tensor (no host sync); the first read of ``median``/``avg``/``global_avg``/``value`` (the
    progress line at a print step, the epoch averages) copies every pending value to the host in one transfer and
    feeds them to the ordinary :class:`runlog.SmoothedValue` in order, so the meter holds exactly the floats
    ``.item()`` per step would have given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list = []

    max_pending = 1024  # a rank that never prints still reads back every 1024 values, not once per epoch

    def push(self, value: torch.Tensor) -> None:
        self._pending.append(value.detach().reshape(()))
        if len(self._pending) >= self.max_pending:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            for v in torch.stack(pending).tolist():  # one device-to-host copy for all pending values
                super().update(v)

    def update(self, value: float, n: int = 1) -> None:
        self.flush()
        super().update(value, n)

    median = property(lambda self: (self.flush(), runlog.SmoothedValue.median.fget(self))[1])
    avg = property(lambda self: (self.flush(), runlog.SmoothedValue.avg.fget(self))[1])
    global_avg = property(lambda self: (self.flush(), runlog.SmoothedValue.global_avg.fget(self))[1])
    value = property(lambda self: (self.flush(), runlog.SmoothedValue.value.fget(self))[1])


def _device_meter(metric_logger: runlog.MetricLogger, name: str) -> DeviceSeries:
    m = metric_logger.meters.get(name)
    if not isinstance(m, DeviceSeries):
        m = metric_logger.meters[name] = DeviceSeries()
    return m


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(
        model: nn.Module,
        criterion: nn.Module,
        loader: Iterable,
        num_batches: int,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        state: TrainState,
        cfg: StepConfig,
        model_ema: Optional[Any] = None,
        mixup_fn: Optional[Callable] = None,
        save_fn: Optional[Callable[[str], None]] = None,
        on_step: Optional[Callable[[TrainState], None]] = None,
) -> Dict[str, float]:
    """Run the rest of ``state.epoch`` (``num_batches`` micro-batches remain). Returns epoch averages.

    ``save_fn('preempt')`` is called when a stop signal was seen by any rank, after the step it interrupted.

    Host syncs: the loss, gradient norm and loss scale stay on the device (:class:`DeviceSeries`) and reach the
    host only when a progress line is printed and at the end of the epoch. Once per optimizer step, one device
    tensor [rank of a non-finite loss, stop requested] is all-reduced (one collective under DDP) and read: the
    only per-step sync.
    """
    ds = utils.dist_state()
    device = ds.device
    model.train()
    metric_logger = runlog.MetricLogger()
    header = f'Epoch: [{state.epoch}]'
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    local_bad = torch.zeros((), dtype=torch.bool, device=device)  # any non-finite loss on this rank so far
    micro = 0
    for samples, targets in metric_logger.log_every(loader, cfg.print_freq, header, num_batches, cfg.batch_size):
        if micro % cfg.update_freq == 0 and cfg.lr_fn is not None:
            apply_schedules(optimizer, state.global_step, cfg.lr_fn, cfg.wd_fn)
        boundary = (micro + 1) % cfg.update_freq == 0  # main.py makes num_batches a multiple of update_freq
        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)
        if cfg.channels_last:
            samples = samples.contiguous(memory_format=torch.channels_last)
        sync_ctx = model.no_sync() if (ds.distributed and not boundary and hasattr(model, 'no_sync')) \
            else contextlib.nullcontext()
        with sync_ctx:
            with autocast(device, cfg.amp_dtype):
                output = model(samples)
                loss = criterion(output, targets)
            local_bad = local_bad | ~torch.isfinite(loss.detach()).all()
            scaler.scale(loss / cfg.update_freq).backward()
        _device_meter(metric_logger, 'loss').push(loss)
        micro += 1
        if not boundary:
            continue

        # One device tensor, one collective and one host read per optimizer step: did any rank see a non-finite
        # loss (the highest such rank + 1, else 0), or a stop signal?
        flags = torch.stack([local_bad.to(torch.float64) * (ds.rank + 1),
                             torch.full((), 1.0 if utils.STOP.requested else 0.0, dtype=torch.float64, device=device)])
        if ds.distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad_rank, stop = flags.tolist()
        if bad_rank > 0:
            optimizer.zero_grad(set_to_none=True)
            mine = bool(local_bad.item())  # the error path may sync
            raise NonFiniteLoss(
                f"loss is {loss.item() if mine else 'non-finite'} on rank {int(bad_rank) - 1} at epoch "
                f"{state.epoch}, optimizer step {state.global_step}: stopping without saving (lower --lr, enable "
                f"--clip_grad, or use --amp_dtype bfloat16); the last checkpoint is intact")
        scaler.unscale_(optimizer)
        grad_norm = None
        if cfg.clip_grad is not None and cfg.clip_grad > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if model_ema is not None:
            model_ema.update(model, step=state.global_step)
            state.ema_updates += 1
        state.global_step += 1
        state.step_in_epoch += 1

        lrs = [g['lr'] for g in optimizer.param_groups]
        wd = next((g['weight_decay'] for g in optimizer.param_groups if g['weight_decay'] > 0), 0.0)
        metric_logger.update(lr=max(lrs), min_lr=min(lrs), weight_decay=wd)
        if grad_norm is not None:
            _device_meter(metric_logger, 'grad_norm').push(grad_norm)
        if scaler.is_enabled():
            scale = scaler._get_scale_async() if hasattr(scaler, '_get_scale_async') else None
            if scale is None:
                metric_logger.update(loss_scale=scaler.get_scale())
            else:  # a copy: the scaler updates its scale tensor in place
                _device_meter(metric_logger, 'loss_scale').push(scale.detach().clone().float())
        if on_step is not None:
            on_step(state)
        if stop:
            if utils.STOP.requested and not utils.STOP.ctrl_c:  # (a Ctrl-C was acknowledged when it came)
                _logger.warning('Received %s: saving a checkpoint of this step and stopping',
                                ', '.join(sorted(signal.Signals(n).name for n in utils.STOP.received)))
            if save_fn is not None:
                save_fn('preempt')
            raise TrainingInterrupted(f'stopped at epoch {state.epoch}, step {state.global_step}')
    return {k: m.global_avg for k, m in metric_logger.meters.items()}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, num_batches: int, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False, print_freq: int = 10, header: str = 'Test:',
             log_result: bool = True) -> Dict[str, float]:
    """Exact (distributed) evaluation: every sample counted once; sums, not averages of averages.

    Logs the ``* Acc@1 ...`` line unless ``log_result`` is False (``--eval`` prints it itself)."""
    ds = utils.dist_state()
    criterion = nn.CrossEntropyLoss(reduction='sum')
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    metric_logger = runlog.MetricLogger()
    # processes that evaluate: all with sharded sampling, one when rank 0 evaluates alone (--dist_eval false)
    evaluating = getattr(getattr(loader, 'sampler', None), 'num_replicas', ds.world_size)
    for images, target in metric_logger.log_every(loader, print_freq, header, num_batches, world_size=evaluating):
        images = images.to(ds.device, non_blocking=True)
        target = target.to(ds.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(ds.device, amp_dtype):
            output = model(images)
        output = output.float()
        loss_sum += criterion(output, target).item()
        k = min(5, output.shape[1])
        top = output.topk(k, dim=1).indices
        hits = top.eq(target.unsqueeze(1))
        correct1 += hits[:, :1].sum().item()
        correct5 += hits[:, :k].sum().item()
        count += target.numel()
    loss_sum, correct1, correct5, count = utils.all_reduce_sum([loss_sum, correct1, correct5, count])
    if count == 0:
        raise UserError('the validation set is empty: check --data_path / --eval_data_path')
    stats = {'acc1': 100.0 * correct1 / count, 'acc5': 100.0 * correct5 / count, 'loss': loss_sum / count,
             'num_samples': int(count)}
    if log_result:
        _logger.info(result_line(stats))
    return stats


def result_line(stats: Dict[str, float]) -> str:
    """The evaluation summary line, as the original prints it."""
    return '* Acc@1 {:.3f} Acc@5 {:.3f} loss {:.3f}'.format(stats['acc1'], stats['acc5'], stats['loss'])
