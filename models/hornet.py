"""HorNet (Rao et al., NeurIPS 2022): hierarchical ConvNets built from recursive gated convolutions (gnConv).

The module tree and parameter names mirror the original release exactly, so its checkpoints load with
``strict=True``; :func:`checkpoint_filter_fn` also maps mmpretrain's published files and this project's own.
Forward passes are the same function as the original code (fp32 logits agree to ~1e-5; outputs and gradients
are tested against the original formulation) but are computed channels-last: ``F.layer_norm`` instead of a
mean/pow chain, the gnConv 1x1 projections as GEMMs, one ``addcmul`` per residual update, and (optionally) the
Global Filter as small DFT matmuls instead of rfft2/irfft2. Measurements: BENCHMARKS.md.
"""
import logging
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from timm.layers import trunc_normal_
from timm.models import adapt_input_conv, build_model_with_cfg, create_model, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from . import fast_ops
from .downloads import prepare_pretrained, released_files
from .errors import CheckpointError
from .global_filter import check_gf_impl, global_filter, resize_complex_weight
from .weights import convert_keys, extract_state_dict, guess_variant, safe_load

__all__ = ['HorNet', 'HorBlock', 'GnConv', 'GlobalLocalFilter', 'LayerNorm2d', 'checkpoint_filter_fn',
           'pretrained_filter_fn', 'adapt_input_channels', 'load_pretrained_file', 'create_model_with_weights',
           'checkpoint_blocks', 'hornet_cfg', 'check_global_pool', 'new_head']

_logger = logging.getLogger(__name__)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor (the original's ``data_format='channels_first'``).

    The original computes mean/var with a chain of elementwise ops; the same normalisation is done here by
    ``F.layer_norm`` on an NHWC view, which is one fused kernel and free of copies for channels_last inputs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GlobalLocalFilter(nn.Module):
    """Global-Local Filter: half the channels through a 3x3 depthwise conv, half through a learned global filter
    in the Fourier domain; the halves are interleaved channel by channel, with LayerNorms before and after."""

    def __init__(self, dim: int, h: int = 14, w: int = 8, gf_impl: str = 'fft'):
        super().__init__()
        self.dw = nn.Conv2d(dim // 2, dim // 2, kernel_size=3, padding=1, bias=False, groups=dim // 2)
        self.complex_weight = nn.Parameter(torch.zeros(dim // 2, h, w, 2))
        trunc_normal_(self.complex_weight, std=.02)
        self.pre_norm = LayerNorm2d(dim, eps=1e-6)
        self.post_norm = LayerNorm2d(dim, eps=1e-6)
        self.gf_impl = check_gf_impl(gf_impl)  # a speed lever: models/fast_ops.py enable(model, gf_impl=...)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_nhwc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_nhwc(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """NHWC in and out; ``scale`` multiplies the output (folded into the post-norm's affine)."""
        pre = self.pre_norm
        x = F.layer_norm(x, pre.normalized_shape, pre.weight, pre.bias, pre.eps)
        x1, x2 = torch.chunk(x, 2, dim=-1)
        x1 = self.dw(x1.permute(0, 3, 1, 2))
        b, c, h, w = x1.shape
        weight = resize_complex_weight(self.complex_weight, [h, w // 2 + 1])
        x2 = global_filter(x2.permute(0, 3, 1, 2), weight, self.gf_impl).to(x1.dtype)
        # interleave the halves channel by channel, as the original's stack + reshape over dim 1
        x = torch.stack([x1.permute(0, 2, 3, 1), x2.permute(0, 2, 3, 1)], dim=-1).reshape(b, h, w, 2 * c)
        post = self.post_norm
        weight, bias = post.weight, post.bias
        if scale != 1.0:
            weight, bias = weight * scale, bias * scale
        return F.layer_norm(x, post.normalized_shape, weight, bias, post.eps)


class DepthwiseConv2d(nn.Conv2d):
    """The gnConv's 7x7 depthwise conv: an ``nn.Conv2d`` (same parameters and NCHW ``forward``) that also has the
    ``forward_nhwc(x, scale)`` of :class:`GlobalLocalFilter`, so :class:`GnConv` calls either without a type test
    (which TorchScript cannot compile)."""

    def forward_nhwc(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """NHWC in and out; ``scale`` multiplies the output (folded into the kernel and bias)."""
        weight, bias = self.weight, self.bias
        if scale != 1.0:
            weight = weight * scale
            if bias is not None:
                bias = bias * scale
        return self._conv_forward(x.permute(0, 3, 1, 2), weight, bias).permute(0, 2, 3, 1)


class GnConv(nn.Module):
    """Recursive gated convolution of order n: p_{k+1} = pws_k(p_k) * q_{k+1}, with q's from one depthwise op."""

    def __init__(
            self,
            dim: int,
            order: int = 5,
            gf_size: Optional[Tuple[int, int]] = None,
            scale: float = 1.0,
            kernel_size: int = 7,
            gf_impl: str = 'fft',
    ):
        super().__init__()
        self.order = order
        self.dims = [dim // 2 ** i for i in range(order)][::-1]
        self.dw_dim = sum(self.dims)
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        if gf_size is None:
            self.dwconv = DepthwiseConv2d(
                self.dw_dim, self.dw_dim, kernel_size, padding=kernel_size // 2, groups=self.dw_dim)
        else:
            self.dwconv = GlobalLocalFilter(self.dw_dim, h=gf_size[0], w=gf_size[1], gf_impl=gf_impl)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList([nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1)])
        self.scale = scale
        # speed levers, off by default: set by models/fast_ops.py enable(model, fused_gating=..., triton_dwconv=...)
        self.fused_gating = False
        self.triton_dwconv = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW in, NCHW out (the module's public contract; the work is done channels-last)."""
        return self.forward_nhwc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        """The same function on an NHWC tensor.

        The 1x1 projections are GEMMs over the channel dim (``F.linear`` on the conv weights viewed as
        matrices), like the MLP's, with no layout conversion between them and the gating multiplies; the output
        scale s is folded into the depthwise kernel and bias (or the Global Filter's post-norm).
        """
        fused = F.linear(x, self.proj_in.weight.flatten(1), self.proj_in.bias)
        pwa, abc = torch.split(fused, [self.dims[0], self.dw_dim], dim=-1)
        if (self.fused_gating or self.triton_dwconv) and not torch.jit.is_scripting():
            return fast_ops.gnconv_tail(self, pwa, abc)
        dw = self.dwconv.forward_nhwc(abc, self.scale)
        dw_list = torch.split(dw, self.dims, dim=-1)
        x = pwa * dw_list[0]
        for i, pw in enumerate(self.pws):
            x = F.linear(x, pw.weight.flatten(1), pw.bias) * dw_list[i + 1]
        return F.linear(x, self.proj_out.weight.flatten(1), self.proj_out.bias)


class HorBlock(nn.Module):
    """Pre-norm gnConv and pre-norm MLP (4x, GELU), each with layer scale and stochastic depth."""

    def __init__(
            self,
            dim: int,
            order: int,
            gf_size: Optional[Tuple[int, int]] = None,
            scale: float = 1 / 3,
            drop_path: float = 0.,
            layer_scale_init_value: float = 1e-6,
            mlp_ratio: float = 4.,
            gf_impl: str = 'fft',
    ):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.gnconv = GnConv(dim, order=order, gf_size=gf_size, scale=scale, gf_impl=gf_impl)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, int(mlp_ratio * dim))
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(int(mlp_ratio * dim), dim)
        if layer_scale_init_value > 0:
            self.gamma1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        else:
            self.gamma1 = self.gamma2 = None
        self.drop_prob = float(drop_path)  # stochastic depth, applied in _branch_scale (as timm's DropPath)

    def _branch_scale(self, gamma: Optional[torch.Tensor], x: torch.Tensor) -> Optional[torch.Tensor]:
        """Layer scale times the stochastic-depth keep mask (/ keep prob), as one (B, 1, 1, C) factor.

        The same function as ``x + drop_path(gamma * y)`` with timm's DropPath (same RNG draw: one bernoulli
        per sample), but it lets the residual update be a single ``addcmul`` pass.
        """
        if not (self.training and self.drop_prob > 0.):
            return gamma
        keep = 1. - self.drop_prob
        mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep) / keep
        if gamma is None:
            return mask
        return mask * gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NCHW in and out; inside, one NHWC view (free when x is channels-last in memory, as it is after the
        # stem's LayerNorm) so every LayerNorm, projection and MLP is a plain op over the last dim.
        x = x.permute(0, 2, 3, 1)
        n1 = self.norm1
        y = self.gnconv.forward_nhwc(F.layer_norm(x, n1.normalized_shape, n1.weight, n1.bias, n1.eps))
        scale = self._branch_scale(self.gamma1, x)
        x = x + y if scale is None else torch.addcmul(x, y, scale)
        y = self.pwconv2(self.act(self.pwconv1(self.norm2(x))))
        scale = self._branch_scale(self.gamma2, x)
        x = x + y if scale is None else torch.addcmul(x, y, scale)
        return x.permute(0, 3, 1, 2)


def check_global_pool(global_pool: str) -> str:
    """HorNet pools by averaging ('avg') or not at all ('')."""
    if global_pool not in ('avg', ''):
        raise ValueError(f"global_pool must be 'avg' or '' (got {global_pool!r}); HorNet has no other pooling")
    return global_pool


def new_head(model: nn.Module, num_features: int, num_classes: int) -> nn.Module:
    """A fresh classifier (or Identity for 0 classes) on the device and dtype of the model's current head
    (or, if it has none, of its final norm / any parameter), as timm's heads follow ``model.to(...)``."""
    if num_classes <= 0:
        return nn.Identity()
    ref = getattr(model.head, 'weight', None)
    if not isinstance(ref, torch.Tensor):
        ref = getattr(model.norm, 'weight', None)
    if not isinstance(ref, torch.Tensor):
        ref = next(iter(model.parameters()), None)
    if ref is None:
        return nn.Linear(num_features, num_classes)
    return nn.Linear(num_features, num_classes, device=ref.device, dtype=ref.dtype)


_aten = torch.ops.aten
# Ops whose outputs selective checkpointing keeps: the GEMMs, convolutions and FFTs (costly to recompute);
# everything else in a block (LayerNorms, GELU, the gating multiplies) is recomputed during backward.
_KEEP_OPS = frozenset({
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.convolution.default,
    _aten._fft_r2c.default, _aten._fft_c2r.default, _aten._fft_c2c.default,
})


def _keep_costly_ops(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _KEEP_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    return create_selective_checkpoint_contexts(_keep_costly_ops)


def checkpoint_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, selective: bool = False) -> torch.Tensor:
    """Run ``blocks`` in order, each under activation checkpointing.

    Full (as timm's ``checkpoint_seq``): a block keeps only its input and is recomputed whole in backward.
    Selective: it keeps its GEMM/conv/FFT outputs and recomputes only the cheap ops (norms, GELU, gating); about
    40% less activation memory for about 7% more step time on CPU, against about 8x less for full. Same outputs
    and gradients either way. Without autograd, selective runs the blocks plainly.
    """
    for blk in blocks:
        if not selective:
            x = checkpoint(blk, x, use_reentrant=False)
        elif torch.is_grad_enabled():
            x = checkpoint(blk, x, use_reentrant=False, context_fn=_selective_context)
        else:
            x = blk(x)
    return x


class HorNet(nn.Module):
    """Hierarchical HorNet. Constructor arguments are plain data so a variant is a small dict of numbers.

    Args:
        depths: blocks per stage.
        base_dim: channels of stage 1; stages use [C, 2C, 4C, 8C].
        orders: gnConv order per stage (2, 3, 4, 5 in the paper).
        gf_sizes: per stage, None for a 7x7 depthwise conv or (h, w) of the Global Filter's learned spectrum.
        gnconv_scale: output scale s of the depthwise branch (1/3 in all released models).
        gf_impl: 'fft' (reference, fp32), 'matmul' (DFT as dense matmuls; any dtype, compile/ONNX friendly) or
            'kron' (opt-in: the 2-D DFT as one GEMM each way); see models/global_filter.py. Switched later, with the
            other speed levers, by ``models.fast_ops.enable(model, gf_impl=...)``.
    """

    first_conv = 'downsample_layers.0.0'  # the pretrained cfg's 'first_conv', adapted when in_chans != 3

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            depths: Sequence[int] = (2, 3, 18, 2),
            base_dim: int = 64,
            orders: Sequence[int] = (2, 3, 4, 5),
            gf_sizes: Sequence[Optional[Tuple[int, int]]] = (None, None, None, None),
            gnconv_scale: float = 1 / 3,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            layer_scale_init_value: float = 1e-6,
            head_init_scale: float = 1.,
            global_pool: str = 'avg',
            gf_impl: str = 'fft',
    ):
        super().__init__()
        self.num_classes = num_classes
        self.global_pool = check_global_pool(global_pool)
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.selective_checkpointing = False
        dims = [base_dim * 2 ** i for i in range(4)]
        self.num_features = self.head_hidden_size = dims[-1]

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
            LayerNorm2d(dims[0], eps=1e-6),
        ))
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(dims[i], eps=1e-6),
                nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
            ))

        dp_rates = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu')]
        self.stages = nn.ModuleList()
        self.feature_info = []
        cur = 0
        for i in range(4):
            gf = tuple(gf_sizes[i]) if gf_sizes[i] is not None else None
            self.stages.append(nn.Sequential(*[
                HorBlock(
                    dims[i], order=orders[i], gf_size=gf, scale=gnconv_scale, drop_path=dp_rates[cur + j],
                    layer_scale_init_value=layer_scale_init_value, gf_impl=gf_impl)
                for j in range(depths[i])
            ]))
            cur += depths[i]
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'stages.{i}'))

        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

        self.apply(self._init_weights)
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^downsample_layers\.0',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^downsample_layers\.(\d+)', (0,)),  # a downsample goes with the stage it feeds
                (r'^stages\.(\d+)\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: recompute every block in backward, keeping only block inputs."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_selective_checkpointing(self, enable: bool = True) -> None:
        """A memory mode beside timm's: each block keeps its GEMM/conv/FFT outputs and recomputes the cheap ops in
        backward (:func:`checkpoint_blocks`). Full checkpointing wins where both are on."""
        self.selective_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head (on the old one's device and dtype); ``global_pool`` is 'avg' or '' (unpooled)."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        self.head = new_head(self, self.num_features, num_classes)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (strides 4/8/16/32) for dense tasks; what ``features_only=True`` returns."""
        if output_fmt != 'NCHW':
            raise ValueError("HorNet returns intermediates in 'NCHW' only")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        last = max_index if stop_early else len(self.stages) - 1
        for i, (downsample, stage) in enumerate(zip(self.downsample_layers, self.stages)):
            if i > last:
                break
            x = downsample(x)
            if (self.grad_checkpointing or self.selective_checkpointing) and not torch.jit.is_scripting():
                x = checkpoint_blocks(stage, x, selective=not self.grad_checkpointing)
            else:
                x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        self.downsample_layers = self.downsample_layers[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = downsample(x)
            if (self.grad_checkpointing or self.selective_checkpointing) and not torch.jit.is_scripting():
                x = checkpoint_blocks(stage, x, selective=not self.grad_checkpointing)
            else:
                x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean((-2, -1))
            x = self.norm(x)
        else:  # unpooled: normalise every position, keep NCHW
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str, prefix: str = '') -> None:
        """timm's ``custom_load`` hook: any supported checkpoint format, loaded safely and strictly."""
        load_pretrained_file(self, checkpoint_path)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module, path: str = '<checkpoint>',
                         allow_new_head: bool = True) -> Dict[str, torch.Tensor]:
    """Turn any supported checkpoint into a state dict that ``model.load_state_dict(strict=True)`` accepts.

    Key names of mmpretrain, DDP and torch.compile are mapped onto the original release's
    (:func:`models.weights.convert_keys`). GF filters of another resolution are interpolated (as the original does
    at run time); a classifier of another class count is replaced by the model's own with a warning (unless
    ``allow_new_head`` is False, as for resuming or evaluating, where it is an error). Any other missing,
    unexpected or mis-shaped key raises :class:`CheckpointError` naming it.
    """
    sd = convert_keys(extract_state_dict(state_dict, path=path))
    target = model.state_dict()
    head_keys = [k for k in ('head.weight', 'head.bias') if k in target]

    for k, v in list(sd.items()):
        if k.endswith('complex_weight') and k in target and v.shape != target[k].shape \
                and v.ndim == 4 and v.shape[0] == target[k].shape[0]:
            _logger.info('Resizing GF filter %s from %s to %s', k, tuple(v.shape[1:3]), tuple(target[k].shape[1:3]))
            sd[k] = resize_complex_weight(v, list(target[k].shape[1:3])).contiguous()

    ck_head = sd.get('head.weight')
    if ck_head is not None and head_keys and ck_head.shape != target['head.weight'].shape \
            and ck_head.ndim == 2 and ck_head.shape[1] == target['head.weight'].shape[1] and allow_new_head:
        _logger.warning('Checkpoint classifier has %d classes, model has %d: keeping the model\'s new head',
                        ck_head.shape[0], target['head.weight'].shape[0])
        for k in head_keys:
            sd[k] = target[k]
    elif ck_head is not None and not head_keys:  # model built with num_classes=0: drop the head quietly
        sd.pop('head.weight', None)
        sd.pop('head.bias', None)

    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    mismatched = [f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}"
                  for k in target if k in sd and sd[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        looks = guess_variant(sd)
        hint = f"; the checkpoint looks like {looks}" if looks else ''
        parts = []
        for label, items in (('missing', missing), ('unexpected', unexpected), ('shape mismatch', mismatched)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
        raise CheckpointError(
            f"{path} does not fit this model: {'; '.join(parts)}{hint} "
            f"(use the matching --model / num_classes)")
    return sd


def adapt_input_channels(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, Any]:
    """timm's ``in_chans`` adaptation of the first conv, for a model built with ``in_chans != 3``.

    The checkpoint's first-conv weight (``model.first_conv + '.weight'``, under any prefix such as mmpretrain's
    ``backbone.``) is converted by timm's :func:`~timm.models.adapt_input_conv` when its input channels differ
    from the model's: summed over RGB for 1 channel, repeated and rescaled for more. Other keys are untouched.
    """
    name = getattr(model, 'first_conv', None)
    try:
        in_chans = model.get_submodule(name).weight.shape[1] if name else None
    except AttributeError:
        in_chans = None
    if in_chans is None:
        return dict(state_dict)
    suffix = name + '.weight'
    out = dict(state_dict)
    for k, v in state_dict.items():
        if (k == suffix or k.endswith('.' + suffix)) and isinstance(v, torch.Tensor) and v.ndim == 4 \
                and v.shape[1] != in_chans:
            try:
                out[k] = adapt_input_conv(in_chans, v)
            except NotImplementedError:  # e.g. a 2-channel checkpoint into 4 channels: the shape error names it
                continue
            _logger.info('Adapted first conv %s from %d to %d input channel(s)', k, v.shape[1], in_chans)
    return out


def pretrained_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """``build_model_with_cfg``'s filter for a state dict given in memory (``pretrained_cfg_overlay=dict(
    state_dict=...)``). timm adapts the first conv itself after the filter, so the checkpoint is checked with the
    adapted conv but handed back with its own, which timm then converts exactly once."""
    sd = extract_state_dict(state_dict)
    adapted = adapt_input_channels(sd, model)
    out = checkpoint_filter_fn(adapted, model)
    name = getattr(model, 'first_conv', None)
    for k, v in sd.items():
        if adapted[k] is not v:
            out[name + '.weight'] = v
    return out


def load_pretrained_file(model: nn.Module, path: str, use_ema: bool = False) -> None:
    """Load weights of any supported format into ``model``, safely (``weights_only``) and strictly
    (:func:`checkpoint_filter_fn`), the first conv adapted to the model's ``in_chans`` (:func:`adapt_input_channels`).
    ``path`` may also be a URL or a released name (``hornet_tiny_7x7.in1k``): downloaded once into the cache."""
    sd = extract_state_dict(safe_load(path), use_ema=use_ema, path=path)
    sd = checkpoint_filter_fn(adapt_input_channels(sd, model), model, path=path)
    model.load_state_dict(sd, strict=True)
    _logger.info('Loaded weights from %s', path)


def create_model_with_weights(name: str, num_classes: int, state_dict: Mapping[str, Any], path: str) -> nn.Module:
    """Build registered model ``name`` on the meta device (skipping the random init, seconds on CPU) and adopt the
    checkpoint's tensors as fp32 parameters, strictly (see :func:`checkpoint_filter_fn`)."""
    with torch.device('meta'):
        model = create_model(name, num_classes=num_classes)
    sd = checkpoint_filter_fn(state_dict, model, path=path)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):  # a tensor not in the state dict
        model = create_model(name, num_classes=num_classes)
        model.load_state_dict(sd, strict=True)
    return model


def hornet_cfg(**kwargs) -> Dict[str, Any]:
    """A pretrained cfg of a HorNet variant (timm's ``_cfg``; isotropic.py uses it too)."""
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'downsample_layers.0.0', 'classifier': 'head', 'license': 'mit',
        'paper_ids': 'arXiv:2207.14284', 'paper_name': 'HorNet: Efficient High-Order Spatial Interactions '
        'with Recursive Gated Convolutions', 'origin_url': 'https://github.com/raoyongming/HorNet',
        'custom_load': True,
        **kwargs,
    }


def _released(variant: str, **kwargs) -> Dict[str, Dict[str, Any]]:
    """One cfg per released file of ``variant`` (models/downloads.py), the original release's first (the default):
    ``.in1k``/``.mmpretrain_in1k``, or ``.in22k``/``.mmpretrain_in22k`` with the 21841-class head of the file."""
    return {f.name: hornet_cfg(url=f.url, num_classes=f.num_classes, **kwargs) for f in released_files(variant)}


_IMG384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)

default_cfgs = generate_default_cfgs({
    **_released('hornet_tiny_7x7'),
    **_released('hornet_tiny_gf'),
    **_released('hornet_small_7x7'),
    **_released('hornet_small_gf'),
    **_released('hornet_base_7x7'),
    **_released('hornet_base_gf'),
    'hornet_base_gf_img384': hornet_cfg(**_IMG384),  # no released file
    **_released('hornet_large_7x7'),
    **_released('hornet_large_gf'),
    **_released('hornet_large_gf_img384', **_IMG384),
    'hornet_micro_7x7': hornet_cfg(),
    'hornet_micro_gf': hornet_cfg(),
})

def _create_hornet(variant: str, pretrained: bool = False, **kwargs) -> HorNet:
    kwargs = prepare_pretrained(variant, pretrained, kwargs)  # downloads a released file (cached, hash-checked)
    return build_model_with_cfg(
        HorNet, variant, pretrained,
        pretrained_filter_fn=pretrained_filter_fn,
        feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


GF_224 = (None, None, (14, 8), (7, 4))
GF_384 = (None, None, (24, 13), (12, 7))


def _variant(base_dim: int, gf: Optional[Sequence] = None) -> Dict[str, Any]:
    return dict(depths=(2, 3, 18, 2), base_dim=base_dim, gf_sizes=gf or (None,) * 4)


@register_model
def hornet_tiny_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_tiny_7x7', pretrained, **dict(_variant(64), **kwargs))


@register_model
def hornet_tiny_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_tiny_gf', pretrained, **dict(_variant(64, GF_224), **kwargs))


@register_model
def hornet_small_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_small_7x7', pretrained, **dict(_variant(96), **kwargs))


@register_model
def hornet_small_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_small_gf', pretrained, **dict(_variant(96, GF_224), **kwargs))


@register_model
def hornet_base_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_base_7x7', pretrained, **dict(_variant(128), **kwargs))


@register_model
def hornet_base_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_base_gf', pretrained, **dict(_variant(128, GF_224), **kwargs))


@register_model
def hornet_base_gf_img384(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_base_gf_img384', pretrained, **dict(_variant(128, GF_384), **kwargs))


@register_model
def hornet_large_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_large_7x7', pretrained, **dict(_variant(192), **kwargs))


@register_model
def hornet_large_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_large_gf', pretrained, **dict(_variant(192, GF_224), **kwargs))


@register_model
def hornet_large_gf_img384(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_large_gf_img384', pretrained, **dict(_variant(192, GF_384), **kwargs))


# Not in the paper: a HorNet small enough to train on a laptop CPU in minutes (quick-start job, smoke tests).
# Same blocks, orders and s as the released models; depths (1, 1, 3, 1), base width 16.
@register_model
def hornet_micro_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_micro_7x7', pretrained, **dict(dict(depths=(1, 1, 3, 1), base_dim=16), **kwargs))


@register_model
def hornet_micro_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create_hornet('hornet_micro_gf', pretrained,
                          **dict(dict(depths=(1, 1, 3, 1), base_dim=16, gf_sizes=GF_224), **kwargs))
