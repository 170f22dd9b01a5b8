"""The quick-start data set: a procedurally generated, learnable image-folder data set (``--data_set QUICKSTART``).

Ten shape classes (circle, square, stripes, ...) drawn on random backgrounds with noise, written once as
``<root>/{train,val}/<class>/*.png`` with a completeness marker, so a first run needs no download. Every image is a
function of ``(seed, split, class, index)`` only (:func:`transforms.seed_sequence`), so the files are identical on every
machine; ``datasets.build_dataset`` calls :func:`ensure_quickstart` for ``--data_set QUICKSTART``.
"""
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from errors import UserError
from transforms import seed_sequence

logger = logging.getLogger(__name__)

QUICKSTART_CLASSES = ('circle', 'square', 'triangle', 'cross', 'ring', 'horizontal_stripes', 'vertical_stripes',
                      'checkerboard', 'diagonal_stripes', 'dots')
QUICKSTART_MARKER = 'QUICKSTART.json'
_QUICKSTART_FORMAT = 3


def _shape_mask(kind: int, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean mask of one shape of class ``kind`` centred at (cx, cy) with half-extent ``r``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xx - cx, yy - cy
    box = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    dist = np.hypot(dx, dy)
    w = max(2.0, r / 3.0)  # stripe / cell width
    name = QUICKSTART_CLASSES[kind]
    if name == 'circle':
        return dist <= r
    if name == 'square':
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if name == 'triangle':
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) * 0.5)
    if name == 'cross':
        t = 0.28 * r
        return ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))
    if name == 'ring':
        return (dist <= r) & (dist >= 0.6 * r)
    if name == 'horizontal_stripes':
        return box & (np.floor((dy + r) / w) % 2 == 0)
    if name == 'vertical_stripes':
        return box & (np.floor((dx + r) / w) % 2 == 0)
    if name == 'checkerboard':
        return box & ((np.floor((dx + r) / w) + np.floor((dy + r) / w)) % 2 == 0)
    if name == 'diagonal_stripes':
        return box & (np.floor((dx + dy + 2 * r) / (w * 1.4)) % 2 == 0)
    # dots: a 4x4 grid of small discs
    p = 2 * r / 4
    mx, my = (dx + r) % p - p / 2, (dy + r) % p - p / 2
    return box & (np.hypot(mx, my) <= 0.3 * p)


def _place_objects(size: int, rng: np.random.Generator) -> List[Tuple[float, float, float]]:
    """One large (cx, cy, r) box: at 64 px and a stride-4 stem, a big single shape keeps the class learnable within
    a few CPU minutes (small, repeated shapes took many more steps to rise above chance)."""
    wanted = 1
    placed: List[Tuple[float, float, float]] = []
    for _ in range(50):
        if len(placed) == wanted:
            break
        r = rng.uniform(0.28, 0.45) * size
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        if all(max(abs(cx - x), abs(cy - y)) > r + q + 1 for x, y, q in placed):
            placed.append((cx, cy, r))
    return placed


def _quickstart_image(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One HxWx3 uint8 image: random background, a shape of the class in a contrasting colour, Gaussian noise."""
    bg = rng.integers(0, 256, 3).astype(np.float64)
    for _ in range(100):
        fg = rng.integers(0, 256, 3).astype(np.float64)
        if np.abs(fg - bg).sum() >= 180:
            break
    mask = np.zeros((size, size), dtype=bool)
    for cx, cy, r in _place_objects(size, rng):
        mask |= _shape_mask(kind, size, cx, cy, r)
    img = np.where(mask[..., None], fg, bg)
    img = img + rng.normal(0.0, rng.uniform(4.0, 16.0), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def quickstart_class_names(num_classes: int = len(QUICKSTART_CLASSES)) -> List[str]:
    """The quick-start class names in the model's label order: the class folders sorted by name, as every folder
    data set is labelled (``find_classes``), not the generation order of ``QUICKSTART_CLASSES``."""
    return sorted(QUICKSTART_CLASSES[:num_classes])


def _repair_marker_class_order(root: str, marker: Dict[str, Any]) -> None:
    """Markers written before the fix list the classes in generation order, which is not the label order: rewrite
    the list (best effort, atomically; the images are unchanged, a read-only folder is left as it is)."""
    classes = marker.get('classes')
    if not isinstance(classes, list) or classes == sorted(classes):
        return
    path = os.path.join(root, QUICKSTART_MARKER)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix='.' + QUICKSTART_MARKER, dir=root)
        with os.fdopen(fd, 'w') as f:
            json.dump({**marker, 'classes': sorted(classes)}, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        logger.debug('could not rewrite %s in label order: %s', path, exc)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _read_marker(root: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(root, QUICKSTART_MARKER)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"'{os.path.join(root, QUICKSTART_MARKER)}' is unreadable ({exc}); delete '{root}' so the "
                        f"QUICKSTART dataset is regenerated") from None


def make_quickstart_dataset(root: str, num_classes: int = 10, train_per_class: int = 200, val_per_class: int = 50,
                            image_size: int = 64, seed: int = 0) -> str:
    """Write (once) a deterministic shapes dataset as ``root/{train,val}/<class>/*.png`` and return ``root``.

    The dataset is built in a temporary sibling directory and renamed into place with its completeness marker
    already inside, so an interrupted run never leaves a half dataset and concurrent ranks cannot both publish one.
    An existing complete dataset with the same parameters is reused.
    """
    if not 1 <= num_classes <= len(QUICKSTART_CLASSES):
        raise UserError(f'QUICKSTART supports 1..{len(QUICKSTART_CLASSES)} classes, got {num_classes}')
    if train_per_class < 1 or val_per_class < 1 or image_size < 8:
        raise UserError('QUICKSTART needs train_per_class >= 1, val_per_class >= 1 and image_size >= 8')
    params = dict(format=_QUICKSTART_FORMAT, num_classes=num_classes, train_per_class=train_per_class,
                  val_per_class=val_per_class, image_size=image_size, seed=seed)
    root = os.path.abspath(root)

    def reuse_or_fail() -> Optional[str]:
        marker = _read_marker(root)
        if marker is None:
            if os.path.isdir(root) and os.listdir(root):
                raise UserError(f"'{root}' exists but is not a complete QUICKSTART dataset (no {QUICKSTART_MARKER}); "
                                f"delete it or pass another --data_path")
            if os.path.exists(root) and not os.path.isdir(root):
                raise UserError(f"'{root}' is a file, not a directory; pass another --data_path for QUICKSTART")
            return None
        if {k: marker.get(k) for k in params} != params:
            raise UserError(f"'{root}' holds a QUICKSTART dataset made with different parameters ({marker}); "
                            f"delete it or pass another --data_path")
        return root

    if reuse_or_fail():
        logger.info('Reusing QUICKSTART dataset at %s', root)
        _repair_marker_class_order(root, _read_marker(root) or {})
        return root

    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(root)}.tmp-', dir=parent)
    logger.info('Generating QUICKSTART dataset (%d classes, %d+%d images per class, %d px) at %s',
                num_classes, train_per_class, val_per_class, image_size, root)
    try:
        for split_id, (split, count) in enumerate((('train', train_per_class), ('val', val_per_class))):
            for kind in range(num_classes):
                name = QUICKSTART_CLASSES[kind]
                class_dir = os.path.join(tmp, split, name)
                os.makedirs(class_dir)
                for i in range(count):
                    rng = np.random.default_rng(seed_sequence(seed, split_id, kind, i))
                    Image.fromarray(_quickstart_image(kind, image_size, rng)).save(
                        os.path.join(class_dir, f'{name}_{i:05d}.png'), format='PNG')
        with open(os.path.join(tmp, QUICKSTART_MARKER), 'w') as f:
            json.dump({**params, 'classes': quickstart_class_names(num_classes)}, f, indent=1)
        try:
            os.rename(tmp, root)  # atomic; succeeds onto a missing or empty directory only
        except OSError:
            if reuse_or_fail() is None:  # someone else did not publish one either: a real failure
                raise
            logger.info('Another process created the QUICKSTART dataset at %s first; reusing it', root)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_quickstart(root: str) -> str:
    """Reuse any complete QUICKSTART dataset at ``root`` (whatever its parameters), else generate the default one."""
    root = os.path.abspath(root)
    marker = _read_marker(root)
    if marker is not None:
        _repair_marker_class_order(root, marker)
        return root
    return make_quickstart_dataset(root)
