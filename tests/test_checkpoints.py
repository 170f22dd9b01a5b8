"""checkpoints: atomic saves, weights_only-safe contents, resume discovery, pruning, old formats, RNG state."""
import argparse
import logging
import os
import random
import resource
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoints
from checkpoints import (PREEMPT_NAME, find_resume_checkpoint, is_finite_state, load_training_checkpoint,
                         prune_checkpoints, rng_state, save_atomic, save_training_checkpoint, set_rng_state)
from errors import UserError
from models.hornet import HorNet


def tiny_model() -> HorNet:
    return HorNet(depths=(1, 1, 1, 1), base_dim=8, num_classes=10)


def train_state(model, global_step: int, epoch: int, step_in_epoch: int = 0, **extra) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = dict(model=model.state_dict(), optimizer=opt.state_dict(), epoch=epoch, args={'lr': 1e-3},
                 global_step=global_step, step_in_epoch=step_in_epoch, epoch_complete=step_in_epoch == 0)
    state.update(extra)
    return state


def small_state(global_step: int, epoch: int, step_in_epoch: int = 0) -> dict:
    """A cheap stand-in with a training checkpoint's shape, for tests about files rather than models."""
    return dict(model={'w': torch.ones(2)}, optimizer={'state': {}, 'param_groups': []}, epoch=epoch, args={},
                global_step=global_step, step_in_epoch=step_in_epoch, epoch_complete=step_in_epoch == 0)


def names(directory: Path) -> set:
    return set(os.listdir(directory))


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError('cannot pickle this')


def test_atomic_save_never_leaves_partial_file_under_final_name(tmp_path):
    path = tmp_path / 'checkpoint-1.pth'
    save_atomic({'w': torch.arange(4.)}, path)

    # A real write failure midway through the file (works as root, unlike chmod): a file-size limit of 64 KiB
    # makes the kernel refuse the rest of a 400 KB checkpoint with EFBIG, like a full disk does with ENOSPC.
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(UserError, match=r'cannot write checkpoint .*checkpoint-1\.pth: File too large'):
            save_atomic({'w': torch.zeros(100_000)}, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert names(tmp_path) == {'checkpoint-1.pth'}  # the temp file is gone
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.arange(4.))

    # an object torch.load(weights_only=True) could not read is refused before anything is written
    with pytest.raises(TypeError, match='weights_only'):
        save_atomic({'w': torch.zeros(3), 'bad': Unpicklable()}, path)
    assert names(tmp_path) == {'checkpoint-1.pth'}
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.arange(4.))

    # an output directory that cannot exist (a regular file is in the way) is a one-line user error
    blocker = tmp_path / 'blocker'
    blocker.write_text('not a directory')
    with pytest.raises(UserError, match='cannot write checkpoint .*blocker'):
        save_atomic({'w': torch.zeros(1)}, blocker / 'checkpoint-2.pth')


def test_training_checkpoint_roundtrips_and_loads_with_weights_only(tmp_path):
    model = tiny_model()
    args = argparse.Namespace(lr=4e-3, output_dir=Path('/x/out'), opt_betas=(0.9, 0.999), tags={'a'})
    state = train_state(model, global_step=30, epoch=2, step_in_epoch=0, args=args, max_accuracy=12.5)
    path = save_training_checkpoint(tmp_path, 2, state)
    assert path == tmp_path / 'checkpoint-2.pth'

    raw = torch.load(path, weights_only=True)  # no allow-listed globals needed
    assert raw['args'] == {'lr': 4e-3, 'output_dir': '/x/out', 'opt_betas': (0.9, 0.999), 'tags': ['a']}
    assert {'model', 'optimizer', 'epoch', 'scaler', 'model_ema', 'args', 'global_step', 'step_in_epoch',
            'epoch_complete', 'ema_updates', 'max_accuracy', 'max_accuracy_ema', 'rng', 'version'} <= set(raw)

    ck = load_training_checkpoint(path)
    assert ck['epoch'] == 2 and ck['global_step'] == 30 and ck['epoch_complete'] and ck['max_accuracy'] == 12.5
    fresh = tiny_model()
    fresh.load_state_dict(ck['model'])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_non_finite_model_never_overwrites_a_good_checkpoint(tmp_path):
    model = tiny_model()
    good = save_training_checkpoint(tmp_path, 'best', train_state(model, 10, 0))
    before = good.read_bytes()
    assert is_finite_state(model.state_dict())
    with torch.no_grad():
        model.head.weight[0, 0] = float('nan')
    assert not is_finite_state(model.state_dict())
    assert not is_finite_state({'nested': {'x': torch.tensor([1., float('inf')])}, 'steps': torch.tensor([3])})
    with pytest.raises(UserError, match='NaN/Inf'):
        save_training_checkpoint(tmp_path, 'best', train_state(model, 20, 1))
    assert good.read_bytes() == before


def test_find_resume_prefers_newest_global_step_and_ignores_temp_files(tmp_path, caplog):
    assert find_resume_checkpoint(tmp_path / 'missing') is None
    assert find_resume_checkpoint(tmp_path) is None
    save_training_checkpoint(tmp_path, 1, small_state(20, 1))
    save_training_checkpoint(tmp_path, 0, small_state(10, 0))
    assert find_resume_checkpoint(tmp_path) == tmp_path / 'checkpoint-1.pth'

    save_training_checkpoint(tmp_path, 'preempt', small_state(27, 2, step_in_epoch=7))
    (tmp_path / '.tmp-checkpoint-9.pth-abc').write_bytes(b'partial')  # a crashed save: never a candidate
    save_atomic(small_state(99, 9), tmp_path / 'checkpoint-best.pth')  # best files are not resume candidates
    assert find_resume_checkpoint(tmp_path) == tmp_path / PREEMPT_NAME

    # a newer but truncated epoch file is skipped with a warning naming it
    good = (tmp_path / 'checkpoint-1.pth').read_bytes()
    (tmp_path / 'checkpoint-3.pth').write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING):
        assert find_resume_checkpoint(tmp_path) == tmp_path / PREEMPT_NAME
    assert 'checkpoint-3.pth' in caplog.text

    # equal global_step: the epoch file wins
    save_training_checkpoint(tmp_path, 2, small_state(27, 2))
    assert find_resume_checkpoint(tmp_path) == tmp_path / 'checkpoint-2.pth'


def test_prune_keeps_last_n_epoch_files(tmp_path):
    for epoch in range(6):
        save_training_checkpoint(tmp_path, epoch, small_state(10 * (epoch + 1), epoch))
    save_training_checkpoint(tmp_path, 'best', small_state(30, 2))
    save_training_checkpoint(tmp_path, 'best-ema', small_state(20, 1))
    save_training_checkpoint(tmp_path, 'preempt', small_state(55, 5, step_in_epoch=5))  # older than epoch 5

    prune_checkpoints(tmp_path, keep=0)  # 0 keeps every epoch file; only the stale preempt file goes
    assert names(tmp_path) == {f'checkpoint-{e}.pth' for e in range(6)} | {'checkpoint-best.pth',
                                                                             'checkpoint-best-ema.pth'}
    prune_checkpoints(tmp_path, keep=3, keep_every=2)
    assert names(tmp_path) == {'checkpoint-2.pth', 'checkpoint-3.pth', 'checkpoint-4.pth', 'checkpoint-5.pth',
                               'checkpoint-best.pth', 'checkpoint-best-ema.pth'}
    save_training_checkpoint(tmp_path, 'preempt', small_state(65, 6, step_in_epoch=5))  # newer: kept
    prune_checkpoints(tmp_path, keep=2)
    assert names(tmp_path) == {'checkpoint-4.pth', 'checkpoint-5.pth', PREEMPT_NAME, 'checkpoint-best.pth',
                               'checkpoint-best-ema.pth'}


def test_original_training_checkpoint_with_namespace_args_loads(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    args = argparse.Namespace(model='hornet_tiny_7x7', lr=4e-3, epochs=300, save_ckpt_num=3)
    path = tmp_path / 'checkpoint-4.pth'
    # the layout of the original utils.save_model: args pickled as an argparse.Namespace, no step counters
    torch.save({'model': model.state_dict(), 'optimizer': opt.state_dict(), 'epoch': 4,
                'scaler': {'scale': 65536.0, 'growth_factor': 2.0, 'backoff_factor': 0.5, 'growth_interval': 2000,
                           '_growth_tracker': 0},
                'args': args, 'model_ema': model.state_dict()}, path)
    ck = load_training_checkpoint(path)
    assert ck['args'] == {'model': 'hornet_tiny_7x7', 'lr': 4e-3, 'epochs': 300, 'save_ckpt_num': 3}
    assert ck['epoch'] == 4 and ck['global_step'] is None and ck['step_in_epoch'] == 0 and ck['epoch_complete']
    assert ck['version'] == 0 and ck['max_accuracy'] == 0. and ck['rng'] is None and ck['ema_updates'] is None
    assert ck['scaler']['scale'] == 65536.0 and set(ck['model_ema']) == set(model.state_dict())
    opt.load_state_dict(ck['optimizer'])
    assert find_resume_checkpoint(tmp_path) == path

    torch.save({'model': model.state_dict(), 'optimizer': opt.state_dict(), 'epoch': 'best', 'args': args},
               tmp_path / 'checkpoint-best.pth')
    assert load_training_checkpoint(tmp_path / 'checkpoint-best.pth')['epoch'] is None  # not resumable

    torch.save(model.state_dict(), tmp_path / 'weights.pth')  # bare weights
    bare = load_training_checkpoint(tmp_path / 'weights.pth')
    assert set(bare) == {'model'} and set(bare['model']) == set(model.state_dict())


def test_rng_state_roundtrip_reproduces_random_draws(tmp_path):
    random.gauss(0, 1)
    np.random.randn()  # leave a cached gaussian in both generators, which must survive too
    state = rng_state()
    save_atomic({'rng': state}, tmp_path / 'rng.pth')

    def draws():
        return ([random.random(), random.gauss(0, 1)], np.random.rand(3).tolist() + [np.random.randn()],
                torch.rand(3).tolist())

    first = draws()
    draws()  # move every generator on
    set_rng_state(torch.load(tmp_path / 'rng.pth', weights_only=True)['rng'])
    assert draws() == first


def test_safe_load_never_relays_torchs_advice_to_disable_weights_only(tmp_path):
    import datetime

    from models import CheckpointError, safe_load
    import pickle
    text = tmp_path / 'args.json'
    text.write_text('{"epoch": 1}')
    legacy = tmp_path / 'set.pkl'
    legacy.write_bytes(pickle.dumps({1, 2}))  # an opcode the safe unpickler does not take
    code = tmp_path / 'object.pth'
    torch.save({'when': datetime.date(2026, 1, 1)}, code)
    for path in (text, legacy, code):
        with pytest.raises(CheckpointError) as info:
            safe_load(str(path))
        msg = str(info.value)
        assert str(path) in msg and '\n' not in msg
        assert 'weights_only=False' not in msg and 'set to False' not in msg and 'Re-running' not in msg


def test_ctrl_c_during_a_checkpoint_write_is_delivered_after_the_file_is_complete(tmp_path):
    import checkpoints
    path = tmp_path / 'checkpoint-0.pth'
    state = {'model': {'w': torch.arange(1000.0)}}
    reached_end = []
    with pytest.raises(KeyboardInterrupt):
        with checkpoints._sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)  # arrives while "writing"
            checkpoints.save_atomic(state, path)  # nested: still completes
            reached_end.append(True)
    assert reached_end == [True]
    assert torch.equal(torch.load(path, weights_only=True)['model']['w'], state['model']['w'])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


def test_stale_temporary_files_of_a_killed_launch_are_removed_when_the_run_restarts(tmp_path):
    """A SIGKILL during a write leaves a hidden .tmp-* file (mkstemp names it at random, so no later write replaces
    it); the next launch of the run removes it and keeps every real checkpoint."""
    out = tmp_path / 'run'
    out.mkdir()
    (out / (checkpoints.TMP_PREFIX + 'checkpoint-2.pth-abc123')).write_bytes(b'half a checkpoint')
    (out / 'checkpoint-1.pth').write_bytes(b'kept')
    removed = checkpoints.remove_stale_temp_files(out)
    assert [p.name for p in removed] == [checkpoints.TMP_PREFIX + 'checkpoint-2.pth-abc123']
    assert sorted(p.name for p in out.iterdir()) == ['checkpoint-1.pth']
    assert checkpoints.remove_stale_temp_files(tmp_path / 'missing') == []
