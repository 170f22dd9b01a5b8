#!/usr/bin/env python3
"""Roofline lower bound of one training (and inference) step on a named GPU, computed without a GPU.

Every aten op of one steady-state training step (forward, backward, fused AdamW update) runs on fake tensors
(``FakeTensorMode``: real shapes, strides and dtypes, no arithmetic), so any model at any batch size takes
seconds on a CPU. A ``TorchDispatchMode`` records each op below autograd, i.e. the ops eager mode launches:

* **bytes**: every tensor the op reads plus every tensor it writes (mutated arguments and fresh outputs), each
  counted once at its size without broadcast dimensions (an expanded bias counts C elements, not B*H*W*C).
  This is a lower bound of the op's DRAM traffic: it assumes each operand crosses the memory bus exactly once.
* **FLOPs**: ``torch.utils.flop_counter``'s formulas for matmuls, convolutions and attention (2 per
  multiply-add), this project's FFT formulas (``utils.fft_flop_formulas``), and one FLOP per element of the
  largest operand for every other op (elementwise ops are memory-bound at any plausible count).
* **time**: ``max(bytes / bandwidth, FLOPs / peak)`` per op, where the peak is the tensor-core peak for
  matmuls and convolutions in bf16/fp16 (the TF32 tensor peak for fp32 ones, ``--tf32 off``: the fp32 peak),
  and the fp32 (CUDA-core) peak for all other ops. The step's bound is the sum over its ops: a perfect kernel
  per op, no launch gaps, no overlap between ops. Depthwise convolutions are counted at the tensor-core peak
  like every convolution (the brief's rule, a lower bound); the totals also give the bound with depthwise
  convolutions on CUDA cores, where cuDNN's depthwise kernels run.
* **ops**: the number of ops that launch work (views and allocations excluded). In eager mode that is about
  the number of kernel launches; some ops launch several kernels, fused AdamW one per chunk of tensors.
* **module**: each op is attributed to the innermost module running it (``torch.utils.module_tracker``;
  backward ops to the module whose backward runs them); blocks are the module paths up to their second index
  (``stages.2.0`` in HorNet, ``stages.2.blocks.0`` in timm's ConvNeXt).

Autocast: the fake tensors are CPU tensors (the autograd engine needs a real device for CUDA ones), so the CUDA
autocast policy is installed on the CPU autocast key for the duration of the trace: matmuls and convolutions
in bf16/fp16, LayerNorm, softmax, sums, exp/log/pow in fp32, exactly as ``torch.autocast('cuda')`` lists them
(``aten/src/ATen/autocast_mode.h``). Ops that run in fp32 under autocast are listed in the output.

Measured/bound: ``--measured MODEL=TRAIN[:INFER]`` (img/s) or ``--measured_json`` (a ``benchmark.py --json``
file; the row with the same model, dtype, layout, compile off and gf_impl is used) give measured step time /
bound, and the time per op the gap would be if it were all launch overhead ((measured - bound) / ops).

Examples::

    python scripts/roofline.py --models hornet_tiny_7x7 hornet_tiny_gf convnext_tiny --batch_size 128 \\
        --dtype bf16 --gpu h200 --measured_json ../shared/gpu/h200-baseline/eager.json --json roofline.json
    python scripts/roofline.py --models hornet_micro_7x7 --batch_size 2 --input_size 64 --gpu a100
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmark.py's model builders

from errors import UserError  # noqa: E402

_logger = logging.getLogger('roofline')
aten = torch.ops.aten

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}

# Peak numbers. bw: DRAM bytes/s; tensor: dense bf16/fp16 tensor-core FLOP/s; tf32: dense TF32 tensor-core
# FLOP/s; fp32: non-tensor (CUDA-core) fp32 FLOP/s.
GPUS: Dict[str, Dict[str, Any]] = {
    'h200': dict(bw=4.3e12, tensor=790e12, tf32=395e12, fp32=67e12,
                 source='NVIDIA H200 as measured on the lent machine: device-to-device copy 4.3 TB/s, 8192^3 bf16 '
                        'matmul 790 TFLOP/s; fp32 67 TFLOP/s (datasheet); TF32 taken as half the bf16 rate'),
    'h200-spec': dict(bw=4.8e12, tensor=989.4e12, tf32=494.7e12, fp32=66.9e12,
                      source='NVIDIA H200 SXM datasheet (dense): 4.8 TB/s, bf16 989 TFLOP/s, TF32 495, fp32 67'),
    'h100': dict(bw=3.35e12, tensor=989.4e12, tf32=494.7e12, fp32=66.9e12,
                 source='NVIDIA H100 SXM5 datasheet (dense): 3.35 TB/s, bf16 989 TFLOP/s, TF32 495, fp32 67'),
    'h100-pcie': dict(bw=2.0e12, tensor=756e12, tf32=378e12, fp32=51.2e12,
                      source='NVIDIA H100 PCIe datasheet (dense): 2.0 TB/s, bf16 756 TFLOP/s, TF32 378, fp32 51'),
    'a100': dict(bw=2.039e12, tensor=312e12, tf32=156e12, fp32=19.5e12,
                 source='NVIDIA A100 SXM4 80GB datasheet (dense): 2.04 TB/s, bf16 312 TFLOP/s, TF32 156, fp32 19.5'),
}

# Ops that move no data or launch nothing: allocations, metadata, autograd bookkeeping.
NO_KERNEL = {
    'empty', 'empty_like', 'empty_strided', 'new_empty', 'new_empty_strided', 'detach', 'detach_', 'lift_fresh',
    'alias', 'set_', 'resize_', 'resize_as_', 'sym_size', 'sym_stride', 'sym_numel', 'sym_storage_offset',
    'is_same_size', 'is_nonzero', '_local_scalar_dense', 'copy_device', 'prim', 'size', 'stride',
    '_has_compatible_shallow_copy_type', 'record_stream', 'promote_types', 'result_type', '_unsafe_view',
    '_record_function_enter', '_record_function_enter_new', '_record_function_exit', 'lift_fresh_copy',
}
# In-place ops whose mutated argument is only written, never read.
WRITE_ONLY = {'copy_', 'fill_', 'zero_', 'uniform_', 'normal_', 'bernoulli_', 'random_', 'exponential_',
              'geometric_', 'cauchy_', 'log_normal_'}
MATMUL_OPS = {'mm', 'addmm', 'bmm', 'baddbmm', '_addmm_activation', '_scaled_mm', 'mv', 'addmv', 'dot', 'vdot',
              '_scaled_dot_product_efficient_attention', '_scaled_dot_product_flash_attention',
              '_scaled_dot_product_cudnn_attention', '_scaled_dot_product_efficient_attention_backward',
              '_scaled_dot_product_flash_attention_backward', '_scaled_dot_product_cudnn_attention_backward',
              '_flash_attention_forward', '_flash_attention_backward', '_efficient_attention_forward',
              '_efficient_attention_backward', '_scaled_dot_product_flash_attention_for_cpu',
              '_scaled_dot_product_flash_attention_for_cpu_backward'}
CONV_OPS = {'convolution', '_convolution', 'convolution_backward', 'cudnn_convolution', 'convolution_overrideable',
            '_slow_conv2d_forward', 'mkldnn_convolution', '_convolution_mode'}
FFT_OPS = {'_fft_r2c', '_fft_c2r', '_fft_c2c'}
NORM_OPS = {'native_layer_norm', 'native_layer_norm_backward', 'native_group_norm', 'native_group_norm_backward',
            'native_batch_norm', 'native_batch_norm_backward', '_native_batch_norm_legit',
            '_native_batch_norm_legit_functional', '_native_batch_norm_legit_no_training',
            'cudnn_batch_norm', 'cudnn_batch_norm_backward', '_fused_rms_norm', '_fused_rms_norm_backward'}
ACT_OPS = {'gelu', 'gelu_backward', 'relu', 'threshold_backward', 'silu', 'silu_backward', 'sigmoid',
           'sigmoid_backward', 'tanh', 'tanh_backward', 'hardswish', 'hardswish_backward', 'softplus',
           'softplus_backward'}
COPY_OPS = {'_to_copy', 'clone', 'copy_', 'contiguous', '_copy_from', 'cat', 'stack', 'constant_pad_nd',
            'slice_backward', 'select_backward', 'index_select', 'index', 'gather', 'scatter', 'permute_copy',
            'view_as_real_copy', 'view_as_complex_copy', 'split_with_sizes_copy', 'narrow_copy'}
OPT_PREFIXES = ('_fused_adam', '_foreach_', '_fused_sgd')
REDUCE_OPS = {'sum', 'mean', 'amax', 'amin', 'max', 'min', 'var', 'var_mean', 'std', 'norm', 'linalg_vector_norm',
              'prod', 'logsumexp', 'argmax', 'argmin', 'nll_loss_forward', 'nll_loss_backward', '_log_softmax',
              '_log_softmax_backward_data', '_softmax', '_softmax_backward_data'}


# ------------------------------------------------------------------------------ CUDA autocast emulated on CPU
# The CUDA autocast policy, as registered for the Autocast (CUDA) dispatch key in aten/src/ATen/autocast_mode.h.
# (op, overload) pairs; overload '' is the default overload.
CUDA_LOWER_PRECISION = [
    ('_convolution', 'deprecated'), ('_convolution', ''), ('conv1d', ''), ('conv2d', ''), ('conv3d', ''),
    ('conv_tbc', ''), ('conv_transpose1d', ''), ('conv_transpose2d', 'input'), ('conv_transpose3d', 'input'),
    ('convolution', ''), ('prelu', ''), ('addmm', ''), ('addmv', ''), ('addr', ''), ('matmul', ''),
    ('einsum', ''), ('mm', ''), ('mv', ''), ('linalg_vecdot', ''), ('linear', ''), ('addbmm', ''),
    ('baddbmm', ''), ('bmm', ''), ('chain_matmul', ''), ('linalg_multi_dot', ''), ('_thnn_fused_lstm_cell', ''),
    ('_thnn_fused_gru_cell', ''), ('lstm_cell', ''), ('gru_cell', ''), ('rnn_tanh_cell', ''),
    ('rnn_relu_cell', ''), ('_scaled_dot_product_flash_attention', ''), ('scaled_dot_product_attention', ''),
    ('cudnn_convolution', ''), ('cudnn_convolution_transpose', ''),
]
CUDA_FP32 = [
    ('acos', ''), ('asin', ''), ('cosh', ''), ('erfinv', ''), ('exp', ''), ('expm1', ''), ('log', ''),
    ('log10', ''), ('log2', ''), ('log1p', ''), ('reciprocal', ''), ('rsqrt', ''), ('sinh', ''), ('tan', ''),
    ('pow', 'Tensor_Scalar'), ('pow', 'Tensor_Tensor'), ('pow', 'Scalar'), ('softplus', ''), ('layer_norm', ''),
    ('native_layer_norm', ''), ('group_norm', ''), ('frobenius_norm', 'dim'), ('nuclear_norm', ''),
    ('nuclear_norm', 'dim'), ('cosine_similarity', ''), ('poisson_nll_loss', ''), ('cosine_embedding_loss', ''),
    ('nll_loss', ''), ('nll_loss2d', ''), ('hinge_embedding_loss', ''), ('kl_div', ''), ('l1_loss', ''),
    ('smooth_l1_loss', ''), ('huber_loss', ''), ('mse_loss', ''), ('margin_ranking_loss', ''),
    ('multilabel_margin_loss', ''), ('soft_margin_loss', ''), ('triplet_margin_loss', ''),
    ('multi_margin_loss', ''), ('binary_cross_entropy_with_logits', ''), ('dist', ''), ('pdist', ''),
    ('cdist', ''), ('renorm', ''), ('logsumexp', ''),
]
CUDA_FP32_SET_OPT_DTYPE = [
    ('prod', ''), ('prod', 'dim_int'), ('softmax', 'int'), ('log_softmax', 'int'), ('cumprod', ''),
    ('cumsum', ''), ('linalg_vector_norm', ''), ('linalg_matrix_norm', ''), ('linalg_matrix_norm', 'str_ord'),
    ('sum', ''), ('sum', 'dim_IntList'),
]
CUDA_FP32_APPEND_DTYPE = [(('norm', 'Scalar'), ('norm', 'ScalarOpt_dtype')),
                          (('norm', 'ScalarOpt_dim'), ('norm', 'ScalarOpt_dim_dtype'))]
CUDA_PROMOTE = [('addcdiv', ''), ('addcmul', ''), ('atan2', ''), ('bilinear', ''), ('cross', ''), ('dot', ''),
                ('grid_sampler', ''), ('index_put', ''), ('tensordot', ''), ('scatter_add', '')]
# Registered for AutocastCPU but not for CUDA: made pass-through while the CUDA policy is emulated.
CPU_ONLY = [
    ('conv1d', 'padding'), ('conv2d', 'padding'), ('conv3d', 'padding'), ('_addmm_activation', ''),
    ('mkldnn_rnn_layer', ''), ('_native_multi_head_attention', ''), ('avg_pool3d', ''),
    ('binary_cross_entropy', ''), ('grid_sampler', ''), ('polar', ''), ('quantile', ''), ('quantile', 'scalar'),
    ('nanquantile', ''), ('nanquantile', 'scalar'), ('stft', ''), ('stft', 'center'), ('grid_sampler_2d', ''),
    ('_grid_sampler_2d_cpu_fallback', ''), ('grid_sampler_3d', ''), ('trace', ''), ('view_as_complex', ''),
    ('cholesky', ''), ('cholesky_inverse', ''), ('cholesky_solve', ''), ('inverse', ''), ('lu_solve', ''),
    ('orgqr', ''), ('ormqr', ''), ('pinverse', ''), ('max_pool3d', ''), ('max_unpool2d', ''),
    ('max_unpool3d', ''), ('adaptive_avg_pool3d', ''), ('reflection_pad1d', ''), ('reflection_pad2d', ''),
    ('replication_pad1d', ''), ('replication_pad2d', ''), ('replication_pad3d', ''), ('cross_entropy_loss', ''),
    ('ctc_loss', 'IntList'), ('ctc_loss', 'Tensor'), ('fft_fft', ''), ('fft_ifft', ''), ('fft_fft2', ''),
    ('fft_ifft2', ''), ('fft_fftn', ''), ('fft_ifftn', ''), ('fft_rfft', ''), ('fft_irfft', ''),
    ('fft_rfft2', ''), ('fft_irfft2', ''), ('fft_rfftn', ''), ('fft_irfftn', ''), ('fft_hfft', ''),
    ('fft_ihfft', ''), ('linalg_cond', ''), ('linalg_cond', 'p_str'), ('linalg_matrix_rank', ''),
    ('linalg_matrix_rank', 'tol_tensor'), ('linalg_matrix_rank', 'atol_rtol_tensor'),
    ('linalg_matrix_rank', 'atol_rtol_float'), ('linalg_solve', ''), ('linalg_cholesky', ''),
    ('linalg_svdvals', ''), ('linalg_eigvals', ''), ('linalg_eigvalsh', ''), ('linalg_inv', ''),
    ('linalg_householder_product', ''), ('linalg_tensorinv', ''), ('linalg_tensorsolve', ''),
    ('fake_quantize_per_tensor_affine', ''), ('geqrf', ''), ('_lu_with_info', ''), ('qr', ''), ('svd', ''),
    ('triangular_solve', ''), ('fractional_max_pool2d', ''), ('fractional_max_pool3d', ''),
    ('adaptive_max_pool3d', ''), ('multilabel_margin_loss_forward', ''), ('linalg_qr', ''),
    ('linalg_cholesky_ex', ''), ('linalg_svd', ''), ('linalg_eig', ''), ('linalg_eigh', ''), ('linalg_lstsq', ''),
    ('linalg_inv_ex', ''), ('stack', ''), ('cat', ''), ('index_copy', ''), ('index_copy', 'dimname'),
]


def _overload(name: str, overload: str) -> Optional[torch._ops.OpOverload]:
    packet = getattr(aten, name, None)
    if packet is None:
        return None
    return getattr(packet, overload or 'default', None)


class CudaAutocastOnCPU:
    """Within this context, ``torch.autocast('cpu', dtype)`` follows the CUDA autocast policy.

    Python kernels replace the AutocastCPU kernels of every op that either policy names (``torch.library``);
    leaving the context removes them, and the CPU policy is back. The casts are the same autograd-visible
    ``_to_copy`` ops real autocast makes, and fp32 leaf weights cast to the low precision are cached for the
    autocast region like CUDA autocast does (:meth:`clear_cache` at the end of each region)."""

    def __init__(self) -> None:
        self._lib: Optional[torch.library.Library] = None
        self._cache: Dict[int, Tuple[Any, torch.Tensor]] = {}

    # --- casting helpers (at::autocast::is_eligible / cached_cast / promote_type)
    @staticmethod
    def _eligible(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64

    def _cast(self, to: torch.dtype, t: Any) -> Any:
        if isinstance(t, (list, tuple)):
            return type(t)(self._cast(to, a) for a in t)
        if not self._eligible(t) or t.dtype == to:
            return t
        low = torch.get_autocast_dtype('cpu') if hasattr(torch, 'get_autocast_dtype') else torch.bfloat16
        if to == low and t.dtype == torch.float32 and t.requires_grad and t.is_leaf and not t._is_view():
            hit = self._cache.get(id(t))
            if hit is not None and hit[0] is t:
                return hit[1]
            out = t.to(to)
            self._cache[id(t)] = (t, out)
            return out
        return t.to(to)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _kernel(self, op: torch._ops.OpOverload, policy: str, redispatch: Optional[torch._ops.OpOverload] = None
                ) -> Callable[..., Any]:
        schema_args = op._schema.arguments
        dtype_idx = next((i for i, a in enumerate(schema_args) if a.name == 'dtype'), None)
        dtype_kwonly = dtype_idx is not None and schema_args[dtype_idx].kwarg_only
        excl = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

        def kernel(*args: Any, **kwargs: Any) -> Any:
            with torch._C._ExcludeDispatchKeyGuard(excl):
                if policy == 'passthrough':
                    return op(*args, **kwargs)
                if policy == 'fp32':
                    return op(*[self._cast(torch.float32, a) for a in args],
                              **{k: self._cast(torch.float32, v) for k, v in kwargs.items()})
                if policy == 'lower':
                    low = torch.get_autocast_dtype('cpu')
                    return op(*[self._cast(low, a) for a in args], **{k: self._cast(low, v) for k, v in kwargs.items()})
                if policy == 'promote':
                    # promote_type(): the widest eligible floating type, starting from the low precision
                    wide = any(self._eligible(a) and a.dtype == torch.float32 for a in tree_flatten((args, kwargs))[0])
                    to = torch.float32 if wide else torch.get_autocast_dtype('cpu')
                    return op(*[self._cast(to, a) for a in args], **{k: self._cast(to, v) for k, v in kwargs.items()})
                first = args[0] if args else None
                if policy == 'fp32_set_opt_dtype':
                    if self._eligible(first) and dtype_idx is not None:
                        args = list(args)
                        if dtype_kwonly or len(args) <= dtype_idx:
                            if kwargs.get('dtype') is None:
                                kwargs = dict(kwargs, dtype=torch.float32)
                        elif args[dtype_idx] is None:
                            args[dtype_idx] = torch.float32
                    return op(*args, **kwargs)
                if policy == 'fp32_append_dtype':
                    dt = torch.float32 if self._eligible(first) else first.dtype
                    return redispatch(*args, dtype=dt, **kwargs)
                raise AssertionError(policy)
        return kernel

    def __enter__(self) -> 'CudaAutocastOnCPU':
        lib = torch.library.Library('aten', 'IMPL')  # noqa: TOR901 - a temporary registration, destroyed on exit
        table: List[Tuple[Tuple[str, str], str, Optional[Tuple[str, str]]]] = []
        cuda_names = set()
        for policy, entries in (('lower', CUDA_LOWER_PRECISION), ('fp32', CUDA_FP32),
                                ('fp32_set_opt_dtype', CUDA_FP32_SET_OPT_DTYPE), ('promote', CUDA_PROMOTE)):
            for e in entries:
                table.append((e, policy, None))
                cuda_names.add(e)
        for src, dst in CUDA_FP32_APPEND_DTYPE:
            table.append((src, 'fp32_append_dtype', dst))
            cuda_names.add(src)
        table += [(e, 'passthrough', None) for e in CPU_ONLY if e not in cuda_names]
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # "overriding a previously registered kernel" for the CPU policy's ops
            for (name, overload), policy, dst in table:
                op = _overload(name, overload)
                if op is None:
                    continue
                redispatch = _overload(*dst) if dst else None
                if dst and redispatch is None:
                    continue
                qualname = name + (f'.{overload}' if overload else '')
                lib.impl(qualname, self._kernel(op, policy, redispatch), 'AutocastCPU')
        self._lib = lib
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cache.clear()
        if self._lib is not None:
            self._lib._destroy()
            self._lib = None


# ----------------------------------------------------------------------------------------------- recording
def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor addresses: broadcast (stride-0) dimensions count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= int(size)
    return n * t.element_size()


def _tensors(x: Any) -> List[torch.Tensor]:
    return [a for a in tree_flatten(x)[0] if isinstance(a, torch.Tensor)]


def _is_view(func: torch._ops.OpOverload) -> bool:
    """Aliasing outputs without writes: views (and lists of views such as split/unbind)."""
    if getattr(func, 'is_view', False):
        return True
    rets = func._schema.returns
    return bool(rets) and all(r.alias_info is not None and not r.alias_info.is_write for r in rets)


def _fft_formulas() -> Dict[Any, Callable[..., int]]:
    try:
        from utils import fft_flop_formulas
        return fft_flop_formulas()
    except ImportError:  # pragma: no cover - the project's utils is always there
        return {}


class ModuleAttribution(TorchFunctionMode):
    """Which module an op belongs to, in forward and in backward.

    Forward: a stack of the modules whose ``forward`` is running (global module hooks). Every torch function call
    (above autograd) maps the autograd nodes it created to the module on top of the stack, by walking back from
    its outputs' ``grad_fn`` until it reaches nodes mapped earlier. Backward: the node the autograd engine is
    running (``torch._C._current_autograd_node``) names the module whose forward made it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()}
        self.stack: List[str] = []
        self.node_module: Dict[Any, Tuple[str, str]] = {}
        self.site = ''
        self._handles: List[Any] = []
        self._skip = (os.path.dirname(torch.__file__), os.path.abspath(__file__))

    def _pre(self, mod: nn.Module, *_: Any) -> None:
        self.stack.append(self.names.get(mod, self.stack[-1] if self.stack else ''))

    def _post(self, mod: nn.Module, *_: Any) -> None:
        if self.stack:
            self.stack.pop()

    def __enter__(self) -> 'ModuleAttribution':
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        self._handles = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post)]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        super().__exit__(*exc)

    def _caller(self) -> str:
        """``file.py:line`` of the innermost frame outside torch and this script: the model line of the call."""
        f = sys._getframe(2)
        while f is not None and f.f_code.co_filename.startswith(self._skip):
            f = f.f_back
        return f'{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}' if f is not None else ''

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.site = self._caller() if self.stack else ''
        out = func(*args, **(kwargs or {}))
        if self.stack and torch.is_grad_enabled():
            here = (self.stack[-1], self.site)
            todo = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
            while todo:
                node = todo.pop()
                if node is None or node in self.node_module:
                    continue
                self.node_module[node] = here
                todo.extend(n for n, _ in node.next_functions)
        return out

    def current(self) -> Tuple[str, str]:
        """(module path, source line) of the op running now."""
        node = torch._C._current_autograd_node()
        if node is not None:
            return self.node_module.get(node, ('', ''))
        return (self.stack[-1], self.site) if self.stack else ('', '')


class OpRecorder(TorchDispatchMode):
    """Records bytes, FLOPs, dtype and module of every op that launches work."""

    def __init__(self, attribution: Optional[ModuleAttribution] = None) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry, shape_wrapper
        self.flop_registry = dict(flop_registry)
        self.flop_registry.update({k: shape_wrapper(v) for k, v in _fft_formulas().items()})
        self.attribution = attribution
        self.phase = 'fwd'
        self.records: List[Dict[str, Any]] = []
        self.host_syncs = 0

    def _where(self) -> Dict[str, str]:
        mod, site = self.attribution.current() if self.attribution is not None else ('', '')
        return dict(module=mod, site=site)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace == 'prim':  # prim.device and friends: metadata queries, no kernel
            return out
        name = func.overloadpacket.__name__
        if name == '_local_scalar_dense':
            self.host_syncs += 1
        if name in NO_KERNEL or _is_view(func) or torch.Tag.inplace_view in func.tags:
            return out
        schema = func._schema
        read = write = 0
        in_tensors = []
        for i, a in enumerate(schema.arguments):
            v = args[i] if i < len(args) else kwargs.get(a.name)
            ts = _tensors(v)
            if not ts:
                continue
            in_tensors.extend(ts)
            mutated = a.alias_info is not None and a.alias_info.is_write
            b = sum(_tensor_bytes(t) for t in ts)
            if not (mutated and name in WRITE_ONLY):
                read += b
            if mutated:
                write += b
        outs = out if isinstance(out, (tuple, list)) else (out,)
        fresh = [o for o, r in zip(outs, schema.returns) if isinstance(o, torch.Tensor) and r.alias_info is None]
        write += sum(_tensor_bytes(o) for o in fresh)
        out_tensors = _tensors(out)
        packet = func.overloadpacket
        depthwise = False
        if name in CONV_OPS:
            groups = args[8] if name == 'convolution' and len(args) > 8 else kwargs.get('groups')
            if name == 'convolution_backward' and len(args) > 9:
                groups = args[9]
            weight = args[1] if name != 'convolution_backward' else args[2]
            depthwise = bool(groups and groups > 1 and isinstance(weight, torch.Tensor)
                             and weight.dim() >= 2 and weight.shape[1] == 1)
        if name in CONV_OPS:
            self._conv_input_copies(name, args)
        if name in ('convolution', 'convolution_backward'):
            flops = conv_flops(name, args, out)
        elif packet in self.flop_registry:
            flops = int(self.flop_registry[packet](*args, **kwargs, out_val=out))
        else:
            flops = max([t.numel() for t in in_tensors + out_tensors] or [0])
        if name in MATMUL_OPS or name in CONV_OPS:
            kind = 'depthwise conv' if depthwise else ('conv' if name in CONV_OPS else 'matmul')
            unit = 'tensor'
        else:
            kind, unit = category(name), 'cuda_core'
        ref = in_tensors[0] if in_tensors else (out_tensors[0] if out_tensors else None)
        dtype = str(ref.dtype).replace('torch.', '') if ref is not None else '-'
        if name == '_to_copy' and out_tensors:
            dtype = f"{dtype}->{str(out_tensors[0].dtype).replace('torch.', '')}"
        elif out_tensors and out_tensors[0].is_floating_point() and ref is not None and out_tensors[0].dtype != ref.dtype:
            dtype = f"{dtype}->{str(out_tensors[0].dtype).replace('torch.', '')}"
        self.records.append(dict(op=name, phase=self.phase, **self._where(), kind=kind, unit=unit,
                                 dtype=dtype, bytes=read + write, read=read, write=write, flops=flops,
                                 compute_dtype=str(ref.dtype).replace('torch.', '') if ref is not None else '-'))
        return out


    def _conv_input_copies(self, name: str, args: Sequence[Any]) -> None:
        """cuDNN takes dense inputs: ``at::_convolution`` calls ``.contiguous(format)`` on an input that is dense in
        neither layout (a channel slice, say), a copy below this mode's reach. Recorded as its own op."""
        idx = (0, 1) if name == 'convolution_backward' else (0,)  # grad_output and input; input
        for i in idx:
            t = args[i] if i < len(args) else None
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                continue
            if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
                continue
            b = _tensor_bytes(t)
            dt = str(t.dtype).replace('torch.', '')
            self.records.append(dict(op='contiguous (in convolution)', phase=self.phase, **self._where(),
                                     kind='copy/cast', unit='cuda_core', dtype=dt, bytes=2 * b, read=b, write=b,
                                     flops=t.numel(), compute_dtype=dt))


def conv_flops(name: str, args: Sequence[Any], out: Any) -> int:
    """2 FLOPs per multiply-add of a (grouped) convolution, and of each gradient its backward computes.

    torch.utils.flop_counter ignores ``groups`` in the weight gradient (it counts a depthwise conv's weight
    gradient C times over), so convolutions are counted here: forward, input gradient and weight gradient each
    cost 2 * B * prod(output spatial) * C_out * C_in/groups * prod(kernel)."""
    if name == 'convolution':
        x, w, transposed = args[0], args[1], bool(args[6])
        y = out
    else:
        grad_out, x, w, transposed = args[0], args[1], args[2], bool(args[7])
        y = grad_out
    spatial = x.shape[2:] if transposed else y.shape[2:]
    one = 2 * int(x.shape[0]) * math.prod(int(v) for v in spatial) * int(w.shape[0]) * int(w.shape[1]) \
        * math.prod(int(v) for v in w.shape[2:])
    if name == 'convolution':
        return one
    mask = args[10] if len(args) > 10 else (True, True, False)
    return one * (int(bool(mask[0])) + int(bool(mask[1])))


def category(op: str) -> str:
    if op in FFT_OPS:
        return 'fft'
    if op in NORM_OPS:
        return 'norm'
    if op in ACT_OPS:
        return 'activation'
    if op in COPY_OPS:
        return 'copy/cast'
    if op.startswith(OPT_PREFIXES):
        return 'optimizer'
    if op in REDUCE_OPS:
        return 'reduction/softmax/loss'
    return 'elementwise'


# ---------------------------------------------------------------------------------------------- the step
def build_fake_model(name: str, input_size: int, gf_impl: str, channels_last: bool, original: Any = None
                     ) -> nn.Module:
    """The model with meta parameters (no memory); ``to_empty`` under a fake mode makes them fake."""
    import models  # noqa: F401 - registers the HorNet variants with timm
    from benchmark import build_model
    with torch.device('meta'):
        model = build_model(name, input_size, gf_impl, original)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def trace_step(name: str, batch: int, input_size: int, dtype: str, channels_last: bool = True,
               gf_impl: str = 'fft', what: str = 'train', original: Any = None, num_classes: int = 1000
               ) -> Dict[str, Any]:
    """Records of one steady-state step (train: forward, backward, fused AdamW; infer: forward, no grad)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    model = build_fake_model(name, input_size, gf_impl, channels_last, original)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    low = DTYPES[dtype]
    emulation = CudaAutocastOnCPU()
    with FakeTensorMode(allow_non_fake_inputs=True), emulation:
        model = model.to_empty(device='cpu')
        num_classes = getattr(model, 'num_classes', num_classes) or num_classes
        x = torch.randn(batch, 3, input_size, input_size).contiguous(memory_format=fmt)
        y = torch.randint(0, num_classes, (batch,))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)

        def autocast() -> contextlib.AbstractContextManager:
            if dtype == 'fp32':
                return contextlib.nullcontext()
            return torch.autocast('cpu', dtype=low)

        def step(rec: Optional[OpRecorder]) -> None:
            if what == 'train':
                model.train()
                opt.zero_grad(set_to_none=True)
                with autocast():
                    loss = F.cross_entropy(model(x).float(), y)
                emulation.clear_cache()
                if rec is not None:
                    rec.phase = 'bwd'
                loss.backward()
                if rec is not None:
                    rec.phase = 'opt'
                opt.step()
            else:
                model.eval()
                with torch.no_grad(), autocast():
                    model(x)
                emulation.clear_cache()

        if what == 'train':
            step(None)  # AdamW state exists from the second step on: trace a steady-state step
        attribution = ModuleAttribution(model)
        rec = OpRecorder(attribution)
        with attribution, rec:
            step(rec)
    return dict(records=rec.records, host_syncs=rec.host_syncs,
                params=sum(p.numel() for p in model.parameters()))


# -------------------------------------------------------------------------------------------- the bound
def op_time(r: Dict[str, Any], gpu: Dict[str, Any], tf32: bool = True, depthwise_on_cuda_cores: bool = False
            ) -> Tuple[float, str]:
    """Lower-bound seconds of one op and what bounds it ('memory' or 'compute')."""
    if r['unit'] == 'tensor' and not (depthwise_on_cuda_cores and r['kind'] == 'depthwise conv'):
        if r['compute_dtype'] in ('bfloat16', 'float16'):
            peak = gpu['tensor']
        else:
            peak = gpu['tf32'] if tf32 else gpu['fp32']
    else:
        peak = gpu['fp32']
    t_mem, t_comp = r['bytes'] / gpu['bw'], r['flops'] / peak
    return (t_mem, 'memory') if t_mem >= t_comp else (t_comp, 'compute')


def module_pattern(path: str) -> str:
    """``stages.2.5.gnconv.pws.1`` -> ``stages.2.*.gnconv.pws.*``: the stage index stays, later indices go."""
    parts = path.split('.') if path else []
    out, seen = [], 0
    for p in parts:
        if p.isdigit():
            seen += 1
            out.append(p if seen == 1 else '*')
        else:
            out.append(p)
    return '.'.join(out) if out else '(top level)'


def block_of(path: str) -> str:
    """The module path up to its second numeric component (a block), else the whole path."""
    parts = path.split('.') if path else []
    seen = 0
    for i, p in enumerate(parts):
        if p.isdigit():
            seen += 1
            if seen == 2:
                return '.'.join(parts[:i + 1])
    return path or '(top level)'


def analyse(trace: Dict[str, Any], gpu: Dict[str, Any], tf32: bool = True) -> Dict[str, Any]:
    """Totals, categories, grouped ops and blocks with their share of the bound."""
    recs = trace['records']
    for r in recs:
        r['time_s'], r['bound_by'] = op_time(r, gpu, tf32)
        r['time_dw_cuda_core_s'] = op_time(r, gpu, tf32, depthwise_on_cuda_cores=True)[0]
    total = sum(r['time_s'] for r in recs) or 1e-30

    def group(key: Callable[[Dict[str, Any]], Tuple], extra: Callable[[Dict[str, Any]], Dict[str, Any]] = None
              ) -> List[Dict[str, Any]]:
        acc: Dict[Tuple, Dict[str, Any]] = {}
        for r in recs:
            k = key(r)
            g = acc.get(k)
            if g is None:
                g = acc[k] = dict(calls=0, bytes=0, flops=0, time_s=0.0, memory_bound_s=0.0)
                if extra:
                    g.update(extra(r))
            g['calls'] += 1
            g['bytes'] += r['bytes']
            g['flops'] += r['flops']
            g['time_s'] += r['time_s']
            if r['bound_by'] == 'memory':
                g['memory_bound_s'] += r['time_s']
        rows = sorted(acc.values(), key=lambda g: -g['time_s'])
        for g in rows:
            g['share'] = g['time_s'] / total
        return rows

    ops = group(lambda r: (module_pattern(r['module']), r['site'], r['op'], r['phase'], r['dtype']),
                lambda r: dict(module=module_pattern(r['module']), site=r['site'], op=r['op'], phase=r['phase'],
                               dtype=r['dtype'], kind=r['kind'], bound_by=r['bound_by']))
    op_types = group(lambda r: (r['op'],), lambda r: dict(op=r['op'], kind=r['kind']))
    kinds = group(lambda r: (r['kind'],), lambda r: dict(kind=r['kind']))
    phases = group(lambda r: (r['phase'],), lambda r: dict(phase=r['phase']))
    blocks = group(lambda r: (block_of(r['module']) if r['phase'] != 'opt' else '(optimizer)',),
                   lambda r: dict(block=block_of(r['module']) if r['phase'] != 'opt' else '(optimizer)'))
    # blocks of one stage summed: 'stages.2.*' with the number of blocks
    stage_acc: Dict[str, Dict[str, Any]] = {}
    for b in blocks:
        pat = module_pattern(b['block']) if b['block'] not in ('(top level)', '(optimizer)') else b['block']
        s = stage_acc.setdefault(pat, dict(group=pat, blocks=0, calls=0, bytes=0, flops=0, time_s=0.0, share=0.0))
        s['blocks'] += 1
        for k in ('calls', 'bytes', 'flops', 'time_s', 'share'):
            s[k] += b[k]
    stages = sorted(stage_acc.values(), key=lambda s: -s['time_s'])
    fp32_ops = sorted({r['op'] for r in recs if r['phase'] == 'fwd' and r['compute_dtype'] == 'float32'
                       and r['kind'] not in ('optimizer',)})
    totals = dict(
        bound_s=total, ops=len(recs), bytes=sum(r['bytes'] for r in recs), flops=sum(r['flops'] for r in recs),
        tensor_flops=sum(r['flops'] for r in recs if r['unit'] == 'tensor'),
        memory_bound_s=sum(r['time_s'] for r in recs if r['bound_by'] == 'memory'),
        compute_bound_s=sum(r['time_s'] for r in recs if r['bound_by'] == 'compute'),
        bound_dw_on_cuda_cores_s=sum(r['time_dw_cuda_core_s'] for r in recs),
        all_bytes_s=sum(r['bytes'] for r in recs) / gpu['bw'],
        all_flops_tensor_s=sum(r['flops'] for r in recs if r['unit'] == 'tensor') / gpu['tensor'],
        host_syncs=trace['host_syncs'])
    return dict(totals=totals, kinds=kinds, phases=phases, op_types=op_types, ops=ops, blocks=blocks,
                stages=stages, fp32_forward_ops=fp32_ops, params=trace['params'])


# -------------------------------------------------------------------------------------------- measured
def load_measured_json(path: str, dtype: str, channels_last: bool, gf_impl: str) -> Dict[str, Dict[str, float]]:
    """{model: {'train': img/s, 'infer': img/s}} from a ``benchmark.py --json`` file (eager rows only)."""
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"--measured_json {path}: cannot read it ({e})") from None
    out: Dict[str, Dict[str, float]] = {}
    for r in res.get('results', []):
        if r.get('error') or r.get('compile') or r.get('dtype') != dtype:
            continue
        if bool(r.get('channels_last')) != channels_last or r.get('grad_checkpointing', 'off') != 'off':
            continue
        if r.get('gf_impl') not in (None, gf_impl):
            continue
        m = out.setdefault(r['model'], {})
        for what in ('train', 'infer'):
            v = (r.get(f'{what}_img_s') or {}).get('median')
            if v:
                m[what] = float(v)
    return out


def parse_measured(items: Sequence[str]) -> Dict[str, Dict[str, float]]:
    out: Dict[str, Dict[str, float]] = {}
    for it in items:
        try:
            model, vals = it.split('=', 1)
            parts = vals.split(':')
            m = out.setdefault(model, {})
            if parts[0]:
                m['train'] = float(parts[0])
            if len(parts) > 1 and parts[1]:
                m['infer'] = float(parts[1])
        except ValueError:
            raise UserError(f"--measured {it!r}: expected MODEL=TRAIN_IMG_S[:INFER_IMG_S], e.g. "
                            f"hornet_tiny_7x7=1305:5432") from None
    return out


# ---------------------------------------------------------------------------------------------- output
def _ms(s: float) -> str:
    return f'{s * 1e3:.2f}'


def _gb(b: float) -> str:
    return f'{b / 1e9:.2f}'


def format_markdown(res: Dict[str, Any], top: int = 15) -> str:
    st = res['settings']
    gpu = res['gpu']
    lines = [f"Roofline bound on **{st['gpu']}** ({gpu['bw'] / 1e12:.2f} TB/s, {gpu['tensor'] / 1e12:.0f} TFLOP/s "
             f"bf16 tensor, {gpu['fp32'] / 1e12:.0f} TFLOP/s fp32; {gpu['source']}), batch {st['batch_size']}, "
             f"{st['input_size']} px, {st['dtype']} autocast (CUDA policy), "
             f"{'channels_last' if st['channels_last'] else 'NCHW'}, fused AdamW.", '']
    # summary across models
    lines += ['| model | step | bound (ms) | bound, depthwise on CUDA cores (ms) | of which memory-bound ops | '
              'GB moved | GFLOP (tensor) | ops (~launches) | fwd / bwd / opt bound (ms) | measured img/s | '
              'measured ms | measured / bound | gap per op (us) |',
              '|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|']
    for m in res['models']:
        for what, a in m['steps'].items():
            if 'error' in a:
                lines.append(f"| {m['model']} | {what} | error: {a['error'][:100]} |")
                continue
            t = a['totals']
            ph = {p['phase']: p['time_s'] for p in a['phases']}
            meas = a.get('measured') or {}
            mcells = ['-'] * 4
            if meas:
                mcells = [f"{meas['img_s']:.0f}", _ms(meas['step_s']), f"{meas['ratio']:.2f}x",
                          f"{meas['gap_per_op_us']:.1f}"]
            phases = ' / '.join(_ms(ph.get(p, 0.0)) for p in ('fwd', 'bwd', 'opt')) if what == 'train' else \
                _ms(ph.get('fwd', 0.0))
            lines.append(f"| {m['model']} | {what} | {_ms(t['bound_s'])} | {_ms(t['bound_dw_on_cuda_cores_s'])} | "
                         f"{100 * t['memory_bound_s'] / t['bound_s']:.0f}% | {_gb(t['bytes'])} | "
                         f"{t['tensor_flops'] / 1e9:.0f} | {t['ops']} | {phases} | " + ' | '.join(mcells) + ' |')
    lines.append('')
    lines.append('measured / bound: the measured step time over the sum of per-op bounds; gap per op: '
                 '(measured - bound) / ops, the time each launch would cost if the whole gap were launch overhead.')
    for m in res['models']:
        a = m['steps'].get('train') or next(iter(m['steps'].values()))
        if 'error' in a:
            continue
        what = 'train' if 'train' in m['steps'] else next(iter(m['steps']))
        t = a['totals']
        lines += ['', f"#### {m['model']}, {what} step: bound {_ms(t['bound_s'])} ms, {t['ops']} ops", '',
                  '| kind | ops | GB | GFLOP | bound (ms) | share | memory-bound part |', '|---|--:|--:|--:|--:|--:|--:|']
        for k in a['kinds']:
            lines.append(f"| {k['kind']} | {k['calls']} | {_gb(k['bytes'])} | {k['flops'] / 1e9:.0f} | "
                         f"{_ms(k['time_s'])} | {100 * k['share']:.1f}% | "
                         f"{100 * k['memory_bound_s'] / max(k['time_s'], 1e-30):.0f}% |")
        lines += ['', f"Top {top} ops (module pattern, `*` = every block of the stage):", '',
                  '| module | source line | op | phase | dtype | calls | GB | GFLOP | bound (ms) | share | bound by |',
                  '|---|---|---|---|---|--:|--:|--:|--:|--:|---|']
        for o in a['ops'][:top]:
            lines.append(f"| {o['module']} | {o['site'] or '-'} | {o['op']} | {o['phase']} | {o['dtype']} | {o['calls']} | "
                         f"{_gb(o['bytes'])} | {o['flops'] / 1e9:.1f} | {_ms(o['time_s'])} | "
                         f"{100 * o['share']:.1f}% | {o['bound_by']} |")
        lines += ['', 'Blocks by stage:', '', '| blocks | count | ops | GB | bound (ms) | per block (ms) | share |',
                  '|---|--:|--:|--:|--:|--:|--:|']
        for s in a['stages']:
            lines.append(f"| {s['group']} | {s['blocks']} | {s['calls']} | {_gb(s['bytes'])} | {_ms(s['time_s'])} | "
                         f"{_ms(s['time_s'] / max(s['blocks'], 1))} | {100 * s['share']:.1f}% |")
        if a['fp32_forward_ops']:
            lines += ['', 'Forward ops in fp32 under autocast: ' + ', '.join(a['fp32_forward_ops'])]
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------------- CLI
def run(args: argparse.Namespace) -> Dict[str, Any]:
    import models  # noqa: F401 - registers the HorNet variants with timm
    from benchmark import check_models, load_original_module
    check_models(args.models, args.original)
    original = load_original_module(args.original) if args.original else None
    gpu = dict(GPUS[args.gpu])
    if args.bandwidth:
        gpu['bw'] = args.bandwidth * 1e12
    if args.tensor_tflops:
        gpu['tensor'] = args.tensor_tflops * 1e12
    if args.fp32_tflops:
        gpu['fp32'] = args.fp32_tflops * 1e12
    channels_last = args.channels_last == 'on'
    measured: Dict[str, Dict[str, float]] = {}
    for path in args.measured_json or []:
        for k, v in load_measured_json(path, args.dtype, channels_last, args.gf_impl).items():
            measured.setdefault(k, {}).update(v)
    for k, v in parse_measured(args.measured or []).items():
        measured.setdefault(k, {}).update(v)
    out_models = []
    for name in dict.fromkeys(args.models):
        steps: Dict[str, Any] = {}
        for what in args.what:
            t0 = time.perf_counter()
            try:
                tr = trace_step(name, args.batch_size, args.input_size, args.dtype, channels_last, args.gf_impl,
                                what, original)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - one model that cannot be traced must not stop the rest
                steps[what] = dict(error=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
                _logger.warning('%s %s: %s', name, what, steps[what]['error'])
                continue
            a = analyse(tr, gpu, tf32=args.tf32 == 'on')
            m = measured.get(name, {}).get(what)
            if m:
                step_s = args.batch_size / m
                a['measured'] = dict(img_s=m, step_s=step_s, ratio=step_s / a['totals']['bound_s'],
                                     gap_per_op_us=1e6 * (step_s - a['totals']['bound_s']) / max(a['totals']['ops'], 1))
            a['bound_img_s'] = args.batch_size / a['totals']['bound_s']
            if not args.all_ops:
                a['ops'] = a['ops'][:max(args.top * 4, 60)]
            steps[what] = a
            _logger.info('%s %s: bound %.2f ms, %d ops (%.1fs)', name, what, a['totals']['bound_s'] * 1e3,
                         a['totals']['ops'], time.perf_counter() - t0)
        out_models.append(dict(model=name, steps=steps))
    settings = {k: v for k, v in vars(args).items() if k not in ('json', 'markdown')}
    return dict(settings=settings, gpu=gpu, torch=torch.__version__, models=out_models,
                method='FakeTensorMode + TorchDispatchMode per aten op; time_op = max(bytes / bw, flops / peak)')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--models', nargs='+', default=['hornet_tiny_7x7', 'hornet_tiny_gf', 'convnext_tiny'],
                   help='timm names (any registered model); orig:<name> with --original')
    p.add_argument('--original', default=None, help="the original release's hornet.py (for orig: names)")
    p.add_argument('--batch_size', type=int, default=128)
    p.add_argument('--input_size', type=int, default=224)
    p.add_argument('--dtype', choices=tuple(DTYPES), default='bf16', help='autocast dtype (fp32: no autocast)')
    p.add_argument('--channels_last', choices=('on', 'off'), default='on')
    p.add_argument('--gf_impl', default='fft', help='Global Filter implementation of GF models')
    p.add_argument('--what', nargs='+', choices=('train', 'infer'), default=['train', 'infer'])
    p.add_argument('--gpu', choices=tuple(GPUS), default='h200')
    p.add_argument('--bandwidth', type=float, default=None, help='override: DRAM TB/s')
    p.add_argument('--tensor_tflops', type=float, default=None, help='override: bf16 tensor-core TFLOP/s')
    p.add_argument('--fp32_tflops', type=float, default=None, help='override: fp32 CUDA-core TFLOP/s')
    p.add_argument('--tf32', choices=('on', 'off'), default='on',
                   help='fp32 matmuls/convs at the TF32 tensor peak (main.py enables TF32)')
    p.add_argument('--measured', nargs='*', default=None, metavar='MODEL=TRAIN[:INFER]',
                   help='measured img/s to compare with the bound, e.g. hornet_tiny_7x7=1305:5432')
    p.add_argument('--measured_json', nargs='*', default=None,
                   help='benchmark.py --json file(s): eager rows with the same dtype/layout/gf_impl give img/s')
    p.add_argument('--top', type=int, default=15, help='rows of the top-ops table per model')
    p.add_argument('--all_ops', action='store_true', help='keep every grouped op in the JSON (default: top rows)')
    p.add_argument('--json', default=None, help='write the full result here')
    p.add_argument('--markdown', default=None, help='write the markdown tables here (also printed)')
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.input_size < 32:
        p.error('--batch_size must be >= 1 and --input_size >= 32')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format='[roofline] %(message)s')
    args = parse_args(argv)
    try:
        for path in (args.json, args.markdown):
            if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise UserError(f"{path}: directory {os.path.dirname(os.path.abspath(path))} does not exist")
        res = run(args)
        md = format_markdown(res, args.top)
        print(md)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(res, f, indent=1)
            _logger.info('wrote %s', args.json)
        if args.markdown:
            with open(args.markdown, 'w') as f:
                f.write(md + '\n')
        failed = [(m['model'], w) for m in res['models'] for w, a in m['steps'].items() if 'error' in a]
        if failed:
            print('error: could not trace ' + ', '.join(f'{m} ({w})' for m, w in failed), file=sys.stderr)
            return 1
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
