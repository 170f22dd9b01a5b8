"""timm's model contract on every registered HorNet variant: the ground of timm's own ``tests/test_models.py``.

timm's suite (``pytest --forked tests/test_models.py -k hornet`` with a conftest that imports ``models``) builds
every variant at full size and takes many minutes on a CPU; this file checks the same properties quickly:

* default cfgs (every tag): crop, interpolation, mean, ``pool_size`` is the feature map at ``input_size``,
  ``num_features`` / ``head_hidden_size`` match the features, the classifier and first conv named in the cfg exist,
  and ``reset_classifier(n)`` / ``reset_classifier(0, '')`` / ``num_classes=0, global_pool=''`` give the shapes timm
  expects. Built on the meta device at full depth (shapes only, no weights).
* forward (with and without grad checkpointing), backward (every parameter gets a gradient), ``features_only``,
  TorchScript, torch.fx forward and backward, FX-then-TorchScript, each output equal to eager. Every registered
  variant with its own widths, gnConv orders and Global Filter sizes, but one block per stage (two for the isotropic
  models) and 32-64 px inputs: the code paths do not depend on the repeat count (the full depth is built above, on
  the meta device), and the full depth only multiplies the run and compile time.
* ``in_chans=1`` (and 4) pretrained loading adapts the first conv as timm's loader does; ``reset_classifier`` keeps
  the model's dtype and device; the isotropic model refuses what it does not support, as the hierarchical one does.
"""
import functools

import pytest
import torch
import timm
from timm import set_scriptable
from timm.models import adapt_input_conv, get_notrace_functions, get_notrace_modules

import models  # noqa: F401  (registers the variants)
from models import fast_ops
from models.hornet import HorNet
from models.isotropic import HorNetIsotropic

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')

VARIANTS = timm.list_models('hornet_*')
TAGGED = timm.list_models('hornet_*', include_tags=True)
QUICK = ('hornet_micro_7x7', 'hornet_micro_gf', 'hornet_isotropic_small_gf')  # the -m "not slow" tier's variants


def _every(names) -> list:
    """Every variant; the ones outside QUICK are marked slow (each takes a second or two, all of them most of the
    file), so the quick tier still runs each test on a hierarchical 7x7, a Global Filter and an isotropic model."""
    return [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in names]


def test_every_variant_is_covered():
    assert len(VARIANTS) >= 14 and {'hornet_micro_gf', 'hornet_isotropic_small_gf', 'hornet_large_gf_img384'} <= \
        set(VARIANTS)


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device('meta'):
        return timm.create_model(name, **kwargs).eval()


def _shallow_kwargs(name: str) -> dict:
    return dict(depth=2) if 'isotropic' in name else dict(depths=(1, 1, 1, 1))


def _shallow(name: str, train: bool = False) -> torch.nn.Module:
    """The variant with one block per stage and cheap random weights (a uniform fill, not the slow trunc-normal)."""
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=7, **_shallow_kwargs(name))
    model.to_empty(device='cpu')
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.1, 0.1, generator=gen)
    return model.train(train)


def _input(name: str, batch: int = 1) -> torch.Tensor:
    size = 64 if 'isotropic' in name else 32  # a 4x4 token map for the isotropic models, 1x1 at stride 32 otherwise
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- default cfgs (timm: test_model_default_cfgs)

def _tags_by_variant() -> dict:
    tags: dict = {}
    for tag in TAGGED:
        tags.setdefault(tag.split('.')[0], []).append(tag)
    return tags


@pytest.mark.parametrize('name', _every(sorted(_tags_by_variant())))
def test_default_cfg_is_consistent_with_the_model(name):
    """Every tag of the variant; the tags of one variant that share class count and input size (e.g. ``.in1k`` and
    ``.mmpretrain_in1k``) share the shape checks, which only depend on those two."""
    checked = set()
    for tag in _tags_by_variant()[name]:
        model = _meta(tag)
        cfg = model.pretrained_cfg
        assert cfg['crop_pct'] == (1.0 if cfg['input_size'][1] == 384 else 0.875) and cfg['interpolation'] == 'bicubic'
        assert cfg['input_size'] == ((3, 384, 384) if 'img384' in tag else (3, 224, 224))
        assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['classifier'] == 'head'
        assert cfg['first_conv'] == ('stem.0' if 'isotropic' in tag else 'downsample_layers.0.0')
        assert cfg['first_conv'] == model.first_conv and model.get_classifier() is model.head
        assert model.num_classes == cfg['num_classes'] and model.num_features > 0 and model.head_hidden_size > 0
        sd = model.state_dict()
        head, stem = sd.get(cfg['classifier'] + '.weight'), sd.get(cfg['first_conv'] + '.weight')
        assert head is not None and head.shape[0] == cfg['num_classes']
        assert stem is not None and stem.shape[1] == cfg['input_size'][0]
        key = (cfg['num_classes'], tuple(cfg['input_size']))
        if key in checked:
            continue
        checked.add(key)
        x = torch.empty(1, *cfg['input_size'], device='meta')
        feats = model.forward_features(x)
        assert tuple(feats.shape[-2:]) == tuple(cfg['pool_size']), f'{tuple(feats.shape)} vs {cfg["pool_size"]}'
        assert feats.shape[1] == model.num_features
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
        assert model.forward_head(feats).shape == (1, cfg['num_classes'])  # forward() is forward_head(forward_features)
        assert model(x).shape == (1, cfg['num_classes'])

        model.reset_classifier(5)
        assert model.get_classifier() is model.head and model(x).shape == (1, 5)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model.forward_head(feats).shape == (1, model.head_hidden_size)
        model.reset_classifier(0, '')
        assert model.forward_head(feats).shape == (1, model.num_features, *cfg['pool_size'])
        unpooled = _meta(tag, num_classes=0, global_pool='')
        assert unpooled.forward_head(feats).shape == (1, unpooled.num_features, *cfg['pool_size'])
        assert unpooled(x).shape == (1, unpooled.num_features, *cfg['pool_size'])


# ------------------------------------------ forward / backward (timm: test_model_forward, test_model_backward)

@pytest.mark.parametrize('name', _every(VARIANTS))
def test_every_variant_runs_forward_and_backward_unchanged_by_grad_checkpointing(name):
    """Features, head and pre-logits shapes; grad checkpointing changes neither the output nor any gradient; the
    backward reaches every parameter. Checkpointing is compared at batch 2 on the small variants (micro and
    isotropic; the code path is the same in every variant), at batch 1 without gradients on the others."""
    model = _shallow(name)
    x = _input(name)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim == 4 and feats.shape[1] == model.num_features
        out = model.forward_head(feats)
        assert out.shape == (1, 7) and torch.isfinite(out).all()
        assert torch.equal(model(x), out)
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.num_features)
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)
    model.train()
    xb = _input(name, batch=2)
    model(xb).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    if name.startswith(('hornet_micro', 'hornet_isotropic')):
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        model.set_grad_checkpointing(False)
        model(xb).mean().backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f'{n}: {m}')


@pytest.mark.parametrize('name', ['hornet_tiny_7x7', 'hornet_tiny_gf', 'hornet_isotropic_small_7x7'])
def test_features_only_gives_expected_strides(name):
    """timm's features_only wrapper (shapes only: cheap weights, no gradients)."""
    with torch.device('meta'):
        model = timm.create_model(name, features_only=True)
    model.to_empty(device='cpu')
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.1, 0.1, generator=gen)
        feats = model(torch.randn(1, 3, 64, 64))
    reductions = model.feature_info.reduction()
    assert [64 // f.shape[-1] for f in feats] == reductions
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    if 'isotropic' not in name:
        assert reductions == [4, 8, 16, 32]


@pytest.mark.parametrize('name', ['hornet_micro_gf', 'hornet_isotropic_small_gf'])
def test_forward_intermediates_honours_grad_checkpointing(name):
    model = _shallow(name, train=True)
    x = _input(name, batch=2)
    out, inter = model.forward_intermediates(x)
    torch.testing.assert_close(out, model.forward_features(x))
    calls = []
    blocks = [m for m in model.modules() if type(m).__name__ == 'HorBlock']
    for b in blocks:  # (module forward hooks do not see checkpoint recomputation; a wrapped forward does)
        b.forward = functools.partial(lambda f, x: calls.append(1) or f(x), b.forward)
    model.set_grad_checkpointing(True)
    out2, inter2 = model.forward_intermediates(x)
    forward_calls = len(calls)
    out2.mean().backward()
    torch.testing.assert_close(out2, out, rtol=1e-5, atol=1e-6)
    assert forward_calls == len(blocks) and len(calls) == 2 * len(blocks), 'blocks were not recomputed in backward'


# ---------------------------------------------------------------- TorchScript (timm: test_model_forward_torchscript)

@pytest.mark.parametrize('name', _every(VARIANTS))
def test_torchscript_output_equals_eager(name):
    model = _shallow(name)
    with set_scriptable(True):
        scripted = torch.jit.script(model)
    x = _input(name)
    with torch.no_grad():
        assert torch.equal(scripted(x), model(x))


def test_torchscript_covers_training_mode_and_the_matmul_global_filter():
    model = _shallow('hornet_micro_gf', train=True)
    fast_ops.enable(model, gf_impl='matmul')
    scripted = torch.jit.script(model)
    x = _input('hornet_micro_gf', batch=2)
    torch.testing.assert_close(scripted(x), model(x))
    scripted(x).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.device('meta'):
        dropping = timm.create_model('hornet_micro_7x7', drop_path_rate=0.5)
    assert torch.jit.script(dropping).training  # stochastic depth compiles too


# --------------------- torch.fx (timm: test_model_forward_fx, test_model_backward_fx, ..._fx_torchscript)

def _fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """timm's tracer setup: its registered leaf modules and no-trace functions, the graph's output node returned."""
    from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    train_return = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        nodes = list(reversed(graph.nodes))
        names = [n.name for n in nodes]
        train_return = [train_nodes[-names.index(n.name)] for n in nodes[0]._input_nodes]
    return create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


def _fx_out(fx_model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat(tuple(fx_model(x).values()))


@pytest.mark.parametrize('name', _every(VARIANTS))
def test_fx_forward_backward_and_fx_then_torchscript_equal_eager(name):
    model = _shallow(name, train=True)
    fx_model = _fx_model(model, train=True)  # holds the train and the eval graph; .eval()/.train() switch them
    x = _input(name)
    model.eval()
    fx_model.eval()
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(_fx_out(fx_model, x), ref)
        scripted = torch.jit.script(fx_model)  # FX code calls the no-trace helpers: they must script too
        assert torch.equal(_fx_out(scripted, x), ref)

    fx_model.train()
    out = _fx_out(fx_model, _input(name, batch=2))
    assert out.shape == (2, 7)
    out.mean().backward()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing, missing


# ---------------------------------------------------------------- pretrained loading with in_chans != 3

def _checkpoint(name: str) -> dict:
    return dict(_shallow(name).state_dict())


@pytest.mark.parametrize('name, fmt', [('hornet_micro_gf', 'original'), ('hornet_micro_7x7', 'mmpretrain'),
                                       ('hornet_isotropic_small_7x7', 'original')])
def test_pretrained_file_with_in_chans_1_sums_the_first_conv_over_rgb(tmp_path, name, fmt):
    sd = _checkpoint(name)
    first = HorNetIsotropic.first_conv if 'isotropic' in name else HorNet.first_conv
    if fmt == 'mmpretrain':
        ck = {'state_dict': {'backbone.' + k if not k.startswith('head.') else 'head.fc.' + k[5:]: v
                             for k, v in sd.items()}}
        ck['state_dict'] = {k.replace('gnconv.pws.', 'gnconv.projs.').replace('backbone.norm.', 'backbone.norm3.')
                            .replace('.gamma1', '.gamma1.weight').replace('.gamma2', '.gamma2.weight'): v
                            for k, v in ck['state_dict'].items()}
    else:
        ck = {'model': sd}
    path = tmp_path / 'ck.pth'
    torch.save(ck, path)
    kw = dict(num_classes=7, pretrained_cfg_overlay=dict(file=str(path)), **_shallow_kwargs(name))
    gray = timm.create_model(name, pretrained=True, in_chans=1, **kw).eval()
    w = gray.state_dict()[first + '.weight']
    assert w.shape[1] == 1
    torch.testing.assert_close(w, sd[first + '.weight'].sum(1, keepdim=True))
    for k, v in gray.state_dict().items():
        if k != first + '.weight':
            assert torch.equal(v, sd[k]), k
    # the 1-channel model on an image equals the RGB model on that image repeated over RGB
    rgb = timm.create_model(name, pretrained=True, **kw).eval()
    x = _input(name)[:, :1]
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_pretrained_in_chans_4_from_file_and_from_state_dict_adapt_once_like_timm(tmp_path):
    sd = _checkpoint('hornet_micro_7x7')
    path = tmp_path / 'ck.pth'
    torch.save({'model': sd}, path)
    kw = dict(num_classes=7, in_chans=4, pretrained=True, **_shallow_kwargs('hornet_micro_7x7'))
    expected = adapt_input_conv(4, sd['downsample_layers.0.0.weight'])
    from_file = timm.create_model('hornet_micro_7x7', pretrained_cfg_overlay=dict(file=str(path)), **kw)
    from_sd = timm.create_model('hornet_micro_7x7', pretrained_cfg_overlay=dict(state_dict=dict(sd)), **kw)
    for model in (from_file, from_sd):  # (timm itself drops the head of a state dict given for another class count)
        got = model.state_dict()
        torch.testing.assert_close(got['downsample_layers.0.0.weight'], expected)
        assert all(torch.equal(got[k], sd[k]) for k in sd if not k.startswith(('head.', 'downsample_layers.0.0.w')))


# ---------------------------------------------------------------- classifier reset and unsupported options

@pytest.mark.parametrize('name', ['hornet_micro_7x7', 'hornet_isotropic_small_gf'])
def test_reset_classifier_keeps_the_model_dtype_and_device(name):
    model = _shallow(name).double()
    model.reset_classifier(5)
    assert model.head.weight.dtype == torch.float64
    assert model(_input(name).double()).dtype == torch.float64
    model.reset_classifier(0)
    model.reset_classifier(3)  # from an Identity head: follows the rest of the model
    assert model.head.weight.dtype == torch.float64
    meta = _meta(name)
    meta.reset_classifier(4)
    assert meta.head.weight.is_meta


@pytest.mark.parametrize('name', ['hornet_micro_7x7', 'hornet_isotropic_small_7x7'])
@pytest.mark.parametrize('pool', ['max', 'avgmax', 'catavgmax', 'token'])
def test_unsupported_global_pool_is_an_error(name, pool):
    with pytest.raises(ValueError, match='global_pool'):
        _meta(name, global_pool=pool)
    with pytest.raises(ValueError, match='global_pool'):
        _meta(name).reset_classifier(0, pool)


@pytest.mark.parametrize('name', ['hornet_micro_7x7', 'hornet_isotropic_small_7x7'])
def test_forward_intermediates_other_than_nchw_is_an_error(name):
    model = _meta(name)
    with pytest.raises(ValueError, match='NCHW'):
        model.forward_intermediates(torch.empty(1, 3, 64, 64, device='meta'), output_fmt='NHWC')
    _, inter = model.forward_intermediates(torch.empty(1, 3, 64, 64, device='meta'))
    assert all(t.ndim == 4 for t in inter)
