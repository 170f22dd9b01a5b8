"""Isotropic HorNet-S from the paper's ablation: gnConv in a DeiT-S layout (one 16x16 patch embedding, no
downsampling, constant width).

The paper gives the layout (DeiT-S: patch 16, width 384) and the block count (13, chosen to match DeiT-S's
parameters and FLOPs) but the release has no code for it. Assumptions, documented in README: every block is
the hierarchical model's HorBlock (pre-norm gnConv + 4x MLP, layer scale 1e-6); gnConv order 3 with s = 1/3 in
every block; the GF variant uses a Global-Local Filter of size (14, 8) in every block (the 14x14 token map at
224); the head is global average pooling + LayerNorm + Linear, as in the hierarchical model.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from .downloads import prepare_pretrained
from .hornet import (HorBlock, LayerNorm2d, check_global_pool, checkpoint_blocks, hornet_cfg, load_pretrained_file,
                     new_head, pretrained_filter_fn)

__all__ = ['HorNetIsotropic']


class HorNetIsotropic(nn.Module):
    """Constant-width HorNet: patch embedding, ``depth`` HorBlocks, pooled LayerNorm head."""

    first_conv = 'stem.0'  # the pretrained cfg's 'first_conv', adapted when in_chans != 3

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            patch_size: int = 16,
            dim: int = 384,
            depth: int = 13,
            order: int = 3,
            gf_size: Optional[Tuple[int, int]] = None,
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
        self.num_features = self.head_hidden_size = dim
        self.grad_checkpointing = False
        self.selective_checkpointing = False
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size),
            LayerNorm2d(dim, eps=1e-6),
        )
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device='cpu')]
        self.blocks = nn.Sequential(*[
            HorBlock(dim, order=order, gf_size=gf_size, scale=gnconv_scale, drop_path=dpr[i],
                     layer_scale_init_value=layer_scale_init_value, gf_impl=gf_impl)
            for i in range(depth)
        ])
        self.feature_info = [dict(num_chs=dim, reduction=patch_size, module=f'blocks.{i}') for i in range(depth)]
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
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
        return dict(stem=r'^stem', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_selective_checkpointing(self, enable: bool = True) -> None:
        """See :meth:`models.hornet.HorNet.set_selective_checkpointing`."""
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
            self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
            stop_early: bool = False, output_fmt: str = 'NCHW', intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Outputs of the selected blocks (all at stride ``patch_size``), NCHW; grad checkpointing is honoured."""
        if output_fmt != 'NCHW':
            raise ValueError("HorNetIsotropic returns intermediates in 'NCHW' only")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self.stem(x)
        intermediates = []
        last = max_index if stop_early else len(self.blocks) - 1
        for i in range(last + 1):
            if (self.grad_checkpointing or self.selective_checkpointing) and not torch.jit.is_scripting():
                x = checkpoint_blocks([self.blocks[i]], x, selective=not self.grad_checkpointing)
            else:
                x = self.blocks[i](x)
            if i in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if (self.grad_checkpointing or self.selective_checkpointing) and not torch.jit.is_scripting():
            return checkpoint_blocks(self.blocks, x, selective=not self.grad_checkpointing)
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = self.norm(x.mean((-2, -1)))
        else:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str, prefix: str = '') -> None:
        """timm's ``custom_load`` hook; see :meth:`models.hornet.HorNet.load_pretrained`."""
        load_pretrained_file(self, checkpoint_path)


default_cfgs = generate_default_cfgs({
    'hornet_isotropic_small_7x7': hornet_cfg(first_conv='stem.0', pool_size=(14, 14)),
    'hornet_isotropic_small_gf': hornet_cfg(first_conv='stem.0', pool_size=(14, 14)),
})


def _create(variant: str, pretrained: bool, **kwargs) -> HorNetIsotropic:
    kwargs = prepare_pretrained(variant, pretrained, kwargs)  # a weight file loads through load_pretrained
    return build_model_with_cfg(
        HorNetIsotropic, variant, pretrained, pretrained_filter_fn=pretrained_filter_fn,
        feature_cfg=dict(feature_cls='getter', out_indices=(3, 7, 12)), **kwargs)


@register_model
def hornet_isotropic_small_7x7(pretrained: bool = False, **kwargs) -> HorNetIsotropic:
    return _create('hornet_isotropic_small_7x7', pretrained, **kwargs)


@register_model
def hornet_isotropic_small_gf(pretrained: bool = False, **kwargs) -> HorNetIsotropic:
    return _create('hornet_isotropic_small_gf', pretrained, **dict(dict(gf_size=(14, 8)), **kwargs))
