"""What a run reports and where: console/train.log logging, the progress meters, and the results log (log.txt,
TensorBoard, wandb).

Only rank 0 writes files and logs below WARNING; every rank logs its warnings, so a problem on one process is seen.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import time
from collections import defaultdict, deque
from typing import Any, Dict, Iterable, Iterator, Optional

import torch

import utils
from errors import UserError
from loaders import DataWaitMonitor, timed

_logger = logging.getLogger('hornet')


# ---------------------------------------------------------------------------------------------- logging
class RankFilter(logging.Filter):
    """Rank 0 logs everything; the other ranks only their warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return utils.dist_state().is_main or record.levelno >= logging.WARNING


def setup_logging(output_dir: Optional[str] = None, level: int = logging.INFO) -> None:
    """Log to stderr (rank 0 only below WARNING) and, on rank 0, to ``output_dir/train.log``."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, '_hornet', False):
            root.removeHandler(h)
    fmt = logging.Formatter('%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S')
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    handler.addFilter(RankFilter())
    handler._hornet = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    if output_dir and utils.dist_state().is_main:
        os.makedirs(output_dir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(output_dir, 'train.log'))
        fh.setFormatter(fmt)
        fh._hornet = True  # type: ignore[attr-defined]
        root.addHandler(fh)
    root.setLevel(level)


def log_to_file(level: int, message: str, exc_info: Optional[tuple] = None) -> None:
    """Record ``message`` in train.log, if open, and not on the console (which already shows it): the line that
    ended a run belongs at the end of its log."""
    record = _logger.makeRecord(_logger.name, level, __file__, 0, message, None, exc_info)
    for h in logging.getLogger().handlers:
        if getattr(h, '_hornet', False) and isinstance(h, logging.FileHandler):
            h.handle(record)


def plural(n: int, word: str) -> str:
    """``plural(1, 'epoch')`` -> '1 epoch', ``plural(12, 'epoch')`` -> '12 epochs'."""
    return f'{n} {word}' if n == 1 else f'{n} {word}s'


# ---------------------------------------------------------------------------------------------- meters
class SmoothedValue:
    """Windowed median/avg plus global average of a scalar series."""

    def __init__(self, window: int = 20, fmt: str = '{median:.4f} ({global_avg:.4f})'):
        self.deque: deque = deque(maxlen=window)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt
        self._constant: Optional[float] = None  # the value while every update had the same one
        self._varied = False

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        if self.count == 0:
            self._constant = value
        elif value != self._constant:
            self._varied = True
        self.count += n
        self.total += value * n

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.deque)).median().item()) if self.deque else 0.0

    @property
    def avg(self) -> float:
        return sum(self.deque) / max(len(self.deque), 1)

    @property
    def global_avg(self) -> float:
        """The mean of all updates; exactly the value when it never changed (0.05, not 0.049999999999999954)."""
        if self.count and not self._varied and self._constant is not None:
            return self._constant
        return self.total / max(self.count, 1)

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, value=self.value)


class MetricLogger:
    """Per-step progress lines with ETA and img/s (rank 0), and epoch averages for log.txt."""

    def __init__(self, delimiter: str = '  '):
        self.meters: Dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter

    def update(self, n: int = 1, **kwargs: float) -> None:
        for k, v in kwargs.items():
            if v is None:
                continue
            self.meters[k].update(float(v), n)

    def __str__(self) -> str:
        return self.delimiter.join(f'{k}: {m}' for k, m in self.meters.items())

    def log_every(self, iterable: Iterable, print_freq: int, header: str, total: int,
                  batch_size: int = 0, world_size: Optional[int] = None) -> Iterator:
        """Yield from ``iterable``, logging progress every ``print_freq`` items and at the last one.

        img/s is over the recent window, for all ``world_size`` processes (default: every process); the images
        per item are ``batch_size``, or when that is 0 the length of each item's first element (the batch). The
        line ends with the time spent waiting for the loader and its share of the step (loaders.DataWaitMonitor)."""
        start = last = time.time()
        iter_time = SmoothedValue(fmt='{avg:.3f}')
        images: deque = deque(maxlen=iter_time.deque.maxlen)
        data_wait = DataWaitMonitor()
        width = len(str(total))
        world = utils.dist_state().world_size if world_size is None else world_size
        for i, (obj, waited) in enumerate(timed(iterable)):
            n = batch_size or _batch_len(obj)
            yield obj
            now = time.time()
            iter_time.update(now - last)
            data_wait.update(waited, now - last)
            images.append(n)
            last = now
            if i % print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i - 1)))
                speed = ''
                if all(images):
                    ips = sum(images) * world / max(sum(iter_time.deque), 1e-9)
                    speed = f'  img/s: {ips:.1f}'
                _logger.info('%s [%*d/%d] eta: %s  %s%s  %s', header, width, i, total, eta, self, speed,
                             data_wait.summary())
        _logger.info('%s Total time: %s (%.3f s / it)', header,
                     datetime.timedelta(seconds=int(time.time() - start)), (time.time() - start) / max(total, 1))


def _batch_len(obj: object) -> int:
    """Images in a loader item ``(images, targets)``; 0 if it cannot tell."""
    first = obj[0] if isinstance(obj, (tuple, list)) and obj else obj
    try:
        return len(first)  # type: ignore[arg-type]
    except TypeError:
        return 0


# ---------------------------------------------------------------------------------------------- results log
def tensorboard_dir(args: argparse.Namespace) -> Optional[str]:
    """--log_dir if given ('' for none), else <output_dir>/tb, else none."""
    if args.log_dir is not None:
        return args.log_dir or None
    return os.path.join(args.output_dir, 'tb') if args.output_dir else None


class RunLog:
    """Where results go besides the console: TensorBoard, wandb and log.txt (rank 0 only).

    The TensorBoard writer is made at the first value written, so a relaunch that has nothing to add leaves no
    empty event file behind."""

    def __init__(self, args: argparse.Namespace, optimizer: torch.optim.Optimizer):
        self.args, self.optimizer = args, optimizer
        self.is_main = utils.dist_state().is_main
        self.tb_dir = tensorboard_dir(args) if self.is_main else None
        self._tb = None
        self.wandb_run = None
        if args.enable_wandb and self.is_main:
            import wandb  # optional dependency (config.validate_args checks it is installed)
            self.wandb_run = wandb.init(project=args.project, name=args.exp_name, config=vars(args))

    def _add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb_dir is None:
            return
        if self._tb is None:
            from tensorboardX import SummaryWriter  # only where something is written: it is slow to import
            os.makedirs(self.tb_dir, exist_ok=True)
            self._tb = SummaryWriter(logdir=self.tb_dir)
        self._tb.add_scalar(tag, value, step)

    def on_step(self, state: Any) -> None:
        """engine's ``on_step``: the learning rate at ``state.global_step`` (an engine.TrainState)."""
        group = self.optimizer.param_groups[0]
        self._add_scalar('train/lr', group['lr'] / group.get('lr_scale', 1), state.global_step)

    def test(self, epoch: int, test_stats: Dict[str, float]) -> None:
        for k in ('acc1', 'acc5', 'loss'):
            self._add_scalar(f'perf/test_{k}', test_stats[k], epoch)

    def epoch(self, epoch: int, train_stats: Dict[str, float], log_stats: Dict[str, Any]) -> None:
        self._add_scalar('train/loss', train_stats.get('loss', float('nan')), epoch)
        if self._tb is not None:
            self._tb.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(log_stats)

    def write_log_txt(self, log_stats: Dict[str, Any]) -> None:
        if self.args.output_dir and self.is_main:
            path = os.path.join(self.args.output_dir, 'log.txt')
            try:
                with open(path, 'a') as f:
                    f.write(json.dumps(log_stats) + '\n')
            except OSError as e:
                raise UserError(f"cannot write {path}: {e.strerror or e} (free disk space or fix the "
                                f"permissions, then relaunch to resume from the newest checkpoint)") from None

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
