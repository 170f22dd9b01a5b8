"""Optimizer, parameter groups and per-step schedules for HorNet training, as in the original release.

The original HorNet/ConvNeXt scripts build parameter groups themselves (no weight decay on 1-D params and
biases, optional layer-wise lr decay over 12 groups), let the optimizer do the maths, and drive lr and weight
decay from precomputed per-iteration arrays. Here the optimizer comes from timm's registry (so every name
``timm.optim.list_optimizers()`` knows works) and the arrays become pure functions of the global optimizer
step, so resuming mid-epoch needs nothing but the step number.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
import timm.optim

from errors import UserError

__all__ = ['NUM_LAYER_GROUPS', 'get_num_layer_for_hornet', 'layer_scales', 'param_groups', 'create_optimizer',
           'cosine_schedule', 'apply_schedules']

_logger = logging.getLogger(__name__)

NUM_LAYER_GROUPS = 12  # the original's num_layers: ids 0..12 for the body, 13 for norm + head


def get_num_layer_for_hornet(var_name: str) -> int:
    """Layer id (0..13) of a parameter for layer-wise lr decay, exactly as the original HorNet release.

    The release splits depths [2, 3, 18, 2] into 12 groups: the stem is 0, stages 0/1 (and the downsample
    layers in front of stages 1/2) are 1..3, stage 2 advances one id every TWO blocks (capped at 11), stage 3
    and its downsample layer are 12, and everything else (final norm, head) is 13. This differs from the
    ConvNeXt release, whose stage 2 advances every three blocks for its 27-block stage.
    """
    parts = var_name.split('.')
    if var_name.startswith('downsample_layers'):
        stage_id = int(parts[1])
        if stage_id == 0:
            return 0
        if stage_id in (1, 2):
            return stage_id + 1
        return NUM_LAYER_GROUPS
    if var_name.startswith('stages'):
        stage_id, block_id = int(parts[1]), int(parts[2])
        if stage_id in (0, 1):
            return stage_id + 1
        if stage_id == 2:
            return min(3 + block_id // 2, NUM_LAYER_GROUPS - 1)
        return NUM_LAYER_GROUPS
    return NUM_LAYER_GROUPS + 1


def layer_scales(layer_decay: float) -> List[float]:
    """lr multiplier per layer id, ``layer_decay ** (13 - id)``, so the head (id 13) trains at the full lr."""
    return [layer_decay ** (NUM_LAYER_GROUPS + 1 - i) for i in range(NUM_LAYER_GROUPS + 2)]


def _uses_layer_decay(layer_decay: Optional[float]) -> bool:
    # The original only builds layer groups when layer_decay != 1.0; 1.0 means plain decay/no_decay groups.
    return layer_decay is not None and layer_decay != 1.0


def param_groups(model: nn.Module, weight_decay: float, layer_decay: Optional[float] = None,
                 skip_list: Iterable[str] = ()) -> List[Dict[str, Any]]:
    """Optimizer groups: no weight decay on 1-D params, biases and skipped names; optional layer-wise lr scale.

    Each group has 'params', 'weight_decay', 'lr_scale' (read by :func:`apply_schedules`) and 'group_name'
    ('decay'/'no_decay', prefixed 'layer_<id>_' with layer decay). Frozen parameters are left out.
    """
    skip = set(skip_list)
    if hasattr(model, 'no_weight_decay'):
        skip |= set(model.no_weight_decay())
    use_ld = _uses_layer_decay(layer_decay)
    if use_ld:
        if layer_decay <= 0:
            raise UserError(f"--layer_decay must be > 0 (got {layer_decay}); use a value like 0.7, or 1.0 to disable")
        names = [n for n, _ in model.named_parameters()]
        if not any(n.startswith(('downsample_layers.', 'stages.')) for n in names):
            raise UserError(f"--layer_decay needs a hierarchical HorNet (downsample_layers/stages); "
                            f"{type(model).__name__} has none: drop --layer_decay")
        scales = layer_scales(layer_decay)

    groups: Dict[str, Dict[str, Any]] = {}
    group_names: Dict[str, List[str]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith('.bias') or name in skip:
            kind, wd = 'no_decay', 0.
        else:
            kind, wd = 'decay', weight_decay
        if use_ld:
            layer_id = get_num_layer_for_hornet(name)
            group_name, scale = f'layer_{layer_id}_{kind}', scales[layer_id]
        else:
            group_name, scale = kind, 1.
        if group_name not in groups:
            groups[group_name] = {'params': [], 'weight_decay': wd, 'lr_scale': scale, 'group_name': group_name}
            group_names[group_name] = []
        groups[group_name]['params'].append(param)
        group_names[group_name].append(name)

    _logger.info('Param groups: %s', ', '.join(
        f"{g}(n={len(v)}, wd={groups[g]['weight_decay']}, lr_scale={groups[g]['lr_scale']:.4g})"
        for g, v in group_names.items()))
    _logger.debug('Param group members = %s', json.dumps(group_names, indent=2))
    return list(groups.values())


# Devices with torch's fused AdamW kernel (torch >= 2.4 has CPU and CUDA ones).
FUSED_ADAMW_DEVICES = frozenset({'cpu', 'cuda'})


def create_optimizer(model: nn.Module, opt: str, lr: float, weight_decay: float, opt_eps: Optional[float] = None,
                     opt_betas: Optional[Sequence[float]] = None, momentum: float = 0.9,
                     layer_decay: Optional[float] = None, skip_list: Iterable[str] = (),
                     fused: Optional[bool] = None) -> torch.optim.Optimizer:
    """Build any timm optimizer (``'adamw'``, ``'sgd'``, ``'lookahead_lamb'``, ...) over :func:`param_groups`.

    ``fused``: torch's fused AdamW kernel (one kernel for all parameters instead of ~10 ops per tensor; HorNet-T
    has 560 parameter tensors, so this is about 4x less optimizer time on CPU). ``None`` uses it whenever the
    optimizer is AdamW and every parameter is on a device the kernel supports; ``True`` insists (an error
    otherwise); ``False`` never.
    """
    valid = timm.optim.list_optimizers()
    parts = opt.lower().split('_')
    if parts[-1] not in valid or len(parts) > 2 or (len(parts) == 2 and parts[0] != 'lookahead'):
        raise UserError(f"unknown optimizer {opt!r} for --opt; choose one of: {', '.join(valid)} "
                        f"(optionally prefixed 'lookahead_')")
    groups = param_groups(model, weight_decay, layer_decay=layer_decay, skip_list=skip_list)
    if not groups:
        raise UserError(f"{type(model).__name__} has no trainable parameters (unfreeze some layers)")

    kwargs: Dict[str, Any] = {}
    if opt_eps is not None:
        kwargs['eps'] = opt_eps
    if opt_betas is not None:
        kwargs['betas'] = tuple(opt_betas)
    devices = {p.device.type for g in groups for p in g['params']}
    fusable = devices <= FUSED_ADAMW_DEVICES and all(p.is_floating_point() for g in groups for p in g['params'])
    if fused:
        if parts[-1] != 'adamw':
            raise UserError(f"fused kernels are supported for adamw only, not {opt!r} "
                            f"(drop --fused_adamw true or use --opt adamw)")
        if not fusable:
            raise UserError(f"fused AdamW runs on {'/'.join(sorted(FUSED_ADAMW_DEVICES))} parameters only, these "
                            f"are on {'/'.join(sorted(devices))} (set --fused_adamw false)")
    if fused or (fused is None and parts[-1] == 'adamw' and fusable):
        kwargs['fused'] = True
    try:
        # Each group carries its own weight_decay; the optimizer-level default only matters for no group.
        return timm.optim.create_optimizer_v2(groups, opt=opt.lower(), lr=lr, weight_decay=0., momentum=momentum,
                                              **kwargs)
    except (ImportError, AssertionError) as e:  # timm asserts CUDA for apex/bitsandbytes optimizers
        raise UserError(f"optimizer {opt!r} cannot be used here ({e or type(e).__name__}); install what it needs "
                        f"(apex, bitsandbytes, CUDA) or choose another --opt") from None


def cosine_schedule(base_value: float, final_value: float, epochs: int, steps_per_epoch: int,
                    warmup_epochs: int = 0, start_warmup_value: float = 0., warmup_steps: int = -1
                    ) -> Callable[[int], float]:
    """Value at each global optimizer step, bit-identical to the original ConvNeXt ``cosine_scheduler`` array.

    Linear warm-up (``np.linspace`` arithmetic, endpoint included) over ``warmup_steps`` if > 0 else
    ``warmup_epochs * steps_per_epoch`` steps, then a half cosine from ``base_value`` towards ``final_value``
    over the remaining steps. Steps past the end return ``final_value`` (the original array would raise).
    A function instead of an array so that resuming at any step needs only the step number.
    """
    epochs, steps_per_epoch = int(epochs), int(steps_per_epoch)
    base, final, start = float(base_value), float(final_value), float(start_warmup_value)
    total = epochs * steps_per_epoch
    warmup_iters = int(warmup_steps) if warmup_steps > 0 else int(warmup_epochs * steps_per_epoch)
    if total <= 0:
        raise UserError(f"the schedule has no steps (epochs={epochs}, steps per epoch={steps_per_epoch}); "
                        f"use more --epochs or a smaller --batch_size/--update_freq than the dataset size")
    if warmup_iters > total:
        raise UserError(f"warm-up of {warmup_iters} steps is longer than training ({total} steps); "
                        f"lower --warmup_epochs/--warmup_steps")
    cosine_iters = total - warmup_iters
    delta = base - start
    lin_step = delta / (warmup_iters - 1) if warmup_iters > 1 else math.nan

    def value(step: int) -> float:
        if step < 0:
            raise ValueError(f"schedule step must be >= 0 (got {step})")
        if step >= total:
            return final
        if step < warmup_iters:
            # np.linspace: y = arange * (delta/div) + start (y/div*delta when that step is 0), last = stop.
            if warmup_iters == 1:
                return start
            if step == warmup_iters - 1:
                return base
            if lin_step == 0:
                return step / (warmup_iters - 1) * delta + start
            return step * lin_step + start
        i = step - warmup_iters
        return final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / cosine_iters))

    return value


def apply_schedules(optimizer: torch.optim.Optimizer, step: int, lr_fn: Callable[[int], float],
                    wd_fn: Optional[Callable[[int], float]] = None) -> None:
    """Set every group's lr (times its 'lr_scale') and, for groups that decay, weight decay for ``step``.

    As the original, only groups whose current weight_decay is > 0 get the scheduled value, so no-decay
    groups stay at 0.
    """
    lr = lr_fn(step)
    wd = wd_fn(step) if wd_fn is not None else None
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_scale', 1.)
        if wd is not None and group.get('weight_decay', 0.) > 0:
            group['weight_decay'] = wd
