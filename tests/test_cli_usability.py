"""What a user meets at the command line: --help, errors, Ctrl-C, a finished run, file permissions, log output,
TensorBoard placement, CPU threads, the recipe batch warning, and DDP without the grad-strides warning.

The runs are tiny (micro HorNet, 32 px, 48 training images, batch 4: 12 optimizer steps per epoch).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

import checkpoints
import engine
import main as main_mod
import runlog
import utils
from tests.train_helpers import torchrun, REPO, base_args, env, make_image_folder, run_main


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'))


def _quiet(**overrides):
    """Deterministic, cheap settings (no augmentation randomness beyond crop/flip)."""
    return dict(dict(aa='none', reprob=0, mixup=0, cutmix=0, smoothing=0, warmup_epochs=0), **overrides)


def _error(argv, capsys) -> str:
    code = main_mod.cli(argv)
    err = capsys.readouterr().err.strip()
    assert code == main_mod.EXIT_USER_ERROR, err
    assert 'Traceback' not in err, err
    last = err.splitlines()[-1]  # after the start-up log lines, if it got that far
    assert last.startswith('error: '), err
    return last


# ------------------------------------------------------------------------------------------------ --help

def test_help_documents_every_flag_with_its_default():
    parser = main_mod.get_args_parser()
    undocumented = [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    assert not undocumented, undocumented
    text = parser.format_help()
    assert '--batch_size BATCH_SIZE' in text and '(default: 64)' in text
    assert '(default: 0.08 1.0)' in text and '(default: false)' in text
    for name in ('hornet_tiny_7x7', 'hornet_tiny_gf', 'hornet_large_gf_img384', 'hornet_micro_7x7'):
        assert name in text  # --model lists the registered variants
    assert '--eval [BOOL]' in text


def test_every_boolean_flag_alone_means_true_and_keeps_its_word_form():
    parser = main_mod.get_args_parser()
    booleans = [a for a in parser._actions if a.type is main_mod.str2bool]
    assert len(booleans) >= 19
    for action in booleans:
        flag = action.option_strings[0]
        assert action.nargs == '?' and action.const is True, flag
        assert getattr(parser.parse_args([flag]), action.dest) is True, flag
        assert getattr(parser.parse_args([flag, 'false']), action.dest) is False, flag
        assert getattr(parser.parse_args([flag, 'true']), action.dest) is True, flag
    args = parser.parse_args(['--eval', '--model_ema', 'false', '--epochs', '3'])
    assert args.eval is True and args.model_ema is False and args.epochs == 3


def test_help_runs_from_the_command_line():
    proc = subprocess.run([sys.executable, str(REPO / 'main.py'), '--help'], capture_output=True, text=True,
                          env=env(), timeout=120)
    assert proc.returncode == 0 and 'usage: main.py' in proc.stdout and '--threads N' in proc.stdout


# ------------------------------------------------------------------------------------------------ errors

def test_misspelt_flag_gets_a_did_you_mean(capsys):
    err = _error(['--batch_sz', '64', '--device', 'cpu'], capsys)
    assert 'unrecognized arguments: --batch_sz 64' in err and 'did you mean --batch_size?' in err
    err = _error(['--lr_x', '1', '--epoch=3'], capsys)
    assert '--lr (not --lr_x)' in err and '--epochs (not --epoch)' in err


def test_no_cuda_says_cuda_is_the_default_and_how_to_use_the_cpu(capsys, monkeypatch, data):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    argv = [a for a in base_args(data, None) if a not in ('--device', 'cpu')]
    err = _error(argv, capsys)
    assert '--device is cuda, the default' in err and 'add --device cpu' in err
    err = _error(argv + ['--device', 'cuda:1'], capsys)
    assert '--device cuda:1 was given' in err


def test_resume_of_a_log_file_says_it_is_not_a_checkpoint(tmp_path, capsys, data):
    log = tmp_path / 'log.txt'
    log.write_text(json.dumps({'epoch': 0, 'train_loss': 1.0}) + '\n')
    err = _error(base_args(data, None, resume=str(log)), capsys)
    assert f'--resume {log} is not a checkpoint (a text file)' in err and 'weights_only' not in err
    # files that look like a pickle but are not one: torch's advice to retry with weights_only=False is not relayed
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'\x80\x02garbage that is not a pickle')
    with pytest.raises(Exception) as e:
        checkpoints.load_training_checkpoint(bad)
    assert str(bad) in str(e.value) and 'weights_only' not in str(e.value)


def _training_checkpoint(path: pathlib.Path, model_name: str, epoch: int = 0, num_classes: int = 4) -> None:
    import timm
    import models  # noqa: F401
    model = timm.create_model(model_name, num_classes=num_classes)
    checkpoints.save_training_checkpoint(path.parent, path.name, {
        'model': model.state_dict(), 'optimizer': {}, 'epoch': epoch, 'args': {'model': model_name, 'seed': 0},
        'global_step': 12 * (epoch + 1), 'step_in_epoch': 0, 'epoch_complete': True})


def _cheap_model(name: str) -> torch.nn.Module:
    """A registered variant with uninitialised weights (only its keys and shapes matter here)."""
    import timm
    import models  # noqa: F401
    with torch.device('meta'):
        model = timm.create_model(name)
    return model.to_empty(device='cpu')


def test_checkpoint_of_another_variant_is_a_one_line_error_naming_what_it_is(tmp_path, capsys, data):
    """The loader names the mismatched keys and the released variant the weights look like; main.py --eval --resume
    of another model's weights says they do not fit, of a training checkpoint names the --model its args record,
    and of a truncated file says so."""
    from models import CheckpointError, load_pretrained_file
    tiny = tmp_path / 'tiny.pth'
    torch.save({'model': _cheap_model('hornet_tiny_7x7').state_dict()}, tiny)
    with pytest.raises(CheckpointError) as e:
        load_pretrained_file(_cheap_model('hornet_tiny_gf'), str(tiny))
    msg = str(e.value)
    assert 'missing' in msg and 'complex_weight' in msg and 'looks like hornet_tiny_7x7' in msg
    assert '\n' not in msg
    with pytest.raises(CheckpointError, match='shape mismatch.*looks like hornet_tiny_7x7'):
        load_pretrained_file(_cheap_model('hornet_small_7x7'), str(tiny))

    from models.hornet import HorNet
    other = tmp_path / 'other.pth'
    torch.save({'model': HorNet(num_classes=4, depths=(1, 1, 1, 1), base_dim=8).state_dict()}, other)
    err = _error(base_args(data, None, eval='true', resume=str(other)), capsys)
    assert 'does not fit this model' in err and 'shape mismatch' in err

    ck = tmp_path / 'checkpoint-0.pth'
    _training_checkpoint(ck, 'hornet_micro_gf')
    err = _error(base_args(data, None, eval='true', resume=str(ck)), capsys)
    assert 'hornet_micro_gf (the --model its args record), not hornet_micro_7x7' in err
    assert 'add --model hornet_micro_gf' in err

    trunc = tmp_path / 'trunc.pth'
    trunc.write_bytes(other.read_bytes()[:3000])
    err = _error(base_args(data, None, eval='true', resume=str(trunc)), capsys)
    assert 'truncated' in err and str(trunc) in err


def test_resume_given_a_directory_means_its_newest_checkpoint(tmp_path, capsys, data):
    run = tmp_path / 'run'
    _training_checkpoint(run / 'checkpoint-0.pth', 'hornet_micro_7x7', epoch=0)
    _training_checkpoint(run / 'checkpoint-1.pth', 'hornet_micro_7x7', epoch=1)
    assert checkpoints.resolve_resume_path(run) == str(run / 'checkpoint-1.pth')
    assert checkpoints.resolve_resume_path(run / 'checkpoint-0.pth') == str(run / 'checkpoint-0.pth')
    assert main_mod.parse_args(base_args(data, None, resume=str(run))).resume == str(run)

    empty = tmp_path / 'empty'
    empty.mkdir()
    err = _error(base_args(data, None, resume=str(empty)), capsys)
    assert f'--resume {empty}: the directory has no checkpoint to resume from' in err
    (empty / 'checkpoint-best.pth').write_bytes(b'')
    err = _error(base_args(data, None, resume=str(empty)), capsys)
    assert 'checkpoint-best.pth' in err and 'as a file' in err

    # --eval --resume DIR evaluates that newest checkpoint
    proc = run_main(base_args(data, tmp_path / 'eval', resume=str(run)) + ['--eval'])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / 'eval' / 'eval.json').read_text())
    assert result['checkpoint'] == str(run / 'checkpoint-1.pth')


# ------------------------------------------------------------------------------------------------ runs

@pytest.fixture
def finished_run(trained_run):
    """The session's one-epoch run (tests/conftest.py), its recipe batch twice its effective batch (4), run under
    umask 022."""
    return trained_run.out, trained_run.argv(), trained_run.proc


def test_log_output_is_clean(finished_run):
    out, _, proc = finished_run
    assert 'Start training for 1 epoch;' in proc.stderr and '1 epochs' not in proc.stderr
    test_lines = [l for l in proc.stderr.splitlines() if ' Test: [' in l]
    assert test_lines and all('img/s: ' in l and 'img/s: 0.0' not in l for l in test_lines), test_lines
    assert proc.stderr.count('val dataset') == 1 and proc.stderr.count('* Acc@1') == 1
    log = json.loads((out / 'log.txt').read_text().splitlines()[0])
    assert log['train_weight_decay'] == 0.05  # not 0.049999999999999954
    assert '"train_weight_decay": 0.05,' in (out / 'log.txt').read_text()


def test_the_recipe_batch_warning_names_the_update_freq_that_restores_it(finished_run):
    _, _, proc = finished_run
    warnings = [l for l in proc.stderr.splitlines() if 'WARNING' in l and 'this recipe was tuned for' in l]
    assert len(warnings) == 2, proc.stderr  # at the start and again at the end
    assert 'Effective batch 4 (1 process x --batch_size 4 x --update_freq 1) is not the 8' in warnings[0]
    assert 'run with --update_freq 2 to restore it' in warnings[0]
    msg = main_mod.recipe_batch_warning(1024, 4096, 128, 1, 8, 4e-3)
    assert 'run with --update_freq 4 to restore it' in msg and '--lr 0.004 assumes 4096' in msg
    assert '--batch_size 16 --update_freq 1' in main_mod.recipe_batch_warning(96, 512, 24, 1, 32, 5e-5)


def test_tensorboard_follows_the_output_dir(finished_run):
    out, _, proc = finished_run
    events = list((out / 'tb').glob('events.out.tfevents.*'))
    assert len(events) == 1
    assert f'tensorboard --logdir {out / "tb"}' in proc.stderr
    args = main_mod.parse_args(['--device', 'cpu', '--output_dir', 'out/qs2'])
    assert runlog.tensorboard_dir(args) == os.path.join('out/qs2', 'tb')
    args.log_dir = ''
    assert runlog.tensorboard_dir(args) is None
    args.log_dir, args.output_dir = '/elsewhere', ''
    assert runlog.tensorboard_dir(args) == '/elsewhere'


def test_checkpoints_follow_the_umask(finished_run, tmp_path):
    out, _, _ = finished_run
    for f in out.glob('*.pth'):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    old = os.umask(0o002)
    try:
        checkpoints.save_atomic({'x': torch.zeros(1)}, tmp_path / 'a.pth')
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / 'a.pth').stat().st_mode) == 0o664


@pytest.mark.slow
def test_relaunching_a_finished_run_says_it_is_complete(finished_run):
    out, argv, _ = finished_run
    events = sorted((out / 'tb').iterdir())
    proc = run_main(argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'This run is already complete' in proc.stderr and str(out) in proc.stderr
    assert 'checkpoint-0.pth is the end of epoch 0, the last of --epochs 1' in proc.stderr
    assert 'Start training' not in proc.stderr and 'Training time' not in proc.stderr
    assert sorted((out / 'tb').iterdir()) == events  # no empty event file per relaunch


@pytest.mark.slow
def test_resume_from_a_run_directory_continues_it(trained_run, tmp_path):
    out = trained_run.out
    argv = trained_run.argv(tmp_path / 'more', epochs=2, resume=str(out), disable_eval='true')
    proc = run_main(argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f'Resumed weights from {out / "checkpoint-0.pth"}' in proc.stderr
    assert 'Resuming at epoch 1' in proc.stderr and (tmp_path / 'more' / 'checkpoint-1.pth').is_file()


@pytest.mark.slow
def test_ctrl_c_is_one_line_naming_the_checkpoint_and_exit_130(tmp_path, data):
    out = tmp_path / 'run'
    argv = base_args(data, out, epochs=20, num_workers=2, print_freq=1, disable_eval='true', **_quiet())
    # its own session, like a terminal's foreground job: Ctrl-C reaches the loader workers as well
    proc = subprocess.Popen([sys.executable, str(REPO / 'main.py')] + argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=str(REPO), start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (out / 'checkpoint-1.pth').exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == main_mod.EXIT_INTERRUPTED, err[-3000:]
    assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert 'Interrupted (Ctrl-C)' in last and 'relaunch the same command to continue from there' in last, last
    newest = checkpoints.find_resume_checkpoint(out)  # the step Ctrl-C arrived in, saved: what a relaunch resumes
    assert newest == out / checkpoints.PREEMPT_NAME and f'saved {newest} at that step' in last, last
    assert not list(out.glob('.tmp-*'))


def test_second_ctrl_c_stops_at_once(tmp_path):
    """The first Ctrl-C only asks for a save at the end of the step; a second one, for a step too slow to wait
    for, raises KeyboardInterrupt (real signals to this process)."""
    previous = signal.getsignal(signal.SIGINT)
    utils.STOP.install((signal.SIGTERM, signal.SIGUSR2, signal.SIGINT))
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # delivered between bytecodes
        assert utils.STOP.requested and utils.STOP.ctrl_c
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        utils.STOP.uninstall()
    assert signal.getsignal(signal.SIGINT) is previous
    utils.STOP.install(())  # a new run starts with nothing requested
    assert not utils.STOP.requested and not utils.STOP.ctrl_c
    utils.STOP.uninstall()


def test_ctrl_c_before_training_is_one_line(monkeypatch, capsys, data):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(main_mod, 'build_data', interrupted)
    assert main_mod.cli(base_args(data, None)) == main_mod.EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip()
    assert 'Traceback' not in err
    assert err.splitlines()[-1] == ('Interrupted (Ctrl-C) before training started or during evaluation: '
                                    'nothing was saved')


# ------------------------------------------------------------------------------------------------ pieces

def test_quickstart_validation_set_is_built_once(tmp_path, caplog):
    import quickstart
    root = quickstart.make_quickstart_dataset(str(tmp_path / 'qs'), num_classes=3, train_per_class=4,
                                              val_per_class=2, image_size=32)
    args = main_mod.parse_args(['--data_set', 'QUICKSTART', '--data_path', root, '--device', 'cpu',
                                '--input_size', '32'])
    with caplog.at_level(logging.INFO, logger='hornet'):
        data = main_mod.build_data(main_mod.Run(args=args, ds=utils.dist_state(), amp_dtype=None))
    assert data.nb_classes == 3 and len(data.val) == 6 and len(data.train) == 12
    assert sum('val dataset' in r.getMessage() for r in caplog.records) == 1


def test_a_constant_logged_value_averages_to_itself():
    meter = runlog.SmoothedValue()
    for _ in range(62):
        meter.update(0.05)
    assert meter.global_avg == 0.05
    meter.update(0.07)
    assert meter.global_avg == pytest.approx((62 * 0.05 + 0.07) / 63)


def test_progress_lines_count_images_from_the_batches(caplog):
    batches = [(torch.zeros(6, 3), torch.zeros(6)), (torch.zeros(6, 3), torch.zeros(6)), (torch.zeros(2, 3),)]
    with caplog.at_level(logging.INFO, logger='hornet'):
        for _ in runlog.MetricLogger().log_every(batches, 1, 'Test:', len(batches)):
            time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if '] eta:' in r.getMessage()]
    assert len(lines) == 3 and all('img/s: ' in l and 'img/s: 0.0' not in l for l in lines), lines
    assert engine.result_line({'acc1': 1.0, 'acc5': 2.0, 'loss': 3.0}) == '* Acc@1 1.000 Acc@5 2.000 loss 3.000'


def test_intra_op_threads_are_shared_among_processes_and_loader_workers(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
        monkeypatch.delenv('SLURM_CPUS_PER_TASK', raising=False)
        monkeypatch.setattr(utils, 'cpu_cores_available', lambda: 16)
        monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')
        assert utils.set_intra_op_threads(0, num_workers=3) == 2  # 16 cores / (2 x (1 + 3))
        assert torch.get_num_threads() == 2
        monkeypatch.setenv('LOCAL_WORLD_SIZE', '1')
        assert utils.set_intra_op_threads(0, num_workers=2) == 5
        assert utils.set_intra_op_threads(0, num_workers=40) == 1
        assert utils.set_intra_op_threads(3, num_workers=2) == 3  # --threads wins
        monkeypatch.setenv('LOCAL_WORLD_SIZE', '8')
        monkeypatch.setenv('SLURM_CPUS_PER_TASK', '16')  # a SLURM task with 16 cores of its own
        assert utils.set_intra_op_threads(0, num_workers=3) == 4
        monkeypatch.delenv('SLURM_CPUS_PER_TASK')
        monkeypatch.setenv('OMP_NUM_THREADS', '1')
        torch.set_num_threads(1)
        assert utils.set_intra_op_threads(0, num_workers=2) == 1  # the user's (or torchrun's) choice is kept
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize('name,channels_last', [('hornet_micro_7x7', False), ('hornet_micro_7x7', True),
                                                ('hornet_micro_gf', True)])
def test_parameters_get_the_strides_of_their_gradients(name, channels_last):
    """What DDP's bucket views need: after match_param_strides_to_grads, a real backward gives every parameter a
    gradient with exactly its strides; values are unchanged."""
    import timm
    import models  # noqa: F401
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    changed = utils.match_param_strides_to_grads(model, 64, channels_last=channels_last)
    assert changed and torch.equal(rng, torch.get_rng_state())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    x = torch.randn(2, 3, 64, 64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model(x).sum().backward()
    wrong = [(n, p.stride(), p.grad.stride()) for n, p in model.named_parameters() if p.grad.stride() != p.stride()]
    assert not wrong, wrong




@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_runs_without_the_grad_strides_warning_and_print_once(tmp_path, data):
    """Global Filter model, channels-last. (The 7x7 model in the default layout, and --eval under torchrun printing
    its result once: tests/test_distributed.py's runs.)"""
    name, channels_last = 'hornet_micro_gf', True
    out = tmp_path / 'ddp'
    argv = base_args(data, out, epochs=1, model=name, channels_last=str(channels_last).lower(), **_quiet())
    proc = run_main(argv, launcher=torchrun(2), timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 'Grad strides do not match bucket view strides' not in proc.stderr, proc.stderr[-4000:]
    assert proc.stderr.count('val dataset') == 1 and proc.stderr.count('* Acc@1') == 1
