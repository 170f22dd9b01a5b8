"""Training semantics of engine.py/main.py: one step path, accumulation, clipping, resume, eval, bad input."""
from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from typing import List

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import engine
import main as main_mod
import utils
from models.hornet import HorNet
from tests.train_helpers import (REPO, assert_state_dicts_equal, base_args, env, load_model_sd, make_image_folder,
                                 run_main)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'))


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return HorNet(num_classes=4, depths=(1, 1, 1, 1), base_dim=8)


def _batches(n, bs, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, 32, 32, generator=g), torch.randint(0, 4, (bs,), generator=g)) for _ in range(n)]


def _train(model, batches, cfg, lr=1.0, clip=None, criterion=None):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for g in opt.param_groups:
        g['lr_scale'] = 1.0
    cfg.clip_grad = clip
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    state = engine.TrainState()
    engine.train_one_epoch(model, criterion or nn.CrossEntropyLoss(), batches, len(batches), opt, scaler, state, cfg)
    return state


@pytest.mark.parametrize('amp_dtype', [None, torch.bfloat16])
def test_clipping_is_applied_once_per_step_in_every_precision_even_below_0_1(amp_dtype):
    """SGD with lr=1: the update equals the (clipped) gradient, so its norm must be exactly the clip value."""
    model = _tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = engine.StepConfig(update_freq=2, amp_dtype=amp_dtype, batch_size=2)
    _train(model, _batches(2, 2), cfg, lr=1.0, clip=0.05)
    delta = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert delta.item() == pytest.approx(0.05, rel=1e-4)


def test_gradient_accumulation_equals_a_larger_batch():
    batches = _batches(4, 4, seed=1)
    big = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(batches[::2], batches[1::2])]
    m1, m2 = _tiny_model(), _tiny_model()
    s1 = _train(m1, batches, engine.StepConfig(update_freq=2, batch_size=4), lr=0.5)
    s2 = _train(m2, big, engine.StepConfig(update_freq=1, batch_size=8), lr=0.5)
    assert s1.global_step == s2.global_step == 2
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_schedules_and_ema_advance_per_optimizer_step_not_per_micro_batch():
    from timm.utils import ModelEmaV3
    model = _tiny_model()
    ema = ModelEmaV3(model, decay=0.9)
    seen = []
    cfg = engine.StepConfig(update_freq=3, batch_size=2, lr_fn=lambda s: 0.1 * (s + 1), wd_fn=lambda s: 0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for g in opt.param_groups:
        g['lr_scale'] = 1.0
    state = engine.TrainState()
    engine.train_one_epoch(model, nn.CrossEntropyLoss(), _batches(6, 2), 6, opt,
                           torch.amp.GradScaler('cpu', enabled=False), state, cfg, model_ema=ema,
                           on_step=lambda st: seen.append(opt.param_groups[0]['lr']))
    assert state.global_step == 2 and state.ema_updates == 2
    assert seen == pytest.approx([0.1, 0.2])


def test_non_finite_loss_stops_naming_the_step_without_touching_weights():
    model = _tiny_model()
    calls = {'n': 0}

    def criterion(out, target):
        calls['n'] += 1
        loss = F.cross_entropy(out, target)
        return loss * float('nan') if calls['n'] == 3 else loss

    cfg = engine.StepConfig(update_freq=1, batch_size=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = engine.TrainState()
    snapshots = []
    with pytest.raises(engine.NonFiniteLoss, match=r'rank 0 at epoch 0, optimizer step 2') as e:
        engine.train_one_epoch(model, criterion, _batches(5, 2), 5, opt, torch.amp.GradScaler('cpu', enabled=False),
                               state, cfg, on_step=lambda st: snapshots.append(
                                   {k: v.clone() for k, v in model.state_dict().items()}))
    assert '\n' not in str(e.value)
    assert state.global_step == 2
    assert_state_dicts_equal(model.state_dict(), snapshots[-1])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


# ------------------------------------------------------------------------------------------ CLI runs

def test_every_flag_of_the_original_training_command_parses():
    argv = ('--model hornet_tiny_gf --drop_path 0.2 --clip_grad 5 --batch_size 128 --lr 4e-3 --update_freq 4 '
            '--model_ema true --model_ema_eval true --data_path /tmp --output_dir /tmp/x --epochs 300 '
            '--warmup_epochs 20 --weight_decay 0.05 --layer_decay 1.0 --opt adamw --opt_betas 0.9 0.999 '
            '--smoothing 0.1 --mixup 0.8 --cutmix 1.0 --reprob 0.25 --aa rand-m9-mstd0.5-inc1 --input_size 224 '
            '--layer_scale_init_value 1e-6 --head_init_scale 1.0 --model_key model|module --model_prefix "" '
            '--nb_classes 1000 --imagenet_default_mean_and_std true --data_set IMNET --seed 0 --auto_resume true '
            '--save_ckpt true --save_ckpt_freq 1 --save_ckpt_num 3 --dist_eval true --disable_eval false '
            '--num_workers 10 --pin_mem true --world_size 1 --local_rank 0 --dist_on_itp false --dist_url env:// '
            '--use_amp false --enable_wandb false --project hornet --wandb_ckpt false --mixup_mode batch '
            '--cutmix_minmax 0.2 0.8 --mixup_prob 1.0 --mixup_switch_prob 0.5 --color_jitter 0.4 '
            '--train_interpolation bicubic --remode pixel --recount 1 --resplit false --momentum 0.9 '
            '--opt_eps 1e-8 --min_lr 1e-6 --warmup_steps -1 --weight_decay_end 0.05 --start_epoch 0 '
            '--model_ema_decay 0.9999 --model_ema_force_cpu false --device cpu --log_dir /tmp/tb --exp_name e '
            '--finetune "" --resume "" --eval false --crop_pct 0.875 --eval_data_path /tmp')
    import shlex
    args = main_mod.parse_args(shlex.split(argv))
    assert args.update_freq == 4 and args.model_ema is True and args.opt_betas == [0.9, 0.999]
    assert args.cutmix_minmax == [0.2, 0.8] and args.clip_grad == 5.0
    assert main_mod.parse_args(['--local-rank=3', '--device', 'cpu']).local_rank == 3


def test_yaml_config_gives_defaults_and_cli_wins(tmp_path):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('lr: 1.0e-3\nmodel_ema: true\nopt_betas: [0.9, 0.95]\nepochs: 7\ndevice: cpu\n')
    args = main_mod.parse_args(['--config', str(cfg), '--epochs', '9'])
    assert args.lr == 1e-3 and args.model_ema is True and args.opt_betas == [0.9, 0.95] and args.epochs == 9


def _cli_error(argv, capsys):
    code = main_mod.cli(argv)
    err = capsys.readouterr().err.strip()
    assert code == main_mod.EXIT_USER_ERROR, err
    assert 'Traceback' not in err, err
    last = err.splitlines()[-1]
    assert last.startswith('error: '), err
    return last


@pytest.mark.parametrize('extra,expected', [
    (['--model', 'hornet_tiny_7x8'], "unknown --model 'hornet_tiny_7x8'; did you mean hornet_tiny_7x7"),
    (['--batch_size', '0'], '--batch_size must be a positive integer'),
    (['--update_freq', '0'], '--update_freq must be a positive integer'),
    (['--lr', '-1'], '--lr must be a non-negative number'),
    (['--input_size', '100'], '--input_size must be divisible by 32'),
    (['--device', 'cuda'], 'CUDA is not available'),
    (['--eval', 'true'], '--eval true needs the checkpoint'),
    (['--batch_size', '3'], 'need an even --batch_size'),
    (['--data_path', '/nonexistent/imagenet'], "'/nonexistent/imagenet' does not exist"),
    (['--data_set', 'CIFAR', '--data_path', '/nonexistent'], 'cifar-100-python'),
    (['--resume', '/nonexistent.pth'], '--resume /nonexistent.pth: file not found'),
    (['--opt', 'adamq'], 'adamq'),
    (['--epochs', 'ten'], "argument --epochs: invalid int value: 'ten'"),
    (['--opt', 'sgd', '--fused_adamw', 'true'], '--fused_adamw true needs --opt adamw'),
    (['--grad_checkpointing', 'some'], "--grad_checkpointing: invalid choice: 'some'"),
    (['--model', 'convnext_atto', '--grad_checkpointing', 'selective'], 'selective is for HorNet models'),
])
def test_bad_input_is_one_line_error_without_traceback(extra, expected, capsys, tmp_path, data):
    argv = base_args(data, tmp_path / 'out', nb_classes=4) + extra
    err = _cli_error(argv, capsys)
    assert expected in err


def test_bad_config_key_or_type_is_one_line_error(tmp_path, capsys):
    cfg = tmp_path / 'bad.yaml'
    cfg.write_text('learning_rate: 0.1\n')
    assert "unknown key 'learning_rate'" in _cli_error(['--config', str(cfg)], capsys)
    cfg.write_text('epochs: [1, 2]\n')
    assert "bad value for 'epochs'" in _cli_error(['--config', str(cfg)], capsys)
    cfg.write_text('model_ema: maybe\n')
    assert "bad value for 'model_ema'" in _cli_error(['--config', str(cfg)], capsys)


@pytest.mark.slow
def test_eval_reports_exact_numbers_of_a_known_checkpoint(tmp_path, data):
    """Acc@1/Acc@5/loss of --eval equal a direct, independent computation on the same images."""
    import timm
    import models  # noqa: F401
    from transforms import build_transform
    torch.manual_seed(5)
    model = timm.create_model('hornet_micro_7x7', num_classes=4).eval()
    ckpt = tmp_path / 'known.pth'
    torch.save({'model': model.state_dict()}, ckpt)
    out = tmp_path / 'eval'
    proc = run_main(base_args(data, out, eval='true', resume=str(ckpt), batch_size=3))
    assert proc.returncode == 0, proc.stderr
    line = [l for l in proc.stdout.splitlines() if l.startswith('* Acc@1')]
    assert line, proc.stdout
    result = json.loads((out / 'eval.json').read_text())
    args = main_mod.parse_args(base_args(data, None))
    tf = build_transform(False, args)
    from PIL import Image
    logits, targets = [], []
    for c, d in enumerate(sorted((data / 'val').iterdir())):
        for f in sorted(d.iterdir()):
            logits.append(model(tf(Image.open(f).convert('RGB')).unsqueeze(0)).detach())
            targets.append(c)
    logits, targets = torch.cat(logits), torch.tensor(targets)
    acc1 = (logits.argmax(1) == targets).float().mean().item() * 100
    acc5 = (logits.topk(4, 1).indices == targets[:, None]).any(1).float().mean().item() * 100
    loss = F.cross_entropy(logits, targets).item()
    assert result['num_samples'] == 20
    assert result['acc1'] == pytest.approx(acc1) and result['acc5'] == pytest.approx(acc5)
    assert result['loss'] == pytest.approx(loss, rel=1e-5)
    import hashlib
    assert result['sha256'] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert line[0] == '* Acc@1 {:.3f} Acc@5 {:.3f} loss {:.3f}'.format(result['acc1'], result['acc5'], result['loss'])


def _final(out: pathlib.Path, epochs: int):
    return load_model_sd(out / f'checkpoint-{epochs - 1}.pth')


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory, data):
    """The uninterrupted run: 3 epochs (36 optimizer steps), 2 loader workers, EMA."""
    out = tmp_path_factory.mktemp('ref')
    proc = run_main(base_args(data, out, epochs=3, num_workers=2, model_ema='true'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_training_writes_original_layout_and_log(reference_run):
    files = sorted(p.name for p in reference_run.iterdir())
    assert {'checkpoint-0.pth', 'checkpoint-1.pth', 'checkpoint-2.pth', 'checkpoint-best.pth', 'log.txt'} <= set(files)
    lines = [json.loads(l) for l in (reference_run / 'log.txt').read_text().splitlines()]
    assert [l['epoch'] for l in lines] == [0, 1, 2]
    assert {'train_lr', 'train_loss', 'test_acc1', 'test_acc5', 'test_loss', 'n_parameters'} <= set(lines[0])
    ck = torch.load(reference_run / 'checkpoint-2.pth', weights_only=True)
    assert {'model', 'optimizer', 'epoch', 'scaler', 'model_ema', 'args', 'global_step', 'rng'} <= set(ck)
    assert isinstance(ck['args'], dict) and ck['epoch'] == 2 and ck['global_step'] == 36


def _wait_for(proc, pattern: str, timeout: float = 120) -> List[str]:
    """Read the child's stderr until a log line containing ``pattern`` appears; returns the lines read."""
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                raise AssertionError(f'process exited ({proc.returncode}) before {pattern!r}:\n{"".join(lines[-30:])}')
            continue
        lines.append(line)
        if pattern in line:
            return lines
    raise AssertionError(f'{pattern!r} not seen in time')


def _popen(argv):
    # its own session, like a terminal's foreground job, so that a Ctrl-C can go to the whole process group
    return subprocess.Popen([sys.executable, str(REPO / 'main.py')] + argv, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=str(REPO), start_new_session=True)


def _assert_no_half_written_checkpoint(out: pathlib.Path) -> None:
    for f in out.glob('checkpoint-*.pth'):  # whatever carries a final name is complete
        torch.load(f, weights_only=True, map_location='cpu')


@pytest.mark.slow
def test_killed_runs_resume_to_the_bitwise_identical_result(tmp_path, data, reference_run):
    """One output folder, interrupted five times and relaunched after each, ends with the uninterrupted run's exact
    weights and EMA: SIGKILL at a random moment of epoch 0 (possibly while checkpoint-0 is written), SIGKILL
    mid-epoch, SIGTERM mid-epoch (preemption: the current step is saved, exit EXIT_PREEMPTED), SIGKILL just after an
    epoch's checkpoint is written, a terminal's Ctrl-C (SIGINT to the whole process group, loader workers included:
    the step is saved, one line, exit EXIT_INTERRUPTED), SIGKILL at a random moment of the last epoch, resumed
    mid-way. After every kill, each file under a final checkpoint name loads (nothing half-written); every relaunch after the first checkpoint resumes."""
    rng = random.Random(0)
    out = tmp_path / 'run'
    argv = base_args(data, out, epochs=3, num_workers=2, model_ema='true', print_freq=1)
    steps = 12
    plan = [(signal.SIGKILL, f'Epoch: [0] [{rng.randrange(steps):>2}/', rng.uniform(0, 0.3)),
            (signal.SIGKILL, 'Epoch: [1] [ 5/', 0.0),
            (signal.SIGTERM, 'Epoch: [1] [ 6/', 0.0),
            (signal.SIGKILL, 'checkpoint-1.pth (epoch', 0.0),
            (signal.SIGINT, 'Epoch: [2] [ 3/', 0.0),
            # the relaunch resumes epoch 2 mid-way: its progress lines count the remaining steps
            (signal.SIGKILL, 'Epoch: [2] [', rng.uniform(0, 0.1))]
    for i, (sig, when, delay) in enumerate(plan):
        proc = _popen(argv)
        try:
            seen = ''.join(_wait_for(proc, when))
            time.sleep(delay)
            if sig == signal.SIGINT:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            _, rest = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if i >= 2:  # checkpoint-0.pth exists since the kill in epoch 1
            assert 'Resum' in seen, seen[-3000:]
        if sig in (signal.SIGTERM, signal.SIGINT):
            assert proc.returncode == (main_mod.EXIT_PREEMPTED if sig == signal.SIGTERM else main_mod.EXIT_INTERRUPTED)
            saved = torch.load(out / 'checkpoint-preempt.pth', weights_only=True)['step_in_epoch']
            assert saved >= (7 if sig == signal.SIGTERM else 4), saved
        if sig == signal.SIGINT:
            assert 'Traceback' not in rest, rest[-3000:]
            assert 'Interrupted (Ctrl-C) in epoch 2' in rest.strip().splitlines()[-1], rest[-3000:]
        _assert_no_half_written_checkpoint(out)
    again = run_main(argv)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'Resum' in again.stderr or 'already complete' in again.stderr
    assert_state_dicts_equal(_final(out, 3), _final(reference_run, 3))
    ck, ref = (torch.load(d / 'checkpoint-2.pth', weights_only=True) for d in (out, reference_run))
    assert_state_dicts_equal(ck['model_ema'], ref['model_ema'])
    assert not list(out.glob('.tmp-*'))


@pytest.mark.slow
def test_memory_saving_modes_and_optimizer_kernel_do_not_change_the_trained_weights(tmp_path, trained_run):
    """--grad_checkpointing selective/full recompute activations; --fused_adamw false is torch's per-tensor loop.
    Each is the session's trained run (tests/conftest.py) again with one flag changed."""
    runs = {'plain': load_model_sd(trained_run.checkpoint)}
    for name, extra in [('selective', dict(grad_checkpointing='selective')), ('full', dict(grad_checkpointing='full')),
                        ('loop', dict(fused_adamw='false'))]:
        out = tmp_path / name
        proc = run_main(trained_run.argv(out, **extra))
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = load_model_sd(out / 'checkpoint-0.pth')
    for name in ('selective', 'full'):
        assert_state_dicts_equal(runs['plain'], runs[name])
    for k, v in runs['plain'].items():  # fused and looped AdamW agree to rounding
        torch.testing.assert_close(runs['loop'][k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f'{k}: {m}')
