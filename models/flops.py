"""FLOP counting: torch's ``FlopCounterMode`` plus formulas for the FFTs it does not count.

The Global Filter variants spend part of their work in ``rfft2``/``irfft2``, which torch's counter leaves out; the
formulas here (a radix-2 Cooley-Tukey estimate) are the one definition used by main.py's start-up count,
``scripts/flops.py`` and the roofline tooling, so their numbers agree.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_flops', 'fft_points', 'radix2_flops', 'fft_r2c_flop', 'fft_c2r_flop', 'fft_c2c_flop',
           'fft_flop_formulas']


def count_flops(model: torch.nn.Module, input_size: int, in_chans: int = 3) -> float:
    """Multiply-adds (the paper's "FLOPs") of one image: torch's FlopCounterMode count (2 per MAC) / 2, FFTs included.

    Runs on a throw-away meta-device copy, so it costs no memory and no compute.
    """
    m = copy.deepcopy(model).to('meta').eval()
    x = torch.empty(1, in_chans, input_size, input_size, device='meta')
    with FlopCounterMode(display=False, custom_mapping=fft_flop_formulas()) as counter, torch.no_grad():
        m(x)
    return counter.get_total_flops() / 2.0


def fft_points(shape: Sequence[int], dims: Sequence[int]) -> int:
    """N, the points of one transform: the product of ``shape`` over the transformed ``dims``."""
    return math.prod(int(shape[d]) for d in dims)


def radix2_flops(n: int) -> float:
    """5 N log2 N: real FLOPs of one complex N-point FFT (Cooley-Tukey radix-2 estimate; 0 for N <= 1)."""
    return 5.0 * n * math.log2(n) if n > 1 else 0.0


def fft_r2c_flop(x_shape, dim, normalization, onesided, *args, out_shape=None, **kwargs) -> int:
    """Real-to-complex FFT over ``dim``: 2.5 N log2 N FLOPs per transform, N = prod of the real input's sizes."""
    n = fft_points(x_shape, dim)
    return int(round(0.5 * radix2_flops(n) * (math.prod(x_shape) // max(n, 1))))


def fft_c2r_flop(x_shape, dim, normalization, last_dim_size, *args, out_shape=None, **kwargs) -> int:
    """Complex-to-real (inverse) FFT: 2.5 N log2 N FLOPs per transform, N = prod of the real output's sizes."""
    n = fft_points(out_shape, dim)
    return int(round(0.5 * radix2_flops(n) * (math.prod(out_shape) // max(n, 1))))


def fft_c2c_flop(x_shape, dim, normalization, forward, *args, out_shape=None, **kwargs) -> int:
    """Complex-to-complex FFT: 5 N log2 N FLOPs per transform."""
    n = fft_points(x_shape, dim)
    return int(round(radix2_flops(n) * (math.prod(x_shape) // max(n, 1))))


def fft_flop_formulas() -> Dict[Any, Callable[..., int]]:
    """FlopCounterMode formulas for the FFTs torch does not count (input layout B, C, H, W; N = H*W points)."""
    aten = torch.ops.aten
    return {aten._fft_r2c: fft_r2c_flop, aten._fft_c2r: fft_c2r_flop, aten._fft_c2c: fft_c2c_flop}
