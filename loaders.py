"""The device side of the input pipeline: batches of uint8 images from the loader workers are copied to the device,
normalised and random-erased there (:class:`DeviceLoader`, as timm's ``PrefetchLoader``), overlapping the copy with
compute on CUDA; Mixup/CutMix then run in the training loop. Also what makes the loader visible: the CPU cores and
workers it has (:func:`log_loader_resources`) and the share of step time spent waiting for it
(:class:`DataWaitMonitor`).

The worker side (decoding, the uint8 transforms, the random-erasing boxes drawn per sample) is ``transforms.py``; its
docstring says what stays bit-identical to the float reference pipeline and where pixel values may differ.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterator, Optional, Sequence, Tuple

import torch

from transforms import mean_std
from utils import cpu_cores_available

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Device side
# ----------------------------------------------------------------------------------------------------------------------

_SEED_MULT = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9)


def _batch_seed(seeds: torch.Tensor) -> int:
    """One 63-bit seed from the per-box seeds of a batch (order-sensitive, stable across runs and machines)."""
    acc = 0
    for i, s in enumerate(seeds.reshape(-1).tolist()):
        acc = (acc * _SEED_MULT[i % 2] + int(s) + 1) % (1 << 63)
    return acc


def apply_erasing(x: torch.Tensor, boxes: torch.Tensor, mode: str) -> torch.Tensor:
    """Erase ``boxes`` ((B, K, 5) int64 on the CPU, from ``transforms.ErasingParams``) in normalised ``x`` (B, C, H, W).

    Modes as timm: 'pixel' per-pixel N(0, 1), 'rand' one N(0, 1) colour per box, 'const' zeros; later boxes
    overwrite earlier ones. The noise generator is seeded from the boxes' seeds, so results depend on the batch only.
    """
    if boxes.numel() == 0 or not bool((boxes[..., 2] > 0).any()):
        return x
    b, c, h, w = x.shape
    dev = x.device
    gen = torch.Generator(device=dev)
    gen.manual_seed(_batch_seed(boxes[..., 4]))
    bx = boxes.to(dev, non_blocking=True)
    top, left, bh, bw = (bx[..., k][..., None, None] for k in range(4))  # (B, K, 1, 1)
    ys = torch.arange(h, device=dev).view(1, 1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, 1, w)
    masks = (ys >= top) & (ys < top + bh) & (xs >= left) & (xs < left + bw)  # (B, K, H, W)
    if mode == 'pixel':
        noise = torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype)
        return torch.where(masks.any(1, keepdim=True), noise, x)
    if mode == 'rand':
        colours = torch.randn((b, boxes.shape[1], c), generator=gen, device=dev, dtype=x.dtype)
        for k in range(boxes.shape[1]):
            x = torch.where(masks[:, k:k + 1], colours[:, k, :, None, None], x)
        return x
    return x.masked_fill(masks.any(1, keepdim=True), 0.0)


class DeviceLoader:
    """Wrap a loader of uint8 batches: copy to ``device``, normalise, random-erase; yields ``(float images, targets)``.

    Batches are ``(images, targets)`` or ``((images, erasing boxes), targets)`` (from
    ``transforms.Uint8TrainTransform``). On CUDA the next batch is copied and prepared on a side stream while the
    current one trains (as timm's PrefetchLoader). Float batches (another pipeline) pass through unchanged apart from
    the copy.
    """

    def __init__(self, loader: Any, device: torch.device, mean: Sequence[float], std: Sequence[float],
                 erase_mode: str = 'pixel') -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.mean = torch.tensor([float(m) for m in mean], device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor([float(s) for s in std], device=self.device).view(1, -1, 1, 1)
        self.erase_mode = (erase_mode or 'const').lower()

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # sampler, batch_size, dataset, ...
        if name == 'loader':
            raise AttributeError(name)
        return getattr(self.loader, name)

    def prepare(self, batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        samples, targets = batch
        boxes = None
        if isinstance(samples, (list, tuple)):
            samples, boxes = samples
        samples = samples.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if samples.dtype == torch.uint8:
            # the reference's order (ToTensor divides by 255, then Normalize): equal values up to float rounding
            samples = samples.float().div_(255.0).sub_(self.mean).div_(self.std)
        if boxes is not None:
            samples = apply_erasing(samples, boxes, self.erase_mode)
        return samples, targets

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self.device.type != 'cuda':
            for batch in self.loader:
                yield self.prepare(batch)
            return
        stream = torch.cuda.Stream(device=self.device)
        it = iter(self.loader)
        nxt: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

        def fetch() -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
            try:
                batch = next(it)
            except StopIteration:
                return None
            with torch.cuda.stream(stream):
                return self.prepare(batch)

        nxt = fetch()
        while nxt is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
            cur = nxt
            for t in cur:
                t.record_stream(torch.cuda.current_stream(self.device))
            nxt = fetch()
            yield cur


def wrap_loader(loader: Any, args: Any, device: torch.device) -> Any:
    """Main-process hook: the DeviceLoader for a uint8 pipeline (``--data_backend pil|dali``), else ``loader``."""
    if getattr(args, 'data_backend', 'pil') not in ('pil', 'dali'):
        return loader
    mean, std = mean_std(args)
    return DeviceLoader(loader, device, mean, std, erase_mode=getattr(args, 'remode', 'pixel'))


# ----------------------------------------------------------------------------------------------------------------------
# Loader visibility
# ----------------------------------------------------------------------------------------------------------------------

def log_loader_resources(num_workers: int, rank: int = 0, backend: str = 'pil') -> int:
    """Log (every rank) the CPU cores this process may use and its loader workers; return the core count."""
    cores = cpu_cores_available()  # the count --num_workers auto and --threads are chosen from
    logger.info('rank %d data loader: backend %s, %d worker processes, %d CPU cores available to this process',
                rank, backend, num_workers, cores)
    if num_workers + 1 > cores:
        logger.warning('rank %d: %d loader workers + the training process exceed the %d cores this process may use; '
                       'workers will compete for CPU (lower --num_workers, or --num_workers auto)', rank, num_workers,
                       cores)
    return cores


class DataWaitMonitor:
    """Track the share of step time spent waiting for the next batch; warn when the loader is the bottleneck.

    ``update(wait, step)`` per iteration; ``summary()`` is the progress-line text (``data: 0.012s (3%)``, the mean
    over the last print window); a warning is logged (at most every ``warn_every`` windows) when that share exceeds
    ``threshold``. The first window (worker start-up) is ignored.
    """

    def __init__(self, threshold: float = 0.25, warn_every: int = 10) -> None:
        self.threshold = threshold
        self.warn_every = warn_every
        self.wait = self.total = 0.0
        self.count = 0
        self.windows = 0
        self.last_warned: Optional[int] = None

    def update(self, wait: float, step: float) -> None:
        self.wait += wait
        self.total += step
        self.count += 1

    def summary(self) -> str:
        if self.count == 0:
            return ''
        share = self.wait / max(self.total, 1e-9)
        text = f'data: {self.wait / self.count:.3f}s ({100 * share:.0f}%)'
        self.windows += 1
        if self.windows > 1 and share > self.threshold and \
                (self.last_warned is None or self.windows - self.last_warned >= self.warn_every):
            self.last_warned = self.windows
            logger.warning('the input pipeline is the bottleneck: %.0f%% of the step time is spent waiting for data '
                           '(more --num_workers if cores allow, a smaller --input_size, or --data_backend dali)',
                           100 * share)
        self.wait = self.total = 0.0
        self.count = 0
        return text


def timed(iterable: Any) -> Iterator[Tuple[Any, float]]:
    """Yield ``(item, seconds spent obtaining it)``."""
    it = iter(iterable)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        yield item, time.perf_counter() - t0
