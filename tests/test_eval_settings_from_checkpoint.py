"""--eval and resume take the model, resolution and evaluation transform from the checkpoint: flags not given
come from it, a flag given that differs is used with a one-line warning naming both values.

One tiny quick-start run (micro HorNet, 64 px, 3 classes, 1 epoch) is trained once; its checkpoint records
settings that all differ from main.py's defaults (model, 64 px, crop 0.9, 0.5/0.5 normalisation).
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import shutil

import pytest
import timm
import torch

import checkpoint_meta
import checkpoints
import main as main_mod
import models  # noqa: F401  (registers the HorNet variants)
import quickstart
import run_settings
from tests.train_helpers import run_main

TRAIN = dict(model='hornet_micro_7x7', input_size=64, crop_pct=0.9, imagenet_default_mean_and_std='false',
             lr=2e-3, batch_size=8, aa='none', reprob=0, mixup=0, cutmix=0, smoothing=0, warmup_epochs=0, seed=5)


def _argv(**opts) -> list:
    argv = []
    for k, v in opts.items():
        argv += [f'--{k}'] + ([str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)])
    return argv


@pytest.fixture(scope='module')
def qs(tmp_path_factory) -> pathlib.Path:
    return pathlib.Path(quickstart.make_quickstart_dataset(str(tmp_path_factory.mktemp('data') / 'qs'), num_classes=3,
                                                           train_per_class=8, val_per_class=4, image_size=64))


def _where(qs: pathlib.Path, **opts) -> dict:
    return dict(dict(device='cpu', data_set='QUICKSTART', data_path=str(qs), num_workers=0, print_freq=1000), **opts)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, qs) -> pathlib.Path:
    out = tmp_path_factory.mktemp('run')
    proc = run_main(_argv(**_where(qs, output_dir=out, epochs=1, **TRAIN)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _eval(qs, ckpt, out, **opts):
    proc = run_main(_argv(**_where(qs, eval='true', resume=ckpt, output_dir=out, **opts)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((out / 'eval.json').read_text())


def test_eval_without_flags_measures_the_checkpoint_as_trained(trained, qs, tmp_path):
    """The accuracy --eval reports is the one the training run measured on the same weights (at 224 px with the
    default crop and normalisation it would be another number, or the default model would not even load)."""
    measured = json.loads((trained / 'log.txt').read_text().splitlines()[-1])['test_acc1']
    proc, result = _eval(qs, trained / 'checkpoint-best.pth', tmp_path / 'eval')
    assert result['model'] == 'hornet_micro_7x7' and result['input_size'] == 64
    assert result['acc1'] == pytest.approx(measured, abs=1e-9)
    line = next(l for l in proc.stderr.splitlines() if 'From the checkpoint' in l)
    for flag in ('--model hornet_micro_7x7', '--input_size 64', '--crop_pct 0.9',
                 '--imagenet_default_mean_and_std false'):
        assert flag in line, line
    assert 'WARNING' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"* Acc@1 {measured:.3f}")


def test_eval_of_a_run_directory_reads_its_newest_checkpoint(trained, qs, tmp_path):
    _, result = _eval(qs, trained, tmp_path / 'eval')
    assert result['checkpoint'] == str(trained / 'checkpoint-0.pth') and result['input_size'] == 64


def test_a_flag_given_that_differs_is_used_with_one_warning_naming_both_values(trained, qs, tmp_path):
    proc, result = _eval(qs, trained / 'checkpoint-best.pth', tmp_path / 'eval', input_size=96)
    assert result['input_size'] == 96
    warnings = [l for l in proc.stderr.splitlines() if 'WARNING' in l]
    assert len(warnings) == 1, warnings
    assert "--input_size 96 differs from the checkpoint's 64" in warnings[0] and 'using 96' in warnings[0]
    assert '--model hornet_micro_7x7' in proc.stderr  # the flags not given still come from the checkpoint


def test_a_config_file_counts_as_given(trained, tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text('input_size: 96\ncrop_pct: 0.9\n')
    args, inherited = main_mod.parse_run_args(['--config', str(config), '--eval', '--resume',
                                               str(trained / 'checkpoint-best.pth'), '--device', 'cpu'])
    assert args.input_size == 96 and inherited.overridden == {'input_size': (96, 64)}
    assert args.crop_pct == 0.9 and 'crop_pct' not in inherited.taken  # given, and the same
    assert args.model == 'hornet_micro_7x7' and args.imagenet_default_mean_and_std is False
    # a value given that happens to equal the default is still given
    args, inherited = main_mod.parse_run_args(['--eval', '--resume', str(trained / 'checkpoint-best.pth'),
                                               '--device', 'cpu', '--input_size', '224'])
    assert args.input_size == 224 and 'input_size' in inherited.overridden


def test_flags_given_are_told_from_defaults():
    parser = main_mod.get_args_parser()
    given = run_settings.flags_on_command_line(parser, ['--input_size=224', '--eval', '--model_ema', 'false',
                                                        '--train_crop_scale', '0.5', '1'])
    assert given == {'input_size', 'eval', 'model_ema', 'train_crop_scale'}
    assert parser.get_default('input_size') == 224 and parser.parse_args([]).model == 'hornet_tiny_gf'  # restored


def test_original_release_namespace_args_are_read_and_a_bare_state_dict_records_nothing(tmp_path):
    sd = timm.create_model('hornet_micro_7x7', num_classes=3).state_dict()
    original = tmp_path / 'original.pth'
    torch.save({'model': sd, 'optimizer': {}, 'epoch': 9,
                'args': argparse.Namespace(model='hornet_micro_7x7', input_size=64, crop_pct=None, nb_classes=3,
                                           imagenet_default_mean_and_std=True, drop_path=0.1, lr=4e-3)}, original)
    args, inherited = main_mod.parse_run_args(['--eval', '--resume', str(original), '--device', 'cpu'])
    assert (args.model, args.input_size, args.nb_classes) == ('hornet_micro_7x7', 64, 3)
    assert inherited.checkpoint == str(original) and set(inherited.taken) == {'model', 'input_size', 'nb_classes'}

    bare = tmp_path / 'bare.pth'
    torch.save(sd, bare)
    args, inherited = main_mod.parse_run_args(['--eval', '--resume', str(bare), '--device', 'cpu'])
    assert (args.model, args.input_size) == ('hornet_tiny_gf', 224) and not inherited.messages()


def test_resume_of_training_continues_the_run_as_it_was_trained(trained, qs):
    ckpt = str(trained / 'checkpoint-0.pth')
    args, inherited = main_mod.parse_run_args(_argv(**_where(qs, resume=ckpt, epochs=3, input_size=96)))
    # the model and the recipe of the run, unless given
    assert (args.model, args.crop_pct, args.imagenet_default_mean_and_std) == ('hornet_micro_7x7', 0.9, False)
    assert (args.lr, args.batch_size, args.aa, args.mixup, args.warmup_epochs, args.seed) == \
        (2e-3, 8, 'none', 0.0, 0, 5)
    assert args.epochs == 3 and inherited.changed == {'epochs': (3, 1)}  # a longer run: said once, no warning
    assert args.input_size == 96 and inherited.overridden == {'input_size': (96, 64)}
    levels = [level for level, _ in inherited.messages()]
    assert levels.count(logging.WARNING) == 1
    # never this machine's settings
    assert args.device == 'cpu' and args.num_workers == 0 and args.output_dir == '' and args.gf_impl == 'fft'
    # auto-resume from --output_dir reads the checkpoint it will resume from
    args, inherited = main_mod.parse_run_args(_argv(**_where(qs, output_dir=trained)))
    assert inherited.checkpoint == ckpt and args.input_size == 64 and args.lr == 2e-3
    args, inherited = main_mod.parse_run_args(_argv(**_where(qs, output_dir=trained, auto_resume='false')))
    assert inherited.checkpoint is None and args.input_size == 224


def test_relaunching_with_only_the_output_folder_continues_the_run(trained, qs, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(trained, run)
    proc = run_main(_argv(**_where(qs, output_dir=run, epochs=2)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Resuming at epoch 1' in proc.stderr and 'random streams are not restored' not in proc.stderr
    recorded = checkpoints.load_training_checkpoint(run / 'checkpoint-1.pth')['args']
    for k, v in dict(TRAIN, imagenet_default_mean_and_std=False).items():
        assert recorded[k] == v, k
    assert recorded['epochs'] == 2


def test_checkpoints_record_the_class_names_and_eval_warns_when_the_data_has_others(trained, qs, tmp_path):
    classes = sorted(p.name for p in (qs / 'train').iterdir())
    assert torch.load(trained / 'checkpoint-0.pth', weights_only=True)['class_names'] == classes
    # the same images with the first class folder renamed: it sorts last, so every label moves
    other = tmp_path / 'other'
    for split in ('train', 'val'):
        for i, name in enumerate(classes):
            shutil.copytree(qs / split / name, other / split / (f'zz_{name}' if i == 0 else name))
    proc = run_main(_argv(**_where(other, data_set='image_folder', data_path=other / 'train',
                                   eval_data_path=other / 'val', eval='true', resume=trained / 'checkpoint-0.pth')))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [l for l in proc.stderr.splitlines() if 'WARNING' in l]
    assert len(warnings) == 1 and 'are not those' in warnings[0], warnings
    assert checkpoint_meta.class_names_warning(classes, classes, 'c', 'd') is None
    assert checkpoint_meta.class_names_warning(None, classes, 'c', 'd') is None  # older checkpoints: nothing known


def test_a_bad_combination_made_by_an_inherited_flag_names_where_it_came_from(tmp_path):
    ckpt = tmp_path / 'odd.pth'
    checkpoints.save_training_checkpoint(tmp_path, ckpt.name, {
        'model': timm.create_model('hornet_micro_7x7', num_classes=3).state_dict(), 'optimizer': {}, 'epoch': 0,
        'global_step': 1, 'step_in_epoch': 0, 'epoch_complete': True,
        'args': {'model': 'hornet_micro_7x7', 'batch_size': 7, 'mixup': 0.0}})
    with pytest.raises(main_mod.UserError) as e:
        main_mod.parse_run_args(['--resume', str(ckpt), '--device', 'cpu', '--mixup', '0.8'])
    assert 'need an even --batch_size (got 7)' in str(e.value)
    assert f'(flags taken from {ckpt}: --model hornet_micro_7x7 --batch_size 7)' in str(e.value)
