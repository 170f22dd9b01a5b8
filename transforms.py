"""Decoding and transforms, shared by ``datasets.py`` (the samples), ``loaders.py`` (the device side of the uint8
pipeline) and ``dali_backend.py``: image decoding with one-line errors, the float reference transforms, the uint8
training transforms (``--data_backend pil``, the default) and the stable seed hash the sampling builds on.

Unreadable images raise ``BadImageError`` (a ``UserError``) whose message survives the trip out of a DataLoader
worker as one line naming the file.

The uint8 pipeline: workers decode and augment each image to a ``3xHxW`` uint8 tensor (a quarter of the bytes of
float32 through shared memory, pinning and the host-to-device copy, and no per-image float conversion, normalisation
or random erasing on the CPU); ``loaders.DeviceLoader`` normalises and random-erases whole batches on the device. What
stays exactly as the reference pipeline (:func:`build_transform`, float output):

* The same timm objects in the same order (RandomResizedCrop scale/ratio, flip, RandAugment, the eval resize/crop),
  drawing from the same per-sample seeded RNGs (``datasets.seed_sample_rngs``), so for a given ``(seed, epoch,
  index)`` the crop box, flip, RandAugment ops/magnitudes and random-erasing boxes are the reference's.
* Random-erasing boxes are drawn in the worker with timm's ``RandomErasing`` call sequence (cheap) and applied on the
  device (``loaders.apply_erasing``); its noise comes from a device generator seeded from per-sample seeds, so it
  depends only on the samples of the batch, never on global RNG state: exact resume stays bitwise without storing
  any new RNG state.

Where pixel values may differ from the reference (measured in tests/test_data_pipeline.py):

* JPEGs are decoded by torchvision (libjpeg-turbo, bit-identical to PIL's decode) straight into a tensor, and the
  bicubic/bilinear RandomResizedCrop runs as torch's antialiased uint8 resize (same crop box, same filter as PIL's;
  values differ by at most 1 level, on about 0.5% of pixels) instead of PIL's, which is 2x slower without SIMD.
  Other formats, other interpolations and CMYK JPEGs take PIL's path. RandAugment then runs on PIL, as before.
* Random-erasing noise values (same distribution: standard normal per pixel or per box) come from the device RNG.
"""
import logging
import math
import random
from typing import Any, Callable, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data import create_transform
from timm.data.auto_augment import AugmentOp
from timm.data.constants import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN,
                                 IMAGENET_INCEPTION_STD)
from timm.data.transforms import MaybePILToTensor, RandomResizedCropAndInterpolation
from torchvision import transforms as tv_transforms

from errors import UserError

logger = logging.getLogger(__name__)

_U64 = 1 << 64
_JPEG_MAGIC = b'\xff\xd8'
_FAST_RESIZE = ('bicubic', 'bilinear')


# ----------------------------------------------------------------------------------------------------------------------
# Seeding
# ----------------------------------------------------------------------------------------------------------------------

def seed_sequence(seed: int, *keys: int) -> np.random.SeedSequence:
    """A stable hash of integers (unlike Python's hash(), identical across processes, runs and platforms).

    The root of every seed of the data path: the epoch order and per-sample RNGs (``datasets``), the quick-start
    images (``quickstart``) and DALI's per-epoch seed (``dali_backend``), so they never depend on who computes them.
    """
    if any(k < 0 for k in keys):
        raise ValueError(f'seed keys must be non-negative, got {keys}')
    return np.random.SeedSequence(entropy=int(seed) % _U64, spawn_key=tuple(int(k) for k in keys))


# ----------------------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------------------

class BadImageError(UserError):
    """An image file that cannot be decoded; ``str()`` is one line naming the file.

    DataLoader workers re-raise exceptions in the main process as ``type(exc)(multi_line_traceback_text)``; the
    constructor recognises that text and keeps only our original one-line message, so ``main.py`` still prints one
    line naming the file. ``reason`` is the decoder's complaint alone (for the --skip_bad_images warning).
    """

    def __init__(self, message: str, path: Optional[str] = None, reason: Optional[str] = None) -> None:
        self.path = path
        self.reason = reason
        super().__init__(_one_line_bad_image_message(message))


def _one_line_bad_image_message(message: str) -> str:
    """Recover our one-line message from a DataLoader worker's 'Caught ... Original Traceback ...' text."""
    if '\n' not in message:
        return message
    marker = BadImageError.__name__ + ': '
    for line in reversed(message.splitlines()):
        pos = line.find(marker)
        if pos >= 0:
            return line[pos + len(marker):].strip()
    return ' '.join(part.strip() for part in message.splitlines() if part.strip())


def load_image(path: str) -> Image.Image:
    """Decode ``path`` fully to RGB now, so corrupt or truncated files fail here with the file named."""
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except MemoryError:
        raise
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, struct.error, ...)
        if isinstance(exc, UnidentifiedImageError):
            reason = 'not a recognised image format'  # PIL's own text repeats the path
        else:
            reason = (str(exc).splitlines() or [''])[0] or type(exc).__name__
        raise BadImageError(f"cannot read image file '{path}' ({reason}); delete or replace it, "
                            f"or pass --skip_bad_images to skip unreadable images", path=path, reason=reason) from None


# The first bytes of the formats in datasets.IMG_EXTENSIONS (and GIF). A file that starts otherwise is opened by PIL,
# which reads only its header, before it is called unreadable: PIL knows more formats than this table.
_IMAGE_SIGNATURES = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'GIF87a', b'GIF89a', b'BM', b'II*\x00', b'MM\x00*')
_HEADER_BYTES = 32


def image_header_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be an image, judged from its first bytes only (None: it looks like one).

    Cheap enough for every file of a data set (one open and a 32-byte read, ~10 us on a local disk): it catches
    text, HTML error pages, empty files, broken links and unreadable permissions before training starts. A file
    cut short after its header passes and is reported when it is decoded.
    """
    try:
        with open(path, 'rb') as f:
            head = f.read(_HEADER_BYTES)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    if not head:
        return 'empty file'
    if head.startswith(_IMAGE_SIGNATURES) or (head[:4] == b'RIFF' and head[8:12] == b'WEBP') or \
            (len(head) > 2 and head[:1] == b'P' and head[1:2] in b'1234567' and head[2:3].isspace()):
        return None
    try:
        with Image.open(path):  # header only; the pixels are not read
            return None
    except MemoryError:
        raise
    except Exception:  # PIL raises many types
        return f'not an image: it starts with {head[:16]!r}'


def load_image_fast(path: str) -> Union[torch.Tensor, Image.Image]:
    """A JPEG as a ``3xHxW`` uint8 tensor decoded by torchvision (bit-identical to PIL), anything else via PIL.

    Grey JPEGs are expanded to RGB as PIL's ``convert('RGB')`` does; CMYK JPEGs and anything torchvision rejects
    (corrupt, truncated) go to :func:`load_image`, which decodes with PIL or raises the one-line BadImageError.
    """
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


# ----------------------------------------------------------------------------------------------------------------------
# Float transforms (the reference)
# ----------------------------------------------------------------------------------------------------------------------

def mean_std(args: Any) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """ImageNet default mean/std when asked for, else the inception 0.5/0.5 the ConvNeXt recipe uses by default."""
    if getattr(args, 'imagenet_default_mean_and_std', False):
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD


def _auto_augment(aa: Optional[str]) -> Optional[str]:
    """Map the CLI spellings of 'no auto-augment' ('none', '', None) to None, which timm understands."""
    if aa is None or str(aa).strip().lower() in ('', 'none'):
        return None
    return str(aa)


def _posterize_compat(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, keeping its meaning for 0 bits (a black image, as Pillow < 11 gave).

    timm maps RandAugment magnitude 10 ('PosterizeIncreasing', reached whenever mstd noise pushes m9 to the clip) and
    magnitude 0 ('Posterize') to 0 bits, which current Pillow rejects with ValueError, crashing training mid-epoch.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, int(bits_to_keep))


def _use_compatible_posterize(transform: Callable) -> None:
    """Point every posterize op of timm's RandAugment/AutoAugment/AugMix inside ``transform`` at _posterize_compat."""
    for step in getattr(transform, 'transforms', []):
        ops = list(getattr(step, 'ops', None) or [])
        for sub_policy in getattr(step, 'policy', None) or []:
            ops.extend(sub_policy)
        for op in ops:
            if isinstance(op, AugmentOp) and op.name.startswith('Posterize'):
                op.aug_fn = _posterize_compat


def build_transform(is_train: bool, args: Any) -> Callable:
    """The ConvNeXt train/eval transforms, so results are comparable with the original recipe.

    Train: timm ``create_transform`` (RandomResizedCrop, flip, RandAugment, color jitter, normalize, random erasing);
    for ``input_size <= 32`` (CIFAR) the crop is RandomCrop(padding=4), as in the original.
    Eval: ``input_size >= 384`` warps to a square (no crop); otherwise bicubic resize of the shorter side to
    ``int(input_size / crop_pct)`` then CenterCrop. For ``input_size <= 32`` the original does no resizing; we add
    only a CenterCrop(input_size), a no-op on native-size images that keeps eval tensors the size training sees.
    """
    input_size = int(args.input_size)
    mean, std = mean_std(args)
    resize_im = input_size > 32
    if is_train:
        transform = create_transform(
            input_size=input_size,
            is_training=True,
            color_jitter=getattr(args, 'color_jitter', 0.4),
            auto_augment=_auto_augment(getattr(args, 'aa', None)),
            interpolation=getattr(args, 'train_interpolation', 'bicubic'),
            re_prob=getattr(args, 'reprob', 0.0),
            re_mode=getattr(args, 'remode', 'pixel'),
            re_count=getattr(args, 'recount', 1),
            scale=tuple(getattr(args, 'train_crop_scale', None) or (0.08, 1.0)),
            mean=mean,
            std=std,
        )
        if not resize_im:
            transform.transforms[0] = tv_transforms.RandomCrop(input_size, padding=4)
        _use_compatible_posterize(transform)
        return transform

    steps: List[Callable] = []
    bicubic = tv_transforms.InterpolationMode.BICUBIC
    if not resize_im:
        steps.append(tv_transforms.CenterCrop(input_size))
    elif input_size >= 384:
        steps.append(tv_transforms.Resize((input_size, input_size), interpolation=bicubic))
        logger.info('Warping %d size input images (no center crop)', input_size)
    else:
        crop_pct = getattr(args, 'crop_pct', None)
        crop_pct = 224 / 256 if crop_pct is None else float(crop_pct)
        if not 0.0 < crop_pct <= 1.0:
            raise UserError(f'--crop_pct must be in (0, 1], got {crop_pct}; e.g. pass --crop_pct 0.875')
        steps.append(tv_transforms.Resize(int(input_size / crop_pct), interpolation=bicubic))
        steps.append(tv_transforms.CenterCrop(input_size))
    steps.append(tv_transforms.ToTensor())
    steps.append(tv_transforms.Normalize(mean, std))
    return tv_transforms.Compose(steps)


# ----------------------------------------------------------------------------------------------------------------------
# uint8 transforms (--data_backend pil|dali)
# ----------------------------------------------------------------------------------------------------------------------

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
    """The uint8 counterpart of :func:`build_transform` (same recipe; normalise/erase later on the device)."""
    input_size = int(args.input_size)
    if not is_train:
        reference = build_transform(False, args)  # validates --crop_pct, logs the warp note
        float_steps = (tv_transforms.ToTensor, tv_transforms.Normalize)
        steps = [t for t in reference.transforms if not isinstance(t, float_steps)]
        return tv_transforms.Compose(steps + [MaybePILToTensor()])
    mean, std = mean_std(args)
    primary, secondary, final = create_transform(
        input_size=input_size,
        is_training=True,
        color_jitter=getattr(args, 'color_jitter', 0.4),
        auto_augment=_auto_augment(getattr(args, 'aa', None)),
        interpolation=getattr(args, 'train_interpolation', 'bicubic'),
        scale=tuple(getattr(args, 'train_crop_scale', None) or (0.08, 1.0)),
        mean=mean,
        std=std,
        use_prefetcher=True,
        separate=True,
    )
    if input_size <= 32:
        primary.transforms[0] = tv_transforms.RandomCrop(input_size, padding=4)
    _use_compatible_posterize(secondary)
    erasing = ErasingParams(getattr(args, 'reprob', 0.0), getattr(args, 'remode', 'pixel'),
                            max_count=getattr(args, 'recount', 1))
    return Uint8TrainTransform(primary, secondary, final, erasing)


def uint8_pipeline(args: Any) -> bool:
    """``--data_backend pil`` (main.py's default) or ``dali``: uint8 samples (loaders.py, dali_backend.py)."""
    return getattr(args, 'data_backend', None) in ('pil', 'dali')
