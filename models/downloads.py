"""Released HorNet weights by name, and the cached, hash-checked download behind them.

:data:`RELEASED` lists every released file: the original release's (its README's model zoo) and mmpretrain's
converted copies (with the sha256 prefix of OpenMMLab's file names), with the published accuracy. The timm tags
built from it (``models/hornet.py``):

* ``<variant>.in1k`` / ``<variant>.in22k``: the original release's file (the default tag of the variant);
* ``<variant>.mmpretrain_in1k`` / ``<variant>.mmpretrain_in22k``: mmpretrain's converted file.

The three HorNet-L files are ImageNet-22K models: their classifier has one row per ImageNet-22K class
(:data:`IN22K_CLASSES`), so their cfgs say ``num_classes=21841``.

:func:`download_cached` fetches a URL into torch's hub cache (``torch.hub.get_dir()/checkpoints``, so
``TORCH_HOME`` moves it), the same place timm and ``torch.hub.load_state_dict_from_url`` use. A file already there
is used without touching the network. A download goes to a temporary name in that folder and is renamed to its
final name only when it is complete (every byte of its Content-Length) and its sha256 starts with the expected
prefix, so a failed, cut or corrupt download never leaves a file under the final name. Every failure is one
:class:`DownloadError` line that names the URL and says how to pass a downloaded copy instead.
"""
import hashlib
import http.client
import logging
import os
import re
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .errors import CheckpointError, DownloadError

__all__ = ['ReleasedFile', 'RELEASED', 'IN22K_CLASSES', 'DownloadError', 'released_files', 'is_url',
           'find_released', 'default_released', 'not_a_released_name', 'resolve_local_path', 'cache_dir',
           'cache_file_name', 'expected_sha256_prefix', 'download_cached', 'prepare_pretrained']

_logger = logging.getLogger(__name__)

TIMEOUT_S = 60.0       # seconds without data before a download is given up
_TSINGHUA = 'https://cloud.tsinghua.edu.cn/f/{}/?dl=1'
_OPENMMLAB = 'https://download.openmmlab.com/mmclassification/v0/hornet/{}'
# torch.hub's convention (check_hash=True): a file named ``<name>-<hex>.<ext>`` starts its sha256 with <hex>.
# At least 8 hex digits here, so that names such as ``ckpt-ade.pth`` are not taken for hashes.
_HASH_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.')
IN22K_CLASSES = 21841  # classes of the original release's ImageNet-22K head (the HorNet-L files)


@dataclass(frozen=True)
class ReleasedFile:
    """One released weight file and the timm tag that loads it."""
    variant: str
    tag: str
    url: str
    source: str                  # 'original release' or 'mmpretrain'
    trained_on: str              # 'ImageNet-1K' or 'ImageNet-22K'
    num_classes: int             # rows of the file's classifier
    file_name: str               # its name in the download cache
    sha256_prefix: Optional[str] = None
    top1: Optional[float] = None  # published ImageNet-1K accuracy (%); None for the 22K models
    top5: Optional[float] = None
    note: str = ''

    @property
    def name(self) -> str:
        """The timm name with tag, e.g. ``hornet_tiny_7x7.in1k``."""
        return f'{self.variant}.{self.tag}'


def _build() -> Tuple[ReleasedFile, ...]:
    # variant: (original release file id, original top-1, mmpretrain file, mmpretrain top-1, top-5)
    in1k = {
        'hornet_tiny_7x7': ('1ca970586c6043709a3f', 82.8, 'hornet-tiny_3rdparty_in1k_20220915-0e8eedff.pth',
                            82.84, 96.24),
        'hornet_tiny_gf': ('511faad0bde94dfcaa54', 83.0, 'hornet-tiny-gf_3rdparty_in1k_20220915-4c35a66b.pth',
                           82.98, 96.38),
        'hornet_small_7x7': ('46422799db2941f7b684', 83.8, 'hornet-small_3rdparty_in1k_20220915-5935f60f.pth',
                             83.79, 96.75),
        'hornet_small_gf': ('8405c984bf084d2ba85a', 84.0, 'hornet-small-gf_3rdparty_in1k_20220915-649ca492.pth',
                            83.98, 96.77),
        'hornet_base_7x7': ('5c86cb3d655d4c17a959', 84.2, 'hornet-base_3rdparty_in1k_20220915-a06176bb.pth',
                            84.24, 96.94),
        'hornet_base_gf': ('6c84935e63b547f383fb', 84.3, 'hornet-base-gf_3rdparty_in1k_20220915-82c06fa7.pth',
                           84.32, 96.95),
    }
    # variant: (original release file id, mmpretrain file, note); parameters with the 22K head per the original
    in22k = {
        'hornet_large_7x7': ('a76f7ce114ad4e9c8ffb', 'hornet-large_3rdparty_in21k_20220909-9ccef421.pth',
                             '209M parameters with the 22K head (original README)'),
        'hornet_large_gf': ('12c99a79e77341e59681', 'hornet-large-gf_3rdparty_in21k_20220909-3aea3b61.pth',
                            '211M parameters with the 22K head (original README)'),
        'hornet_large_gf_img384': ('9253bd0d50c84ab1b71e',
                                   'hornet-large-gf384_3rdparty_in21k_20220909-80894290.pth',
                                   '216M parameters with the 22K head; fine-tuned to 384x384 on ImageNet-22K '
                                   '(original README)'),
    }
    out: List[ReleasedFile] = []
    for variant, (fid, top1, mm, mm1, mm5) in in1k.items():
        out.append(ReleasedFile(variant, 'in1k', _TSINGHUA.format(fid), 'original release', 'ImageNet-1K', 1000,
                                f'{variant}.in1k.pth', top1=top1))
        out.append(ReleasedFile(variant, 'mmpretrain_in1k', _OPENMMLAB.format(mm), 'mmpretrain', 'ImageNet-1K',
                                1000, mm, sha256_prefix=_HASH_IN_NAME.search(mm).group(1), top1=mm1, top5=mm5))
    for variant, (fid, mm, note) in in22k.items():
        out.append(ReleasedFile(variant, 'in22k', _TSINGHUA.format(fid), 'original release', 'ImageNet-22K',
                                IN22K_CLASSES, f'{variant}.in22k.pth', note=note))
        out.append(ReleasedFile(variant, 'mmpretrain_in22k', _OPENMMLAB.format(mm), 'mmpretrain', 'ImageNet-22K',
                                IN22K_CLASSES, mm, sha256_prefix=_HASH_IN_NAME.search(mm).group(1),
                                note='converted from the original release by mmpretrain'))
    return tuple(out)


RELEASED: Tuple[ReleasedFile, ...] = _build()
_BY_URL: Dict[str, ReleasedFile] = {f.url: f for f in RELEASED}
_BY_NAME: Dict[str, ReleasedFile] = {f.name: f for f in RELEASED}  # '<variant>.<tag>', the default tag first
# a '<variant>.<ext>' name with one of these is a file name (e.g. hornet_tiny_7x7.pth), never a released name
_FILE_EXTENSIONS = ('pth', 'pt', 'bin', 'ckpt', 'safetensors', 'tar', 'pkl', 'npz', 'zip', 'onnx')


def released_files(variant: str) -> List[ReleasedFile]:
    """The released files of ``variant``, the default (original release) first."""
    return [f for f in RELEASED if f.variant == variant]


def find_released(spec: Any) -> Optional[ReleasedFile]:
    """The released file that ``spec`` names (``<variant>.<tag>``, e.g. ``hornet_tiny_7x7.in1k``), else None.

    The command line's ``--finetune``/``--resume``/``--checkpoint`` take a file, a URL or such a name; an existing
    path wins over a name, so a local file called ``hornet_tiny_7x7.in1k`` is still read as the file.
    """
    if not isinstance(spec, str):
        return None
    found = _BY_NAME.get(spec)
    return None if found is None or os.path.exists(spec) else found


def default_released(variant: str) -> Optional[ReleasedFile]:
    """The released file that ``timm.create_model(variant, pretrained=True)`` loads (the original release's), or
    None for a variant without released weights."""
    return next((f for f in _BY_NAME.values() if f.variant == variant), None)


def not_a_released_name(spec: Any) -> Optional[str]:
    """Why ``spec``, which is no existing path but reads like a released name (``<HorNet variant>[.<tag>]``),
    names no released file, with the names that exist; None for anything else (a path, URL or released name)."""
    if not isinstance(spec, str) or spec in _BY_NAME or os.path.exists(spec) or is_url(spec) \
            or '/' in spec or os.sep in spec:
        return None
    variant, _, tag = spec.partition('.')
    if tag.lower() in _FILE_EXTENSIONS:
        return None
    import timm
    if variant not in timm.list_models('hornet*'):
        return None
    names = [f.name for f in _BY_NAME.values() if f.variant == variant]
    if names:
        return f"it is not a released name either (released weights of {variant}: {', '.join(names)})"
    with_weights = ', '.join(dict.fromkeys(f.variant for f in _BY_NAME.values()))
    return f"{variant} has no released weights (variants with released weights: {with_weights})"


def is_url(path: Any) -> bool:
    return isinstance(path, str) and re.match(r'^https?://', path, re.IGNORECASE) is not None


def resolve_local_path(path_or_url: Any) -> str:
    """A local path for ``path_or_url``: an http(s) URL, or the name of a released file (``hornet_tiny_7x7.in1k``,
    see :func:`find_released`), is downloaded once into torch's hub cache (hash-checked where the sha256 prefix is
    known; see :func:`download_cached`), anything else is returned as is. Raises a one-line :class:`DownloadError`
    when the download fails."""
    path = os.fspath(path_or_url)
    if is_url(path):
        return download_cached(path)
    released = find_released(path)
    if released is not None:
        try:
            return download_cached(released.url, file_name=released.file_name, sha256_prefix=released.sha256_prefix)
        except DownloadError as e:
            raise DownloadError(f"released weights {path}: {e}") from None
    return path


def cache_dir() -> str:
    """torch's hub checkpoint folder (``$TORCH_HOME/hub/checkpoints``), shared with timm and torch.hub."""
    import torch.hub
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def cache_file_name(url: str) -> str:
    """The file name a URL is cached under.

    Released files have fixed names (mmpretrain's own, ``<variant>.<tag>.pth`` for the original release). A URL
    whose file name carries a sha256 prefix (``name-<hex>.pth``) keeps its name, as torch.hub does. Any other URL
    gets a digest of the whole URL in its name, so two files of one name at different addresses
    (``.../run1/checkpoint-best.pth``, ``.../run2/checkpoint-best.pth``) never share a cache entry.
    """
    known = _BY_URL.get(url)
    if known is not None:
        return known.file_name
    base = os.path.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    base = re.sub(r'[^A-Za-z0-9._+-]', '_', base).lstrip('.')
    if base and _HASH_IN_NAME.search(base):
        return base
    stem, ext = os.path.splitext(base)
    if ext.lower() not in ('.pth', '.pt', '.bin', '.ckpt', '.safetensors', '.tar'):
        stem, ext = base, '.pth'
    digest = hashlib.sha256(url.encode('utf-8')).hexdigest()[:12]
    return f"{stem or 'download'}.{digest}{ext}"


def expected_sha256_prefix(url: str) -> Optional[str]:
    """The known sha256 prefix of the file at ``url`` (from the table, or from a ``-<hex>.`` file name)."""
    known = _BY_URL.get(url)
    if known is not None:
        return known.sha256_prefix
    base = os.path.basename(urllib.parse.urlsplit(url).path)
    found = _HASH_IN_NAME.search(base)
    return found.group(1) if found else None


_HINT = "pass the path of a copy downloaded elsewhere instead (e.g. --resume /path/to/file.pth)"
TIMM_HINT = ("download it elsewhere and pass the file: timm.create_model(..., pretrained=True, "
             "pretrained_cfg_overlay=dict(file='/path/to/file.pth'))")


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f'HTTP {e.code} {e.reason}'
    inner = getattr(e, 'reason', None)
    if isinstance(inner, BaseException):
        e = inner
    elif isinstance(inner, str):
        return inner
    if isinstance(e, ConnectionRefusedError):
        return 'connection refused'
    if isinstance(e, socket.gaierror):
        return f'host not found ({e.strerror or e})'
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f'no data for {TIMEOUT_S:g} s (timed out)'
    text = ' '.join(str(e).split()) or type(e).__name__
    return text[:160]


def _looks_like_checkpoint(path: str, url: str) -> bool:
    """A torch.save zip, a legacy pickle or a .safetensors file (not a web page of a host's login or error)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, 'rb') as f:
        head = f.read(16)
    if head[:1] == b'\x80':  # pickle protocol >= 2 (torch.save's legacy format)
        return True
    if url.lower().split('?')[0].endswith('.safetensors') or path.endswith('.safetensors'):
        return len(head) >= 9 and head[8:9] == b'{'
    return False


def download_cached(url: str, file_name: Optional[str] = None, sha256_prefix: Optional[str] = None,
                    cache: Optional[str] = None, hint: str = _HINT) -> str:
    """Return a local path holding the file at ``url``, downloading it into the cache unless it is there.

    ``sha256_prefix`` (default: :func:`expected_sha256_prefix`) is checked before the file gets its final name;
    ``file_name`` defaults to :func:`cache_file_name`. Raises :class:`DownloadError` (one line) on any failure,
    leaving nothing under the final name.
    """
    folder = os.fspath(cache) if cache else cache_dir()
    dst = os.path.join(folder, file_name or cache_file_name(url))
    if os.path.isfile(dst):
        _logger.info('Using cached %s for %s', dst, url)
        return dst
    if sha256_prefix is None:
        sha256_prefix = expected_sha256_prefix(url)
    way_around = f"; {hint}, or copy it to {dst}"
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(dst) + '.', suffix='.partial')
    except OSError as e:
        raise DownloadError(f"cannot download {url}: cannot write to the cache folder {folder} "
                            f"({e.strerror or e}); set TORCH_HOME to a writable folder{way_around}") from None
    _logger.info('Downloading %s to %s', url, dst)
    try:
        h = hashlib.sha256()
        received = 0
        with os.fdopen(fd, 'wb') as out:
            try:
                req = urllib.request.Request(url, headers={'User-Agent': 'hornet-weights/1 (python urllib)'})
                with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                    length = resp.headers.get('Content-Length')
                    expected = int(length) if length and length.isdigit() else None
                    bar = _progress(expected)
                    try:
                        while True:
                            block = resp.read(1 << 20)
                            if not block:
                                break
                            out.write(block)
                            h.update(block)
                            received += len(block)
                            if bar is not None:
                                bar.update(len(block))
                    finally:
                        if bar is not None:
                            bar.close()
            except urllib.error.HTTPError as e:
                raise DownloadError(f"cannot download {url}: {_reason(e)} (check the URL){way_around}") from None
            except (OSError, http.client.HTTPException, ValueError) as e:
                if received:
                    raise DownloadError(f"download of {url} was cut after {received} bytes ({_reason(e)}); "
                                        f"nothing was saved (try again){way_around}") from None
                raise DownloadError(f"cannot download {url}: {_reason(e)} (no network access?){way_around}") \
                    from None
            if expected is not None and received != expected:
                raise DownloadError(f"download of {url} was cut: got {received} of {expected} bytes; "
                                    f"nothing was saved (try again){way_around}")
        digest = h.hexdigest()
        if sha256_prefix and not digest.startswith(sha256_prefix.lower()):
            raise DownloadError(f"downloaded {url} but its sha256 is {digest[:16]}..., expected {sha256_prefix}...: "
                                f"the file is corrupt or not the released one; nothing was saved{way_around}")
        if not _looks_like_checkpoint(tmp, url):
            raise DownloadError(f"downloaded {url} but it is not a checkpoint (an HTML page or other data: the link "
                                f"may need a login or have expired); nothing was saved{way_around}")
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _logger.info('Saved %s (%d bytes, sha256 %s)', dst, received, digest[:16])
    return dst


def _progress(total: Optional[int]):
    """A tqdm bar on an interactive stderr, else None (logs and CI stay clean)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, leave=False)


def prepare_pretrained(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The model factories' hook: make timm load every weight file through the model's own ``load_pretrained``.

    For ``pretrained=True`` with a cfg URL (a released file, or ``pretrained_cfg_overlay=dict(url=...)``) the file
    is downloaded here (cached, hash-checked) and handed to timm as ``pretrained_cfg_overlay['file']``. A file
    source always gets ``custom_load=True``, so timm calls the model's ``load_pretrained`` (safe ``weights_only``
    load, format conversion, strict filter, ``in_chans`` adaptation, a new head for another class count) instead
    of its own loader: timm >= 1.0.31 resets ``custom_load`` to False for an overlay ``file``/``url`` unless it is
    set explicitly. A state dict given in memory or a Hugging Face hub source stays with timm (which applies the
    model's ``pretrained_filter_fn``). A cfg without weights is a clear error. ``kwargs`` are the factory's keyword
    arguments (``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``).
    """
    if not pretrained:
        return kwargs
    from timm.models._builder import resolve_pretrained_cfg
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=dict(overlay))
    if cfg.state_dict is not None or cfg.source in ('hf-hub', 'local-dir'):
        return kwargs  # timm's own sources: an in-memory state dict, the Hugging Face hub, a local folder
    out = dict(kwargs)
    if cfg.file:  # timm's priority: a file before a hub id or URL
        out['pretrained_cfg_overlay'] = dict(overlay, custom_load=True)
        return out
    if cfg.hf_hub_id:
        return kwargs
    if not cfg.url:
        name = f'{variant}.{cfg.tag}' if cfg.tag else variant
        released = ', '.join(dict.fromkeys(f.variant for f in RELEASED))
        raise CheckpointError(
            f"{name} has no released weights (use pretrained=False, or load a file with pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='/path/to/file.pth')); variants with released weights: {released} "
            f"(tags: timm.list_pretrained('hornet*'))")
    url, file_name = tuple(cfg.url) if isinstance(cfg.url, (tuple, list)) else (cfg.url, None)
    path = download_cached(url, file_name=file_name, cache=kwargs.get('cache_dir'), hint=TIMM_HINT)
    out['pretrained_cfg_overlay'] = dict(overlay, file=path, custom_load=True)
    return out
