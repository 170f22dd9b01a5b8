"""Settings a run takes from the checkpoint it evaluates or resumes.

A checkpoint is only meaningful with the model and input it was trained with: ``--eval`` of a 64 px checkpoint at
the default 224 px runs without error and reports a wrong accuracy. So, once, right after the flags are parsed and
before anything is built, :func:`inherit_from_checkpoint` reads the flags the checkpoint records (``args``: a dict
written by this code, or the original release's ``argparse.Namespace``; a bare state dict records nothing and
nothing is inherited) and:

* a setting the user did not give (command line or ``--config`` YAML) takes the checkpoint's value;
* a setting the user gave that differs from the checkpoint's keeps the user's value, with one warning naming both.

What is inherited: under ``--eval`` (:data:`EVAL_SETTINGS`), what defines the model and the images it sees -- the
variant, the resolution, the evaluation crop, the normalisation and the class count. A resumed training run
(``--resume``, or auto-resume from ``--output_dir``) continues the run the checkpoint comes from, so it also takes
what defines the rest of that computation: stochastic depth, the EMA, the optimisation recipe (epochs, batch,
optimizer, learning rate and weight decay schedules, augmentation, mixup, label smoothing) and the seed (exact
random streams): :data:`RESUME_SETTINGS`. Changing a recipe setting on resume is deliberate (``--epochs`` is how a
run is made longer), so those changes get one info line, not warnings. Never inherited: how and where this machine
runs it -- paths and data set layout, device, precision, workers and threads, memory layout, compilation, gradient
checkpointing, ``--gf_impl`` (its implementations compute the same function with the same weights), logging and
checkpoint policy.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

import checkpoint_meta
import checkpoints

_logger = logging.getLogger('hornet')

# --eval: what defines the model and the evaluation transform (transforms.build_transform / build_uint8_transform)
EVAL_SETTINGS: Tuple[str, ...] = ('model', 'input_size', 'crop_pct', 'imagenet_default_mean_and_std', 'nb_classes')
# training resume: the model as trained (a different value given is warned about)...
MODEL_SETTINGS: Tuple[str, ...] = EVAL_SETTINGS + ('drop_path',)
# ... and the recipe of the run it continues (a different value given is deliberate: one info line)
RECIPE_SETTINGS: Tuple[str, ...] = (
    'epochs', 'batch_size', 'update_freq', 'recipe_batch_size', 'opt', 'opt_eps', 'opt_betas', 'momentum', 'lr',
    'min_lr', 'warmup_epochs', 'warmup_steps', 'weight_decay', 'weight_decay_end', 'layer_decay', 'clip_grad',
    'model_ema', 'model_ema_decay', 'model_ema_eval', 'color_jitter', 'aa', 'train_interpolation',
    'train_crop_scale', 'reprob', 'remode', 'recount', 'smoothing', 'mixup', 'cutmix', 'cutmix_minmax', 'mixup_prob',
    'mixup_switch_prob', 'mixup_mode', 'seed')
RESUME_SETTINGS: Tuple[str, ...] = MODEL_SETTINGS + RECIPE_SETTINGS
# flags whose None is a setting of its own (not "unrecorded")
_NONE_IS_A_VALUE = ('crop_pct', 'opt_betas', 'clip_grad', 'weight_decay_end', 'cutmix_minmax', 'recipe_batch_size')


@dataclass
class Inherited:
    """What :func:`inherit_from_checkpoint` did, to be logged once logging is set up (rank 0)."""
    checkpoint: Optional[str] = None                                       # the file the settings were read from
    taken: Dict[str, Any] = field(default_factory=dict)                    # flag -> the checkpoint's value, used
    overridden: Dict[str, Tuple[Any, Any]] = field(default_factory=dict)   # model flag -> (user's value, checkpoint's)
    changed: Dict[str, Tuple[Any, Any]] = field(default_factory=dict)      # recipe flag -> (user's value, checkpoint's)

    def taken_flags(self) -> str:
        """The flags taken from the checkpoint, as a command line would give them."""
        return ' '.join(f'--{k} {_show(v)}' for k, v in self.taken.items())

    def messages(self) -> List[Tuple[int, str]]:
        """(logging level, one line) for each thing worth saying."""
        out: List[Tuple[int, str]] = []
        if self.taken:
            out.append((logging.INFO, f'From the checkpoint {self.checkpoint} (flags not given): '
                                      f'{self.taken_flags()}'))
        for k, (mine, theirs) in self.overridden.items():
            out.append((logging.WARNING, f'--{k} {_show(mine)} differs from the checkpoint\'s {_show(theirs)} '
                                         f'({self.checkpoint}); using {_show(mine)} as given (omit --{k} to use '
                                         f'the checkpoint\'s)'))
        if self.changed:
            given = ', '.join(f'--{k} {_show(mine)} (was {_show(theirs)})'
                              for k, (mine, theirs) in self.changed.items())
            out.append((logging.INFO, f'Changed from the run of {self.checkpoint}, as given: {given}'))
        return out

    def log(self, logger: logging.Logger = _logger) -> None:
        for level, line in self.messages():
            logger.log(level, line)


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return ' '.join(_show(x) for x in v)
    return 'none' if v is None else str(v)


def flags_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Set[str]:
    """The destinations of the flags ``argv`` gives explicitly (whatever their value, default or not).

    Parses ``argv`` again with every default suppressed, so only what was given lands in the namespace;
    ``argv`` must already have parsed cleanly with ``parser``."""
    saved = [(a, a.default) for a in parser._actions]
    saved_defaults = dict(parser._defaults)
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        parser._defaults.clear()
        given = parser.parse_args(list(argv))
    finally:
        for a, d in saved:
            a.default = d
        parser._defaults.update(saved_defaults)
    return set(vars(given))


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a logger: its messages come again, once logging is set up, when the run itself reads the file."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def checkpoint_to_inherit_from(args: argparse.Namespace) -> Optional[str]:
    """The checkpoint this run evaluates (--eval --resume) or resumes (--resume, else auto-resume in
    --output_dir); None when there is none to read here (a URL, a missing file: later steps report those)."""
    path = args.resume
    if not path and not args.eval and args.auto_resume and args.output_dir and os.path.isdir(args.output_dir):
        with _quiet('checkpoints'):
            found = checkpoints.find_resume_checkpoint(args.output_dir, log=False)
        return str(found) if found is not None else None
    if not path or '://' in str(path):
        return None
    if os.path.isdir(path):
        with _quiet('checkpoints'):
            return checkpoints.resolve_resume_path(path)  # a directory without one: the same UserError as later
    return path if os.path.isfile(path) else None


def _coerce(parser: argparse.ArgumentParser, dest: str, value: Any) -> Tuple[bool, Any]:
    """(usable, value as the flag's type) for a recorded value; a value the flag could not take is not used."""
    action = next((a for a in parser._actions if a.dest == dest), None)
    if action is None:
        return False, None
    if value is None:
        return dest in _NONE_IS_A_VALUE, None
    conv = action.type
    try:
        if action.nargs in ('+', '*') or isinstance(action.nargs, int):
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            return True, [conv(v) if conv else v for v in items]
        if isinstance(value, (list, tuple, dict)):
            return False, None
        if conv is None or conv is str:
            return True, str(value)
        if conv in (int, float) and isinstance(value, bool):
            return False, None
        if conv is int and isinstance(value, float) and not value.is_integer():
            return False, None
        out = conv(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        return False, None
    if action.choices is not None and out not in action.choices:
        return False, None
    return True, out


def inherit_from_checkpoint(args: argparse.Namespace, explicit: Set[str], parser: argparse.ArgumentParser,
                            recorded: Optional[Mapping[str, Any]] = None,
                            checkpoint: Optional[str] = None) -> Inherited:
    """Take the model/eval settings from the checkpoint this run evaluates or resumes (see the module docstring).

    ``explicit``: the flags the user gave (command line or YAML); ``recorded``/``checkpoint`` are read from
    :func:`checkpoint_to_inherit_from` unless given. Changes ``args`` in place."""
    if recorded is None:
        checkpoint = checkpoint_to_inherit_from(args)
        recorded = checkpoint_meta.recorded_args(checkpoint) if checkpoint else {}
    result = Inherited(checkpoint=checkpoint)
    if not recorded:
        return result
    for dest in (EVAL_SETTINGS if args.eval else RESUME_SETTINGS):
        if dest not in recorded or not hasattr(args, dest):
            continue
        usable, theirs = _coerce(parser, dest, recorded[dest])
        if not usable:
            continue
        mine = getattr(args, dest)
        if mine == theirs:
            continue
        if dest in explicit:
            (result.overridden if dest in MODEL_SETTINGS else result.changed)[dest] = (mine, theirs)
        else:
            setattr(args, dest, theirs)
            result.taken[dest] = theirs
    return result
