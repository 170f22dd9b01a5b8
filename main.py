"""Train, fine-tune and validate HorNet: the command line of the original release, plus exact resume, bf16,
CPU runs, YAML configs and clear errors.

    torchrun --nproc_per_node 8 main.py --model hornet_tiny_7x7 --data_path /imagenet --output_dir out ...
    python main.py --model hornet_tiny_7x7 --eval true --resume ckpt.pth --data_path /imagenet
    python main.py --config configs/quickstart.yaml          # built-in data, trains on a laptop CPU

Configuration flows one way: :func:`parse_args` reads CLI + YAML once, takes the flags not given from the
checkpoint evaluated or resumed (run_settings.py) and validates the result; :func:`main` turns the validated flags
into typed objects and passes them down, phase by phase:

    run = setup_run(args)                  # process group, output check, logging, seeds  -> Run
    data = build_data(run)                 # validation and training sets                  -> Data
    net = build_model(run, ...)            # model, --finetune weights, EMA, DDP           -> Net
    evaluate_checkpoint(...)               # --eval: evaluate and stop
    train = build_train_data(run, data)    # resumable sampler, loader, steps per epoch    -> TrainData
    optim = build_optim(run, net, train)   # loss, optimizer, loss scaler, schedules       -> Optim
    state = maybe_resume(...)              # --resume / auto-resume                        -> engine.TrainState
    train_loop(...)                        # epochs: train, evaluate, save, log
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Set, Tuple, Union

import numpy as np
import timm
import timm.optim
import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Dataset

import checkpoints
import datasets
import engine
import loaders
import models  # noqa: F401  (registers the HorNet variants with timm)
import output_check
import run_settings
import utils
from errors import UserError
from models.downloads import RELEASED, default_released, find_released, not_a_released_name
from models.global_filter import GF_IMPLS
from models.hornet import checkpoint_filter_fn
from models.weights import CheckpointError, select_in1k_head_rows
from optim_factory import cosine_schedule, create_optimizer

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3   # a stop signal arrived; a checkpoint of the current step was written (requeue and resume)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)

_logger = logging.getLogger('hornet')

AMP_DTYPES = ('float16', 'bfloat16')


def str2bool(v: Any) -> bool:
    """Booleans as words, as the original (``--model_ema true``)."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ('yes', 'true', 't', 'y', '1'):
        return True
    if s in ('no', 'false', 'f', 'n', '0'):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _auto_bool(v: Any) -> Optional[bool]:
    """``auto`` (None: let the code decide) or a boolean word."""
    if v is None or str(v).strip().lower() == 'auto':
        return None
    return str2bool(v)


def _num_workers(v: Any) -> Union[int, str]:
    """``auto`` (chosen from the cores when the run starts: utils.auto_num_workers) or a count."""
    if str(v).strip().lower() == 'auto':
        return 'auto'
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {v!r}") from None


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as our one-line UserError instead of exiting inside the parser, with a
    "did you mean" for a misspelt flag (as for a misspelt config key)."""

    def error(self, message: str):
        if message.startswith('unrecognized arguments:'):
            known = [s for a in self._actions for s in a.option_strings if s.startswith('--')]
            hints = []
            for token in message.split(':', 1)[1].split():
                flag = token.split('=', 1)[0]
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75) if flag.startswith('--') else []
                if close:
                    hints.append((close[0], flag))
            if len(hints) == 1:
                message = f"{message}; did you mean {hints[0][0]}?"
            elif hints:
                message = f"{message}; did you mean {', '.join(f'{c} (not {f})' for c, f in hints)}?"
        raise UserError(f"{message} (see python main.py --help)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show (unset, empty)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=min(120, max(80, _terminal_width())))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        if '%(default)' in text or action.default in (None, '', argparse.SUPPRESS) or not action.option_strings:
            return text
        if isinstance(action.default, bool):
            return text + f" (default: {str(action.default).lower()})"
        if isinstance(action.default, list):
            return text + f" (default: {' '.join(map(str, action.default))})"
        return text + ' (default: %(default)s)'


def _terminal_width() -> int:
    import shutil
    return shutil.get_terminal_size((100, 24)).columns


def _bool(p: argparse._ActionsContainer, flag: str, default: bool, help: str) -> None:
    """A boolean flag: ``--flag`` alone means true; ``--flag true`` / ``--flag false`` as in the original."""
    p.add_argument(flag, type=str2bool, nargs='?', const=True, default=default, metavar='BOOL', help=help)


def _model_names() -> str:
    return ', '.join(timm.list_models('hornet*'))


def get_args_parser() -> argparse.ArgumentParser:
    """Every flag of the original main.py (same names, defaults and meaning), then the new ones.

    Boolean flags take true/false (yes/no, 1/0) as in the original, and alone mean true (``--eval``)."""
    p = _Parser(prog='main.py', description='HorNet training and evaluation.', add_help=True, allow_abbrev=False,
                formatter_class=_HelpFormatter,
                epilog='Boolean flags (BOOL) take true/false, yes/no or 1/0; given alone they mean true. '
                       'TRAINING.md explains the recipes, resuming and evaluation.')
    p.add_argument('--config', default=None, type=str, metavar='YAML',
                   help='YAML file of flag defaults, keys named as the flags (configs/*.yaml); the command line wins')
    p.add_argument('--batch_size', default=64, type=int, help='batch size of one process (per GPU)')
    p.add_argument('--epochs', default=300, type=int, help='number of training epochs')
    p.add_argument('--update_freq', default=1, type=int,
                   help='micro-batches accumulated per optimizer step; effective batch = processes x --batch_size '
                        'x --update_freq')
    p.add_argument('--recipe_batch_size', default=None, type=int, metavar='N',
                   help='effective batch the recipe (its --lr) was tuned for, set by the recipe configs; a warning '
                        'names the --update_freq that restores it when the run differs')
    # model
    p.add_argument('--model', default='hornet_tiny_gf', type=str, metavar='MODEL',
                   help=f'model to train: a HorNet variant ({_model_names()}) or any timm model name')
    p.add_argument('--drop_path', type=float, default=0, metavar='PCT', help='stochastic depth (drop path) rate')
    p.add_argument('--input_size', default=224, type=int, help='image size in pixels (a multiple of 32)')
    p.add_argument('--layer_scale_init_value', default=1e-6, type=float, help='initial value of the layer scales')
    # EMA
    _bool(p, '--model_ema', False, 'keep an exponential moving average (EMA) of the weights')
    p.add_argument('--model_ema_decay', type=float, default=0.9999, help='EMA decay per optimizer step')
    _bool(p, '--model_ema_force_cpu', False, 'keep the EMA weights on the CPU')
    _bool(p, '--model_ema_eval', False, 'also evaluate the EMA weights (and keep checkpoint-best-ema.pth)')
    # optimizer
    p.add_argument('--opt', default='adamw', type=str, metavar='OPTIMIZER', help='optimizer (any timm optimizer name)')
    p.add_argument('--opt_eps', default=1e-8, type=float, metavar='EPSILON', help='optimizer epsilon')
    p.add_argument('--opt_betas', default=None, type=float, nargs='+', metavar='BETA',
                   help="optimizer betas (default: the optimizer's own)")
    p.add_argument('--clip_grad', type=float, default=None, metavar='NORM',
                   help='clip the gradient norm to NORM once per optimizer step (default: no clipping)')
    p.add_argument('--momentum', type=float, default=0.9, metavar='M', help='SGD momentum')
    p.add_argument('--weight_decay', type=float, default=0.05, help='weight decay')
    p.add_argument('--weight_decay_end', type=float, default=None,
                   help='final weight decay of a cosine schedule (default: constant --weight_decay)')
    p.add_argument('--lr', type=float, default=4e-3, metavar='LR', help='peak learning rate (not rescaled)')
    p.add_argument('--layer_decay', type=float, default=1.0, help='layer-wise lr decay (1.0: off)')
    p.add_argument('--min_lr', type=float, default=1e-6, metavar='LR', help='final learning rate of the cosine')
    p.add_argument('--warmup_epochs', type=int, default=20, metavar='N', help='epochs of linear lr warm-up')
    p.add_argument('--warmup_steps', type=int, default=-1, metavar='N',
                   help='optimizer steps of warm-up; overrides --warmup_epochs if > 0')
    # augmentation
    p.add_argument('--color_jitter', type=float, default=0.4, metavar='PCT', help='color jitter strength')
    p.add_argument('--aa', type=str, default='rand-m9-mstd0.5-inc1', metavar='NAME',
                   help="timm auto-augment policy ('none': off)")
    p.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    p.add_argument('--train_interpolation', type=str, default='bicubic',
                   help='interpolation of the training crops (random, bilinear, bicubic)')
    p.add_argument('--crop_pct', type=float, default=None,
                   help='evaluation center-crop fraction below 384 px (default: 224/256)')
    p.add_argument('--reprob', type=float, default=0.25, metavar='PCT', help='random erasing probability')
    p.add_argument('--remode', type=str, default='pixel', help='random erasing mode')
    p.add_argument('--recount', type=int, default=1, help='random erasing count')
    _bool(p, '--resplit', False, 'accepted for compatibility with the original; no effect')
    p.add_argument('--mixup', type=float, default=0.8, help='mixup alpha (0: off)')
    p.add_argument('--cutmix', type=float, default=1.0, help='cutmix alpha (0: off)')
    p.add_argument('--cutmix_minmax', type=float, nargs='+', default=None,
                   help='cutmix min/max area ratio (overrides --cutmix alpha)')
    p.add_argument('--mixup_prob', type=float, default=1.0, help='probability of mixup or cutmix per batch')
    p.add_argument('--mixup_switch_prob', type=float, default=0.5, help='probability of cutmix instead of mixup')
    p.add_argument('--mixup_mode', type=str, default='batch', choices=['batch', 'pair', 'elem'],
                   help='mixup/cutmix parameters per batch, pair or element')
    # fine-tuning
    p.add_argument('--finetune', default='', metavar='FILE',
                   help='weights to start from (original, mmpretrain or own format): a file, a URL or a released '
                        'name such as hornet_tiny_7x7.in1k (downloaded once into the torch hub cache)')
    _bool(p, '--pretrained', False, "start from the model's default released weights (= --finetune <model>.in1k "
          'or .in22k)')
    p.add_argument('--head_init_scale', default=1.0, type=float, help='scale of the new classifier at init')
    p.add_argument('--model_key', default='model|module', type=str,
                   help='--finetune: checkpoint keys that may hold the weights, tried in order')
    p.add_argument('--model_prefix', default='', type=str, help='--finetune: prefix stripped from weight names')
    # data
    p.add_argument('--data_path', default='/path/to/dataset', type=str,
                   help='data set folder (IMNET: train/ and val/ inside)')
    p.add_argument('--eval_data_path', default=None, type=str, help='validation folder for --data_set image_folder')
    p.add_argument('--nb_classes', default=1000, type=int,
                   help='number of classes (checked against the data; image_folder/QUICKSTART: from the data)')
    _bool(p, '--imagenet_default_mean_and_std', True, 'normalize with the ImageNet mean/std (false: 0.5/0.5)')
    p.add_argument('--data_set', default='IMNET', choices=['CIFAR', 'CIFAR10', 'IMNET', 'image_folder', 'QUICKSTART'],
                   help='data set layout (see TRAINING.md)')
    p.add_argument('--output_dir', default='', metavar='DIR',
                   help='where checkpoints, log.txt, train.log and TensorBoard logs go (empty: nothing is saved)')
    p.add_argument('--log_dir', default=None, metavar='DIR',
                   help="TensorBoard directory (default: <output_dir>/tb; '' for none)")
    p.add_argument('--device', default='cuda',
                   help='cuda (each process on the GPU of its local rank), cuda:N or cpu')
    p.add_argument('--seed', default=0, type=int, help='random seed')
    p.add_argument('--resume', default='', metavar='PATH',
                   help='checkpoint to resume from, or a run directory (its newest checkpoint); with --eval, the '
                        'weights to evaluate (also a URL or a released name such as hornet_tiny_7x7.in1k)')
    _bool(p, '--auto_resume', True, 'resume from the newest checkpoint in --output_dir')
    _bool(p, '--save_ckpt', True, 'save checkpoints in --output_dir')
    p.add_argument('--save_ckpt_freq', default=1, type=int, help='save a checkpoint every N epochs (and the last)')
    p.add_argument('--save_ckpt_num', default=3, type=int, help='epoch checkpoints kept (0: all)')
    p.add_argument('--start_epoch', default=0, type=int, metavar='N', help='first epoch when not resuming')
    _bool(p, '--eval', False, 'evaluate the weights of --resume and exit')
    _bool(p, '--dist_eval', True, 'evaluate on all processes (false: rank 0 only); exact either way')
    _bool(p, '--disable_eval', False, 'no validation during training')
    p.add_argument('--num_workers', default='auto', type=_num_workers, metavar='{auto,N}',
                   help='data loading processes per training process; auto: one on the CPU, on a GPU the cores '
                        'of this process less one, at most 10')
    _bool(p, '--pin_mem', True, 'pinned host memory for faster host-to-GPU copies')
    p.add_argument('--data_backend', type=str, default='pil', choices=['pil', 'dali'],
                   help='pil: PIL/torchvision workers emit uint8, normalise + random erasing on the device; '
                        'dali: NVIDIA DALI decode and augmentation (see TRAINING.md, Data backends)')
    p.add_argument('--threads', default=0, type=int, metavar='N',
                   help="torch's intra-op CPU threads per process; 0: OMP_NUM_THREADS if set, else the cores "
                        'available divided among the processes and data loading workers on this machine')
    # distributed
    p.add_argument('--world_size', default=1, type=int,
                   help='number of processes (the launcher decides; kept for compatibility)')
    p.add_argument('--local_rank', '--local-rank', default=-1, type=int, help='ignored: LOCAL_RANK is used')
    _bool(p, '--dist_on_itp', False, 'read ranks from OpenMPI (mpirun) variables')
    p.add_argument('--dist_url', default='env://', help='process group initialisation URL')
    _bool(p, '--use_amp', False, 'mixed precision (see --amp_dtype)')
    # wandb
    _bool(p, '--enable_wandb', False, 'log to Weights & Biases (pip install wandb)')
    p.add_argument('--project', default='hornet', type=str, help='wandb project')
    _bool(p, '--wandb_ckpt', False, 'accepted for compatibility with the original; no effect')
    p.add_argument('--exp_name', default='default', type=str, help='wandb run name')
    # new in this project
    p.add_argument('--amp_dtype', default='float16', choices=AMP_DTYPES,
                   help='precision under --use_amp true: float16 (with loss scaling) or bfloat16')
    _bool(p, '--channels_last', False, 'channels-last memory layout for inputs and convolution weights')
    _bool(p, '--compile', False, 'torch.compile the model')
    p.add_argument('--grad_checkpointing', default='none', choices=['none', 'selective', 'full'],
                   help='activation memory: selective recomputes norms/GELU/gating (~40%% less, ~7%% slower on '
                        'CPU); full recomputes each block (~8x less)')
    p.add_argument('--fused_adamw', type=_auto_bool, nargs='?', const=True, default=None,
                   metavar='{auto,true,false}',
                   help="torch's fused AdamW kernel; auto: whenever --opt is adamw (CPU or CUDA) (default: auto)")
    p.add_argument('--gf_impl', default='fft', choices=list(GF_IMPLS),
                   help='Global Filter implementation (kron: opt-in, unmeasured on GPU; see BENCHMARKS.md)')
    _bool(p, '--skip_bad_images', False, 'skip unreadable images (logged and counted) instead of failing')
    p.add_argument('--train_crop_scale', type=float, nargs=2, default=[0.08, 1.0], metavar=('MIN', 'MAX'),
                   help='area range of the training RandomResizedCrop')
    p.add_argument('--print_freq', default=10, type=int, help='progress line every N iterations')
    _bool(p, '--save_safetensors', False, 'also write model/EMA weights as .safetensors next to each checkpoint')
    return p


def _yaml_defaults(parser: argparse.ArgumentParser, path: str) -> Dict[str, Any]:
    """Read a YAML config (safe loader) into typed flag defaults; unknown keys and bad values are errors."""
    import yaml
    if not os.path.isfile(path):
        raise UserError(f"--config {path}: file not found")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--config {path}: not valid YAML ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of flag: value, got {type(data).__name__}")
    actions = {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}
    out: Dict[str, Any] = {}
    for key, value in data.items():
        key = str(key).lstrip('-').replace('-', '_')
        if key not in actions:
            close = difflib.get_close_matches(key, list(actions), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ''
            raise UserError(f"--config {path}: unknown key '{key}'{hint}")
        action = actions[key]
        try:
            if value is None:
                out[key] = None
            elif action.nargs in ('+', '*') or isinstance(action.nargs, int):
                items = value if isinstance(value, list) else [value]
                if isinstance(action.nargs, int) and len(items) != action.nargs:
                    raise ValueError(f"expected a list of {action.nargs} values")
                out[key] = [action.type(str(v)) if action.type else v for v in items]
            elif isinstance(value, (list, dict)):
                raise ValueError(f"expected a single value, got {type(value).__name__}")
            else:
                conv = action.type or str
                out[key] = conv(value) if conv is str2bool else conv(str(value))
            if action.choices is not None and out[key] is not None and out[key] not in action.choices:
                raise ValueError(f"must be one of {', '.join(map(str, action.choices))}")
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise UserError(f"--config {path}: bad value for '{key}': {value!r} ({e})") from None
    return out


def read_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """CLI + optional YAML (``--config``: defaults, CLI wins) through ``parser``, with the data-set defaults
    resolved; shared with run_with_submitit.py, whose parser extends this one."""
    return read_flags_explicit(parser, argv)[0]


def read_flags_explicit(parser: argparse.ArgumentParser,
                        argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Set[str]]:
    """:func:`read_flags`, and the flags the user gave (on the command line or in the YAML): only flags left at
    their defaults may be taken from a checkpoint (run_settings.py)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--config', default=None)
    known, _ = pre.parse_known_args(argv)
    from_yaml: Dict[str, Any] = {}
    if known.config:
        from_yaml = _yaml_defaults(parser, known.config)
        parser.set_defaults(**from_yaml)
    args = parser.parse_args(argv)
    explicit = set(from_yaml) | run_settings.flags_on_command_line(parser, argv)
    if args.data_set == 'QUICKSTART' and args.data_path == parser.get_default('data_path'):
        args.data_path = os.path.join('.', 'data', 'quickstart')  # the original default is a cluster path
    if args.data_set != 'IMNET' and args.nb_classes == parser.get_default('nb_classes'):
        args.nb_classes = None  # class count from the data (an explicit --nb_classes is checked against it)
    return args, explicit


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """CLI + optional YAML (``--config``), parsed once, completed from the checkpoint, validated once."""
    return parse_run_args(argv)[0]


def parse_run_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, run_settings.Inherited]:
    """:func:`parse_args`, and what was taken from the checkpoint evaluated or resumed (the model, resolution,
    evaluation transform: flags not given take the checkpoint's values; see run_settings.py), for
    :func:`main` to log once logging is set up."""
    parser = get_args_parser()
    args, explicit = read_flags_explicit(parser, argv)
    inherited = run_settings.inherit_from_checkpoint(args, explicit, parser)
    try:
        validate_args(args)
    except UserError as e:
        if not inherited.taken:
            raise
        raise UserError(f"{e} (flags taken from {inherited.checkpoint}: {inherited.taken_flags()})") from None
    return args, inherited


def validate_args(args: argparse.Namespace) -> None:
    """All checks of flag values in one place; each failure is one line naming the flag and the fix."""
    if args.model not in timm.list_models():
        close = difflib.get_close_matches(args.model, timm.list_models('hornet*'), n=4, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ''
        raise UserError(f"unknown --model '{args.model}'{hint} (python main.py --help lists the HorNet variants)")
    positive = {'batch_size': args.batch_size, 'update_freq': args.update_freq, 'input_size': args.input_size,
                'save_ckpt_freq': args.save_ckpt_freq, 'print_freq': args.print_freq}
    if args.recipe_batch_size is not None:
        positive['recipe_batch_size'] = args.recipe_batch_size
    if not args.eval:
        positive['epochs'] = args.epochs
    for name, v in positive.items():
        if v is None or v <= 0:
            raise UserError(f"--{name} must be a positive integer (got {v})")
    for name in ('lr', 'min_lr', 'weight_decay', 'drop_path', 'smoothing', 'reprob', 'mixup', 'cutmix', 'opt_eps',
                 'layer_decay', 'model_ema_decay'):
        v = getattr(args, name)
        if v is not None and (not math.isfinite(v) or v < 0):
            raise UserError(f"--{name} must be a non-negative number (got {v})")
    if args.weight_decay_end is not None and args.weight_decay_end < 0:
        raise UserError(f"--weight_decay_end must be non-negative (got {args.weight_decay_end})")
    if not 0 <= args.drop_path < 1:
        raise UserError(f"--drop_path must be in [0, 1) (got {args.drop_path})")
    if args.input_size % 32 != 0:
        raise UserError(f"--input_size must be divisible by 32 for HorNet's four downsamplings (got "
                        f"{args.input_size}; try {max(32, round(args.input_size / 32) * 32)})")
    opt_name = args.opt.lower()
    if opt_name.startswith('lookahead_'):
        opt_name = opt_name[len('lookahead_'):]
    if opt_name not in timm.optim.list_optimizers():
        close = difflib.get_close_matches(opt_name, timm.optim.list_optimizers(), n=4)
        raise UserError(f"unknown --opt '{args.opt}'" + (f"; did you mean {', '.join(close)}?" if close else '') +
                        " (any timm optimizer name, e.g. adamw, sgd, lamb)")
    if args.grad_checkpointing == 'selective' and not args.model.startswith('hornet_'):
        raise UserError(f"--grad_checkpointing selective is for HorNet models, not {args.model} (use full or none)")
    if args.fused_adamw and opt_name != 'adamw':
        raise UserError(f"--fused_adamw true needs --opt adamw (got --opt {args.opt}); set --fused_adamw auto")
    if args.num_workers != 'auto' and args.num_workers < 0:
        raise UserError(f"--num_workers must be >= 0 or auto (got {args.num_workers})")
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0 (got {args.threads}; 0 chooses from the cores available)")
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        raise UserError(f"--crop_pct must be in (0, 1] (got {args.crop_pct})")
    if args.clip_grad is not None and args.clip_grad < 0:
        raise UserError(f"--clip_grad must be positive (got {args.clip_grad})")
    resolve_released_names(args)
    if args.eval and not args.resume and not args.finetune:
        raise UserError("--eval true needs the checkpoint to evaluate: add --resume /path/to/checkpoint.pth")
    for flag in ('resume', 'finetune'):
        path = getattr(args, flag)
        if path and flag == 'resume' and os.path.isdir(path):
            checkpoints.resolve_resume_path(path)  # a run directory: an error if it holds no checkpoint
            continue
        if path and os.path.isdir(path):
            raise UserError(f"--{flag} {path} is a directory; pass the weights file")
        if path and not path.startswith(('http://', 'https://')) and not os.path.isfile(path):
            why = not_a_released_name(path)
            raise UserError(f"--{flag} {path}: file not found" + (f", and {why}" if why else ' (check the path)'))
        if path and not path.startswith(('http://', 'https://')):
            checkpoints.check_checkpoint_file(path, f'--{flag}')  # e.g. a log.txt given by mistake
    mixup_on = not args.eval and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None)
    if mixup_on and args.batch_size % 2 != 0 and args.mixup_mode in ('batch', 'pair'):
        raise UserError(f"--mixup/--cutmix need an even --batch_size (got {args.batch_size}); "
                        f"use {args.batch_size + 1} or set --mixup 0 --cutmix 0")
    if args.device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise UserError(utils.no_cuda_message(args.device))
    if args.use_amp and args.amp_dtype == 'float16' and args.device == 'cpu':
        raise UserError("--use_amp true with float16 is not supported on CPU; add --amp_dtype bfloat16")
    if args.output_dir and os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise UserError(f"--output_dir {args.output_dir} exists and is not a directory")
    if args.enable_wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("--enable_wandb true needs the wandb package: pip install wandb") from None


def resolve_released_names(args: argparse.Namespace) -> None:
    """--pretrained and released names (``--finetune hornet_tiny_7x7.in1k``) become the release's URL, which the
    loaders download once into the hash-checked cache. Running it again on its result changes nothing."""
    if args.pretrained:
        if args.finetune:
            raise UserError(f"--pretrained and --finetune {args.finetune} both choose the starting weights; "
                            f"give only one")
        found = default_released(args.model)
        if found is None:
            with_weights = ', '.join(dict.fromkeys(f.variant for f in RELEASED))
            raise UserError(f"--pretrained: {args.model} has no released weights (variants with released weights: "
                            f"{with_weights}); use --finetune FILE for other weights")
        args.finetune, args.pretrained = found.url, False
    for flag in ('finetune', 'resume'):
        found = find_released(getattr(args, flag))
        if found is None:
            continue
        if flag == 'resume' and not args.eval:
            raise UserError(f"--resume {found.name}: released weights have no optimizer state to resume training "
                            f"from; use --finetune {found.name} to train from them (or add --eval true)")
        setattr(args, flag, found.url)


# --------------------------------------------------------------------------------------------------- main

def _sha256(path: str) -> str:
    from models.downloads import resolve_local_path
    path = resolve_local_path(path)  # a URL: its cached download
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: str, obj: Any) -> None:
    tmp = os.path.join(os.path.dirname(path) or '.', '.tmp-' + os.path.basename(path))
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _finetune_state_dict(args: argparse.Namespace) -> Dict[str, Any]:
    """Weights for --finetune: any supported format; --model_key picks the entry, --model_prefix is stripped."""
    from models.weights import safe_load
    try:
        raw = safe_load(args.finetune)
    except CheckpointError as e:
        raise checkpoints.without_torch_advice(e) from None
    sd = None
    if isinstance(raw, dict):
        for key in args.model_key.split('|'):
            if isinstance(raw.get(key), dict):
                sd = raw[key]
                _logger.info('Fine-tuning from %s[%r]', args.finetune, key)
                break
    sd = dict(raw if sd is None else sd)
    if args.model_prefix:
        sd = {k[len(args.model_prefix):] if k.startswith(args.model_prefix) else k: v for k, v in sd.items()}
    return sd


# --------------------------------------------------------------------------------------------------- phases
# main() is the run in named phases; each phase takes typed inputs and returns a typed result:
#   setup_run -> build_data -> build_model -> (evaluate_checkpoint | build_train_data -> build_optim ->
#   maybe_resume -> train_loop)


@dataclass
class Run:
    """This process's view of the run: the validated flags, who this process is, and the precision."""
    args: argparse.Namespace
    ds: utils.DistState
    amp_dtype: Optional[torch.dtype]  # autocast dtype under --use_amp; None: fp32


@dataclass
class Data:
    """The data sets and the class count the model is built for."""
    train: Optional[Dataset]  # None under --eval
    val: Optional[Dataset]    # None under --disable_eval (unless --eval)
    nb_classes: int


@dataclass
class Net:
    """The model in its three roles, and its EMA."""
    model: nn.Module          # what evaluation runs (DDP-wrapped when distributed)
    without_ddp: nn.Module    # the module whose weights are saved and loaded
    train_model: nn.Module    # what training runs (``model``, compiled under --compile)
    ema: Optional[ModelEmaV3]
    n_parameters: int


@dataclass
class TrainData:
    """The training stream: exact, resumable sampling cut to whole optimizer steps per epoch."""
    sampler: datasets.ResumableSampler
    loader: DataLoader
    steps_per_epoch: int      # optimizer steps per epoch
    mixup_fn: Optional[Mixup]


@dataclass
class Optim:
    """What one optimizer step needs besides the model: the loss, the optimizer, loss scaling and schedules."""
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lr_fn: Callable[[int], float]
    wd_fn: Callable[[int], float]


@dataclass
class Start:
    """Where training starts: the counters, and the checkpoint they come from (None: from scratch)."""
    state: engine.TrainState
    checkpoint: Optional[str] = None


def resolve_num_workers(args: argparse.Namespace, device: torch.device) -> None:
    """``--num_workers auto`` becomes a count (logged), here on the machine that trains: run_with_submitit
    parses the flags on another one."""
    if args.num_workers == 'auto':
        args.num_workers, why = utils.auto_num_workers(device.type)
        _logger.info('Data loading workers per process: %d (--num_workers auto: %s; --num_workers N to change)',
                     args.num_workers, why)


def setup_run(args: argparse.Namespace, inherited: Optional[run_settings.Inherited] = None) -> Run:
    """Start the process group; check that every output can be written (before any data is read); start logging
    and the seeds; pick the device settings and the precision."""
    ds = utils.init_distributed(args.device, args.dist_url, args.world_size, args.dist_on_itp)
    problem = output_check.output_problem(args.output_dir, args.eval, tensorboard_dir(args)) if ds.is_main else None
    problem = utils.broadcast_from_main(problem)  # rank 0 alone writes and checks; every rank stops on its answer
    if problem:
        raise UserError(problem)
    utils.setup_logging(args.output_dir or None)
    if inherited is not None and ds.is_main:
        inherited.log(_logger)
    if args.local_rank not in (-1, ds.local_rank):
        _logger.info('--local_rank %d ignored in favour of LOCAL_RANK=%d', args.local_rank, ds.local_rank)
    resolve_num_workers(args, ds.device)
    utils.set_intra_op_threads(args.threads, args.num_workers)
    torch.manual_seed(args.seed + ds.rank)
    random.seed(args.seed + ds.rank)
    np.random.seed(args.seed + ds.rank)
    if ds.device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = {'float16': torch.float16, 'bfloat16': torch.bfloat16}[args.amp_dtype] if args.use_amp else None
    return Run(args=args, ds=ds, amp_dtype=amp_dtype)


def build_data(run: Run) -> Data:
    """The validation set (unless --disable_eval) and the training set (unless --eval)."""
    args, ds = run.args, run.ds
    want_val = not args.disable_eval or args.eval
    dataset_val, nb_val = (None, None)
    resolve_num_workers(args, ds.device)  # done by setup_run; here too for callers of the phases alone
    loaders.log_loader_resources(args.num_workers, ds.rank, args.data_backend)
    if args.data_set == 'QUICKSTART' and ds.is_main:
        dataset_val, nb_val = datasets.build_dataset(False, args)  # rank 0 writes the generated images once
    utils.barrier()
    if want_val and dataset_val is None:
        dataset_val, nb_val = datasets.build_dataset(False, args)
    elif not want_val:
        dataset_val = None
    dataset_train = None
    nb_classes = nb_val
    if not args.eval:
        dataset_train, nb_classes = datasets.build_dataset(True, args)
    assert nb_classes is not None
    return Data(train=dataset_train, val=dataset_val, nb_classes=nb_classes)


def build_model(run: Run, nb_classes: int) -> Net:
    """Create the model (with --finetune weights), move and lay it out, count it, add the EMA, wrap it in DDP."""
    args, ds = run.args, run.ds
    hornet_kwargs = dict(layer_scale_init_value=args.layer_scale_init_value, head_init_scale=args.head_init_scale,
                         gf_impl=args.gf_impl) if args.model.startswith('hornet_') else {}
    model = timm.create_model(args.model, num_classes=nb_classes, drop_path_rate=args.drop_path, **hornet_kwargs)
    if args.finetune:
        sd = checkpoint_filter_fn(select_in1k_head_rows(_finetune_state_dict(args), nb_classes, args.finetune),
                                  model, path=args.finetune)
        model.load_state_dict(sd, strict=True)
    model.to(ds.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.grad_checkpointing == 'full':
        model.set_grad_checkpointing(True)
    elif args.grad_checkpointing == 'selective':
        model.set_selective_checkpointing(True)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        gflops = utils.count_flops(model, args.input_size) / 1e9
    except Exception as e:  # counting is informative only
        _logger.warning('FLOP count failed: %s', e)
        gflops = float('nan')
    _logger.info('Model %s: %.2fM params, %.3g GFLOPs (MACs) at %d px, %d classes', args.model,
                 n_parameters / 1e6, gflops, args.input_size, nb_classes)

    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay,
                               device=torch.device('cpu') if args.model_ema_force_cpu else None)
    model_without_ddp = model
    if ds.distributed:
        # DDP lays its buckets out like the parameters: give them the strides their gradients will have
        changed = utils.match_param_strides_to_grads(model, args.input_size, channels_last=args.channels_last)
        _logger.debug('Parameters re-strided to their gradients\' layout: %s', changed)
        # gradient_as_bucket_view: gradients live in DDP's all-reduce buckets instead of beside them (one copy of
        # the gradients less per process, 0.8 GB for HorNet-L in fp32)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ds.device.index] if ds.device.type == 'cuda' else None, gradient_as_bucket_view=True)
    train_model = torch.compile(model) if args.compile else model
    return Net(model=model, without_ddp=model_without_ddp, train_model=train_model, ema=model_ema,
               n_parameters=n_parameters)


class Evaluator:
    """Exact evaluation of the validation set: no padding, every sample counted once (a fresh loader per call)."""

    def __init__(self, run: Run, dataset: Optional[Dataset]):
        self.run = run
        self.dataset = dataset

    def loader(self) -> DataLoader:
        args, ds = self.run.args, self.run.ds
        assert self.dataset is not None
        if not args.dist_eval and ds.distributed:
            sampler = datasets.EvalShardSampler(len(self.dataset), 1, 0) if ds.is_main else \
                datasets.EvalShardSampler(0, 1, 0)
        else:
            sampler = datasets.EvalShardSampler(len(self.dataset), ds.world_size, ds.rank)
        loader = datasets.build_loader(self.dataset, sampler, int(1.5 * args.batch_size), args.num_workers,
                                       args.pin_mem, drop_last=False, persistent_workers=False)
        return loaders.wrap_loader(loader, args, ds.device)  # uint8 -> normalised on the device

    def __call__(self, net: nn.Module, header: str = 'Test:', log_result: bool = True) -> Dict[str, float]:
        loader = self.loader()
        return engine.evaluate(net, loader, len(loader), amp_dtype=self.run.amp_dtype,
                               channels_last=self.run.args.channels_last, print_freq=self.run.args.print_freq,
                               header=header, log_result=log_result)


def evaluate_checkpoint(run: Run, net: Net, evaluate: Evaluator) -> int:
    """--eval: the weights of --resume (or --finetune), and with --model_ema_eval its EMA; writes eval.json."""
    args, ds = run.args, run.ds
    path = checkpoints.resolve_resume_path(args.resume) if args.resume else ''
    if path != args.resume:
        _logger.info('Evaluating %s, the newest checkpoint in %s', path, args.resume)
    ckpt = checkpoints.load_training_checkpoint(path) if path else None
    if ckpt is not None:
        _load_weights(net.without_ddp, ckpt, 'model', path, args.model)
        _warn_other_classes(run, ckpt, path, getattr(evaluate.dataset, 'classes', None), 'the evaluation data',
                            args.eval_data_path or args.data_path)
    stats = evaluate(net.model, log_result=False)
    result = {'checkpoint': path or args.finetune, 'model': args.model, 'input_size': args.input_size, **stats}
    ema_stats = None
    if ckpt is not None and args.model_ema_eval and ckpt.get('model_ema') is not None:
        _load_weights(net.without_ddp, ckpt, 'model_ema', path, args.model)
        ema_stats = evaluate(net.model, header='Test (EMA):', log_result=False)
        result.update({f'{k}_ema': v for k, v in ema_stats.items()})
    if ds.is_main:
        print(engine.result_line(stats), flush=True)  # the result, on stdout, once; before any write can fail
        if ema_stats is not None:
            print(engine.result_line(ema_stats) + ' (EMA)', flush=True)
        result['sha256'] = _sha256(path or args.finetune)
        if args.output_dir:
            out = os.path.join(args.output_dir, 'eval.json')
            try:
                os.makedirs(args.output_dir, exist_ok=True)
                _write_json_atomic(out, result)
            except OSError as e:
                raise UserError(f"cannot write {out}: {e.strerror or e} (the result is printed above; free disk "
                                f"space or fix the permissions of {args.output_dir})") from None
            _logger.info('Wrote %s', out)
    return EXIT_OK


def _warn_other_classes(run: Run, ckpt: Dict[str, Any], path: str, classes: Optional[Sequence[str]],
                        data: str, folder: str) -> None:
    """Warn when the data's classes are not (in label order) the ones the checkpoint was trained on."""
    where = f"{data} (--data_set {run.args.data_set} {folder})"
    message = run_settings.class_names_warning(ckpt.get('class_names'), classes, path, where)
    if message and run.ds.is_main:
        _logger.warning(message)


def _load_weights(module: nn.Module, ckpt: Dict[str, Any], key: str, path: str, model_name: str) -> None:
    """Load ``ckpt[key]`` into ``module`` strictly; a checkpoint of another variant names the one it records."""
    try:
        sd = checkpoint_filter_fn(ckpt[key], module, path=path, allow_new_head=False)
    except CheckpointError as e:
        recorded = (ckpt.get('args') or {}).get('model')
        if recorded and recorded != model_name:
            raise CheckpointError(f"{path} holds a {recorded} (the --model its args record), not {model_name}: "
                                  f"add --model {recorded}") from None
        raise e from None
    module.load_state_dict(sd, strict=True)


def build_train_data(run: Run, data: Data) -> TrainData:
    """The training loader (exact, resumable sampling), the optimizer steps per epoch, and mixup/cutmix."""
    args, ds = run.args, run.ds
    assert data.train is not None
    sampler = datasets.ResumableSampler(len(data.train), ds.world_size, ds.rank, shuffle=True, seed=args.seed)
    if args.data_backend == 'dali':  # decode + augment in NVIDIA DALI (dali_backend.py)
        import dali_backend
        loader = dali_backend.build_dali_train_loader(data.train, sampler, args, ds.device)
    else:
        loader = datasets.build_loader(data.train, sampler, args.batch_size, args.num_workers, args.pin_mem,
                                       drop_last=True)
    loader = loaders.wrap_loader(loader, args, ds.device)  # uint8 -> normalised + erased on the device
    batches_per_epoch = sampler.per_replica // args.batch_size
    steps_per_epoch = batches_per_epoch // args.update_freq
    if steps_per_epoch == 0:
        raise UserError(f"one epoch has {sampler.per_replica} samples per process, fewer than --batch_size "
                        f"{args.batch_size} x --update_freq {args.update_freq}; lower them or add data")
    eff_batch = args.batch_size * args.update_freq * ds.world_size
    _logger.info('Effective batch %d = %d (batch) x %d (update_freq) x %d (processes); LR %.3g; %d optimizer '
                 'steps per epoch', eff_batch, args.batch_size, args.update_freq, ds.world_size, args.lr,
                 steps_per_epoch)
    if args.recipe_batch_size and eff_batch != args.recipe_batch_size:
        _logger.warning(recipe_batch_warning(eff_batch, args.recipe_batch_size, args.batch_size, args.update_freq,
                                             ds.world_size, args.lr))

    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=data.nb_classes)
    return TrainData(sampler=sampler, loader=loader, steps_per_epoch=steps_per_epoch, mixup_fn=mixup_fn)


def recipe_batch_warning(eff_batch: int, recipe: int, batch_size: int, update_freq: int, processes: int,
                         lr: float) -> str:
    """The warning for a run whose effective batch is not the one its recipe (and --lr) was tuned for, with the
    --update_freq (or --batch_size and --update_freq) that restores it on these processes."""
    fix = f'no --batch_size/--update_freq gives exactly {recipe} on {processes} processes'
    if recipe % (batch_size * processes) == 0:
        fix = f'run with --update_freq {recipe // (batch_size * processes)} to restore it'
    else:
        for b in range(batch_size - 1, 0, -1):
            if recipe % (b * processes) == 0:
                fix = f'run with --batch_size {b} --update_freq {recipe // (b * processes)} to restore it'
                break
    procs = f"{processes} process{'es' if processes != 1 else ''}"
    return (f'Effective batch {eff_batch} ({procs} x --batch_size {batch_size} x '
            f'--update_freq {update_freq}) is not the {recipe} this recipe was tuned for (--lr {lr:g} assumes '
            f'{recipe}): {fix} (or set --recipe_batch_size {eff_batch} if the change is intended)')


def build_optim(run: Run, net: Net, train: TrainData) -> Optim:
    """The loss (soft targets under mixup), the optimizer, the fp16 loss scaler and the LR/WD schedules."""
    args, ds = run.args, run.ds
    if train.mixup_fn is not None:
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing > 0.:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()

    optimizer = create_optimizer(net.without_ddp, args.opt, args.lr, args.weight_decay, opt_eps=args.opt_eps,
                                 opt_betas=args.opt_betas, momentum=args.momentum, layer_decay=args.layer_decay,
                                 fused=args.fused_adamw)
    scaler = torch.amp.GradScaler(ds.device.type, enabled=run.amp_dtype == torch.float16)
    lr_fn = cosine_schedule(args.lr, args.min_lr, args.epochs, train.steps_per_epoch,
                            warmup_epochs=args.warmup_epochs, warmup_steps=args.warmup_steps)
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    wd_fn = cosine_schedule(args.weight_decay, wd_end, args.epochs, train.steps_per_epoch)
    return Optim(criterion=criterion, optimizer=optimizer, scaler=scaler, lr_fn=lr_fn, wd_fn=wd_fn)


def maybe_resume(run: Run, net: Net, optim: Optim, steps_per_epoch: int,
                 class_names: Optional[Sequence[str]] = None) -> Start:
    """Where training starts: --resume (a file, or a run directory's newest checkpoint), else the newest
    checkpoint in --output_dir (auto-resume), else --start_epoch. Restores weights, optimizer, scaler, EMA,
    counters and the random streams. ``class_names``: the training data's, checked against the checkpoint's."""
    args, ds = run.args, run.ds
    state = engine.TrainState(epoch=args.start_epoch, global_step=args.start_epoch * steps_per_epoch)
    resume_path = checkpoints.resolve_resume_path(args.resume) if args.resume else ''
    if not resume_path and args.auto_resume and args.output_dir:
        found = checkpoints.find_resume_checkpoint(args.output_dir)
        resume_path = str(found) if found else ''
    if not resume_path:
        return Start(state)
    ck = checkpoints.load_training_checkpoint(resume_path)
    _load_weights(net.without_ddp, ck, 'model', resume_path, args.model)
    _logger.info('Resumed weights from %s', resume_path)
    _warn_other_classes(run, ck, resume_path, class_names, 'the training data', args.data_path)
    if 'optimizer' not in ck:
        return Start(state)
    if ck.get('epoch') is None:
        raise UserError(f"{resume_path} is a 'best' checkpoint of the original release and cannot be resumed "
                        f"from; use --finetune {resume_path} to start from its weights")
    optim.optimizer.load_state_dict(ck['optimizer'])
    if ck.get('scaler') and optim.scaler.is_enabled():
        optim.scaler.load_state_dict(ck['scaler'])
    if net.ema is not None and ck.get('model_ema') is not None:
        _load_weights(net.ema.module, ck, 'model_ema', resume_path, args.model)
    if ck['epoch_complete']:
        state.epoch, state.step_in_epoch = ck['epoch'] + 1, 0
    else:
        state.epoch, state.step_in_epoch = ck['epoch'], ck['step_in_epoch']
    gs = ck.get('global_step')
    state.global_step = gs if gs is not None else state.epoch * steps_per_epoch
    state.ema_updates = ck.get('ema_updates') or 0
    state.max_accuracy = ck.get('max_accuracy') or 0.0
    state.max_accuracy_ema = ck.get('max_accuracy_ema') or 0.0
    per_rank = ck.get('rng_per_rank')
    if ck.get('args', {}).get('seed') != args.seed:
        _logger.info('--seed differs from the checkpoint: random streams are not restored')
    elif isinstance(per_rank, list) and len(per_rank) == ds.world_size:
        checkpoints.set_rng_state(per_rank[ds.rank])
    elif ck.get('rng') is not None and ds.world_size == 1:
        checkpoints.set_rng_state(ck['rng'])
    else:  # saved with another process count: reseed per rank from (seed, rank, step)
        _logger.warning('Checkpoint RNG states do not match %d processes: reseeding from the global step; '
                        'the run continues correctly but not bitwise as an uninterrupted one',
                        ds.world_size)
        torch.manual_seed(args.seed + ds.rank + 1000003 * state.global_step)
        random.seed(args.seed + ds.rank + 1000003 * state.global_step)
        np.random.seed((args.seed + ds.rank + 1000003 * state.global_step) % 2 ** 32)
    _logger.info('Resuming at epoch %d, step %d of the epoch (global step %d)', state.epoch,
                 state.step_in_epoch, state.global_step)
    return Start(state, resume_path)


def report_complete(run: Run, start: Start) -> int:
    """A relaunch of a run that has done all its epochs: say so and where its results are, and stop."""
    args, state = run.args, start.state
    where = os.path.abspath(args.output_dir) if args.output_dir else os.path.dirname(os.path.abspath(
        start.checkpoint or '.'))
    best = ''
    if state.max_accuracy > 0:
        best = f'; best Acc@1 {state.max_accuracy:.2f}%'
        if os.path.isfile(os.path.join(where, checkpoints.BEST_NAME)):
            best += f' ({checkpoints.BEST_NAME})'
    _logger.info('This run is already complete: %s is the end of epoch %d, the last of --epochs %d%s. Results are '
                 'in %s (log.txt, train.log). To train longer raise --epochs; for a new run give another --output_dir.',
                 start.checkpoint, state.epoch - 1, args.epochs, best, where)
    return EXIT_OK


class Checkpointer:
    """Saves the training state of every rank into ``--output_dir`` (rank 0 writes; nothing without it)."""

    def __init__(self, run: Run, net: Net, optim: Optim, start: Start, class_names: Optional[Sequence[str]] = None):
        self.run, self.net, self.optim, self.state = run, net, optim, start.state
        self.class_names = list(class_names) if class_names else None  # label order, for --eval and predict.py

    def snapshot(self, epoch_complete: bool) -> Dict[str, Any]:
        net, optim, state = self.net, self.optim, self.state
        return {
            'model': net.without_ddp.state_dict(), 'optimizer': optim.optimizer.state_dict(),
            'epoch': state.epoch, 'scaler': optim.scaler.state_dict() if optim.scaler.is_enabled() else None,
            'model_ema': net.ema.module.state_dict() if net.ema is not None else None,
            'args': vars(self.run.args), 'global_step': state.global_step,
            'step_in_epoch': 0 if epoch_complete else state.step_in_epoch, 'epoch_complete': epoch_complete,
            'ema_updates': state.ema_updates, 'max_accuracy': state.max_accuracy,
            'max_accuracy_ema': state.max_accuracy_ema, 'class_names': self.class_names,
        }

    @property
    def enabled(self) -> bool:
        return bool(self.run.args.output_dir and self.run.args.save_ckpt)

    def save(self, name: Any, epoch_complete: bool) -> None:
        """Called on every rank (the RNG states of all ranks are gathered); rank 0 writes."""
        args, ds = self.run.args, self.run.ds
        if not self.enabled:
            return
        rngs = [checkpoints.rng_state()]
        if ds.distributed:
            rngs = [None] * ds.world_size
            torch.distributed.all_gather_object(rngs, checkpoints.rng_state())
        if not ds.is_main:
            return
        snap = self.snapshot(epoch_complete)
        snap['rng'] = rngs[0]
        snap['rng_per_rank'] = rngs
        path = checkpoints.save_training_checkpoint(args.output_dir, name, snap)
        if args.save_safetensors:
            from safetensors.torch import save_file
            tmp = os.path.join(args.output_dir, '.tmp-' + path.stem + '.safetensors')
            save_file({k: v.contiguous() for k, v in snap['model'].items()}, tmp)
            os.replace(tmp, str(path.with_suffix('.safetensors')))

    def save_preempt(self, _name: str) -> None:
        """engine's ``save_fn``: the exact mid-epoch state after a stop signal."""
        self.save('preempt', epoch_complete=False)
        utils.barrier()

    def interrupted_message(self) -> str:
        """One line for Ctrl-C: where training was, what is saved and how to go on."""
        args, state = self.run.args, self.state
        where = f'Interrupted (Ctrl-C) in epoch {state.epoch}, after {state.global_step} optimizer steps'
        if not self.enabled:
            return f"{where}; nothing was saved ({'--save_ckpt false' if args.output_dir else 'no --output_dir'})"
        newest = checkpoints.find_resume_checkpoint(args.output_dir, log=False)  # what a relaunch resumes from
        if newest is None:
            return (f'{where}, before the first checkpoint: nothing was saved in {args.output_dir}; the same command '
                    f'starts over')
        how = 'relaunch the same command to resume from it' if args.auto_resume else \
            f'relaunch with --resume {args.output_dir} to resume from it'
        return (f'{where}: the newest checkpoint is {newest} (progress after it is not saved); {how} '
                f'(a single Ctrl-C saves the step it was in)')

    def saved_on_ctrl_c_message(self) -> str:
        """One line for a Ctrl-C whose step was saved (checkpoint-preempt.pth) before stopping."""
        args, state = self.run.args, self.state
        path = os.path.join(args.output_dir, checkpoints.PREEMPT_NAME)
        how = 'relaunch the same command to continue from there' if args.auto_resume else \
            f'relaunch with --resume {path} to continue from there'
        return (f'Interrupted (Ctrl-C) in epoch {state.epoch}, after {state.global_step} optimizer steps: saved '
                f'{path} at that step; {how}, exactly as if uninterrupted')


def tensorboard_dir(args: argparse.Namespace) -> Optional[str]:
    """--log_dir if given ('' for none), else <output_dir>/tb, else none."""
    if args.log_dir is not None:
        return args.log_dir or None
    return os.path.join(args.output_dir, 'tb') if args.output_dir else None


class RunLog:
    """Where results go besides the console: TensorBoard, wandb and log.txt (rank 0 only).

    The TensorBoard writer is made at the first value written, so a relaunch that has nothing to add leaves no
    empty event file behind."""

    def __init__(self, run: Run, optimizer: torch.optim.Optimizer):
        args, ds = run.args, run.ds
        self.run, self.optimizer = run, optimizer
        self.tb_dir = tensorboard_dir(args) if ds.is_main else None
        self._tb = None
        self.wandb_run = None
        if args.enable_wandb and ds.is_main:
            import wandb
            self.wandb_run = wandb.init(project=args.project, name=args.exp_name, config=vars(args))

    def _add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb_dir is None:
            return
        if self._tb is None:
            from tensorboardX import SummaryWriter
            os.makedirs(self.tb_dir, exist_ok=True)
            self._tb = SummaryWriter(logdir=self.tb_dir)
        self._tb.add_scalar(tag, value, step)

    def on_step(self, st: engine.TrainState) -> None:
        group = self.optimizer.param_groups[0]
        self._add_scalar('train/lr', group['lr'] / group.get('lr_scale', 1), st.global_step)

    def test(self, epoch: int, test_stats: Dict[str, float]) -> None:
        for k in ('acc1', 'acc5', 'loss'):
            self._add_scalar(f'perf/test_{k}', test_stats[k], epoch)

    def epoch(self, epoch: int, train_stats: Dict[str, float], log_stats: Dict[str, Any]) -> None:
        self._add_scalar('train/loss', train_stats.get('loss', float('nan')), epoch)
        if self._tb is not None:
            self._tb.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(log_stats)

    def write_log_txt(self, log_stats: Dict[str, Any]) -> None:
        args = self.run.args
        if args.output_dir and self.run.ds.is_main:
            path = os.path.join(args.output_dir, 'log.txt')
            try:
                with open(path, 'a') as f:
                    f.write(json.dumps(log_stats) + '\n')
            except OSError as e:
                raise UserError(f"cannot write {path}: {e.strerror or e} (free disk space or fix the "
                                f"permissions, then relaunch to resume from the newest checkpoint)") from None

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def train_loop(run: Run, net: Net, data: Data, train: TrainData, optim: Optim, start: Start,
               evaluate: Evaluator) -> int:
    """Train from ``start`` to --epochs: per epoch train, evaluate, keep the best, save, prune, log."""
    args, ds, state = run.args, run.ds, start.state
    ckpt = Checkpointer(run, net, optim, start, getattr(data.train, 'classes', None))
    log = RunLog(run, optim.optimizer)
    step_cfg = engine.StepConfig(update_freq=args.update_freq, clip_grad=args.clip_grad, amp_dtype=run.amp_dtype,
                                 channels_last=args.channels_last, print_freq=args.print_freq,
                                 batch_size=args.batch_size, steps_per_epoch=train.steps_per_epoch,
                                 lr_fn=optim.lr_fn, wd_fn=optim.wd_fn)
    # SIGTERM/SIGUSR2 (a scheduler) and, when there is somewhere to save, Ctrl-C: save the step, stop
    utils.STOP.install((signal.SIGTERM, signal.SIGUSR2) + ((signal.SIGINT,) if ckpt.enabled else ()))
    _logger.info('Start training for %s; outputs in %s', utils.plural(args.epochs, 'epoch'),
                 args.output_dir or '(not saved)')
    start_time = time.time()
    try:
        while state.epoch < args.epochs:
            epoch = state.epoch
            train.sampler.set_epoch(epoch, start=state.step_in_epoch * args.update_freq * args.batch_size)
            remaining = (train.steps_per_epoch - state.step_in_epoch) * args.update_freq
            limited = _take(train.loader, remaining)
            train_stats = engine.train_one_epoch(
                net.train_model, optim.criterion, limited, remaining, optim.optimizer, optim.scaler, state, step_cfg,
                model_ema=net.ema, mixup_fn=train.mixup_fn, save_fn=ckpt.save_preempt, on_step=log.on_step)
            log_stats: Dict[str, Any] = {f'train_{k}': v for k, v in train_stats.items()}
            if data.val is not None and not args.disable_eval:
                test_stats = evaluate(net.model)
                if test_stats['acc1'] > state.max_accuracy:
                    state.max_accuracy = test_stats['acc1']
                    ckpt.save('best', epoch_complete=True)
                _logger.info('Max accuracy: %.2f%%', state.max_accuracy)
                log_stats.update({f'test_{k}': v for k, v in test_stats.items()})
                if net.ema is not None and args.model_ema_eval:
                    ema_stats = evaluate(net.ema.module, header='Test (EMA):')
                    if ema_stats['acc1'] > state.max_accuracy_ema:
                        state.max_accuracy_ema = ema_stats['acc1']
                        ckpt.save('best-ema', epoch_complete=True)
                    log_stats.update({f'test_{k}_ema': v for k, v in ema_stats.items()})
                log.test(epoch, test_stats)
            log_stats.update({'epoch': epoch, 'n_parameters': net.n_parameters})
            log.epoch(epoch, train_stats, log_stats)
            state.step_in_epoch = 0
            if (epoch + 1) % args.save_ckpt_freq == 0 or epoch + 1 == args.epochs:
                ckpt.save(epoch, epoch_complete=True)
                if args.output_dir and ds.is_main:
                    checkpoints.prune_checkpoints(args.output_dir, args.save_ckpt_num, keep_every=50)  # as the original
            log.write_log_txt(log_stats)
            state.epoch += 1
    except engine.TrainingInterrupted as e:
        if utils.STOP.ctrl_c:
            if ds.is_main:
                _logger.warning(ckpt.saved_on_ctrl_c_message())
            return EXIT_INTERRUPTED
        _logger.warning('%s; checkpoint saved: relaunch the same command to continue', e)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        if ds.is_main:
            _logger.warning(ckpt.interrupted_message())
        return EXIT_INTERRUPTED
    finally:
        utils.STOP.uninstall()
        log.close()
    _logger.info('Training time %s', time.strftime('%H:%M:%S', time.gmtime(time.time() - start_time)))
    if args.recipe_batch_size and args.batch_size * args.update_freq * ds.world_size != args.recipe_batch_size:
        _logger.warning(recipe_batch_warning(args.batch_size * args.update_freq * ds.world_size,
                                             args.recipe_batch_size, args.batch_size, args.update_freq,
                                             ds.world_size, args.lr))
    if args.output_dir and ds.is_main:
        where = os.path.abspath(args.output_dir)
        tb = f'; TensorBoard logs: tensorboard --logdir {os.path.abspath(log.tb_dir)}' if log.tb_dir else ''
        _logger.info('Checkpoints, log.txt and train.log are in %s%s', where, tb)
    return EXIT_OK


def main(args: argparse.Namespace, inherited: Optional[run_settings.Inherited] = None) -> int:
    """Run training or evaluation as described by validated ``args`` (``inherited``: what :func:`parse_run_args`
    took from the checkpoint, logged here). Returns an exit status."""
    run = setup_run(args, inherited)
    data = build_data(run)
    net = build_model(run, data.nb_classes)
    evaluate = Evaluator(run, data.val)
    if args.eval:
        return evaluate_checkpoint(run, net, evaluate)
    train = build_train_data(run, data)
    optim = build_optim(run, net, train)
    start = maybe_resume(run, net, optim, train.steps_per_epoch, getattr(data.train, 'classes', None))
    if start.state.epoch >= args.epochs:
        return report_complete(run, start)
    return train_loop(run, net, data, train, optim, start, evaluate)


def _take(loader, n: int):
    """The first ``n`` batches of ``loader`` (the epoch is cut to whole optimizer steps)."""
    it = iter(loader)
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: user errors become one line on stderr and exit status 2, never a traceback; Ctrl-C one line
    and exit status 130."""
    try:
        args, inherited = parse_run_args(argv)
        return main(args, inherited)
    except (UserError, CheckpointError) as e:
        logging.getLogger('hornet').debug('user error', exc_info=True)
        sys.stderr.write(f"error: {e}\n")
        utils.log_to_file(logging.ERROR, f"error: {e}")  # train.log ends with what ended the run
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # during set-up or --eval; the training loop reports its own
        message = 'Interrupted (Ctrl-C) before training started or during evaluation: nothing was saved'
        sys.stderr.write(message + '\n')
        utils.log_to_file(logging.WARNING, message)
        return EXIT_INTERRUPTED
    except Exception:  # a bug: its traceback goes to the console as usual, and to train.log
        utils.log_to_file(logging.ERROR, 'the run ended with an unexpected error:', exc_info=sys.exc_info())
        raise
    finally:
        try:
            utils.cleanup_distributed()
        except Exception:
            pass


if __name__ == '__main__':
    sys.exit(cli())
