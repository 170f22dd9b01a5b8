"""Faults and hostile input through the real CLI: nothing runs from a checkpoint, nothing saved is lost."""
from __future__ import annotations

import pathlib
import random
import re
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

import main as main_mod
from models.hornet import HorNet
from tests.train_helpers import (REPO, assert_state_dicts_equal, base_args, env, load_model_sd, make_image_folder,
                                 run_main)


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


@pytest.mark.parametrize('how', ['resume', 'finetune', 'eval', 'auto_resume'])
def test_crafted_pickle_is_refused_and_its_payload_never_runs(tmp_path, data, capsys, how):
    import timm
    import models  # noqa: F401
    marker = tmp_path / 'payload-ran'
    sd = timm.create_model('hornet_micro_7x7', num_classes=4).state_dict()
    evil = {'model': sd, 'optimizer': {}, 'epoch': 0, 'args': {}, 'global_step': 1, 'step_in_epoch': 0,
            'epoch_complete': True, 'x': _Payload(str(marker))}
    out = tmp_path / 'out'
    out.mkdir()
    if how == 'auto_resume':
        path = out / 'checkpoint-0.pth'
        torch.save(evil, path)
        argv = base_args(data, out, epochs=1)
    else:
        path = tmp_path / 'evil.pth'
        torch.save(evil, path)
        extra = {'resume': dict(resume=str(path)), 'finetune': dict(finetune=str(path)),
                 'eval': dict(eval='true', resume=str(path))}[how]
        argv = base_args(data, out, epochs=1, **extra)
    code, last = _cli(argv, capsys)
    assert not marker.exists()
    if how == 'auto_resume':  # an unreadable candidate is skipped with a warning; training starts afresh
        assert code == 0
    else:
        assert code == main_mod.EXIT_USER_ERROR and 'refusing to load' in last and str(path) in last


def test_checkpoint_of_another_class_count_is_an_error_for_eval_but_a_new_head_for_finetune(tmp_path, data, capsys):
    import timm
    import models  # noqa: F401
    ck = tmp_path / 'c10.pth'
    torch.save({'model': timm.create_model('hornet_micro_7x7', num_classes=10).state_dict()}, ck)
    code, last = _cli(base_args(data, None, eval='true', resume=str(ck)), capsys)
    assert code == main_mod.EXIT_USER_ERROR and re.search(r'head\.weight \(10, \d+\) vs \(4, \d+\)', last), last
    code, _ = _cli(base_args(data, tmp_path / 'ft', epochs=1, finetune=str(ck)), capsys)
    assert code == 0


def test_safetensors_are_written_on_request_and_load_for_finetuning(tmp_path, data, capsys):
    out = tmp_path / 'out'
    assert main_mod.cli(base_args(data, out, epochs=1, save_safetensors='true')) == 0
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


def test_disk_full_when_saving_is_a_clear_error_and_the_previous_checkpoint_survives(tmp_path, data):
    out = tmp_path / 'out'
    first = run_main(base_args(data, out, epochs=1))
    assert first.returncode == 0, first.stderr[-2000:]
    good = (out / 'checkpoint-0.pth').read_bytes()
    size = len(good)
    proc = subprocess.run([sys.executable, str(REPO / 'main.py')] + base_args(data, out, epochs=2),
                          capture_output=True, text=True, env=env(), preexec_fn=_limit_file_size(size // 2),
                          timeout=300)
    assert proc.returncode == main_mod.EXIT_USER_ERROR, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and 'Traceback' not in proc.stderr
    assert 'File too large' in last or 'No space' in last, last
    assert (out / 'checkpoint-0.pth').read_bytes() == good
    assert not list(out.glob('.tmp-*'))


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data):
    out = tmp_path_factory.mktemp('ref')
    proc = run_main(base_args(data, out, epochs=3, num_workers=2))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_model_sd(out / 'checkpoint-2.pth')


@pytest.mark.parametrize('trial', range(3))
def test_sigkill_at_random_moments_then_relaunch_gives_the_uninterrupted_result(tmp_path, data, reference, trial):
    """Kill the run several times at random moments (possibly mid-write), relaunch until it completes."""
    rng = random.Random(trial)
    out = tmp_path / 'run'
    argv = [sys.executable, str(REPO / 'main.py')] + base_args(data, out, epochs=3, num_workers=2)
    for _ in range(2):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
        time.sleep(rng.uniform(4.0, 14.0))
        proc.kill()
        proc.wait()
        for f in out.glob('checkpoint-*.pth'):  # nothing half-written under a final name
            torch.load(f, weights_only=True, map_location='cpu')
    final = run_main(base_args(data, out, epochs=3, num_workers=2))
    assert final.returncode == 0, final.stderr[-2000:]
    assert_state_dicts_equal(load_model_sd(out / 'checkpoint-2.pth'), reference)
