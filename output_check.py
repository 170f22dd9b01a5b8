"""Before a run reads any data or takes any step: can it write every file it will write?

A folder that cannot be written used to show up late: a traceback opening train.log, a whole epoch trained and
then "cannot write checkpoint", or an evaluation whose accuracy was lost in a traceback on eval.json. The checks
here do what the run will do, on the real file system (permissions, read-only mounts, quotas and root all behave as
they will later): create a temp file in the folder and rename it (how checkpoints and eval.json are written), open
the logs for appending, and for a folder that does not exist yet, create (and remove) a folder in its nearest
existing parent. Nothing is left behind. Only rank 0 writes, so only rank 0 checks (main.setup_run shares the
answer with the other ranks, so that all fail together).
"""
from __future__ import annotations

import errno
import os
import tempfile
from typing import Optional

_PROBE = '.tmp-write-check-'  # the checkpoints' hidden temp prefix: never mistaken for a result


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _fix(flag: str, folder: str) -> str:
    return f'pass another {flag}, or make {folder} writable (permissions, read-only mount, quota)'


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def folder_problem(folder: str, flag: str, what: str) -> Optional[str]:
    """None if files can be created and renamed in ``folder``, or if it can be created; else one line naming
    the folder, why, and the fix. ``flag`` names the setting that chose it, ``what`` what goes there."""
    if os.path.exists(folder):
        if not os.path.isdir(folder):
            return f'{flag} {folder} exists and is not a folder ({what} go there); pass another {flag}'
        try:
            fd, tmp = tempfile.mkstemp(prefix=_PROBE, dir=folder)
            os.close(fd)
            try:
                os.replace(tmp, tmp + '-renamed')
                tmp += '-renamed'
            finally:
                os.remove(tmp)
        except OSError as e:
            return f'cannot write in {flag} {folder}: {_reason(e)} ({what} go there); {_fix(flag, folder)}'
        return None
    parent = _nearest_existing(folder)
    if not os.path.isdir(parent):
        return f'cannot create {flag} {folder}: {parent} is a file, not a folder; pass another {flag}'
    try:
        os.rmdir(tempfile.mkdtemp(prefix=_PROBE, dir=parent))
    except OSError as e:
        return (f'cannot create {flag} {folder}: {_reason(e)} in {parent} ({what} go there); '
                f'{_fix(flag, parent)}')
    return None


def file_problem(path: str, flag: str, append: bool) -> Optional[str]:
    """None if ``path`` (in a folder that passed :func:`folder_problem`) can be written: appended to (logs) or
    replaced by a rename (``append`` False: eval.json); else one line naming it, why, and the fix."""
    if os.path.isdir(path):
        return f'cannot write {path}: it is a folder; move it away or pass another {flag}'
    if not append or not os.path.exists(path):
        return None  # made (or replaced) in its folder, which was checked
    try:
        with open(path, 'a'):
            pass
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f'cannot append to {path}: {_reason(e)}; make it writable or pass another {flag}'
        return f'cannot open {path} for writing: {_reason(e)}; pass another {flag}'
    return None


def output_problem(output_dir: str, eval_only: bool, tensorboard_dir: Optional[str]) -> Optional[str]:
    """The first file or folder of a run that cannot be written, as one line (None: all can).

    ``output_dir`` ('' for none) receives train.log, and eval.json under ``--eval`` or checkpoints and log.txt
    when training; ``tensorboard_dir`` (None for none) the TensorBoard logs of a training run."""
    if output_dir:
        what = 'train.log and eval.json' if eval_only else 'checkpoints, log.txt and train.log'
        problem = folder_problem(output_dir, '--output_dir', what)
        if problem:
            return problem
        files = [('train.log', True)] + ([('eval.json', False)] if eval_only else [('log.txt', True)])
        for name, append in files:
            problem = file_problem(os.path.join(output_dir, name), '--output_dir', append)
            if problem:
                return problem
    if tensorboard_dir and not eval_only:
        return folder_problem(tensorboard_dir, '--log_dir', 'TensorBoard logs')
    return None
