"""One steady-state training (or inference) step recorded op by op on fake tensors, for ``roofline.py``.

Every aten op below autograd (what eager mode launches) becomes a record: bytes read and written, FLOPs, kind,
compute unit and dtype (under the CUDA autocast policy, emulated on the CPU by :class:`CudaAutocastOnCPU`), the
module running it (:class:`ModuleAttribution`) and its phase (fwd, bwd, opt). ``roofline.py`` turns the records
into the bound; its docstring states the counting rules.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from models.flops import fft_flop_formulas
from scripts.bench.common import build_model

aten = torch.ops.aten

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}

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
    return fft_flop_formulas()


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
        elif (out_tensors and out_tensors[0].is_floating_point() and ref is not None
              and out_tensors[0].dtype != ref.dtype):
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

