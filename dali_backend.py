"""``--data_backend dali``: the training pipeline on NVIDIA DALI (optional: ``pip install -r requirements-dali.txt``).

Decoding and augmentation run in DALI: on a GPU the JPEG is decoded by nvJPEG (``device='mixed'``) and resize, flip
and RandAugment run on the GPU; without a GPU the same graph runs in DALI's CPU mode. Only the crop's region is
decoded (``fn.decoders.image_slice`` with the crop window).

The random choices that define a sample are drawn in Python from the same per-sample seeded RNGs as the PIL path
(``datasets.seed_sample_rngs``): the crop window (timm RandomResizedCrop's ``get_params``: same scale/ratio
distribution, same boxes), the flip, and the random-erasing boxes (applied on the device by ``loaders.DeviceLoader``,
as for ``pil``). Sample order and labels come from ``datasets.ResumableSampler`` and ``ImageFolderDataset``. Only
RandAugment is DALI's own (``nvidia.dali.auto_aug.rand_augment``), drawn from DALI's RNG, which is seeded per epoch
from ``(seed, epoch, first sample)``: a run resumed mid-epoch is deterministic but its RandAugment draws after the
resume point differ from an uninterrupted run's. How DALI's RandAugment differs from timm's is in TRAINING.md
("Data backends"). Evaluation uses the PIL path (exact, same Acc@1).
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation

from datasets import seed_sample_rngs
from errors import UserError
from transforms import ErasingParams, load_image, seed_sequence

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -r requirements-dali.txt (NVIDIA DALI for CUDA 13, about 200 MB download, 0.7 GB installed)'


def dali_missing() -> Optional[str]:
    """None when DALI imports, else why not (one line)."""
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali.auto_aug import rand_augment  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything
        return f'NVIDIA DALI is not usable here ({type(exc).__name__}: {exc}); {INSTALL_HINT}'
    return None


def _interp(name: str) -> Any:
    import nvidia.dali.types as types
    table = {'bicubic': types.INTERP_CUBIC, 'bilinear': types.INTERP_LINEAR, 'nearest': types.INTERP_NN,
             'lanczos': types.INTERP_LANCZOS3}
    if name not in table:
        raise UserError(f"--train_interpolation {name} is not supported by --data_backend dali; use one of "
                        f"{', '.join(table)}")
    return table[name]


def _rand_augment_nm(aa: Optional[str]) -> Optional[Tuple[int, int]]:
    """(n, m) of a timm 'rand-mM-nN-...' spec (timm's defaults n=2), None for no RandAugment."""
    if aa is None or str(aa).strip().lower() in ('', 'none'):
        return None
    parts = str(aa).split('-')
    if parts[0] != 'rand':
        raise UserError(f"--aa {aa}: --data_backend dali supports RandAugment ('rand-m9-...') or none")
    n, m = 2, 9
    for p in parts[1:]:
        if p.startswith('m') and p[1:].isdigit():
            m = int(p[1:])
        elif p.startswith('n') and p[1:].isdigit():
            n = int(p[1:])
    return n, m


class DaliTrainLoader:
    """An iterable of ``((uint8 images NCHW, erasing boxes), labels)`` batches for ``loaders.DeviceLoader``.

    Follows ``sampler`` (a ``datasets.ResumableSampler``: call its ``set_epoch`` as for the PIL loader); a DALI
    pipeline is built per epoch, its RNG seeded from ``(seed, epoch, start)``.
    """

    def __init__(self, dataset: Any, sampler: Any, batch_size: int, args: Any, device: torch.device,
                 num_threads: int = 2) -> None:
        reason = dali_missing()
        if reason:
            raise UserError(f'--data_backend dali: {reason}')
        if not hasattr(dataset, 'samples'):
            raise UserError('--data_backend dali reads image files: use an image-folder --data_set (IMNET, '
                            'image_folder, QUICKSTART), or --data_backend pil for CIFAR')
        self.dataset, self.sampler, self.batch_size = dataset, sampler, int(batch_size)
        self.device = torch.device(device)
        self.size = int(args.input_size)
        self.rrc = RandomResizedCropAndInterpolation(
            self.size, scale=tuple(getattr(args, 'train_crop_scale', None) or (0.08, 1.0)))
        self.interp = getattr(args, 'train_interpolation', 'bicubic')
        _interp(self.interp)  # validate now
        self.ra = _rand_augment_nm(getattr(args, 'aa', None))
        self.erasing = ErasingParams(getattr(args, 'reprob', 0.0), getattr(args, 'remode', 'pixel'),
                                     max_count=getattr(args, 'recount', 1))
        self.num_threads = max(1, int(num_threads))
        self.seed = int(getattr(sampler, 'seed', 0))
        self.use_gpu = self.device.type == 'cuda'

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    # -- python side: what the PIL path draws per sample, without decoding
    def _sample(self, epoch: int, index: int) -> Tuple[np.ndarray, int, np.ndarray, np.ndarray, bool, torch.Tensor]:
        path, label = self.dataset.samples[index]
        seed_sample_rngs(self.seed, epoch, index)
        try:
            with Image.open(path) as img:  # header only: the size the crop is drawn for
                i, j, h, w = self.rrc.get_params(img, self.rrc.scale, self.rrc.ratio)
        except Exception:
            load_image(path)  # raises the one-line BadImageError naming the file
            raise
        flip = bool(torch.rand(1) < 0.5)  # RandomHorizontalFlip's draw
        boxes = self.erasing(self.size, self.size)
        data = np.fromfile(path, dtype=np.uint8)
        return data, label, np.array([j, i], np.int64), np.array([w, h], np.int64), flip, boxes

    def _pipeline(self, batches: List[List[Tuple[int, int]]], seed: int) -> Tuple[Any, List[torch.Tensor]]:
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def
        from nvidia.dali.auto_aug import rand_augment

        boxes_per_batch: List[torch.Tensor] = []
        it = iter(batches)

        def source() -> Tuple[List[np.ndarray], ...]:
            batch = next(it)  # StopIteration ends the epoch
            cols = list(zip(*(self._sample(e, i) for e, i in batch)))
            boxes_per_batch.append(torch.stack(cols[5]))
            return (list(cols[0]), [np.array(lab, np.int64) for lab in cols[1]], list(cols[2]), list(cols[3]),
                    [np.array(f, np.bool_) for f in cols[4]])

        dev = 'gpu' if self.use_gpu else 'cpu'

        @pipeline_def(enable_conditionals=self.ra is not None)
        def graph():
            jpegs, labels, anchor, shape, flip = fn.external_source(source=source, num_outputs=5, batch=True)
            imgs = fn.decoders.image_slice(jpegs, anchor, shape, device='mixed' if self.use_gpu else 'cpu',
                                           output_type=types.RGB, axis_names='WH', normalized_anchor=False,
                                           normalized_shape=False)
            imgs = fn.resize(imgs, device=dev, size=[self.size, self.size], interp_type=_interp(self.interp),
                             antialias=True)
            imgs = fn.flip(imgs, device=dev, horizontal=fn.cast(flip, dtype=types.INT32))
            if self.ra is not None:
                # timm's magnitude scale is 0..10 (m9 = 90% of each op's range): 11 bins; timm's 0.45 translation
                imgs = rand_augment.rand_augment(imgs, n=self.ra[0], m=min(self.ra[1], 10), num_magnitude_bins=11,
                                                 shape=[self.size, self.size], max_translate_rel=0.45, fill_value=128)
            imgs = fn.transpose(imgs, perm=[2, 0, 1])
            return imgs, labels

        pipe = graph(batch_size=self.batch_size, num_threads=self.num_threads,
                     device_id=self.device.index or 0 if self.use_gpu else None, seed=seed, prefetch_queue_depth=2,
                     exec_dynamic=True)
        pipe.build()
        return pipe, boxes_per_batch

    def __iter__(self) -> Iterator[Tuple[Tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
        order = list(self.sampler)
        n = len(order) // self.batch_size
        batches = [order[k * self.batch_size:(k + 1) * self.batch_size] for k in range(n)]
        if not batches:
            return
        epoch = int(batches[0][0][0])
        start = int(getattr(self.sampler, 'start', 0))
        seed = int(seed_sequence(self.seed, 0xDA11, epoch, start).generate_state(1)[0]) >> 1
        pipe, boxes = self._pipeline(batches, seed)
        try:
            for k in range(n):
                imgs, labels = pipe.run()
                yield (self._to_torch(imgs), boxes[k]), self._to_torch(labels).reshape(-1).long()
        finally:
            del pipe

    def _to_torch(self, out: Any) -> torch.Tensor:
        tensor = out.as_tensor()
        if hasattr(out, 'as_cpu') and type(out).__name__.endswith('GPU'):
            from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
            dst = torch.empty(tuple(tensor.shape()), dtype=to_torch_type[tensor.dtype], device=self.device)
            feed_ndarray(tensor, dst, cuda_stream=torch.cuda.current_stream(self.device))
            return dst
        return torch.from_numpy(np.array(tensor))


def build_dali_train_loader(dataset: Any, sampler: Any, args: Any, device: torch.device) -> DaliTrainLoader:
    """Main-process hook for ``--data_backend dali`` (wrap the result with ``loaders.wrap_loader``)."""
    return DaliTrainLoader(dataset, sampler, args.batch_size, args, device,
                           num_threads=max(1, int(getattr(args, 'num_workers', 2)) or 1))
