#!/usr/bin/env python
"""Classify images with a HorNet checkpoint and print the top-k classes with their probabilities.

Usage (from the repository root)::

    python scripts/predict.py --checkpoint output/quickstart/checkpoint-best.pth data/quickstart/val
    python scripts/predict.py --model hornet_tiny_7x7 --checkpoint hornet_tiny_7x7.pth cat.jpg photos/
    python scripts/predict.py --model hornet_base_gf --checkpoint ckpt.pth --topk 3 --json preds.json photos/

PATHS are image files or folders (searched recursively for image extensions). Images go through the evaluation
transform of ``main.py --eval`` (``transforms.build_transform``: bicubic resize of the shorter side to
``input_size / crop_pct`` and a center crop; a square warp at 384 px and above; normalization), so predictions on
a validation folder reproduce the accuracy ``--eval`` reports.

What a checkpoint written by ``main.py`` records is used unless a flag says otherwise: the variant
(``args.model``), the resolution (``args.input_size``; an explicit ``--input_size`` wins, with a warning when it
differs) and the class names (a ``class_names`` list in the checkpoint, else the sorted class folders of the data
set it was trained on, the label order of ``datasets.py``, when that folder exists here). Other heads of 1000
classes print ImageNet class names (timm's bundled table, nothing is downloaded); the released 21841-class
ImageNet-22K heads print those names for their 1000 ImageNet-1K rows (``in1k_to_21k_map.pth``) and indices elsewhere;
the rest print class indices, or names from ``--class_names FILE`` (one per line, in label order).

``--checkpoint`` takes a file, a URL or a released name (``hornet_tiny_7x7.in1k``, ``hornet_large_gf.in22k``: see
``models/downloads.py``), downloaded once into torch's hub cache.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple

try:
    from errors import UserError
    import checkpoint_meta  # noqa: I100  (errors first: the one-line hint names the first missing module)
except ModuleNotFoundError as e:  # run as a file from a checkout that is not installed: one line naming the fix
    from install_hint import exit_with_install_hint  # scripts/ is the first import path when run as a file
    exit_with_install_hint(e, 'scripts.predict')

if TYPE_CHECKING:  # torch, timm and the models are imported once the arguments are checked (fast errors)
    import torch
    import torch.nn as nn

_logger = logging.getLogger('predict')

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')
NO_CHECKPOINT = ('no --checkpoint given: predictions of random weights are meaningless '
                 '(pass --checkpoint PATH, or --allow_random for a smoke test)')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description='Top-k ImageNet predictions of a HorNet checkpoint for image files.')
    p.add_argument('paths', nargs='+', metavar='PATH', help='image files or folders (searched recursively)')
    p.add_argument('--model', default=None, help='variant name, e.g. hornet_tiny_7x7, hornet_base_gf (default: the '
                   'one the checkpoint records, else the variant its weights look like, else hornet_tiny_7x7)')
    p.add_argument('--checkpoint', default=None, help='weights: original release, mmpretrain, this project, '
                   'bare state dict or .safetensors; a file, a URL or a released name such as hornet_tiny_7x7.in1k')
    p.add_argument('--use_ema', action='store_true', help='use the EMA weights of a training checkpoint')
    p.add_argument('--input_size', type=int, default=None,
                   help="image side (default: the checkpoint's args.input_size, else the model's, 224 or 384)")
    p.add_argument('--topk', type=int, default=5, help='classes to print per image')
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--class_names', default=None, help='text file with one class name per line, in label order '
                   '(default: the names the checkpoint records or its training folders, else ImageNet names for '
                   '1000 classes, else indices)')
    p.add_argument('--json', default=None, metavar='FILE', help='also write the predictions to FILE as JSON')
    p.add_argument('--device', default=None, help='cpu, cuda, cuda:1 ... (default: cuda if available)')
    p.add_argument('--skip_bad', action='store_true', help='warn about unreadable images and go on')
    p.add_argument('--allow_random', action='store_true', help='run without --checkpoint (random weights: '
                   'meaningless predictions, for testing only)')
    p.add_argument('-v', '--verbose', action='store_true', help='log progress (INFO)')
    return p.parse_args(argv)


def find_images(paths: Sequence[str]) -> List[Path]:
    """Image files named directly, plus those found recursively in folders (sorted, by extension)."""
    found: List[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob('*') if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                _logger.warning('no images (%s) in folder %s', ' '.join(IMAGE_EXTENSIONS), path)
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"no such file or folder: {raw} (check the path)")
    if not found:
        raise UserError(f"no images found in {' '.join(paths)} (expected files ending in "
                        f"{', '.join(IMAGE_EXTENSIONS)})")
    return found


def head_classes(state_dict: Dict[str, torch.Tensor], path: str) -> int:
    """Number of classes of the checkpoint's classifier."""
    found = checkpoint_meta.head_classes(state_dict)
    if found is not None:
        return found
    raise UserError(f"{path} has no classifier head (head.weight): it is a backbone-only checkpoint, "
                    f"predict needs a classification checkpoint")


def build_model(name: Optional[str], checkpoint: Optional[str], use_ema: bool,
                allow_random: bool) -> Tuple[nn.Module, checkpoint_meta.CheckpointInfo]:
    """Create the model with the checkpoint's class count and load its weights strictly; also returns what the
    checkpoint records about its run. ``name`` None: the checkpoint's ``args.model``, else the variant the weights
    look like, else hornet_tiny_7x7."""
    import timm

    import models  # noqa: F401  (registers the HorNet variants with timm)
    from models import CheckpointError, safe_load
    from models.weights import extract_state_dict, guess_variant
    known = timm.list_models('hornet*')
    if name is not None and name not in known:
        raise UserError(f"unknown model {name!r} (choose one of: {', '.join(known)})")
    if checkpoint is None:
        if not allow_random:
            raise UserError(NO_CHECKPOINT)
        _logger.warning('no checkpoint: using random weights, predictions are meaningless')
        return timm.create_model(name or 'hornet_tiny_7x7').eval(), checkpoint_meta.CheckpointInfo()
    try:
        raw = safe_load(checkpoint)
        info = checkpoint_meta.read_info(raw)
        sd = extract_state_dict(raw, use_ema=use_ema, path=checkpoint)
        num_classes = head_classes(sd, checkpoint)
        if name is None:
            recorded = info.model if info.model in known else None
            name = recorded or guess_variant(sd) or 'hornet_tiny_7x7'
            _logger.info('model %s (%s)', name, 'args.model of the checkpoint' if recorded else
                         'the variant the weights look like; pass --model to choose')
        from models.hornet import create_model_with_weights
        model = create_model_with_weights(name, num_classes, sd, checkpoint)
    except CheckpointError as e:  # already one line naming the file and the fix
        raise UserError(str(e)) from None
    _logger.info('loaded %s (%d classes) from %s', name, num_classes, checkpoint)
    return model.eval(), info


def _imagenet_descriptions(names: List[str]) -> List[str]:
    """ImageNet synset folder names (n01440764 ...) as readable descriptions; other names unchanged."""
    from timm.data import ImageNetInfo
    if not all(len(n) == 9 and n[0] == 'n' and n[1:].isdigit() for n in names):
        return names
    for subset in ('imagenet-1k', 'imagenet-22k'):
        info = ImageNetInfo(subset)
        if set(names) <= set(info.label_names()):
            return [info.label_name_to_description(n) for n in names]
    return names


def class_names(model: nn.Module, names_file: Optional[str],
                info: Optional[checkpoint_meta.CheckpointInfo] = None) -> Tuple[List[str], str]:
    """Names of the model's classes in label order, and where they came from: ``names_file``, the checkpoint
    (its ``class_names``, or its training data's class folders), timm's ImageNet tables, or the indices."""
    n = int(model.num_classes)
    if names_file:
        try:
            with open(names_file, encoding='utf-8') as f:
                names = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read --class_names {names_file}: {e.__class__.__name__}: {e}") from None
        if len(names) != n:
            raise UserError(f"--class_names {names_file} has {len(names)} names but the model has {n} classes "
                            f"(give one name per line, in class-index order)")
        return names, f'--class_names {names_file}'
    found = checkpoint_meta.training_class_names(info, n) if info is not None else None
    if found is not None:
        names, source = found
        _logger.info('class names from %s', source)
        return _imagenet_descriptions(list(names)), source
    from timm.data import ImageNetInfo, infer_imagenet_subset

    from models.weights import IN22K_CLASSES, in1k_to_21k_map
    if n == IN22K_CLASSES:
        # The released 22K heads do not use timm's 'imagenet-22k' class order (none of the 1000 rows of the
        # release's in1k_to_21k_map.pth agrees with it): only the rows of that map have known names.
        names = [f'class {i}' for i in range(n)]
        in1k = ImageNetInfo('imagenet-1k')
        for i, row in enumerate(in1k_to_21k_map().tolist()):
            names[row] = in1k.index_to_description(i)
        return names, 'ImageNet-1K names of the 1000 rows of in1k_to_21k_map.pth, class indices elsewhere'
    subset = infer_imagenet_subset(model) or ('imagenet-1k' if n == 1000 else None)
    if subset:
        imagenet = ImageNetInfo(subset)
        if imagenet.num_classes() == n:
            return [imagenet.index_to_description(i) for i in range(n)], f'timm ImageNetInfo({subset!r})'
    _logger.info('head has %d classes (not ImageNet): printing class indices', n)
    return [f'class {i}' for i in range(n)], 'class indices'


def load_images(files: Sequence[Path], transform, skip_bad: bool) -> Iterator[Tuple[Path, torch.Tensor]]:
    """Open and transform each image; an unreadable one raises a UserError naming it (or is skipped)."""
    from PIL import Image
    for path in files:
        try:
            with Image.open(path) as img:
                tensor = transform(img.convert('RGB'))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            msg = f"cannot read image {path}: {' '.join(str(e).split())}"
            if skip_bad:
                _logger.warning('%s (skipped)', msg)
                continue
            raise UserError(f"{msg} (remove or re-save it, or pass --skip_bad)") from None
        yield path, tensor


def batched(items: Iterator[Tuple[Path, torch.Tensor]], size: int) -> Iterator[List[Tuple[Path, torch.Tensor]]]:
    """Group an iterator into lists of ``size``."""
    batch: List[Tuple[Path, torch.Tensor]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict(args: argparse.Namespace) -> List[dict]:
    """Run the model over all images; returns one record per image and prints a short table for each."""
    if args.topk < 1 or args.batch_size < 1:
        raise UserError('--topk and --batch_size must be >= 1')
    if args.input_size is not None and args.input_size < 32:
        raise UserError(f"--input_size {args.input_size} is too small (HorNet needs at least 32 pixels)")
    files = find_images(args.paths)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UserError(f"cannot write --json {args.json}: its folder does not exist (create it first)")
    released_variant = checkpoint_meta.check_checkpoint_arg(args.checkpoint)  # a file, URL or released name
    if args.checkpoint is None and not args.allow_random:
        raise UserError(NO_CHECKPOINT)
    import torch

    model, info = build_model(args.model or released_variant, args.checkpoint, args.use_ema, args.allow_random)
    names, names_source = class_names(model, args.class_names, info)
    try:
        device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        model.to(device)
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"cannot use --device {args.device}: {' '.join(str(e).split())} (try --device cpu)") \
            from None

    import transforms  # the evaluation transform of main.py --eval, so the numbers agree with it
    default_size = int(model.pretrained_cfg.get('input_size', (3, 224, 224))[-1])
    size = checkpoint_meta.resolve_input_size(args.input_size, info, default_size)
    transform = transforms.build_transform(False, checkpoint_meta.eval_transform_args(info, size))
    data_cfg = {'input_size': [3, size, size], 'transform': [repr(t) for t in transform.transforms]}
    _logger.info('eval transform: %s', transform)

    k = min(args.topk, len(names))
    records: List[dict] = []
    with torch.inference_mode():
        for batch in batched(load_images(files, transform, args.skip_bad), args.batch_size):
            x = torch.stack([t for _, t in batch]).to(device)
            probs = model(x).float().softmax(dim=-1).cpu()
            top_p, top_i = probs.topk(k, dim=-1)
            for (path, _), ps, idx in zip(batch, top_p.tolist(), top_i.tolist()):
                rec = {'path': str(path), 'topk': [
                    {'index': i, 'label': names[i], 'prob': p} for p, i in zip(ps, idx)]}
                records.append(rec)
                print(path)
                for rank, item in enumerate(rec['topk'], 1):
                    print(f"  {rank}. {item['prob']:7.4f}  {item['label']} ({item['index']})")
            sys.stdout.flush()
    if not records:
        raise UserError(f"none of the {len(files)} images could be read (see the warnings above)")
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump({'model': model.pretrained_cfg.get('architecture', args.model), 'checkpoint': args.checkpoint,
                       'input_size': size, 'class_names': names_source, 'data_config': data_cfg,
                       'predictions': records}, f, indent=1)
        _logger.info('wrote %s', args.json)
    return records


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: returns the exit status; user errors are one line on stderr."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    loggers = [logging.getLogger(name) for name in ('predict', 'models', 'checkpoint_meta')]
    levels = [lg.level for lg in loggers]
    for lg in loggers:  # -v: our progress, not every library's INFO chatter
        lg.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        predict(args)
    except UserError as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('predict.py: interrupted', file=sys.stderr)
        return 130
    finally:  # called in-process (tests, notebooks): leave the caller's logging as it was
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return 0


if __name__ == '__main__':
    sys.exit(main())
