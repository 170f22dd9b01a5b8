"""Faults and hostile input through the real CLI: nothing runs from a checkpoint, nothing saved is lost."""
from __future__ import annotations

import pathlib
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import main as main_mod
from tests.train_helpers import REPO, assert_state_dicts_equal, base_args, env, load_model_sd, make_image_folder


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'))


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def _cli(argv, capsys):
    code = main_mod.cli(argv)
    err = capsys.readouterr().err
    assert 'Traceback' not in err, err
    return code, err.strip().splitlines()[-1] if err.strip() else ''


def test_crafted_pickle_is_refused_everywhere_and_its_payload_never_runs(tmp_path, data, capsys):
    """One crafted checkpoint (a valid model plus an object whose unpickling would create a file), through every way
    in: the training-checkpoint loader (resume discovery and pruning skip it), timm's pretrained file, a bare pickle,
    and main.py's --resume / --finetune / --eval (a one-line error naming the file) and auto-resume (skipped with a
    warning: training starts afresh). Last, an unsafe ``torch.load`` runs it: the payload was live."""
    import timm
    import models  # noqa: F401
    from checkpoints import find_resume_checkpoint, load_training_checkpoint, prune_checkpoints
    from models import CheckpointError, load_pretrained_file
    marker = tmp_path / 'payload-ran'
    model = timm.create_model('hornet_micro_7x7', num_classes=4)
    evil = {'model': model.state_dict(), 'optimizer': {}, 'epoch': 0, 'args': {}, 'global_step': 1,
            'step_in_epoch': 0, 'epoch_complete': True, 'x': _Payload(str(marker))}
    path = tmp_path / 'evil.pth'
    torch.save(evil, path)
    out = tmp_path / 'out'
    out.mkdir()
    shutil.copy(path, out / 'checkpoint-0.pth')

    with pytest.raises(CheckpointError, match='refusing to load'):
        load_training_checkpoint(out / 'checkpoint-0.pth')
    assert find_resume_checkpoint(out) is None  # skipped, not executed
    prune_checkpoints(out, keep=1)
    with pytest.raises(CheckpointError, match='refusing to load'):
        timm.create_model('hornet_micro_7x7', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with open(tmp_path / 'plain.pkl', 'wb') as f:  # a bare pickle (not a torch zip) with the same payload
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(CheckpointError):
        load_pretrained_file(model, str(tmp_path / 'plain.pkl'))
    assert not marker.exists()

    for how in ('resume', 'finetune', 'eval'):
        extra = {'resume': dict(resume=str(path)), 'finetune': dict(finetune=str(path)),
                 'eval': dict(eval='true', resume=str(path))}[how]
        code, last = _cli(base_args(data, tmp_path / how, epochs=1, **extra), capsys)
        assert code == main_mod.EXIT_USER_ERROR and 'refusing to load' in last and str(path) in last, (how, last)
        assert not marker.exists(), how
    code, _ = _cli(base_args(data, out, epochs=1), capsys)  # auto-resume: the candidate is skipped
    assert code == 0 and not marker.exists()

    torch.load(path, weights_only=False)  # what an unsafe load would have done
    assert marker.exists()


def test_checkpoint_of_another_class_count_is_an_error_for_eval_but_a_new_head_for_finetune(tmp_path, data, capsys):
    import timm
    import models  # noqa: F401
    ck = tmp_path / 'c10.pth'
    torch.save({'model': timm.create_model('hornet_micro_7x7', num_classes=10).state_dict()}, ck)
    code, last = _cli(base_args(data, None, eval='true', resume=str(ck)), capsys)
    assert code == main_mod.EXIT_USER_ERROR and re.search(r'head\.weight \(10, \d+\) vs \(4, \d+\)', last), last
    code, _ = _cli(base_args(data, tmp_path / 'ft', epochs=1, finetune=str(ck)), capsys)
    assert code == 0


def test_safetensors_are_written_on_request_and_load_for_finetuning(tmp_path, data, capsys, trained_run):
    """The session's trained run (tests/conftest.py) has --save_safetensors true."""
    out = trained_run.out
    st = out / 'checkpoint-0.safetensors'
    assert st.exists()
    from safetensors.torch import load_file
    assert_state_dicts_equal(load_file(str(st)), load_model_sd(out / 'checkpoint-0.pth'))
    assert main_mod.cli(base_args(data, tmp_path / 'ft', epochs=1, finetune=str(st))) == 0
    capsys.readouterr()


def test_missing_or_empty_data_path_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    for path in (tmp_path / 'nope', empty):
        code, last = _cli(base_args(path, None), capsys)
        assert code == main_mod.EXIT_USER_ERROR and str(path) in last


def _limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead of killing
    return apply


@pytest.mark.slow
def test_disk_full_when_saving_is_a_clear_error_and_the_previous_checkpoint_survives(tmp_path, trained_run):
    """The session's one-epoch run (tests/conftest.py), copied, continued to a second epoch on a full disk."""
    out = tmp_path / 'out'
    shutil.copytree(trained_run.out, out)
    good = (out / 'checkpoint-0.pth').read_bytes()
    size = len(good)
    proc = subprocess.run([sys.executable, str(REPO / 'main.py')] + trained_run.argv(out, epochs=2),
                          capture_output=True, text=True, env=env(), preexec_fn=_limit_file_size(size // 2),
                          timeout=300)
    assert proc.returncode == main_mod.EXIT_USER_ERROR, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and 'Traceback' not in proc.stderr
    assert 'File too large' in last or 'No space' in last, last
    assert (out / 'checkpoint-0.pth').read_bytes() == good
    assert not list(out.glob('.tmp-*'))
