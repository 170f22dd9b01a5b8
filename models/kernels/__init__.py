"""Opt-in Triton kernels for the HorNet block (issue 10). Never a default: none has been measured on a GPU.

Triton is imported lazily, on first use: importing ``models`` never needs it. The kernels run on CUDA tensors; on
CPU tensors only under ``TRITON_INTERPRET=1`` (set before triton is first imported), which is how the tests check
them against the torch reference (``tests/test_fast_ops.py``).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

__all__ = ['triton_available', 'interpreting', 'can_run_on', 'dwconv_nhwc', 'dwconv_gate_nhwc']

_TRITON_ERROR: Optional[str] = None


def interpreting() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def triton_available() -> Optional[str]:
    """None if triton imports, else the reason it does not."""
    global _TRITON_ERROR
    if _TRITON_ERROR is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
            _TRITON_ERROR = ''
        except Exception as e:  # ImportError, or a broken install
            _TRITON_ERROR = f'{type(e).__name__}: {e}'
    return _TRITON_ERROR or None


def can_run_on(t: torch.Tensor) -> bool:
    """Whether the kernels can run on tensors like ``t``: CUDA, or CPU under the interpreter."""
    if triton_available() is not None:
        return False
    return t.device.type == 'cuda' or (t.device.type == 'cpu' and interpreting())


def dwconv_nhwc(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Depthwise KxK conv (stride 1, 'same' zero padding) of an NHWC tensor of any strides (e.g. a channel slice of
    the proj_in output: no copy); ``weight`` (C, 1, K, K), ``bias`` (C,). Returns (B, H, W, C), contiguous."""
    from .dwconv import DwConvNHWC
    return DwConvNHWC.apply(x, None, weight, bias)[1]


def dwconv_gate_nhwc(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """``q = dwconv(x)`` as :func:`dwconv_nhwc` and, in the same kernel, ``gate * q[..., :D0]`` (D0 = gate's
    channels): gnConv's first gating multiply. Returns ``(gate * q[..., :D0], q)``."""
    from .dwconv import DwConvNHWC
    return DwConvNHWC.apply(x, gate, weight, bias)
