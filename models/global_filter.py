"""The Global Filter of HorNet's GF variants, as functions: ``irfft2(rfft2(x, 'ortho') * w, 'ortho')`` per channel.

Three implementations of the same linear map (:data:`GF_IMPLS`, chosen by ``gf_impl``):

* ``'fft'`` (:func:`global_filter_fft`, the default): the original's rfft2/irfft2, always in fp32;
* ``'matmul'`` (:func:`global_filter_matmul`): small dense DFT matmuls along each axis. At HorNet's sizes (14x14 /
  7x7 maps) these are tiny GEMMs that run in any dtype, compile, and export to ONNX, where FFTs do not;
* ``'kron'`` (:func:`global_filter_kron`, opt-in): the 2-D transform as ONE real GEMM each way with the precomputed
  (H*W, 2*H*(W//2+1)) matrix of the orthonormal 2-D real DFT (Kronecker product of the per-axis DFTs, real and
  imaginary parts interleaved), the complex filter in real arithmetic. It reads the channels-last tensor the block
  has in place, so no layout copy is made. Unmeasured on GPU.

The module that holds the learned filter is ``models.hornet.GlobalLocalFilter``.
"""
import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

try:
    from timm.layers import register_notrace_function
except ImportError:  # timm < 1.0.13 keeps it beside the FX feature extractor
    from timm.models._features_fx import register_notrace_function

__all__ = ['GF_IMPLS', 'check_gf_impl', 'global_filter', 'global_filter_fft', 'global_filter_matmul',
           'global_filter_kron', 'dft_mats', 'irdft_mats', 'kron_dft_mats', 'resize_complex_weight']

GF_IMPLS = ('fft', 'matmul', 'kron')  # Global Filter implementations; 'kron' is opt-in (unmeasured on GPU)


def check_gf_impl(impl: str) -> str:
    if impl not in GF_IMPLS:
        raise ValueError(f"gf_impl must be one of {GF_IMPLS} (got {impl!r})")
    return impl


@register_notrace_function  # a leaf for torch.fx: timm's tracer wraps the functions a model's own module calls
def global_filter(x: torch.Tensor, weight: torch.Tensor, impl: str = 'fft') -> torch.Tensor:
    """``x`` (B, C, H, W) through the filter ``weight`` (C, H, W//2+1, 2) with implementation ``impl``."""
    if impl == 'matmul':
        return global_filter_matmul(x, weight)
    if impl == 'kron' and not torch.jit.is_scripting():  # its matrix cache does not script; TorchScript runs 'fft'
        return global_filter_kron(x, weight)
    return global_filter_fft(x, weight)


# ------------------------------------------------------------------------------------------ DFT matrices
def dft_mats(n: int, half: bool, device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the orthonormal forward DFT matrix (n_out x n), half-spectrum if asked."""
    n_out = n // 2 + 1 if half else n
    k = torch.arange(n_out, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    ang = -2.0 * math.pi * k * j / n
    scale = 1.0 / math.sqrt(n)
    return (torch.cos(ang) * scale).to(device, dtype), (torch.sin(ang) * scale).to(device, dtype)


def irdft_mats(n: int, device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Matrices (n x n//2+1) of the orthonormal inverse real DFT (C2R) along one dim.

    ``irfft`` ignores the imaginary part of the DC (and, for even n, the Nyquist) bin and counts every
    other bin twice (Hermitian symmetry); the weights below encode exactly that.
    """
    n_half = n // 2 + 1
    j = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(n_half, dtype=torch.float64).unsqueeze(0)
    ang = 2.0 * math.pi * j * k / n
    w = torch.full((n_half,), 2.0, dtype=torch.float64)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    scale = 1.0 / math.sqrt(n)
    re = torch.cos(ang) * w * scale
    im = -torch.sin(ang) * w * scale
    im[:, 0] = 0.0
    if n % 2 == 0:
        im[:, -1] = 0.0
    return re.to(device, dtype), im.to(device, dtype)


def kron_dft_mats(h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 matrices of ``rfft2(norm='ortho')`` and ``irfft2(s=(h, w), norm='ortho')`` on flattened maps.

    Returns ``fwd`` (h*w, 2*K) and ``inv`` (2*K, h*w), K = h*(w//2+1), columns/rows ordered (k_h, k_w, re/im),
    so that for a real map ``x`` (flattened row-major), ``x @ fwd`` is ``view_as_real(rfft2(x))`` flattened and
    ``z @ inv`` is ``irfft2(view_as_complex(z))`` flattened.

    ``irfft2`` = inverse c2c DFT along H, then the C2R transform along W; so the inverse matrix is the Kronecker
    product of conj(F_h) with the C2R matrices of :func:`irdft_mats` (Hermitian weights included).
    """
    cpu, f64 = torch.device('cpu'), torch.float64
    fh_re, fh_im = dft_mats(h, False, cpu, f64)                     # (h, h)
    fw_re, fw_im = dft_mats(w, True, cpu, f64)                      # (w2, w)
    # f = kron(fh, fw) (K x h*w, complex): X = f @ x
    f_re = torch.kron(fh_re, fw_re) - torch.kron(fh_im, fw_im)
    f_im = torch.kron(fh_re, fw_im) + torch.kron(fh_im, fw_re)
    fwd = torch.stack((f_re, f_im), dim=1).reshape(-1, h * w).t().contiguous()       # (h*w, 2K)
    gh_re, gh_im = fh_re, -fh_im                                    # orthonormal inverse along H: conj (symmetric)
    iw_re, iw_im = irdft_mats(w, cpu, f64)                          # (w, w2) each
    # y = sum_k [Re(D) iw_re + Im(D) iw_im] with D = gh @ Z along H:
    #   Re(D) = gh.re Z.re - gh.im Z.im,   Im(D) = gh.re Z.im + gh.im Z.re
    inv_re = torch.kron(gh_re, iw_re) + torch.kron(gh_im, iw_im)    # (h*w, K), multiplies Z.re
    inv_im = torch.kron(gh_re, iw_im) - torch.kron(gh_im, iw_re)    # (h*w, K), multiplies Z.im
    inv = torch.stack((inv_re, inv_im), dim=-1).reshape(h * w, -1).t().contiguous()  # (2K, h*w)
    return fwd, inv


_KRON_CACHE: Dict[Tuple[int, int, torch.device, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {}


def _kron_mats(h: int, w: int, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The matrices in ``like``'s device and dtype; cached for plain eager tensors (built once per size).

    Not cached under torch.compile (built in-graph, constant-folded), for fake/meta tensors (FLOP and memory
    counters), or for tensor subclasses: a cached real tensor must never meet a fake one.
    """
    cacheable = (type(like) is torch.Tensor and like.device.type != 'meta'
                 and not torch.compiler.is_compiling())
    if not cacheable:
        fwd, inv = kron_dft_mats(h, w)
        return fwd.to(like.device, like.dtype), inv.to(like.device, like.dtype)
    key = (h, w, like.device, like.dtype)
    mats = _KRON_CACHE.get(key)
    if mats is None:
        with torch.inference_mode(False), torch.no_grad():  # normal tensors, even if first built in inference
            fwd, inv = kron_dft_mats(h, w)
            mats = (fwd.to(like.device, like.dtype), inv.to(like.device, like.dtype))
        _KRON_CACHE[key] = mats
    return mats


# ------------------------------------------------------------------------------------------ implementations
def _global_filter_fft_fp32(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2], x.shape[-1]
    xf = torch.fft.rfft2(x.float(), dim=(2, 3), norm='ortho')
    xf = xf * torch.view_as_complex(weight.float().contiguous())
    return torch.fft.irfft2(xf, s=(h, w), dim=(2, 3), norm='ortho')


@register_notrace_function  # a leaf for torch.fx (timm's tracer); the autocast guard below cannot be traced
def global_filter_fft(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reference path of the original: rfft2 (ortho) * complex filter, irfft2. Always computed in fp32."""
    if torch.jit.is_scripting():  # TorchScript has no autocast to escape from
        return _global_filter_fft_fp32(x, weight)
    dev = x.device.type if x.device.type in ('cuda', 'cpu', 'xpu', 'mps') else 'cpu'  # e.g. meta for FLOP counts
    with torch.autocast(device_type=dev, enabled=False):
        return _global_filter_fft_fp32(x, weight)


@register_notrace_function  # builds DFT matrices from the input's (concrete) size: a leaf for torch.fx
def global_filter_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The same linear map as :func:`global_filter_fft`, written as small dense DFT matmuls along each axis.

    The filter is applied in the input dtype (fp32 under fp32 training).
    """
    h, w = x.shape[-2], x.shape[-1]
    dt = x.dtype
    fh_re, fh_im = dft_mats(h, False, x.device, dt)      # (h, h)
    fw_re, fw_im = dft_mats(w, True, x.device, dt)       # (w2, w)
    gh_re, gh_im = fh_re, -fh_im                         # inverse along H = conjugate (orthonormal)
    iw_re, iw_im = irdft_mats(w, x.device, dt)           # (w, w2)
    # forward along W (real input): (B,C,H,W) @ (W,w2)
    a_re = x @ fw_re.t()
    a_im = x @ fw_im.t()
    # forward along H (complex): F_h @ A
    b_re = fh_re @ a_re - fh_im @ a_im
    b_im = fh_re @ a_im + fh_im @ a_re
    wr, wi = weight[..., 0].to(dt), weight[..., 1].to(dt)
    c_re = b_re * wr - b_im * wi
    c_im = b_re * wi + b_im * wr
    # inverse along H (complex)
    d_re = gh_re @ c_re - gh_im @ c_im
    d_im = gh_re @ c_im + gh_im @ c_re
    # inverse real DFT along W: (.., H, w2) @ (w2, W)
    return d_re @ iw_re.t() + d_im @ iw_im.t()


def global_filter_kron(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Same function as ``global_filter_fft(x, weight)``: (B, C, H, W) in and out, weight (C, H, W//2+1, 2).

    Two GEMMs over the flattened map (contraction length H*W and 2*H*(W//2+1)) around a complex multiply done
    in real arithmetic. Computed in the GEMM dtype: x's, or the autocast dtype (bf16 GEMMs and filter product
    under bf16 autocast, like ``gf_impl='matmul'``; the reference FFT stays fp32).
    On the channels-last view the block passes in, the first GEMM reads the map transposed in place and the
    second writes channels-last, so neither side makes a layout copy.
    """
    b, c, h, w = x.shape
    fwd, inv = _kron_mats(h, w, x)
    k2 = fwd.shape[1]
    xt = x.reshape(b, c, h * w)                       # a strided view for channels-last input
    y = torch.matmul(xt, fwd)                         # (B, C, 2K), (k, re/im) interleaved
    y = y.view(b, c, k2 // 2, 2)
    dt = y.dtype                                      # the GEMM's dtype (bf16 under bf16 autocast)
    wr, wi = weight[..., 0].reshape(c, -1).to(dt), weight[..., 1].reshape(c, -1).to(dt)   # (C, K)
    # (yr + i yi)(wr + i wi) = (yr wr - yi wi) + i (yr wi + yi wr) = y * [wr, wr] + flip(y) * [-wi, wi]
    wa = torch.stack((wr, wr), dim=-1)
    wb = torch.stack((-wi, wi), dim=-1)
    z = torch.addcmul(y * wa, y.flip(-1), wb).view(b, c, k2)
    out = torch.matmul(inv.t(), z.transpose(1, 2))   # (B, H*W, C): channels-last
    return out.view(b, h, w, c).permute(0, 3, 1, 2)


@register_notrace_function  # compares the filter's shape with the map's: a leaf for torch.fx
def resize_complex_weight(weight: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Bilinearly resize a (C, h, w, 2) filter to (C, size[0], size[1], 2), align_corners=True (as the original)."""
    if weight.shape[1] == size[0] and weight.shape[2] == size[1]:
        return weight
    w = weight.permute(3, 0, 1, 2)
    w = F.interpolate(w.float(), size=[size[0], size[1]], mode='bilinear', align_corners=True)
    return w.permute(1, 2, 3, 0).to(weight.dtype)
