"""The uint8 input pipeline (``--data_backend pil``, the default): workers do the per-image work, the device the rest.

Workers decode and augment each image to a ``3xHxW`` uint8 tensor: a quarter of the bytes of float32 through shared
memory, pinning and the host-to-device copy, and no per-image float conversion, normalisation or random erasing on the
CPU. :class:`DeviceLoader` then normalises and random-erases whole batches on the device (Mixup/CutMix already run in
the training loop after it), as timm's ``PrefetchLoader`` does, overlapping the copy with compute on CUDA.

What stays exactly as the reference pipeline (``datasets.build_transform``, float output):

* The same timm objects in the same order (RandomResizedCrop scale/ratio, flip, RandAugment, the eval resize/crop),
  drawing from the same per-sample seeded RNGs (``datasets.seed_sample_rngs``), so for a given ``(seed, epoch,
  index)`` the crop box, flip, RandAugment ops/magnitudes and random-erasing boxes are the reference's.
* Random-erasing boxes are drawn in the worker with timm's ``RandomErasing`` call sequence (cheap) and applied on the
  device; its noise comes from a device generator seeded from per-sample seeds, so it depends only on the samples
  of the batch, never on global RNG state: exact resume stays bitwise without storing any new RNG state.

Where pixel values may differ from the reference (measured in tests/test_data_pipeline.py):

* JPEGs are decoded by torchvision (libjpeg-turbo, bit-identical to PIL's decode) straight into a tensor, and the
  bicubic/bilinear RandomResizedCrop runs as torch's antialiased uint8 resize (same crop box, same filter as PIL's;
  values differ by at most 1 level, on about 0.5% of pixels) instead of PIL's, which is 2x slower without SIMD.
  Other formats, other interpolations and CMYK JPEGs take PIL's path. RandAugment then runs on PIL, as before.
* Random-erasing noise values (same distribution: standard normal per pixel or per box) come from the device RNG.
"""
from __future__ import annotations

import logging
import math
import random
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

logger = logging.getLogger(__name__)

_JPEG_MAGIC = b'\xff\xd8'
_FAST_RESIZE = ('bicubic', 'bilinear')


# ----------------------------------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------------------------------

def load_image_fast(path: str) -> Union[torch.Tensor, Image.Image]:
    """A JPEG as a ``3xHxW`` uint8 tensor decoded by torchvision (bit-identical to PIL), anything else via PIL.

    Grey JPEGs are expanded to RGB as PIL's ``convert('RGB')`` does; CMYK JPEGs and anything torchvision rejects
    (corrupt, truncated) go to ``datasets.load_image``, which decodes with PIL or raises the one-line BadImageError.
    """
    from datasets import load_image
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError:
        return load_image(path)  # names the file in its error
    if data[:2] == _JPEG_MAGIC:
        try:  # torchvision >= 0.29 marks its decoders deprecated (TorchCodec); without them PIL decodes
            from torchvision.io import ImageReadMode, decode_jpeg
            img = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
        except (ImportError, RuntimeError):
            img = None
        if img is not None and img.shape[0] == 3:
            return img
        if img is not None and img.shape[0] == 1:
            return img.expand(3, -1, -1)
    return load_image(path)


def _to_pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray(img.permute(1, 2, 0).contiguous().numpy(), 'RGB')


class ErasingParams:
    """Draw timm ``RandomErasing`` boxes in the worker, with timm's exact sequence of python ``random`` calls.

    Returns an int64 ``(max_count, 5)`` tensor of ``top, left, h, w, noise_seed`` rows (``h == 0``: no box), which
    :func:`apply_erasing` turns into erased pixels on the device after normalisation, as the reference does on the CPU.
    """

    def __init__(self, probability: float, mode: str = 'pixel', max_count: int = 1, min_count: int = 1,
                 min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3) -> None:
        self.probability = float(probability)
        self.mode = (mode or 'const').lower()
        self.min_count = int(min_count)
        self.max_count = max(int(max_count or min_count), self.min_count)
        self.min_area, self.max_area = float(min_area), float(max_area)
        self.log_aspect_ratio = (math.log(min_aspect), math.log(1 / min_aspect))

    def empty(self) -> torch.Tensor:
        return torch.zeros(self.max_count, 5, dtype=torch.int64)

    def __call__(self, img_h: int, img_w: int) -> torch.Tensor:
        out = self.empty()
        if self.probability <= 0 or random.random() > self.probability:
            return out
        area = img_h * img_w
        count = self.min_count if self.min_count == self.max_count else random.randint(self.min_count, self.max_count)
        for k in range(count):
            for _ in range(10):
                target_area = random.uniform(self.min_area, self.max_area) * area / count
                aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
                h = int(round(math.sqrt(target_area * aspect_ratio)))
                w = int(round(math.sqrt(target_area / aspect_ratio)))
                if w < img_w and h < img_h:
                    top = random.randint(0, img_h - h)
                    left = random.randint(0, img_w - w)
                    seed = int(torch.randint(0, 2 ** 62, (1,)).item())  # the reference draws its noise here
                    out[k] = torch.tensor([top, left, h, w, seed])
                    break
        return out

    def __repr__(self) -> str:
        return f'ErasingParams(p={self.probability}, mode={self.mode}, count=({self.min_count}, {self.max_count}))'


class Uint8TrainTransform:
    """timm's training transform (``create_transform(..., use_prefetcher=True, separate=True)``) ending in uint8.

    ``__call__`` takes a PIL image or a uint8 ``CxHxW`` tensor (:func:`load_image_fast`) and returns
    ``(uint8 image, erasing params)``. A tensor input is cropped and resized by torch (see the module docstring)
    when the crop is timm's RandomResizedCrop with a bicubic or bilinear filter; otherwise it becomes a PIL image.
    """

    def __init__(self, primary: Callable, secondary: Callable, final: Callable, erasing: ErasingParams) -> None:
        self.primary, self.secondary, self.final, self.erasing = primary, secondary, final, erasing
        from timm.data.transforms import RandomResizedCropAndInterpolation
        steps = list(getattr(primary, 'transforms', []))
        self.rrc = steps[0] if steps and isinstance(steps[0], RandomResizedCropAndInterpolation) else None
        self.rest = steps[1:]
        self.mode = None
        if self.rrc is not None and not isinstance(self.rrc.interpolation, (list, tuple)):
            mode = getattr(self.rrc.interpolation, 'value', str(self.rrc.interpolation))
            self.mode = mode if mode in _FAST_RESIZE else None

    def _crop_resize(self, img: torch.Tensor) -> torch.Tensor:
        assert self.rrc is not None and self.mode is not None
        i, j, h, w = self.rrc.get_params(img, self.rrc.scale, self.rrc.ratio)
        crop = img[None, :, i:i + h, j:j + w]
        return F.interpolate(crop, size=tuple(self.rrc.size), mode=self.mode, antialias=True,
                             align_corners=False)[0]

    def __call__(self, img: Union[torch.Tensor, Image.Image]) -> Tuple[torch.Tensor, torch.Tensor]:
        if isinstance(img, torch.Tensor):
            if self.mode is not None:
                img = self._crop_resize(img)
                for step in self.rest:  # flip: works on tensors, draws the same RNG as on PIL
                    img = step(img)
                img = _to_pil(img)
            else:
                img = self.primary(_to_pil(img))
        else:
            img = self.primary(img)
        img = self.final(self.secondary(img))
        return img, self.erasing(int(img.shape[-2]), int(img.shape[-1]))

    def __repr__(self) -> str:
        fast = f'torch {self.mode} resize of the crop' if self.mode else 'PIL'
        return (f'Uint8TrainTransform(primary={self.primary}, secondary={self.secondary}, final={self.final}, '
                f'erasing={self.erasing}, tensor input: {fast})')


def build_uint8_transform(is_train: bool, args: Any) -> Callable:
    """The uint8 counterpart of ``datasets.build_transform`` (same recipe; normalise/erase later on the device)."""
    from timm.data import create_transform
    from timm.data.transforms import MaybePILToTensor
    from torchvision import transforms

    import datasets as D
    input_size = int(args.input_size)
    if not is_train:
        reference = D.build_transform(False, args)  # validates --crop_pct, logs the warp note
        steps = [t for t in reference.transforms if not isinstance(t, (transforms.ToTensor, transforms.Normalize))]
        return transforms.Compose(steps + [MaybePILToTensor()])
    mean, std = D._mean_std(args)
    primary, secondary, final = create_transform(
        input_size=input_size,
        is_training=True,
        color_jitter=getattr(args, 'color_jitter', 0.4),
        auto_augment=D._auto_augment(getattr(args, 'aa', None)),
        interpolation=getattr(args, 'train_interpolation', 'bicubic'),
        scale=tuple(getattr(args, 'train_crop_scale', None) or (0.08, 1.0)),
        mean=mean,
        std=std,
        use_prefetcher=True,
        separate=True,
    )
    if input_size <= 32:
        primary.transforms[0] = transforms.RandomCrop(input_size, padding=4)
    D._use_compatible_posterize(secondary)
    erasing = ErasingParams(getattr(args, 'reprob', 0.0), getattr(args, 'remode', 'pixel'),
                            max_count=getattr(args, 'recount', 1))
    return Uint8TrainTransform(primary, secondary, final, erasing)


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
    """Erase ``boxes`` ((B, K, 5) int64 on the CPU, from :class:`ErasingParams`) in normalised ``x`` (B, C, H, W).

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

    Batches are ``(images, targets)`` or ``((images, erasing boxes), targets)`` (from :class:`Uint8TrainTransform`).
    On CUDA the next batch is copied and prepared on a side stream while the current one trains (as timm's
    PrefetchLoader). Float batches (another pipeline) pass through unchanged apart from the copy.
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
    import datasets as D
    mean, std = D._mean_std(args)
    return DeviceLoader(loader, device, mean, std, erase_mode=getattr(args, 'remode', 'pixel'))


# ----------------------------------------------------------------------------------------------------------------------
# Loader visibility
# ----------------------------------------------------------------------------------------------------------------------

def log_loader_resources(num_workers: int, rank: int = 0, backend: str = 'pil') -> int:
    """Log (every rank) the CPU cores this process may use and its loader workers; return the core count."""
    from utils import cpu_cores_available  # the count --num_workers auto and --threads are chosen from
    cores = cpu_cores_available()
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
