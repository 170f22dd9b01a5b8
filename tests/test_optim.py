"""optim_factory: original HorNet parameter groups / layer decay, timm optimizers, step-based schedules."""
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

import models  # noqa: F401  (registers the HorNet variants with timm)
from errors import UserError
from models.hornet import HorNet
from optim_factory import (apply_schedules, cosine_schedule, create_optimizer, get_num_layer_for_hornet,
                           layer_scales, param_groups)


def tiny_model() -> HorNet:
    return HorNet(depths=(1, 1, 1, 1), base_dim=8, num_classes=10)


def original_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                              start_warmup_value=0, warmup_steps=-1):
    """Independent reference: the original ConvNeXt utils.cosine_scheduler arithmetic, as an array."""
    warmup_iters = warmup_steps if warmup_steps > 0 else warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cos = np.array([final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / len(iters)))
                    for i in iters])
    out = np.concatenate((warmup, cos))
    assert len(out) == epochs * niter_per_ep
    return out


def test_layer_decay_groups_follow_original_hornet_12_group_mapping():
    # The HorNet release: stage 2 advances one id every two blocks, capped at 11 (ConvNeXt's is every three).
    expected = {
        'downsample_layers.0.0.weight': 0, 'downsample_layers.1.1.weight': 2, 'downsample_layers.2.0.bias': 3,
        'downsample_layers.3.1.weight': 12, 'stages.0.1.gamma1': 1, 'stages.1.2.norm1.weight': 2,
        'stages.2.0.gnconv.proj_in.weight': 3, 'stages.2.7.gnconv.dwconv.weight': 6, 'stages.2.16.gamma2': 11,
        'stages.2.17.mlp.fc1.weight': 11, 'stages.3.1.gamma1': 12, 'norm.weight': 13, 'head.weight': 13,
    }
    assert {n: get_num_layer_for_hornet(n) for n in expected} == expected

    big = timm.create_model('hornet_tiny_7x7')
    ids = {get_num_layer_for_hornet(n) for n, _ in big.named_parameters()}
    assert ids == set(range(14))  # every group of the original's 14 is used by the real [2, 3, 18, 2] model

    groups = param_groups(tiny_model(), weight_decay=0.05, layer_decay=0.7)
    scales = {g['group_name']: g['lr_scale'] for g in groups}
    assert scales['layer_13_decay'] == 1.0 and scales['layer_13_no_decay'] == 1.0
    assert scales['layer_12_decay'] == pytest.approx(0.7)
    assert scales['layer_0_decay'] == pytest.approx(0.7 ** 13)
    assert scales['layer_3_no_decay'] == pytest.approx(0.7 ** 10)
    assert layer_scales(0.7)[6] == pytest.approx(0.7 ** 7)
    # layer_decay 1.0 means no layer groups, as in the original
    assert {g['group_name'] for g in param_groups(tiny_model(), 0.05, layer_decay=1.0)} == {'decay', 'no_decay'}


def test_no_weight_decay_on_1d_params_and_biases():
    model = tiny_model()
    model.head.weight.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.05, skip_list=('downsample_layers.0.0.weight',))
    by_id = {id(p): g for g in groups for p in g['params']}
    for name, p in model.named_parameters():
        if name == 'head.weight':
            assert id(p) not in by_id  # frozen: left out
            continue
        no_decay = p.ndim <= 1 or name.endswith('.bias') or name == 'downsample_layers.0.0.weight'
        assert by_id[id(p)]['weight_decay'] == (0. if no_decay else 0.05), name
        assert by_id[id(p)]['lr_scale'] == 1.0
    assert by_id[id(model.stages[0][0].gamma1)]['weight_decay'] == 0.  # layer scale is 1-D


def test_create_optimizer_uses_timm_registry_on_the_groups():
    model = tiny_model()
    opt = create_optimizer(model, 'adamw', lr=1e-3, weight_decay=0.05, opt_eps=1e-7, opt_betas=[0.8, 0.99],
                           layer_decay=0.8)
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g['eps'] == 1e-7 and g['betas'] == (0.8, 0.99) and 'lr_scale' in g for g in opt.param_groups)
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))
    sgd = create_optimizer(model, 'sgd', lr=0.1, weight_decay=1e-4, momentum=0.8)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]['nesterov'] and \
        sgd.param_groups[0]['momentum'] == 0.8
    lamb = create_optimizer(model, 'lookahead_lamb', lr=1e-3, weight_decay=0.05)
    assert type(lamb).__name__ == 'Lookahead'
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    opt.step()  # the extra group keys do not bother the optimizer


def test_unknown_optimizer_or_unusable_options_are_user_errors():
    with pytest.raises(UserError, match=r"unknown optimizer 'adamx'.*adamw.*sgd"):
        create_optimizer(tiny_model(), 'adamx', lr=1e-3, weight_decay=0.05)
    with pytest.raises(UserError, match='adamw only'):
        create_optimizer(tiny_model(), 'sgd', lr=1e-3, weight_decay=0.05, fused=True)
    with pytest.raises(UserError, match='layer_decay'):
        param_groups(nn.Sequential(nn.Linear(2, 2)), 0.05, layer_decay=0.7)


def test_cosine_schedule_matches_original_array():
    cases = [
        dict(base_value=4e-3, final_value=1e-6, epochs=7, niter_per_ep=13, warmup_epochs=2),
        dict(base_value=4e-3, final_value=1e-6, epochs=5, niter_per_ep=11, warmup_epochs=1, warmup_steps=7,
             start_warmup_value=1e-5),
        dict(base_value=5e-5, final_value=1e-6, epochs=3, niter_per_ep=17),
        dict(base_value=0.05, final_value=0.05, epochs=4, niter_per_ep=9),  # constant weight decay
        dict(base_value=0.1, final_value=0., epochs=2, niter_per_ep=5, warmup_steps=1),
        dict(base_value=3e-4, final_value=3e-4, epochs=3, niter_per_ep=4, warmup_epochs=1, start_warmup_value=3e-4),
    ]
    for case in cases:
        ref = original_cosine_scheduler(**case)
        args = dict(case)
        fn = cosine_schedule(args.pop('base_value'), args.pop('final_value'), args.pop('epochs'),
                             args.pop('niter_per_ep'), **args)
        got = np.array([fn(i) for i in range(len(ref))])
        assert np.array_equal(got, ref), case  # bit-identical, not approximately equal
        assert fn(len(ref)) == case['final_value'] and fn(len(ref) + 1000) == case['final_value']
    with pytest.raises(UserError, match='warm-up'):
        cosine_schedule(1e-3, 1e-6, epochs=2, steps_per_epoch=3, warmup_epochs=3)


def test_schedule_is_function_of_global_step_only():
    lr_fn = cosine_schedule(1e-3, 1e-6, epochs=4, steps_per_epoch=10, warmup_epochs=1)
    wd_fn = cosine_schedule(0.05, 0.5, epochs=4, steps_per_epoch=10)
    forward = [lr_fn(s) for s in range(40)]
    assert [lr_fn(s) for s in reversed(range(40))] == forward[::-1]

    # one optimizer walked through every step, another jumped straight to step 25 (a resume): same settings
    walked = create_optimizer(tiny_model(), 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    jumped = create_optimizer(tiny_model(), 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    for s in range(26):
        apply_schedules(walked, s, lr_fn, wd_fn)
    apply_schedules(jumped, 25, lr_fn, wd_fn)
    strip = [{k: v for k, v in g.items() if k != 'params'} for g in walked.param_groups]
    assert strip == [{k: v for k, v in g.items() if k != 'params'} for g in jumped.param_groups]
    for g in jumped.param_groups:
        assert g['lr'] == lr_fn(25) * g['lr_scale']
        assert g['weight_decay'] == (wd_fn(25) if g['group_name'].endswith('_decay') and 'no_decay' not in
                                     g['group_name'] else 0.)


@pytest.mark.parametrize('fused, opt, expected', [
    (None, 'adamw', True), (None, 'sgd', None), (None, 'lookahead_adamw', True), (False, 'adamw', False),
    (True, 'adamw', True)])
def test_fused_adamw_is_used_by_default_on_cpu_and_steps_like_the_loop(fused, opt, expected):
    model = tiny_model()
    o = create_optimizer(model, opt, lr=1e-3, weight_decay=0.05, fused=fused)
    inner = getattr(o, 'base_optimizer', o)
    assert inner.defaults.get('fused') == expected or (expected is False and not inner.defaults.get('fused'))
    if opt == 'adamw' and expected:  # one step of the fused kernel equals torch's per-tensor loop
        ref_model = tiny_model()
        ref_model.load_state_dict(model.state_dict())
        ref = create_optimizer(ref_model, opt, lr=1e-3, weight_decay=0.05, fused=False)
        x = torch.randn(2, 3, 32, 32)
        for m, opt_ in ((model, o), (ref_model, ref)):
            m(x).square().mean().backward()
            opt_.step()
        for a, b in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
