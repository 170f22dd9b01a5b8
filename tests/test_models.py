"""HorNet models: the original release's layout and function, and timm's model contract."""
from __future__ import annotations

import functools
import json
import logging
import pathlib
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import timm
import timm.optim

import models
from models import fast_ops
from models.errors import CheckpointError
from models.global_filter import global_filter_fft, global_filter_matmul
from models.hornet import GlobalLocalFilter, GnConv, HorNet, LayerNorm2d, load_pretrained_file

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
SPEC = json.loads((FIXTURES / 'hornet_official_keys.json').read_text())
PAPER_PARAMS_M = {'hornet_tiny_7x7': 22.41, 'hornet_tiny_gf': 22.99, 'hornet_small_7x7': 49.53,
                  'hornet_small_gf': 50.40, 'hornet_base_7x7': 87.26, 'hornet_base_gf': 88.42,
                  'hornet_large_7x7': 194.54, 'hornet_large_gf': 196.29}
ALL_MODELS = timm.list_models('hornet_*')


@functools.lru_cache(maxsize=None)
def _ref():
    return torch.load(FIXTURES / 'mini_reference.pt', weights_only=True)


def _mini(gf: bool, **kw) -> HorNet:
    gf_sizes = (None, None, (4, 3), (2, 2)) if gf else (None,) * 4
    return HorNet(num_classes=10, depths=(1, 1, 2, 1), base_dim=16, gf_sizes=gf_sizes, **kw)


def _fast_model(name: str, **kwargs) -> torch.nn.Module:
    """A registered model with cheap random weights (the real truncated-normal init of 200M params is slow)."""
    with torch.device('meta'):
        model = timm.create_model(name, **kwargs)
    model.to_empty(device='cpu')
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.05, 0.05, generator=gen)
    return model


def _tiny(num_classes: int = 10, gf=None) -> HorNet:
    return HorNet(num_classes=num_classes, depths=(1, 1, 1, 1), base_dim=8, gf_sizes=gf or (None,) * 4)


def test_every_original_variant_is_registered():
    for name in models.HORNET_VARIANTS:
        assert name in ALL_MODELS


@pytest.mark.parametrize('name', models.HORNET_VARIANTS)
def test_variant_keys_shapes_and_params_equal_original_release(name):
    with torch.device('meta'):  # shapes only: skip the (slow) weight init
        model = timm.create_model(name, num_classes=1000)  # the spec is the original's 1000-class model
    sd = model.state_dict()
    spec = SPEC[name]['state_dict']
    assert sorted(sd) == sorted(spec)
    bad = [k for k in spec if list(sd[k].shape) != spec[k]]
    assert not bad, bad
    n = sum(p.numel() for p in model.parameters())
    assert n == SPEC[name]['params']
    if name in PAPER_PARAMS_M:
        assert round(n / 1e6, 2) == PAPER_PARAMS_M[name]


@pytest.mark.parametrize('name', ['mini_7x7', 'mini_gf'])
@pytest.mark.parametrize('res', [64, 96])
@pytest.mark.parametrize('impl', ['fft', 'matmul'])
def test_logits_equal_original_code(name, res, impl):
    """Logits computed by the original release's code on the same weights (96 px needs GF interpolation)."""
    ref = _ref()[name]
    model = _mini(name == 'mini_gf').eval()
    model.load_state_dict(ref['state_dict'], strict=True)
    fast_ops.enable(model, gf_impl=impl)
    with torch.no_grad():
        out = model(ref['inputs'][res])
    torch.testing.assert_close(out, ref['logits'][res], rtol=1e-5, atol=1e-5)


def test_channels_first_layernorm_matches_hand_formula():
    torch.manual_seed(0)
    ln = LayerNorm2d(6, eps=1e-6)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    x = torch.randn(2, 6, 5, 4) * 3 + 1
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    expected = ln.weight[:, None, None] * (x - u) / torch.sqrt(s + 1e-6) + ln.bias[:, None, None]
    torch.testing.assert_close(ln(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ln(x.contiguous(memory_format=torch.channels_last)), expected, rtol=1e-5, atol=1e-5)


def test_gnconv_is_the_recursive_gating_of_the_paper():
    """p0 = pwa * q0; p_{k+1} = W_k p_k * q_{k+1}; out = proj_out(p_{n-1}), with q's = s * dwconv(abc)."""
    torch.manual_seed(0)
    dim, order, s = 16, 3, 1 / 3
    m = GnConv(dim, order=order, scale=s)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, dim, 9, 9)
    dims = [4, 8, 16]  # dim / 2^(order-1-i)
    assert m.dims == dims

    def pw(t, conv):  # 1x1 conv as an explicit channel contraction
        return torch.einsum('oc,bchw->bohw', conv.weight[:, :, 0, 0], t) + conv.bias[None, :, None, None]

    fused = pw(x, m.proj_in)
    pwa, abc = fused[:, :dims[0]], fused[:, dims[0]:]
    q = F.conv2d(abc, m.dwconv.weight, m.dwconv.bias, padding=3, groups=sum(dims)) * s
    qs = [q[:, :4], q[:, 4:12], q[:, 12:28]]
    p = pwa * qs[0]
    p = pw(p, m.pws[0]) * qs[1]
    p = pw(p, m.pws[1]) * qs[2]
    expected = pw(p, m.proj_out)
    torch.testing.assert_close(m(x), expected, rtol=1e-4, atol=1e-5)


def _np_layernorm(x, w, b, eps=1e-6):
    u = x.mean(1, keepdims=True)
    s = ((x - u) ** 2).mean(1, keepdims=True)
    return w[None, :, None, None] * (x - u) / np.sqrt(s + eps) + b[None, :, None, None]


@pytest.mark.parametrize('hw', [(8, 8), (7, 7), (6, 10)])
def test_global_local_filter_matches_numpy_fft_reference_with_interleaving(hw):
    torch.manual_seed(0)
    dim = 8
    h, w = hw
    m = GlobalLocalFilter(dim, h=h, w=w // 2 + 1)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, dim, h, w)
    xn = x.double().numpy()
    pre = _np_layernorm(xn, m.pre_norm.weight.detach().double().numpy(), m.pre_norm.bias.detach().double().numpy())
    x1, x2 = pre[:, :dim // 2], pre[:, dim // 2:]
    y1 = F.conv2d(torch.from_numpy(x1), m.dw.weight.double(), padding=1, groups=dim // 2).detach().numpy()
    cw = m.complex_weight.detach().double().numpy()
    spec = np.fft.rfft2(x2, axes=(2, 3), norm='ortho') * (cw[..., 0] + 1j * cw[..., 1])
    y2 = np.fft.irfft2(spec, s=(h, w), axes=(2, 3), norm='ortho')
    inter = np.empty_like(pre)
    for c in range(dim // 2):  # channel by channel: dw0, gf0, dw1, gf1, ...
        inter[:, 2 * c] = y1[:, c]
        inter[:, 2 * c + 1] = y2[:, c]
    expected = _np_layernorm(inter, m.post_norm.weight.detach().double().numpy(),
                             m.post_norm.bias.detach().double().numpy())
    for impl in ('fft', 'matmul'):
        m.gf_impl = impl
        torch.testing.assert_close(m(x).double(), torch.from_numpy(expected), rtol=1e-4, atol=1e-4)


def test_gf_filter_is_resized_bilinearly_with_aligned_corners():
    torch.manual_seed(0)
    m = GlobalLocalFilter(4, h=3, w=2)
    weight = m.complex_weight.detach()
    x = torch.randn(1, 4, 5, 6)  # rfft2 spectrum 5 x 4: the 3 x 2 filter must be stretched
    from models.global_filter import resize_complex_weight
    big = resize_complex_weight(weight, (5, 4))
    # align_corners=True keeps the corners and puts the middle row halfway between rows 1 and 2... by formula:
    for (i, j), (si, sj) in {(0, 0): (0, 0), (4, 3): (2, 1), (0, 3): (0, 1), (4, 0): (2, 0)}.items():
        torch.testing.assert_close(big[:, i, j], weight[:, si, sj])
    # row 2 of 5 sits at source row 1.0, column 1 of 4 at source column 1/3
    expected = weight[:, 1, 0] * (2 / 3) + weight[:, 1, 1] * (1 / 3)
    torch.testing.assert_close(big[:, 2, 1], expected)
    assert m(x).shape == x.shape


def test_gf_matmul_path_equals_fft_path_in_fp32_and_exports_without_fft_ops():
    torch.manual_seed(0)
    for h, w in [(14, 14), (7, 7), (24, 24), (12, 12), (5, 9)]:
        x = torch.randn(2, 6, h, w)
        weight = torch.randn(6, h, w // 2 + 1, 2)
        torch.testing.assert_close(global_filter_matmul(x, weight), global_filter_fft(x, weight),
                                   rtol=1e-4, atol=1e-5)
    gf = GlobalLocalFilter(8, h=6, w=4).eval()
    x = torch.randn(1, 8, 6, 6)

    def aten_ops(impl: str) -> set:
        gf.gf_impl = impl
        gm = torch.export.export(gf, (x,)).graph_module  # sub-graphs hold e.g. the fp32 autocast region
        return {str(n.target) for m in gm.modules() if isinstance(m, torch.fx.GraphModule)
                for n in m.graph.nodes if n.op == 'call_function'}

    assert any('fft' in op for op in aten_ops('fft'))  # the check can see FFTs when they are there
    assert not any('fft' in op for op in aten_ops('matmul'))


def _ln_channels_first(ln: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """The original's channels-first LayerNorm: a mean/pow chain over dim 1."""
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    return ln.weight[:, None, None] * ((x - u) / torch.sqrt(s + ln.eps)) + ln.bias[:, None, None]


def _reference_block(blk, x: torch.Tensor) -> torch.Tensor:
    """A HorBlock computed the way the original code does (NCHW 1x1 convs, explicit s, stack over dim 1)."""
    gn = blk.gnconv
    fused = F.conv2d(_ln_channels_first(blk.norm1, x), gn.proj_in.weight, gn.proj_in.bias)
    pwa, abc = torch.split(fused, (gn.dims[0], sum(gn.dims)), dim=1)
    if isinstance(gn.dwconv, GlobalLocalFilter):
        f = gn.dwconv
        t = _ln_channels_first(f.pre_norm, abc)
        t1, t2 = torch.chunk(t, 2, dim=1)
        t1 = F.conv2d(t1, f.dw.weight, None, padding=1, groups=t1.shape[1])
        t2 = global_filter_fft(t2, f.complex_weight)
        b, c, h, w = t1.shape
        q = _ln_channels_first(f.post_norm, torch.stack((t1, t2), dim=2).reshape(b, 2 * c, h, w))
    else:
        q = F.conv2d(abc, gn.dwconv.weight, gn.dwconv.bias, padding=3, groups=sum(gn.dims))
    qs = torch.split(q * gn.scale, gn.dims, dim=1)
    p = pwa * qs[0]
    for i, pw in enumerate(gn.pws):
        p = F.conv2d(p, pw.weight, pw.bias) * qs[i + 1]
    x = x + blk.gamma1[:, None, None] * F.conv2d(p, gn.proj_out.weight, gn.proj_out.bias)
    y = blk.pwconv2(F.gelu(blk.pwconv1(blk.norm2(x.permute(0, 2, 3, 1)))))
    return x + (blk.gamma2 * y).permute(0, 3, 1, 2)


@pytest.mark.parametrize('order', [2, 3, 4, 5])
@pytest.mark.parametrize('gf', [False, True])
@pytest.mark.parametrize('channels_last', [False, True])
def test_fast_block_equals_reference_formulation_in_outputs_and_gradients(order, gf, channels_last):
    """The channels-last block (GEMM projections, s folded into kernels) against the original's formulation."""
    from models.hornet import HorBlock
    torch.manual_seed(order)
    dim = 32
    blk = HorBlock(dim, order=order, gf_size=(6, 4) if gf else None, layer_scale_init_value=0.5)
    with torch.no_grad():
        for p in blk.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, dim, 6, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = blk(x_fast)
    out.square().sum().backward()
    fast_grads = [p.grad.clone() for p in blk.parameters()]
    blk.zero_grad()
    ref = _reference_block(blk, x_ref)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    for (name, p), g in zip(blk.named_parameters(), fast_grads):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-4, msg=lambda m: f'{name}: {m}')


def test_gf_under_bf16_autocast_agrees_with_fp32_within_tolerance():
    """The FFT runs in fp32 even under autocast; the rest of the net is bf16, so logits differ by bf16 rounding."""
    ref = _ref()['mini_gf']
    model = _mini(True).eval()
    model.load_state_dict(ref['state_dict'])
    x = ref['inputs'][64]
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            bf16 = model(x)
    assert bf16.dtype == torch.bfloat16
    err = (bf16.float() - fp32).abs().max().item()
    assert err < 0.05 * fp32.abs().max().item(), err
    assert (bf16.float().argmax(1) == fp32.argmax(1)).all()


def test_group_matcher_drives_timm_layer_decay():
    model = timm.create_model('hornet_tiny_7x7')
    opt = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    scales = {g['lr_scale'] for g in opt.param_groups}
    assert max(scales) == pytest.approx(1.0)
    assert min(scales) == pytest.approx(0.9 ** 26)  # stem + 25 blocks + norm/head groups
    assert len(scales) == 27


def test_no_print_in_models_package():
    root = pathlib.Path(models.__file__).parent
    for f in root.glob('*.py'):
        assert not re.search(r'^\s*print\(', f.read_text(), re.M), f


# ---------------------------------------------------------------- checkpoint formats

def _mmpretrain_from_original(sd):
    """mmpretrain's renaming of the original keys, written from its documented rules."""
    out = {}
    for k, v in sd.items():
        if k.startswith('head.'):
            out['head.fc.' + k[5:]] = v
            continue
        if k.startswith('norm.'):
            k = 'norm3.' + k[5:]
        k = k.replace('gnconv.pws.', 'gnconv.projs.')
        if re.search(r'\.gamma[12]$', k):
            k = k + '.weight'
        out['backbone.' + k] = v
    return out


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


@pytest.fixture(scope='module')
def tiny_gf_weights():
    model = _fast_model('hornet_tiny_gf')
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_loaded(model, sd):
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_timm_pretrained_path_loads_original_release_file(tmp_path, tiny_gf_weights):
    path = _save({'model': tiny_gf_weights}, tmp_path / 'hornet_tiny_gf.pth')
    model = timm.create_model('hornet_tiny_gf', pretrained=True, pretrained_cfg_overlay=dict(file=path))
    _assert_loaded(model, tiny_gf_weights)


def test_timm_pretrained_path_loads_mmpretrain_file(tmp_path, tiny_gf_weights):
    mm = {'meta': {'epoch': 300}, 'state_dict': _mmpretrain_from_original(tiny_gf_weights)}
    path = _save(mm, tmp_path / 'mm.pth')
    model = timm.create_model('hornet_tiny_gf', pretrained=True, pretrained_cfg_overlay=dict(file=path))
    _assert_loaded(model, tiny_gf_weights)


def test_own_training_checkpoint_and_safetensors_load(tmp_path, tiny_gf_weights):
    ddp = {'module.' + k: v for k, v in tiny_gf_weights.items()}
    path = _save({'model': ddp, 'optimizer': {}, 'epoch': 3, 'args': {'model': 'hornet_tiny_gf'}}, tmp_path / 'c.pth')
    model = timm.create_model('hornet_tiny_gf', pretrained=True, pretrained_cfg_overlay=dict(file=path))
    _assert_loaded(model, tiny_gf_weights)
    from safetensors.torch import save_file
    st = tmp_path / 'w.safetensors'
    save_file({k: v.contiguous() for k, v in tiny_gf_weights.items()}, str(st))
    model = timm.create_model('hornet_tiny_gf', pretrained=True, pretrained_cfg_overlay=dict(file=str(st)))
    _assert_loaded(model, tiny_gf_weights)


def test_original_training_checkpoint_with_namespace_args_and_ema_loads(tmp_path):
    import argparse
    src = _tiny()
    ema = {k: v + 1 for k, v in src.state_dict().items()}
    path = _save({'model': src.state_dict(), 'model_ema': ema, 'args': argparse.Namespace(lr=4e-3), 'epoch': 9},
                 tmp_path / 'checkpoint-9.pth')
    model = _tiny()
    load_pretrained_file(model, path)
    _assert_loaded(model, src.state_dict())
    load_pretrained_file(model, path, use_ema=True)
    _assert_loaded(model, ema)


def test_mmpretrain_384_gf_filters_are_resized_to_the_original_shapes(tmp_path, caplog):
    gf = (None, None, (24, 13), (12, 7))
    src = HorNet(num_classes=10, depths=(1, 1, 1, 1), base_dim=8, gf_sizes=gf)
    sd = _mmpretrain_from_original(src.state_dict())
    k3, k4 = 'backbone.stages.2.0.gnconv.dwconv.complex_weight', 'backbone.stages.3.0.gnconv.dwconv.complex_weight'
    sd[k3] = torch.randn(sd[k3].shape[0], 24, 12, 2)  # mmpretrain's own 384 filter sizes
    sd[k4] = torch.randn(sd[k4].shape[0], 13, 7, 2)
    path = _save({'state_dict': sd}, tmp_path / 'mm384.pth')
    model = HorNet(num_classes=10, depths=(1, 1, 1, 1), base_dim=8, gf_sizes=gf)
    with caplog.at_level(logging.INFO):
        load_pretrained_file(model, path)
    assert 'Resizing GF filter' in caplog.text
    w3 = model.stages[2][0].gnconv.dwconv.complex_weight.detach()
    assert w3.shape[1:3] == (24, 13)
    torch.testing.assert_close(w3[:, 0, 0], sd[k3][:, 0, 0])      # aligned corners are kept
    torch.testing.assert_close(w3[:, -1, -1], sd[k3][:, -1, -1])
    assert model.stages[3][0].gnconv.dwconv.complex_weight.shape[1:3] == (12, 7)


def test_head_of_another_class_count_is_replaced_with_a_warning(tmp_path, caplog):
    src = _tiny(num_classes=1000)
    path = _save({'model': src.state_dict()}, tmp_path / 'in1k.pth')
    model = _tiny(num_classes=10)
    head_before = model.head.weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        load_pretrained_file(model, path)
    assert '1000 classes' in caplog.text
    assert torch.equal(model.head.weight, head_before)
    torch.testing.assert_close(model.stages[0][0].pwconv1.weight, src.stages[0][0].pwconv1.weight)
    full = _save({'model': _fast_model('hornet_tiny_7x7').state_dict()}, tmp_path / 't.pth')
    timm_model = timm.create_model('hornet_tiny_7x7', num_classes=3, pretrained=True,
                                   pretrained_cfg_overlay=dict(file=full))
    assert timm_model.head.weight.shape == (3, 512)


def test_partial_state_dict_is_never_loaded_silently(tmp_path):
    sd = _tiny().state_dict()
    sd.pop('stages.1.0.gamma1')
    sd['extra.weight'] = torch.zeros(1)
    path = _save(sd, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointError, match=r'1 missing \(e.g. stages.1.0.gamma1\).*1 unexpected \(e.g. extra'):
        load_pretrained_file(_tiny(), path)


@pytest.mark.parametrize('content', [b'', b'hello, not a checkpoint\n', 'truncated'])
def test_truncated_or_non_checkpoint_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / 'bad.pth'
    if content == 'truncated':
        good = _save({'model': _tiny().state_dict()}, tmp_path / 'good.pth')
        path.write_bytes(pathlib.Path(good).read_bytes()[:5000])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f'{re.escape(str(path))}') as e:
        load_pretrained_file(_tiny(), str(path))
    assert '\n' not in str(e.value)


def test_fused_residual_draws_stochastic_depth_like_timm_drop_path():
    """x + DropPath(gamma * y) as one addcmul: same masks (same RNG draws) and the same outputs."""
    from timm.layers import DropPath
    from models.hornet import HorBlock
    torch.manual_seed(0)
    blk = HorBlock(16, order=3, drop_path=0.5, layer_scale_init_value=0.5).train()
    x = torch.randn(16, 16, 5, 5)
    torch.manual_seed(7)
    out = blk(x)
    torch.manual_seed(7)
    dp = DropPath(0.5)
    xh = x.permute(0, 2, 3, 1)
    n1 = blk.norm1
    xh = xh + dp(blk.gamma1 * blk.gnconv.forward_nhwc(F.layer_norm(xh, n1.normalized_shape, n1.weight, n1.bias, n1.eps)))
    ref = xh + dp(blk.gamma2 * blk.pwconv2(blk.act(blk.pwconv1(blk.norm2(xh)))))
    torch.testing.assert_close(out, ref.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-6)
    assert not torch.equal(out, blk.eval()(x))  # some branches were dropped in training mode
    blk.eval()
    torch.testing.assert_close(blk(x), _reference_block(blk, x), rtol=1e-4, atol=1e-5)


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('gf', [False, True])
def test_selective_checkpointing_recomputes_only_cheap_ops_and_keeps_gradients(gf):
    """Backward re-runs LayerNorm/GELU but no GEMM or conv forward; full checkpointing re-runs them all."""
    aten = torch.ops.aten
    torch.manual_seed(0)
    model = _tiny(gf=(None, None, (4, 3), (2, 2)) if gf else None)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    for mode in ('selective', 'full'):
        model.zero_grad()
        model.set_selective_checkpointing(mode == 'selective')
        model.set_grad_checkpointing(mode == 'full')
        loss = model(x).sum()
        with _CountOps() as counted:
            loss.backward()
        forward_ops = {aten.addmm.default, aten.convolution.default}  # (an FFT also runs in the backward of one)
        recomputed = {op for op in counted.ops if op in forward_ops}
        if mode == 'selective':
            assert aten.native_layer_norm.default in counted.ops and aten.gelu.default in counted.ops
            assert not recomputed, recomputed
        else:
            assert aten.addmm.default in recomputed and aten.convolution.default in recomputed
        for g, p in zip(grads, model.parameters()):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
    model.set_grad_checkpointing(False)
    with torch.no_grad():  # no checkpointing machinery without autograd
        torch.testing.assert_close(model(x), model.set_selective_checkpointing(False) or model(x))


@pytest.mark.parametrize('name', ['hornet_isotropic_small_7x7', 'hornet_isotropic_small_gf'])
def test_isotropic_selective_checkpointing_recomputes_only_cheap_ops_and_keeps_gradients(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, depth=2, dim=32, layer_scale_init_value=0.5)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_selective_checkpointing(True)
    loss = model(x).sum()
    with _CountOps() as counted:
        loss.backward()
    assert torch.ops.aten.native_layer_norm.default in counted.ops  # recomputed in backward
    assert not {torch.ops.aten.addmm.default, torch.ops.aten.convolution.default} & set(counted.ops)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('name, impl, selective', [
    ('hornet_micro_7x7', 'fft', False), ('hornet_micro_gf', 'matmul', False), ('hornet_micro_7x7', 'fft', True)])
def test_training_forward_is_captured_by_torch_compile_as_one_graph(name, impl, selective):
    """No graph breaks (stochastic depth, Global Filter, selective checkpointing included)."""
    model = timm.create_model(name, drop_path_rate=0.1, gf_impl=impl).train()
    model.set_selective_checkpointing(selective)
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
