"""The flags of a run: the parser (flags in named groups, as ``--help`` shows them), YAML configs, the settings taken
from the checkpoint a run evaluates or resumes (run_settings.py), and every check of flag values.

    args, inherited = parse_run_args(argv)   # CLI + YAML, parsed once, completed from the checkpoint, validated

``main.py`` runs what the flags describe; ``run_with_submitit.py`` extends :func:`get_args_parser` with its SLURM
flags and reads them through :func:`read_flags_explicit`, so both accept the same flags and configs.
"""
from __future__ import annotations

import argparse
import difflib
import importlib.util
import math
import os
import shutil
import sys
from typing import Any, Dict, Optional, Sequence, Set, Tuple, Union

import timm
import timm.optim
import torch
import yaml

import checkpoints
import eval_sets
import models  # noqa: F401  (registers the HorNet variants with timm: --model lists and checks them)
import run_settings
import utils
from errors import UserError
from models.global_filter import GF_IMPLS
from models.downloads import RELEASED, default_released, find_released, not_a_released_name

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


def auto_bool(v: Any) -> Optional[bool]:
    """``auto`` (None: let the code decide) or a boolean word."""
    if v is None or str(v).strip().lower() == 'auto':
        return None
    return str2bool(v)


def num_workers(v: Any) -> Union[int, str]:
    """``auto`` (chosen from the cores when the run starts: utils.auto_num_workers) or a count."""
    if str(v).strip().lower() == 'auto':
        return 'auto'
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {v!r}") from None


class Parser(argparse.ArgumentParser):
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show (unset, empty)."""

    def __init__(self, prog: str) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        super().__init__(prog, max_help_position=34, width=min(120, max(80, width)))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        if '%(default)' in text or action.default in (None, '', argparse.SUPPRESS) or not action.option_strings:
            return text
        if isinstance(action.default, bool):
            return text + f" (default: {str(action.default).lower()})"
        if isinstance(action.default, list):
            return text + f" (default: {' '.join(map(str, action.default))})"
        return text + ' (default: %(default)s)'


def _bool(p: argparse._ActionsContainer, flag: str, default: bool, help: str) -> None:
    """A boolean flag: ``--flag`` alone means true; ``--flag true`` / ``--flag false`` as in the original."""
    p.add_argument(flag, type=str2bool, nargs='?', const=True, default=default, metavar='BOOL', help=help)


def _model_names() -> str:
    return ', '.join(timm.list_models('hornet*'))


def get_args_parser() -> argparse.ArgumentParser:
    """Every flag of the original main.py (same names, defaults and meaning) and the new ones, in named groups.

    Boolean flags take true/false (yes/no, 1/0) as in the original, and alone mean true (``--eval``)."""
    p = Parser(prog='main.py', description='HorNet training and evaluation.', add_help=True, allow_abbrev=False,
               formatter_class=HelpFormatter,
               epilog='Boolean flags (BOOL) take true/false, yes/no or 1/0; given alone they mean true. '
                      'TRAINING.md explains the recipes, resuming and evaluation.')
    p.add_argument('--config', default=None, type=str, metavar='YAML',
                   help='YAML file of flag defaults, keys named as the flags (configs/*.yaml); the command line wins')
    g = p.add_argument_group('model')
    g.add_argument('--model', default='hornet_tiny_gf', type=str, metavar='MODEL',
                   help=f'model to train: a HorNet variant ({_model_names()}) or any timm model name')
    g.add_argument('--input_size', default=224, type=int, help='image size in pixels (a multiple of 32)')
    g.add_argument('--layer_scale_init_value', default=1e-6, type=float, help='initial value of the layer scales')
    g.add_argument('--head_init_scale', default=1.0, type=float, help='scale of the new classifier at init')
    g.add_argument('--gf_impl', default='fft', choices=list(GF_IMPLS),
                   help='Global Filter implementation (kron: opt-in, unmeasured on GPU; see BENCHMARKS.md)')
    g = p.add_argument_group('starting weights', 'weights a training run starts from (fine-tuning)')
    g.add_argument('--finetune', default='', metavar='FILE',
                   help='weights to start from (original, mmpretrain or own format): a file, a URL or a released '
                        'name such as hornet_tiny_7x7.in1k (downloaded once into the torch hub cache)')
    _bool(g, '--pretrained', False, "start from the model's default released weights (= --finetune <model>.in1k "
          'or .in22k)')
    g.add_argument('--model_key', default='model|module', type=str,
                   help='--finetune: checkpoint keys that may hold the weights, tried in order')
    g.add_argument('--model_prefix', default='', type=str, help='--finetune: prefix stripped from weight names')
    g = p.add_argument_group('data', 'the data set and its loading')
    g.add_argument('--data_set', default='IMNET', choices=['CIFAR', 'CIFAR10', 'IMNET', 'image_folder', 'QUICKSTART'],
                   help='data set layout (see TRAINING.md)')
    g.add_argument('--data_path', default='/path/to/dataset', type=str,
                   help='data set folder (IMNET: train/ and val/ inside)')
    g.add_argument('--eval_data_path', default=None, type=str, help='validation folder for --data_set image_folder')
    g.add_argument('--nb_classes', default=1000, type=int,
                   help='number of classes (checked against the data; image_folder/QUICKSTART: from the data)')
    _bool(g, '--imagenet_default_mean_and_std', True, 'normalize with the ImageNet mean/std (false: 0.5/0.5)')
    g.add_argument('--data_backend', type=str, default='pil', choices=['pil', 'dali'],
                   help='pil: PIL/torchvision workers emit uint8, normalise + random erasing on the device; '
                        'dali: NVIDIA DALI decode and augmentation (see TRAINING.md, Data backends)')
    g.add_argument('--num_workers', default='auto', type=num_workers, metavar='{auto,N}',
                   help='data loading processes per training process; auto: one on the CPU, on a GPU the cores '
                        'of this process less one, at most 10')
    _bool(g, '--pin_mem', True, 'pinned host memory for faster host-to-GPU copies')
    _bool(g, '--skip_bad_images', False, 'skip unreadable images (logged and counted) instead of failing')
    g = p.add_argument_group('augmentation', 'training images only; evaluation: see --crop_pct')
    g.add_argument('--train_crop_scale', type=float, nargs=2, default=[0.08, 1.0], metavar=('MIN', 'MAX'),
                   help='area range of the training RandomResizedCrop')
    g.add_argument('--train_interpolation', type=str, default='bicubic',
                   help='interpolation of the training crops (random, bilinear, bicubic)')
    g.add_argument('--color_jitter', type=float, default=0.4, metavar='PCT', help='color jitter strength')
    g.add_argument('--aa', type=str, default='rand-m9-mstd0.5-inc1', metavar='NAME',
                   help="timm auto-augment policy ('none': off)")
    g.add_argument('--reprob', type=float, default=0.25, metavar='PCT', help='random erasing probability')
    g.add_argument('--remode', type=str, default='pixel', help='random erasing mode')
    g.add_argument('--recount', type=int, default=1, help='random erasing count')
    _bool(g, '--resplit', False, 'accepted for compatibility with the original; no effect')
    g.add_argument('--mixup', type=float, default=0.8, help='mixup alpha (0: off)')
    g.add_argument('--cutmix', type=float, default=1.0, help='cutmix alpha (0: off)')
    g.add_argument('--cutmix_minmax', type=float, nargs='+', default=None,
                   help='cutmix min/max area ratio (overrides --cutmix alpha)')
    g.add_argument('--mixup_prob', type=float, default=1.0, help='probability of mixup or cutmix per batch')
    g.add_argument('--mixup_switch_prob', type=float, default=0.5, help='probability of cutmix instead of mixup')
    g.add_argument('--mixup_mode', type=str, default='batch', choices=['batch', 'pair', 'elem'],
                   help='mixup/cutmix parameters per batch, pair or element')
    g = p.add_argument_group('optimizer and schedule')
    g.add_argument('--epochs', default=300, type=int, help='number of training epochs')
    g.add_argument('--batch_size', default=64, type=int, help='batch size of one process (per GPU)')
    g.add_argument('--update_freq', default=1, type=int,
                   help='micro-batches accumulated per optimizer step; effective batch = processes x --batch_size '
                        'x --update_freq')
    g.add_argument('--recipe_batch_size', default=None, type=int, metavar='N',
                   help='effective batch the recipe (its --lr) was tuned for, set by the recipe configs; a warning '
                        'names the --update_freq that restores it when the run differs')
    g.add_argument('--opt', default='adamw', type=str, metavar='OPTIMIZER', help='optimizer (any timm optimizer name)')
    g.add_argument('--opt_eps', default=1e-8, type=float, metavar='EPSILON', help='optimizer epsilon')
    g.add_argument('--opt_betas', default=None, type=float, nargs='+', metavar='BETA',
                   help="optimizer betas (default: the optimizer's own)")
    g.add_argument('--momentum', type=float, default=0.9, metavar='M', help='SGD momentum')
    g.add_argument('--fused_adamw', type=auto_bool, nargs='?', const=True, default=None,
                   metavar='{auto,true,false}',
                   help="torch's fused AdamW kernel; auto: whenever --opt is adamw (CPU or CUDA) (default: auto)")
    g.add_argument('--lr', type=float, default=4e-3, metavar='LR', help='peak learning rate (not rescaled)')
    g.add_argument('--min_lr', type=float, default=1e-6, metavar='LR', help='final learning rate of the cosine')
    g.add_argument('--warmup_epochs', type=int, default=20, metavar='N', help='epochs of linear lr warm-up')
    g.add_argument('--warmup_steps', type=int, default=-1, metavar='N',
                   help='optimizer steps of warm-up; overrides --warmup_epochs if > 0')
    g.add_argument('--layer_decay', type=float, default=1.0, help='layer-wise lr decay (1.0: off)')
    g.add_argument('--weight_decay', type=float, default=0.05, help='weight decay')
    g.add_argument('--weight_decay_end', type=float, default=None,
                   help='final weight decay of a cosine schedule (default: constant --weight_decay)')
    g.add_argument('--clip_grad', type=float, default=None, metavar='NORM',
                   help='clip the gradient norm to NORM once per optimizer step (default: no clipping)')
    g = p.add_argument_group('regularisation and EMA')
    g.add_argument('--drop_path', type=float, default=0, metavar='PCT', help='stochastic depth (drop path) rate')
    g.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    _bool(g, '--model_ema', False, 'keep an exponential moving average (EMA) of the weights')
    g.add_argument('--model_ema_decay', type=float, default=0.9999, help='EMA decay per optimizer step')
    _bool(g, '--model_ema_force_cpu', False, 'keep the EMA weights on the CPU')
    _bool(g, '--model_ema_eval', False, 'also evaluate the EMA weights (and keep checkpoint-best-ema.pth)')
    g = p.add_argument_group('checkpoints and output')
    g.add_argument('--output_dir', default='', metavar='DIR',
                   help='where checkpoints, log.txt, train.log and TensorBoard logs go (empty: nothing is saved)')
    g.add_argument('--resume', default='', metavar='PATH',
                   help='checkpoint to resume from, or a run directory (its newest checkpoint); with --eval, the '
                        'weights to evaluate (also a URL or a released name such as hornet_tiny_7x7.in1k)')
    _bool(g, '--auto_resume', True, 'resume from the newest checkpoint in --output_dir')
    g.add_argument('--start_epoch', default=0, type=int, metavar='N', help='first epoch when not resuming')
    _bool(g, '--save_ckpt', True, 'save checkpoints in --output_dir')
    g.add_argument('--save_ckpt_freq', default=1, type=int, help='save a checkpoint every N epochs (and the last)')
    g.add_argument('--save_ckpt_num', default=3, type=int, help='epoch checkpoints kept (0: all)')
    _bool(g, '--save_safetensors', False, 'also write model/EMA weights as .safetensors next to each checkpoint')
    g = p.add_argument_group('logging')
    g.add_argument('--log_dir', default=None, metavar='DIR',
                   help="TensorBoard directory (default: <output_dir>/tb; '' for none)")
    g.add_argument('--print_freq', default=10, type=int, help='progress line every N iterations')
    _bool(g, '--enable_wandb', False, 'log to Weights & Biases (pip install wandb)')
    g.add_argument('--project', default='hornet', type=str, help='wandb project')
    g.add_argument('--exp_name', default='default', type=str, help='wandb run name')
    _bool(g, '--wandb_ckpt', False, 'accepted for compatibility with the original; no effect')
    g = p.add_argument_group('evaluation')
    _bool(g, '--eval', False, 'evaluate the weights of --resume and exit')
    g.add_argument('--eval_sets', nargs='+', default=None, metavar='KIND=PATH',
                   help=f"with --eval: score the weights on each test set as papers report, the model loaded once; "
                        f"KIND: {', '.join(eval_sets.KINDS)} (TRAINING.md, Test sets)")
    g.add_argument('--eval_labels', default=None, metavar='FILE',
                   help="labels of a flat ImageNet val folder in --eval_sets imagenet=PATH: Kaggle's "
                        "LOC_val_solution.csv or lines '<file name> <wnid>'")
    _bool(g, '--dist_eval', True, 'evaluate on all processes (false: rank 0 only); exact either way')
    _bool(g, '--disable_eval', False, 'no validation during training')
    g.add_argument('--crop_pct', type=float, default=None,
                   help='evaluation center-crop fraction below 384 px (default: 224/256)')
    g = p.add_argument_group('distributed', 'set by the launcher (torchrun, mpirun, SLURM)')
    g.add_argument('--world_size', default=1, type=int,
                   help='number of processes (the launcher decides; kept for compatibility)')
    g.add_argument('--local_rank', '--local-rank', default=-1, type=int, help='ignored: LOCAL_RANK is used')
    _bool(g, '--dist_on_itp', False, 'read ranks from OpenMPI (mpirun) variables')
    g.add_argument('--dist_url', default='env://', help='process group initialisation URL')
    g = p.add_argument_group('run', 'device, precision, speed and memory')
    g.add_argument('--device', default='cuda',
                   help='cuda (each process on the GPU of its local rank), cuda:N or cpu')
    g.add_argument('--seed', default=0, type=int, help='random seed')
    _bool(g, '--use_amp', False, 'mixed precision (see --amp_dtype)')
    g.add_argument('--amp_dtype', default='float16', choices=AMP_DTYPES,
                   help='precision under --use_amp true: float16 (with loss scaling) or bfloat16')
    _bool(g, '--channels_last', False, 'channels-last memory layout for inputs and convolution weights')
    _bool(g, '--compile', False, 'torch.compile the model')
    g.add_argument('--grad_checkpointing', default='none', choices=['none', 'selective', 'full'],
                   help='activation memory: selective recomputes norms/GELU/gating (~40%% less, ~7%% slower on '
                        'CPU); full recomputes each block (~8x less)')
    g.add_argument('--threads', default=0, type=int, metavar='N',
                   help="torch's intra-op CPU threads per process; 0: OMP_NUM_THREADS if set, else the cores "
                        'available divided among the processes and data loading workers on this machine')
    return p


def _yaml_defaults(parser: argparse.ArgumentParser, path: str) -> Dict[str, Any]:
    """Read a YAML config (safe loader) into typed flag defaults; unknown keys and bad values are errors."""
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


def read_flags_explicit(parser: argparse.ArgumentParser,
                        argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Set[str]]:
    """CLI + optional YAML (``--config``: defaults, CLI wins) through ``parser``, with the data-set defaults
    resolved, and the flags the user gave (on the command line or in the YAML): only flags left at their defaults
    may be taken from a checkpoint (run_settings.py). Shared with run_with_submitit.py, whose parser extends
    :func:`get_args_parser`'s."""
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
    ``main.main`` to log once logging is set up."""
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
    if args.enable_wandb and importlib.util.find_spec('wandb') is None:
        raise UserError("--enable_wandb true needs the wandb package: pip install wandb")
    if args.eval_sets and not args.eval:
        raise UserError("--eval_sets scores the weights of --resume on test sets and exits: add --eval true "
                        "(training evaluates on the validation set of --data_path)")
    if args.eval_labels and not args.eval_sets:
        raise UserError(f"--eval_labels {args.eval_labels} labels a flat ImageNet val folder given as --eval_sets "
                        f"imagenet=PATH: add that, or drop --eval_labels")


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
