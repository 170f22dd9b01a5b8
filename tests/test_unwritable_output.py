"""An output folder that cannot be written fails the run in one line before any data is read or any step runs;
a result is printed before it is written; train.log ends with the line that ended the run.

Read-only folders are real read-only mounts (tmpfs, root only): chmod does not stop root, and the suite runs as root
in CI. Without permission to mount, those tests skip and say why.
"""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import timm
import torch

import checkpoints
import main as main_mod
import models  # noqa: F401  (registers the HorNet variants)
import output_check
from tests.train_helpers import torchrun, base_args, make_image_folder, run_main


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> pathlib.Path:
    """A training checkpoint of the tiny model for the 4-class test data (untrained weights: only the files matter)."""
    path = tmp_path_factory.mktemp('ck') / 'checkpoint-0.pth'
    torch.manual_seed(0)
    model = timm.create_model('hornet_micro_7x7', num_classes=4)
    checkpoints.save_training_checkpoint(path.parent, path.name, {
        'model': model.state_dict(), 'optimizer': {}, 'epoch': 0, 'global_step': 12, 'step_in_epoch': 0,
        'epoch_complete': True, 'args': {'model': 'hornet_micro_7x7', 'input_size': 32, 'seed': 3}})
    return path


def _mount(*args: str) -> None:
    proc = subprocess.run(['mount', *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(proc.stderr.strip() or f'mount {" ".join(args)} failed')


def _umount(path: pathlib.Path) -> None:
    subprocess.run(['umount', str(path)], capture_output=True, text=True)


@pytest.fixture
def mounts():
    """Mount helper; whatever it mounted is unmounted afterwards (innermost first)."""
    done = []

    def mount(*args: str) -> None:
        try:
            _mount(*args)
        except (OSError, FileNotFoundError) as e:
            pytest.skip(f'cannot make a read-only mount here (needs root with CAP_SYS_ADMIN): {e}')
        if not any('remount' in a for a in args):
            done.append(pathlib.Path(args[-1]))
    yield mount
    for path in reversed(done):
        _umount(path)


@pytest.fixture
def read_only(tmp_path, mounts) -> pathlib.Path:
    """An empty read-only file system (tmpfs mounted ro)."""
    path = tmp_path / 'ro'
    path.mkdir()
    mounts('-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', str(path))
    with pytest.raises(OSError):
        (path / 'probe').write_text('x')
    return path


def _failed_in_one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == main_mod.EXIT_USER_ERROR, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: '), proc.stderr[-3000:]
    # nothing was read or run: no data set built, no model, no step
    for sign in ('dataset', 'Model hornet', 'Start training', 'Epoch: [', 'Test:'):
        assert sign not in proc.stderr, proc.stderr[-3000:]
    assert '* Acc@1' not in proc.stdout
    return last


def test_output_folder_on_a_read_only_file_system_fails_in_one_line_before_any_data_is_read(read_only, data):
    last = _failed_in_one_line(run_main(base_args(data, read_only, epochs=1)))
    assert f'cannot write in --output_dir {read_only}: Read-only file system' in last, last
    assert 'pass another --output_dir' in last


def test_new_output_folder_that_cannot_be_created_fails_in_one_line(read_only, data):
    out = read_only / 'runs' / 'a'
    last = _failed_in_one_line(run_main(base_args(data, out, epochs=1)))
    assert f'cannot create --output_dir {out}: Read-only file system in {read_only}' in last, last


def test_tensorboard_folder_that_cannot_be_created_fails_before_training(read_only, data, tmp_path):
    proc = run_main(base_args(data, tmp_path / 'out', epochs=1, log_dir=str(read_only / 'tb')))
    last = _failed_in_one_line(proc)
    assert f'cannot create --log_dir {read_only / "tb"}' in last and 'TensorBoard' in last, last
    assert not (tmp_path / 'out').exists()  # the check leaves nothing behind


def test_run_folder_whose_train_log_is_writable_but_the_folder_is_not_fails_before_an_epoch_is_lost(
        tmp_path, mounts, data):
    run = tmp_path / 'run'
    run.mkdir()
    mounts('-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(run))
    (run / 'train.log').write_text('an earlier launch\n')
    mounts('-o', 'remount,ro', str(run))
    writable = tmp_path / 'train.log'  # bind-mounted over run/train.log: that one file stays writable
    writable.write_text('an earlier launch\n')
    mounts('--bind', str(writable), str(run / 'train.log'))
    with open(run / 'train.log', 'a') as f:
        f.write('still writable\n')
    with pytest.raises(OSError):
        (run / 'checkpoint-0.pth').write_bytes(b'')

    last = _failed_in_one_line(run_main(base_args(data, run, epochs=1)))
    assert f'cannot write in --output_dir {run}: Read-only file system' in last, last


def test_eval_with_a_read_only_output_folder_fails_before_evaluating(read_only, data, checkpoint):
    proc = run_main(base_args(data, read_only, eval='true', resume=str(checkpoint)))
    last = _failed_in_one_line(proc)
    assert f'cannot write in --output_dir {read_only}' in last and 'eval.json' in last, last


def test_eval_prints_its_result_before_a_late_failure_to_write_eval_json(tmp_path, data, checkpoint, capsys):
    """A failure the start-up check cannot foresee (here eval.json becomes a folder after it): the accuracy is on
    stdout before the one-line error."""
    out = tmp_path / 'eval'
    args, inherited = main_mod.parse_run_args(base_args(data, out, eval='true', resume=str(checkpoint)))
    run = main_mod.setup_run(args, inherited)
    (out / 'eval.json').mkdir()
    data_ = main_mod.build_data(run)
    net = main_mod.build_model(run, data_.nb_classes)
    evaluator = main_mod.Evaluator(run, data_.val)
    with pytest.raises(main_mod.UserError) as e:
        main_mod.evaluate_checkpoint(run, net, evaluator)
    assert f'cannot write {out / "eval.json"}' in str(e.value) and 'the result is printed above' in str(e.value)
    assert capsys.readouterr().out.startswith('* Acc@1 ')


def test_a_folder_in_place_of_eval_json_or_train_log_is_found_at_start(tmp_path, data, checkpoint):
    out = tmp_path / 'eval'
    (out / 'eval.json').mkdir(parents=True)
    last = _failed_in_one_line(run_main(base_args(data, out, eval='true', resume=str(checkpoint))))
    assert f'cannot write {out / "eval.json"}: it is a folder' in last, last
    assert output_check.output_problem(str(out), eval_only=False, tensorboard_dir=None) is None  # not written
    (out / 'train.log').mkdir()
    assert 'train.log: it is a folder' in output_check.output_problem(str(out), False, None)


def test_the_checks_leave_nothing_behind(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'train.log').write_text('kept\n')
    assert output_check.output_problem(str(out), eval_only=False, tensorboard_dir=str(out / 'tb' / 'deep')) is None
    assert sorted(p.name for p in out.iterdir()) == ['train.log'] and (out / 'train.log').read_text() == 'kept\n'
    assert output_check.output_problem(str(tmp_path / 'new' / 'run'), True, None) is None
    assert not (tmp_path / 'new').exists()
    (tmp_path / 'file').write_text('')
    assert 'is a file, not a folder' in output_check.output_problem(str(tmp_path / 'file' / 'run'), True, None)


def test_the_error_that_ends_a_run_is_the_last_line_of_train_log(tmp_path, data):
    out = tmp_path / 'run'
    proc = run_main(base_args(data, out, epochs=1, data_path=str(tmp_path / 'missing')))
    assert proc.returncode == main_mod.EXIT_USER_ERROR, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and 'does not exist' in last, last
    logged = (out / 'train.log').read_text().strip().splitlines()[-1]
    assert logged.endswith(last) and ' ERROR ' in logged, logged


def test_an_interrupt_before_training_is_the_last_line_of_train_log(tmp_path, data, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(main_mod, 'build_data', interrupted)
    out = tmp_path / 'run'
    assert main_mod.cli(base_args(data, out, epochs=1)) == main_mod.EXIT_INTERRUPTED
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith('Interrupted (Ctrl-C)')
    assert (out / 'train.log').read_text().strip().splitlines()[-1].endswith(last)




@pytest.mark.slow
@pytest.mark.distributed
def test_all_ranks_stop_together_when_rank_0_cannot_write(read_only, data):
    """Only rank 0 writes and checks; its answer reaches every rank (gloo), so no rank goes on to wait forever in
    the first collective."""
    proc = run_main(base_args(data, read_only, epochs=1), launcher=torchrun(2), timeout=240)
    assert proc.returncode != 0
    errors = [l for l in proc.stderr.splitlines() if l.startswith('error: cannot write in --output_dir')]
    assert len(errors) == 2, proc.stderr[-3000:]  # one per rank, each exiting with status 2
    assert 'dataset' not in proc.stderr and 'Start training' not in proc.stderr, proc.stderr[-3000:]
