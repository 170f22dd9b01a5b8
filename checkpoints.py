"""All checkpoint I/O of training: atomic saves, RNG state, resume discovery, pruning, loading old formats, and the
checkpoint policy of a run (:class:`Checkpointer`: what is saved when, what is kept, where training resumes).

File names in ``output_dir`` follow the original release: ``checkpoint-<epoch>.pth`` at the end of an epoch,
``checkpoint-best.pth`` / ``checkpoint-best-ema.pth``; ``checkpoint-preempt.pth`` is added for a mid-epoch
save on a signal. Writes go to a hidden ``.tmp-*`` file that is renamed into place, so a crash or a full disk
never leaves a partial file under a real name. Everything written loads with ``torch.load(weights_only=True)``
(args are a plain dict, RNG states are lists and tensors); everything read goes through
``models.weights.safe_load``, so a checkpoint can never run code.

A training checkpoint is a dict with (see :func:`save_training_checkpoint`): model, optimizer, epoch, scaler,
model_ema, args, global_step, step_in_epoch, epoch_complete, ema_updates, max_accuracy, max_accuracy_ema, rng,
version, and class_names (the training data's classes in label order; absent from older files).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import re
import signal
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

import checkpoint_meta
import utils
from errors import UserError
from models import CheckpointError, checkpoint_filter_fn, extract_state_dict, safe_load

__all__ = ['CHECKPOINT_VERSION', 'PREEMPT_NAME', 'BEST_NAME', 'BEST_EMA_NAME', 'epoch_checkpoint_name',
           'checkpoint_file_name', 'save_atomic', 'rng_state', 'set_rng_state', 'is_finite_state',
           'save_training_checkpoint', 'find_resume_checkpoint', 'resolve_resume_path', 'check_checkpoint_file',
           'without_torch_advice', 'prune_checkpoints', 'load_training_checkpoint', 'write_json_atomic',
           'finetune_state_dict', 'load_weights', 'warn_other_classes', 'Checkpointer']

_logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1  # 0 is what load_training_checkpoint reports for the original release's files
PREEMPT_NAME = 'checkpoint-preempt.pth'
BEST_NAME = 'checkpoint-best.pth'
BEST_EMA_NAME = 'checkpoint-best-ema.pth'
TMP_PREFIX = '.tmp-'  # hidden and never matching checkpoint-*.pth, so no glob or resume scan picks it up
_EPOCH_RE = re.compile(r'^checkpoint-(\d+)\.pth$')
_REQUIRED = ('model', 'optimizer', 'epoch', 'args', 'global_step', 'step_in_epoch', 'epoch_complete')

PathLike = Union[str, os.PathLike]


def epoch_checkpoint_name(epoch: int) -> str:
    """File name of the end-of-epoch checkpoint (the original's ``checkpoint-<epoch>.pth``)."""
    return f'checkpoint-{int(epoch)}.pth'


def checkpoint_file_name(name: Union[str, int]) -> str:
    """``'3'``/``3`` -> ``checkpoint-3.pth``, ``'preempt'`` -> ``checkpoint-preempt.pth``; full names pass."""
    name = str(name)
    if not name.endswith('.pth'):
        name = f'checkpoint-{name}.pth'
    if os.sep in name or (os.altsep and os.altsep in name) or name.startswith('.'):
        raise ValueError(f"checkpoint name must be a plain file name, got {name!r}")
    return name


# ----------------------------------------------------------------------------------------------- writing

def _weights_only_problem(obj: Any, where: str = 'checkpoint') -> Optional[str]:
    """Where ``obj`` holds something ``torch.load(weights_only=True)`` would refuse, or None if all is plain."""
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, torch.dtype, torch.device)):
        return None
    if type(obj) in (torch.Tensor, torch.nn.Parameter):
        return None
    if isinstance(obj, torch.Size):
        return None
    if type(obj) in (dict, OrderedDict, list, tuple, set):  # not defaultdict & co: their class is a global
        items = obj.items() if isinstance(obj, Mapping) else enumerate(obj)
        for k, v in items:
            bad = _weights_only_problem(k, f'{where} key') if isinstance(obj, Mapping) else None
            bad = bad or _weights_only_problem(v, f'{where}[{k!r}]')
            if bad:
                return bad
        return None
    return f'{where} is a {type(obj).__module__}.{type(obj).__qualname__}'


class _ErrorRecordingWriter:
    """File wrapper that remembers the OSError of a failed write; torch.save reports it as a RuntimeError."""

    def __init__(self, f) -> None:
        self.f = f
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def _os_reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; some file systems cannot fsync a directory, which is not worth failing for.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        _logger.debug('fsync of directory %s failed: %s', directory, e)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only be read by setting)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C until the block ends, then deliver it to the previous handler.

    A KeyboardInterrupt inside ``torch.save`` leaves its zip writer mid-record, and torch then raises a RuntimeError
    instead: the user would get a traceback and lose the checkpoint being written. Deferring it lets the write
    finish, so the interrupt is reported once, with that checkpoint saved."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: List[Any] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        if callable(previous):
            previous(signal.SIGINT, pending[0])
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


def save_atomic(obj: Any, path: PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` so that the final name holds either the old file or the complete new one.

    Writes a hidden ``.tmp-`` file in the same directory, fsyncs it, gives it the permissions of a new file
    under the umask (0644 with the usual 022; mkstemp's are 0600), renames it over ``path`` and fsyncs the
    directory. An OSError (disk full, permissions, quota) becomes a one-line :class:`UserError`; any failure
    removes the temp file and leaves the previous ``path`` untouched. ``obj`` must hold only what
    ``torch.load(weights_only=True)`` accepts (else TypeError, before anything is written).
    """
    path = Path(path)
    bad = _weights_only_problem(obj)
    if bad:
        raise TypeError(f"refusing to save {path}: {bad}, which torch.load(weights_only=True) cannot read "
                        f"(store plain dicts, lists, numbers, strings and tensors)")
    directory = path.parent
    tmp: Optional[str] = None
    try:
        with _sigint_deferred():  # a Ctrl-C arriving mid-write is delivered once the file is complete
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f'{TMP_PREFIX}{path.name}-', dir=directory)
            with os.fdopen(fd, 'wb') as f:
                writer = _ErrorRecordingWriter(f)
                try:
                    torch.save(obj, writer)
                except RuntimeError as e:
                    if writer.error is not None:  # the real cause (ENOSPC, EFBIG, EIO...) hides behind torch's error
                        raise writer.error from e
                    raise
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is as readable as any other output
            os.replace(tmp, path)
            tmp = None
            _fsync_dir(directory)
    except OSError as e:
        raise UserError(f"cannot write checkpoint {path}: {_os_reason(e)} (free disk space or fix the permissions "
                        f"of {directory}; the previous file, if any, is unchanged)") from None
    finally:
        if tmp is not None:
            try:
                os.remove(tmp)
            except OSError:
                pass


def rng_state() -> Dict[str, Any]:
    """Python, numpy (legacy global) and torch CPU/CUDA generator states, as weights_only-loadable data.

    CUDA states (all devices) are included when CUDA is initialised in this process: a process that never
    touched CUDA has consumed no CUDA randomness, and asking would create a CUDA context for nothing.
    States are per process; in distributed training each rank holds its own.
    """
    version, internal, gauss_next = random.getstate()
    bit_gen, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: Dict[str, Any] = {
        'python': {'version': version, 'internal': list(internal), 'gauss_next': gauss_next},
        'numpy': {'bit_generator': str(bit_gen), 'keys': [int(k) for k in keys], 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'torch': torch.get_rng_state(),
        'cuda': None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured so the next random draws continue the saved sequence."""
    py = state.get('python')
    if py is not None:
        random.setstate((py['version'], tuple(py['internal']), py['gauss_next']))
    npst = state.get('numpy')
    if npst is not None:
        np.random.set_state((npst['bit_generator'], np.asarray(npst['keys'], dtype=np.uint32), npst['pos'],
                             npst['has_gauss'], npst['cached_gaussian']))
    if state.get('torch') is not None:
        torch.set_rng_state(state['torch'].cpu())
    cuda = state.get('cuda')
    if cuda:
        if not torch.cuda.is_available():
            _logger.info('Checkpoint has CUDA RNG states but CUDA is not available; leaving them unused')
            return
        n = torch.cuda.device_count()
        if n != len(cuda):
            _logger.warning('Checkpoint has CUDA RNG states for %d devices, this machine has %d; restoring %d',
                            len(cuda), n, min(n, len(cuda)))
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda[:n]])


def is_finite_state(state_dict: Mapping[str, Any]) -> bool:
    """True if every floating/complex tensor in ``state_dict`` (nested mappings included) is free of NaN/Inf.

    Checked before saving so that a diverged model never replaces a good checkpoint. One host sync per device.
    """
    per_device: Dict[torch.device, List[torch.Tensor]] = {}

    def collect(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() or obj.is_complex():
                per_device.setdefault(obj.device, []).append(torch.isfinite(obj.detach()).all())
        elif isinstance(obj, Mapping):
            for v in obj.values():
                collect(v)

    collect(state_dict)
    return all(bool(torch.stack(flags).all()) for flags in per_device.values())


def save_training_checkpoint(output_dir: PathLike, name: Union[str, int], state: Mapping[str, Any]) -> Path:
    """Atomically save a training checkpoint as ``output_dir/checkpoint-<name>.pth`` and return its path.

    ``name`` is an epoch number, 'preempt', 'best', 'best-ema' or a full file name. ``state`` must contain
    model (state dict), optimizer (state dict), epoch, args (Namespace or dict), global_step (optimizer steps
    done), step_in_epoch (0 when the epoch completed) and epoch_complete; scaler, model_ema, ema_updates,
    max_accuracy(_ema) default to None/0, rng to :func:`rng_state` now, and version is set. A model (or EMA)
    with NaN/Inf is refused with a UserError so that the last good checkpoint survives.
    """
    path = Path(output_dir) / checkpoint_file_name(name)
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"training checkpoint state lacks {missing}")
    if state['epoch_complete'] and state['step_in_epoch'] != 0:
        raise ValueError(f"step_in_epoch must be 0 for a completed epoch (got {state['step_in_epoch']})")
    for key in ('model', 'model_ema'):
        sd = state.get(key)
        if sd is not None and not isinstance(sd, Mapping):
            raise TypeError(f"state[{key!r}] must be a state dict, got {type(sd).__name__}")
        if sd is not None and not is_finite_state(sd):
            raise UserError(f"refusing to save {path}: the {key.replace('_', ' ')} weights contain NaN/Inf "
                            f"(training diverged; resume from the last checkpoint with a lower --lr or --clip_grad)")
    out = dict(state)
    out['args'] = checkpoint_meta.to_plain(state['args']) if state['args'] is not None else {}
    for key, default in (('scaler', None), ('model_ema', None), ('ema_updates', None), ('max_accuracy', 0.),
                         ('max_accuracy_ema', 0.)):
        out.setdefault(key, default)
    if out.get('rng') is None:
        out['rng'] = rng_state()
    out['version'] = CHECKPOINT_VERSION
    save_atomic(out, path)
    _logger.info('Saved %s (epoch %s, global step %s)', path, out['epoch'], out['global_step'])
    return path


# ----------------------------------------------------------------------------------------------- reading

def _peek(path: Path) -> Optional[Dict[str, Any]]:
    """Load a checkpoint's small fields without reading tensor data (mmap); None (and a warning) if unusable."""
    try:
        ck = checkpoint_meta.load_without_tensors(str(path))
    except Exception as e:  # any unreadable file is skipped, never fatal: a newer or older one may do
        msg = ' '.join(str(e).split())[:200]
        _logger.warning('Skipping checkpoint %s: cannot read it (%s: %s)', path, type(e).__name__, msg)
        return None
    if not isinstance(ck, Mapping) or 'model' not in ck or 'optimizer' not in ck or 'epoch' not in ck:
        _logger.warning('Skipping checkpoint %s: not a training checkpoint (no model/optimizer/epoch)', path)
        return None
    return {'epoch': ck.get('epoch'), 'global_step': ck.get('global_step'), 'version': ck.get('version', 0)}


def _epoch_files(output_dir: Path) -> List[Tuple[int, Path]]:
    try:
        names = os.listdir(output_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m.group(1)), output_dir / n) for n in names if (m := _EPOCH_RE.match(n))]
    return sorted(found)


def find_resume_checkpoint(output_dir: PathLike, log: bool = True) -> Optional[Path]:
    """The checkpoint to auto-resume from: the readable ``checkpoint-<N>.pth`` / ``checkpoint-preempt.pth``
    with the largest stored ``global_step`` (an epoch file wins a tie), or None if there is none.

    Files that fail to load are skipped with a warning naming them; temp files never match. Original-release
    files (no global_step) rank below every file that has one, and among themselves by epoch number.
    """
    output_dir = Path(output_dir)
    candidates = [(n, p, True) for n, p in _epoch_files(output_dir)]
    preempt = output_dir / PREEMPT_NAME
    if preempt.is_file():
        candidates.append((-1, preempt, False))
    best_key, best_path = None, None
    for number, path, is_epoch_file in candidates:
        info = _peek(path)
        if info is None:
            continue
        step = info['global_step']
        key = (step is not None, step if step is not None else number, is_epoch_file, number)
        if best_key is None or key > best_key:
            best_key, best_path = key, path
    if best_path is not None and log:
        _logger.info('Resume candidate: %s', best_path)
    return best_path


def resolve_resume_path(path: PathLike, flag: str = '--resume') -> str:
    """``path`` itself for a file; for a run directory, the checkpoint auto-resume would pick in it (the one
    furthest along, see :func:`find_resume_checkpoint`); a directory without one is a :class:`UserError`."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path
    found = find_resume_checkpoint(path)
    if found is None:
        others = sorted(n for n in os.listdir(path) if n.endswith(('.pth', '.pt', '.safetensors')))
        hint = (f"; it holds {', '.join(others[:3])}: pass one of them as a file" if others else
                '; pass the checkpoint file, or the --output_dir of a run that saved one')
        raise UserError(f"{flag} {path}: the directory has no checkpoint to resume from (checkpoint-<epoch>.pth "
                        f"or {PREEMPT_NAME}){hint}")
    return str(found)


def check_checkpoint_file(path: PathLike, flag: str = '--resume') -> None:
    """A one-line :class:`UserError` when ``path`` is plainly not a checkpoint, e.g. a run's log.txt.

    ``torch.save`` writes a zip archive (``PK``) or, before torch 1.6, a pickle (``0x80``). Empty files and
    .safetensors files pass here; reading them reports their problems.
    """
    path = os.fspath(path)
    if path.endswith('.safetensors') or '://' in path:
        return
    try:
        with open(path, 'rb') as f:
            head = f.read(512)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot read it ({_os_reason(e)})") from None
    if not head or head.startswith(b'PK\x03\x04') or head[:1] == b'\x80':
        return
    try:
        head.decode('utf-8')
        kind = 'a text file'
    except UnicodeDecodeError:
        kind = 'not a file written by torch.save'
    raise UserError(f"{flag} {path} is not a checkpoint ({kind}); pass a checkpoint file (e.g. "
                    f"checkpoint-<epoch>.pth) or the run directory that holds it")


_TORCH_ADVICE = re.compile(r'\(?Weights only load failed.*', re.S)


def without_torch_advice(e: CheckpointError) -> CheckpointError:
    """torch's weights_only error suggests retrying with weights_only=False, which runs any code in the file:
    never pass that on."""
    text = str(e)
    if 'weights_only' not in text:
        return e
    return CheckpointError(_TORCH_ADVICE.sub('', text).rstrip(' (;:.'))


def prune_checkpoints(output_dir: PathLike, keep: int, keep_every: int = 0) -> List[Path]:
    """Delete all but the newest ``keep`` ``checkpoint-<N>.pth`` files (by N), as ``--save_ckpt_num`` does.

    ``keep <= 0`` keeps every epoch file (the original would delete the file it just wrote). With
    ``keep_every > 0``, epochs that are positive multiples of it are kept too (the HorNet release keeps every
    50th). best/best-ema are never touched; ``checkpoint-preempt.pth`` is deleted once an epoch file has
    reached its global_step (it can no longer be chosen for resuming). Returns the deleted paths.
    """
    output_dir = Path(output_dir)
    epoch_files = _epoch_files(output_dir)
    doomed: List[Path] = []
    if keep > 0:
        for number, path in epoch_files[:-keep]:
            if keep_every > 0 and number > 0 and number % keep_every == 0:
                continue
            doomed.append(path)
    preempt = output_dir / PREEMPT_NAME
    if preempt.is_file() and epoch_files:
        newest = _peek(epoch_files[-1][1])
        old = _peek(preempt)
        if newest and old and newest['global_step'] is not None and old['global_step'] is not None \
                and old['global_step'] <= newest['global_step']:
            doomed.append(preempt)
    deleted = []
    for path in doomed:
        try:
            path.unlink()
            deleted.append(path)
            _logger.info('Removed old checkpoint %s', path)
        except FileNotFoundError:
            pass
        except OSError as e:
            _logger.warning('Could not remove old checkpoint %s: %s', path, _os_reason(e))
    return deleted


def load_training_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint safely (no code runs) and return it in this project's training-checkpoint shape.

    * This project's files come back as saved (args a dict), after a version check.
    * Original-release training files (``args`` an ``argparse.Namespace``, no ``global_step``) get args as a
      dict and defaults meaning "resume at the start of epoch + 1": version 0, global_step None (the step
      count is not stored and the caller must derive it from epoch+1 and its steps per epoch),
      step_in_epoch 0, epoch_complete True, ema_updates None, max_accuracy(_ema) 0.0 (the original also
      restarts them at 0), rng None (reseed), scaler/model_ema None if absent. Their non-numeric epochs map
      as 'start' -> -1 (nothing trained yet) and 'best'/'best-ema' -> None (not resumable; weights only).
    * A file without 'optimizer' is treated as bare weights and returns ``{'model': state_dict}`` only.
    """
    path = str(path)
    check_checkpoint_file(path)
    try:
        raw = safe_load(path)
    except CheckpointError as e:
        raise without_torch_advice(e) from None
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a checkpoint dict or state dict")
    if 'optimizer' not in raw:
        return {'model': extract_state_dict(raw, path=path)}

    ck = dict(raw)
    version = ck.get('version', 0)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer version of this code (checkpoint version {version}, "
                              f"this code reads <= {CHECKPOINT_VERSION}); update the code")
    if not isinstance(ck.get('model'), Mapping):
        raise CheckpointError(f"{path} has an optimizer but no model state dict under 'model' (wrong file?)")
    ck['args'] = checkpoint_meta.to_plain(ck['args']) if ck.get('args') is not None else {}
    epoch = ck.get('epoch')
    if isinstance(epoch, str):
        epoch = -1 if epoch == 'start' else None
    ck['epoch'] = epoch
    ck['version'] = version
    for key, default in (('global_step', None), ('step_in_epoch', 0), ('epoch_complete', True), ('scaler', None),
                         ('model_ema', None), ('ema_updates', None), ('max_accuracy', 0.), ('max_accuracy_ema', 0.),
                         ('rng', None)):
        ck.setdefault(key, default)
    return ck


def write_json_atomic(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON so that ``path`` holds either its old content or the complete new one (eval.json)."""
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path) or '.', TMP_PREFIX + os.path.basename(path))
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- weights into models

def finetune_state_dict(path: str, model_key: str = 'model|module', model_prefix: str = '') -> Dict[str, Any]:
    """Weights for ``--finetune`` in any supported format: the first of ``model_key`` ('|'-separated) that holds a
    dict is taken (else the whole file), and ``model_prefix`` is stripped from the names."""
    try:
        raw = safe_load(path)
    except CheckpointError as e:
        raise without_torch_advice(e) from None
    sd = None
    if isinstance(raw, dict):
        for key in model_key.split('|'):
            if isinstance(raw.get(key), dict):
                sd = raw[key]
                _logger.info('Fine-tuning from %s[%r]', path, key)
                break
    sd = dict(raw if sd is None else sd)
    if model_prefix:
        sd = {k[len(model_prefix):] if k.startswith(model_prefix) else k: v for k, v in sd.items()}
    return sd


def load_weights(module: torch.nn.Module, ckpt: Mapping[str, Any], key: str, path: str, model_name: str) -> None:
    """Load ``ckpt[key]`` into ``module`` strictly (resume, evaluate); a checkpoint of another variant names the
    one its args record."""
    try:
        sd = checkpoint_filter_fn(ckpt[key], module, path=path, allow_new_head=False)
    except CheckpointError as e:
        recorded = (ckpt.get('args') or {}).get('model')
        if recorded and recorded != model_name:
            raise CheckpointError(f"{path} holds a {recorded} (the --model its args record), not {model_name}: "
                                  f"add --model {recorded}") from None
        raise e from None
    module.load_state_dict(sd, strict=True)


def warn_other_classes(ckpt: Mapping[str, Any], path: str, classes: Optional[List[str]], where: str) -> None:
    """Warn (rank 0) when the data's classes are not, in label order, the ones the checkpoint was trained on."""
    message = checkpoint_meta.class_names_warning(ckpt.get('class_names'), classes, path, where)
    if message and utils.dist_state().is_main:
        _logger.warning(message)


# ----------------------------------------------------------------------------------------------- the policy

def remove_stale_temp_files(output_dir: PathLike) -> List[Path]:
    """Delete the hidden ``.tmp-*`` files a killed earlier launch left half-written in ``output_dir`` (a run owns its
    folder: no other process writes there while it starts); returns what was removed."""
    removed = []
    for p in sorted(Path(output_dir).glob(TMP_PREFIX + '*')) if os.path.isdir(output_dir) else []:
        if p.is_file():
            try:
                p.unlink()
            except OSError as e:  # harmless: hidden, never read
                _logger.warning('cannot remove the stale temporary file %s: %s', p, _os_reason(e))
                continue
            removed.append(p)
    if removed:
        _logger.info('Removed %d temporary file(s) left by an interrupted launch', len(removed))
    return removed


class Checkpointer:
    """The checkpoint policy of a training run, in one place: where it starts (:meth:`restore`), what is saved
    (every rank's state; rank 0 writes), when (the end of every ``--save_ckpt_freq``-th epoch and of the last, a new
    best, a stop signal), and what is kept (``--save_ckpt_num`` epoch files and every 50th, as the release; best;
    a preempt file until an epoch file passes it). Nothing is written without ``--output_dir``/``--save_ckpt``.

    ``state`` is the run's ``engine.TrainState``: the counters saved and restored, changed in place."""

    KEEP_EVERY = 50  # epochs kept whatever --save_ckpt_num (the HorNet release keeps every 50th)

    def __init__(self, args: argparse.Namespace, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, state: Any, ema_model: Optional[torch.nn.Module] = None,
                 class_names: Optional[List[str]] = None) -> None:
        self.args, self.model, self.optimizer, self.scaler, self.state = args, model, optimizer, scaler, state
        self.ema_model = ema_model  # the EMA's module, saved and restored beside the weights
        self.class_names = list(class_names) if class_names else None  # label order, for --eval and predict.py
        self.resumed_from: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return bool(self.args.output_dir and self.args.save_ckpt)

    # -------------------------------------------------------------------------------------------- saving
    def snapshot(self, epoch_complete: bool) -> Dict[str, Any]:
        """What a checkpoint holds (see :func:`save_training_checkpoint`), but the random states."""
        state = self.state
        return {
            'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict(), 'epoch': state.epoch,
            'scaler': self.scaler.state_dict() if self.scaler.is_enabled() else None,
            'model_ema': self.ema_model.state_dict() if self.ema_model is not None else None,
            'args': vars(self.args), 'global_step': state.global_step,
            'step_in_epoch': 0 if epoch_complete else state.step_in_epoch, 'epoch_complete': epoch_complete,
            'ema_updates': state.ema_updates, 'max_accuracy': state.max_accuracy,
            'max_accuracy_ema': state.max_accuracy_ema, 'class_names': self.class_names,
        }

    def save(self, name: Union[str, int], epoch_complete: bool) -> None:
        """Called on every rank (the RNG states of all ranks are gathered); rank 0 writes."""
        if not self.enabled:
            return
        ds = utils.dist_state()
        rngs = [rng_state()]
        if ds.distributed:
            rngs = [None] * ds.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        if not ds.is_main:
            return
        snap = self.snapshot(epoch_complete)
        snap['rng'] = rngs[0]
        snap['rng_per_rank'] = rngs
        path = save_training_checkpoint(self.args.output_dir, name, snap)
        if self.args.save_safetensors:
            from safetensors.torch import save_file  # optional dependency, only for --save_safetensors
            tmp = os.path.join(self.args.output_dir, TMP_PREFIX + path.stem + '.safetensors')
            save_file({k: v.contiguous() for k, v in snap['model'].items()}, tmp)
            os.replace(tmp, str(path.with_suffix('.safetensors')))

    def save_if_best(self, acc1: float, ema: bool = False) -> bool:
        """Keep checkpoint-best.pth (``ema``: checkpoint-best-ema.pth) for a new best top-1; True if it was."""
        attr = 'max_accuracy_ema' if ema else 'max_accuracy'
        if acc1 <= getattr(self.state, attr):
            return False
        setattr(self.state, attr, acc1)
        self.save('best-ema' if ema else 'best', epoch_complete=True)
        return True

    def end_of_epoch(self, epoch: int) -> None:
        """Every ``--save_ckpt_freq`` epochs and after the last: save the epoch, then prune the old ones."""
        args = self.args
        if (epoch + 1) % args.save_ckpt_freq != 0 and epoch + 1 != args.epochs:
            return
        self.save(epoch, epoch_complete=True)
        if args.output_dir and utils.dist_state().is_main:
            prune_checkpoints(args.output_dir, args.save_ckpt_num, keep_every=self.KEEP_EVERY)

    def save_preempt(self, _name: str) -> None:
        """engine's ``save_fn``: the exact mid-epoch state after a stop signal."""
        self.save('preempt', epoch_complete=False)
        utils.barrier()

    # -------------------------------------------------------------------------------------------- restoring
    def restore(self, steps_per_epoch: int) -> Optional[str]:
        """Where training starts: --resume (a file, or a run directory's newest checkpoint), else the newest
        checkpoint in --output_dir (auto-resume), else ``state`` as given (--start_epoch). Restores the weights,
        optimizer, scaler, EMA, counters and random streams; returns the checkpoint resumed from (None: none, or
        bare weights, which start at --start_epoch)."""
        args, state = self.args, self.state
        if self.enabled and utils.dist_state().is_main:
            remove_stale_temp_files(args.output_dir)
        path = resolve_resume_path(args.resume) if args.resume else ''
        if not path and args.auto_resume and args.output_dir:
            found = find_resume_checkpoint(args.output_dir)
            path = str(found) if found else ''
        if not path:
            return None
        ck = load_training_checkpoint(path)
        load_weights(self.model, ck, 'model', path, args.model)
        _logger.info('Resumed weights from %s', path)
        warn_other_classes(ck, path, self.class_names, f'the training data (--data_set {args.data_set} '
                                                       f'{args.data_path})')
        if 'optimizer' not in ck:
            return None
        if ck.get('epoch') is None:
            raise UserError(f"{path} is a 'best' checkpoint of the original release and cannot be resumed "
                            f"from; use --finetune {path} to start from its weights")
        self.optimizer.load_state_dict(ck['optimizer'])
        if ck.get('scaler') and self.scaler.is_enabled():
            self.scaler.load_state_dict(ck['scaler'])
        if self.ema_model is not None and ck.get('model_ema') is not None:
            load_weights(self.ema_model, ck, 'model_ema', path, args.model)
        if ck['epoch_complete']:
            state.epoch, state.step_in_epoch = ck['epoch'] + 1, 0
        else:
            state.epoch, state.step_in_epoch = ck['epoch'], ck['step_in_epoch']
        gs = ck.get('global_step')
        state.global_step = gs if gs is not None else state.epoch * steps_per_epoch
        state.ema_updates = ck.get('ema_updates') or 0
        state.max_accuracy = ck.get('max_accuracy') or 0.0
        state.max_accuracy_ema = ck.get('max_accuracy_ema') or 0.0
        self._restore_random_streams(ck, path)
        _logger.info('Resuming at epoch %d, step %d of the epoch (global step %d)', state.epoch,
                     state.step_in_epoch, state.global_step)
        self.resumed_from = path
        return path

    def _restore_random_streams(self, ck: Mapping[str, Any], path: str) -> None:
        """Each rank continues its own saved random streams; another seed or process count reseeds instead."""
        args, ds, step = self.args, utils.dist_state(), self.state.global_step
        per_rank = ck.get('rng_per_rank')
        if ck.get('args', {}).get('seed') != args.seed:
            _logger.info('--seed differs from the checkpoint: random streams are not restored')
        elif isinstance(per_rank, list) and len(per_rank) == ds.world_size:
            set_rng_state(per_rank[ds.rank])
        elif ck.get('rng') is not None and ds.world_size == 1:
            set_rng_state(ck['rng'])
        else:  # saved with another process count: reseed per rank from (seed, rank, step)
            _logger.warning('Checkpoint RNG states do not match %d processes: reseeding from the global step; '
                            'the run continues correctly but not bitwise as an uninterrupted one', ds.world_size)
            torch.manual_seed(args.seed + ds.rank + 1000003 * step)
            random.seed(args.seed + ds.rank + 1000003 * step)
            np.random.seed((args.seed + ds.rank + 1000003 * step) % 2 ** 32)

    # -------------------------------------------------------------------------------------------- stopping
    def complete_message(self) -> str:
        """One line for a relaunch of a run that has done all its epochs: where its results are."""
        args, state = self.args, self.state
        where = os.path.abspath(args.output_dir) if args.output_dir else os.path.dirname(os.path.abspath(
            self.resumed_from or '.'))
        best = ''
        if state.max_accuracy > 0:
            best = f'; best Acc@1 {state.max_accuracy:.2f}%'
            if os.path.isfile(os.path.join(where, BEST_NAME)):
                best += f' ({BEST_NAME})'
        return (f'This run is already complete: {self.resumed_from} is the end of epoch {state.epoch - 1}, the last '
                f'of --epochs {args.epochs}{best}. Results are in {where} (log.txt, train.log). To train longer raise '
                f'--epochs; for a new run give another --output_dir.')

    def interrupted_message(self) -> str:
        """One line for Ctrl-C: where training was, what is saved and how to go on."""
        args, state = self.args, self.state
        where = f'Interrupted (Ctrl-C) in epoch {state.epoch}, after {state.global_step} optimizer steps'
        if not self.enabled:
            return f"{where}; nothing was saved ({'--save_ckpt false' if args.output_dir else 'no --output_dir'})"
        newest = find_resume_checkpoint(args.output_dir, log=False)  # what a relaunch resumes from
        if newest is None:
            return (f'{where}, before the first checkpoint: nothing was saved in {args.output_dir}; the same command '
                    f'starts over')
        how = 'relaunch the same command to resume from it' if args.auto_resume else \
            f'relaunch with --resume {args.output_dir} to resume from it'
        return (f'{where}: the newest checkpoint is {newest} (progress after it is not saved); {how} '
                f'(a single Ctrl-C saves the step it was in)')

    def saved_on_ctrl_c_message(self) -> str:
        """One line for a Ctrl-C whose step was saved (checkpoint-preempt.pth) before stopping."""
        args, state = self.args, self.state
        path = os.path.join(args.output_dir, PREEMPT_NAME)
        how = 'relaunch the same command to continue from there' if args.auto_resume else \
            f'relaunch with --resume {path} to continue from there'
        return (f'Interrupted (Ctrl-C) in epoch {state.epoch}, after {state.global_step} optimizer steps: saved '
                f'{path} at that step; {how}, exactly as if uninterrupted')
