"""``--mode data``: training input pipeline throughput (img/s, img/s per worker, loader CPU-seconds per image) for
each pipeline x worker count, on an ImageFolder or a generated folder of random JPEGs."""
from __future__ import annotations

import argparse
import gc
import logging
import os
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from errors import UserError
from scripts.bench.common import environment, fmt_stats, loadavg, settings_dict, summarize

_logger = logging.getLogger('benchmark')


def make_random_jpegs(root: str, num: int, size: Tuple[int, int], seed: int = 0) -> None:
    """``num`` smooth-noise JPEGs (quality 90) in two class folders: photo-like sizes without real data."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(num):
        d = os.path.join(root, f'class{i % 2}')
        os.makedirs(d, exist_ok=True)
        low = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-12, 13, (h, w, 3))
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(os.path.join(d, f'img{i:05d}.jpg'), quality=90)


DATA_RECIPE = dict(color_jitter=0.4, aa='rand-m9-mstd0.5-inc1', train_interpolation='bicubic', reprob=0.25,
                   remode='pixel', recount=1, imagenet_default_mean_and_std=True)
DATA_PIPELINES = ('reference', 'uint8', 'dali')


def train_transform(input_size: int, pipeline: str = 'reference') -> Tuple[Callable, Optional[Callable], str]:
    """``(transform, image loader or None for PIL's, source)`` of one pipeline, both with the original recipe.

    reference: today's kind, ``transforms.build_transform`` (timm create_transform, float output normalised and
    random-erased in the worker; plain timm where this project is missing). uint8: ``transforms.build_uint8_transform``
    with ``transforms.load_image_fast`` (uint8 output; normalising and erasing happen later on the device).
    """
    recipe = dict(DATA_RECIPE, input_size=input_size)
    if pipeline == 'uint8':
        import transforms
        return transforms.build_uint8_transform(True, argparse.Namespace(**recipe)), transforms.load_image_fast, \
            'transforms.build_uint8_transform + load_image_fast'
    try:
        import transforms
        return transforms.build_transform(True, argparse.Namespace(**recipe)), None, 'transforms.build_transform'
    except (ImportError, AttributeError):
        from timm.data import create_transform
        return create_transform(input_size, is_training=True, color_jitter=0.4, auto_augment=recipe['aa'],
                                interpolation='bicubic', re_prob=0.25, re_mode='pixel', re_count=1), None, 'timm'


def _image_folder(root: str, transform: Callable, loader: Optional[Callable] = None) -> Any:
    """This project's strict ImageFolderDataset where available, else torchvision's ImageFolder."""
    try:
        from datasets import ImageFolderDataset
        return ImageFolderDataset(root, transform=transform, loader=loader)
    except ImportError:
        from torchvision.datasets import ImageFolder
        try:
            return ImageFolder(root, transform=transform)
        except (FileNotFoundError, RuntimeError) as e:
            raise UserError(f"--data_path {root}: no images in class sub-folders ({' '.join(str(e).split())[:150]})")


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's terminated, reaped children: the finished loader workers."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_data(args: argparse.Namespace) -> Dict[str, Any]:
    """Each pipeline x worker count: img/s, img/s per worker and CPU-seconds per image of the loading processes.

    Every timed epoch builds a fresh, non-persistent DataLoader, so its workers exit and are reaped at the end and
    their CPU time (``RUSAGE_CHILDREN``) can be attributed to that epoch; with 0 workers the main process's own CPU
    time is used. Pipelines and worker counts alternate within a round (order flipped every other round).
    """
    from torch.utils.data import DataLoader, Subset
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    load_start = loadavg()
    if args.data_path:
        if not os.path.isdir(args.data_path):
            raise UserError(f"--data_path {args.data_path}: not a directory (give an ImageFolder root)")
        root, source = args.data_path, 'folder'
    else:
        tmp = tempfile.TemporaryDirectory(prefix='hornet_bench_jpegs_')
        root, source = tmp.name, f'generated {args.num_images} random JPEGs {args.gen_size[0]}x{args.gen_size[1]}'
        make_random_jpegs(root, args.num_images, tuple(args.gen_size), args.seed)
    cases = [(p, w) for p in args.pipelines for w in args.workers]
    try:
        dsets, srcs = {}, {}
        if 'dali' in args.pipelines:
            from dali_backend import dali_missing
            missing = dali_missing()
            if missing:
                _logger.warning('skipping the dali pipeline: %s', missing)
                args.pipelines = [p for p in args.pipelines if p != 'dali']
                cases = [(p, w) for p in args.pipelines for w in args.workers]
        for p in args.pipelines:
            if p == 'dali':
                from datasets import ImageFolderDataset
                dsets[p], srcs[p] = ImageFolderDataset(root), 'dali_backend.DaliTrainLoader (CPU mode)'
                continue
            transform, loader_fn, srcs[p] = train_transform(args.data_input_size, p)
            ds = _image_folder(root, transform, loader_fn)
            if len(ds) > args.num_images:
                g = torch.Generator().manual_seed(args.seed)
                ds = Subset(ds, torch.randperm(len(ds), generator=g)[:args.num_images].tolist())
            dsets[p] = ds
        n = len(next(iter(dsets.values())))

        def dali_epoch(w: int) -> Tuple[float, float]:
            # DALI runs in this process (w threads); its per-epoch pipeline build (seconds) is not timed
            from datasets import ResumableSampler
            from dali_backend import DaliTrainLoader
            recipe = argparse.Namespace(**DATA_RECIPE, input_size=args.data_input_size)
            ds = dsets['dali']
            loader = DaliTrainLoader(ds, ResumableSampler(len(ds), seed=args.seed), args.data_batch_size, recipe,
                                     torch.device('cpu'), num_threads=max(w, 1))
            order = list(loader.sampler)[:n]
            nb = len(order) // args.data_batch_size
            pipe, _ = loader._pipeline([order[k * args.data_batch_size:(k + 1) * args.data_batch_size]
                                        for k in range(nb)], seed=args.seed + 1)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(nb):
                pipe.run()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            del pipe
            return nb * args.data_batch_size / wall, cpu / max(nb * args.data_batch_size, 1)

        def epoch(p: str, w: int) -> Tuple[float, float]:
            if p == 'dali':
                return dali_epoch(w)
            loader = DataLoader(dsets[p], batch_size=args.data_batch_size, shuffle=True, num_workers=w,
                                persistent_workers=False, drop_last=False)
            c0, t0, own0 = _children_cpu(), time.perf_counter(), time.process_time()
            count = 0
            for b in loader:
                count += int(b[1].shape[0])
            del loader  # workers exit and are reaped here
            gc.collect()
            wall = time.perf_counter() - t0
            cpu = (time.process_time() - own0) if w == 0 else (_children_cpu() - c0)
            return count / wall, cpu / max(count, 1)

        for c in cases:  # warm-up: page cache, imports in workers
            epoch(*c)
        raw: Dict[Tuple[str, int], List[float]] = {c: [] for c in cases}
        cpu: Dict[Tuple[str, int], List[float]] = {c: [] for c in cases}
        for r in range(args.repeats):
            for c in (cases if r % 2 == 0 else cases[::-1]):
                ips, cpi = epoch(*c)
                raw[c].append(ips)
                cpu[c].append(cpi * 1e3)
            _logger.info('repeat %d/%d: %s', r + 1, args.repeats,
                         ', '.join(f'{p} w={w}: {raw[(p, w)][-1]:.1f} img/s, {cpu[(p, w)][-1]:.2f} ms CPU/img'
                                   for p, w in cases))
    finally:
        if tmp is not None:
            tmp.cleanup()
    results = []
    for p, w in cases:
        s = summarize(raw[(p, w)])
        cs = summarize(cpu[(p, w)])
        results.append(dict(pipeline=p, workers=w, img_s=dict(s, raw=raw[(p, w)]),
                            img_s_per_worker=(s['median'] / max(w, 1)) if s['median'] else None,
                            cpu_ms_per_img=dict(cs, raw=cpu[(p, w)]),
                            img_per_cpu_s=(1e3 / cs['median']) if cs['median'] else None))
    meta = dict(environment(torch.device('cpu')), loadavg_at_start=load_start, loadavg_at_end=loadavg())
    return dict(meta=meta, settings=dict(settings_dict(args), source=source, num_images=n, transform=srcs.get(
        'reference', next(iter(srcs.values()))), transforms=srcs, recipe=DATA_RECIPE), results=results)



def format_data_table(res: Dict[str, Any]) -> str:
    lines = ['| pipeline | workers | img/s med [min-max] | img/s per worker | CPU ms/img med [min-max] | '
             'img per CPU-s | vs reference (CPU) |', '|---|--:|--:|--:|--:|--:|--:|']
    ref = {r['workers']: r['cpu_ms_per_img']['median'] for r in res['results'] if r['pipeline'] == 'reference'}
    for r in res['results']:
        per = f"{r['img_s_per_worker']:.1f}" if r['img_s_per_worker'] else '-'
        cpu_med = r['cpu_ms_per_img']['median']
        base = ref.get(r['workers'])
        rel = f"{base / cpu_med:.2f}x" if base and cpu_med else '-'
        ipc = f"{r['img_per_cpu_s']:.1f}" if r['img_per_cpu_s'] else '-'
        lines.append(f"| {r['pipeline']} | {r['workers']} | {fmt_stats(r['img_s'], 1)} | {per} | "
                     f"{fmt_stats(r['cpu_ms_per_img'], 2)} | {ipc} | {rel} |")
    return '\n'.join(lines)

