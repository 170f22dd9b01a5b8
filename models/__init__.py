"""HorNet models; importing this package registers every variant with timm (``timm.create_model``)."""
from .hornet import GlobalLocalFilter, GnConv, HorNet, LayerNorm2d, checkpoint_filter_fn  # noqa: F401
from .isotropic import HorNetIsotropic  # noqa: F401
from .weights import CheckpointError, load_pretrained_file, safe_load  # noqa: F401

HORNET_VARIANTS = (
    'hornet_tiny_7x7', 'hornet_tiny_gf', 'hornet_small_7x7', 'hornet_small_gf', 'hornet_base_7x7', 'hornet_base_gf',
    'hornet_base_gf_img384', 'hornet_large_7x7', 'hornet_large_gf', 'hornet_large_gf_img384',
)
