"""HorNet models; importing this package registers every variant with timm (``timm.create_model``).

Modules, each importing only those listed before it: ``errors`` (CheckpointError, DownloadError), ``downloads``
(released files by name, the hash-checked download cache), ``weights`` (safe loading, checkpoint formats),
``global_filter`` (the Global Filter's implementations), ``kernels`` and ``fast_ops`` (the opt-in speed levers,
behind ``fast_ops.enable``), ``hornet`` (the hierarchical models, their cfgs and checkpoint filter), ``isotropic``.
"""
from . import fast_ops  # noqa: F401
from .downloads import RELEASED, DownloadError, find_released  # noqa: F401
from .errors import CheckpointError  # noqa: F401
from .global_filter import GF_IMPLS  # noqa: F401
from .hornet import (GlobalLocalFilter, GnConv, HorBlock, HorNet, LayerNorm2d, checkpoint_filter_fn,  # noqa: F401
                     create_model_with_weights, load_pretrained_file)
from .isotropic import HorNetIsotropic  # noqa: F401
from .weights import extract_state_dict, guess_variant, safe_load, select_in1k_head_rows  # noqa: F401

HORNET_VARIANTS = (
    'hornet_tiny_7x7', 'hornet_tiny_gf', 'hornet_small_7x7', 'hornet_small_gf', 'hornet_base_7x7', 'hornet_base_gf',
    'hornet_base_gf_img384', 'hornet_large_7x7', 'hornet_large_gf', 'hornet_large_gf_img384',
)
