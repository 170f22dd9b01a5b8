#!/usr/bin/env python3
"""Parameters and GFLOPs of HorNet variants (or any timm model), counted by ``torch.utils.flop_counter``.

Conventions (details and the comparison with published numbers: BENCHMARKS.md, section FLOPs):

* torch's ``FlopCounterMode`` counts matmul/conv-like ops at 2 FLOPs per multiply-accumulate and ignores
  elementwise ops (norms, activations, gating products, biases). Published HorNet numbers (fvcore/mmengine)
  count one MAC as one FLOP, so every "GFLOPs" here is **GMACs** = torch's count / 2.
* torch counts no FFTs. We register formulas for ``aten._fft_r2c`` / ``_fft_c2r`` / ``_fft_c2c`` with the usual
  radix-2 (FFTW benchmark) estimate: a complex transform over N points (N = product of the transformed sizes,
  e.g. H*W for rfft2 over dims (2, 3) of a (B, C, H, W) tensor) costs 5 N log2 N real FLOPs; a real transform
  (r2c, or c2r with N = the real side's points) half of that, 2.5 N log2 N; times the number of independent
  transforms (B*C). After the /2 above, a complex transform is 2.5 N log2 N "MACs". The complex product with
  the filter is elementwise and, like every elementwise op, not counted.
* "mmpretrain-style" re-creates how the reference numbers (mmpretrain's HorNet model zoo) were counted:
  conv + linear MACs without the classifier head, plus 5 per element of the channels-last LayerNorms inside
  the blocks (fvcore's ``aten::layer_norm`` rule), and no FFTs at all. It reproduces the published integers.

Usage: ``python scripts/flops.py [--models NAME ...] [--input_size 224] [--gf_impl fft] [--json out.json]``
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

try:
    from errors import UserError
except ModuleNotFoundError as e:  # run as a file from a checkout that is not installed: one line naming the fix
    from install_hint import exit_with_install_hint  # scripts/ is the first import path when run as a file
    exit_with_install_hint(e, 'scripts.flops')

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

_logger = logging.getLogger('flops')
aten = torch.ops.aten

# Reference GFLOPs at 224x224 (mmclassification/mmpretrain model-zoo README; the HorNet README rounds the same
# counts to one decimal: 4.0/3.9, 8.8/8.7, 15.6/15.5, 34.8/34.7). fvcore convention, 1 MAC = 1 FLOP.
PAPER_GFLOPS_224: Dict[str, float] = {
    'hornet_tiny_7x7': 3.98, 'hornet_tiny_gf': 3.9,
    'hornet_small_7x7': 8.83, 'hornet_small_gf': 8.71,
    'hornet_base_7x7': 15.59, 'hornet_base_gf': 15.42,
    'hornet_large_7x7': 34.83, 'hornet_large_gf': 34.58,
}
# Exact integers from mmpretrain's configs/hornet/metafile.yml (in1k models only).
MMPRETRAIN_FLOPS_224: Dict[str, int] = {
    'hornet_tiny_7x7': 3976156352, 'hornet_tiny_gf': 3896472160,
    'hornet_small_7x7': 8825621280, 'hornet_small_gf': 8706094992,
    'hornet_base_7x7': 15582677376, 'hornet_base_gf': 15423308992,
}
FFT_OPS = (aten._fft_r2c, aten._fft_c2r, aten._fft_c2c)
# one definition of the FFT formulas, shared with main.py's start-up FLOP count
from models.flops import fft_c2c_flop, fft_c2r_flop, fft_r2c_flop  # noqa: E402,F401

FFT_FLOP_MAPPING: Dict[Any, Callable[..., int]] = {
    aten._fft_r2c: fft_r2c_flop,
    aten._fft_c2r: fft_c2r_flop,
    aten._fft_c2c: fft_c2c_flop,
}


def release_fft_macs(x_shape: Sequence[int]) -> int:
    """What the release's ``calc_flops.py`` fvcore handle gives an rfft2/irfft2 input: it reads the shape as
    (B, H, W, C), so for an NCHW tensor N = C*H and the count is C*H*W*ceil(log2(C*H)) (fvcore units = MACs)."""
    _, h, w, c = (int(s) for s in x_shape)
    n = h * w
    return int(n * c * math.ceil(math.log2(n)))


def count_flops(model: nn.Module, input_size: int, count_fft: bool = True, batch: int = 1) -> Dict[str, Any]:
    """Run one eval forward pass under ``FlopCounterMode``; return torch FLOPs (2 per MAC) split by op, plus the
    terms needed for the published-number reconstruction (see :func:`measure`)."""
    release_fft: List[int] = []
    ln_elems: List[int] = []
    head_macs: List[int] = []

    def _record_release(fn: Callable[..., int]) -> Callable[..., int]:
        def wrapped(x_shape, *args, **kwargs) -> int:
            release_fft.append(release_fft_macs(x_shape))
            return fn(x_shape, *args, **kwargs) if count_fft else 0
        return wrapped

    mapping = {aten._fft_r2c: _record_release(fft_r2c_flop), aten._fft_c2r: _record_release(fft_c2r_flop)}
    if count_fft:
        mapping[aten._fft_c2c] = fft_c2c_flop
    hooks = []
    # fvcore/mmengine count aten::layer_norm at 5 FLOPs per element; in the original code only the channels-last
    # LayerNorms inside blocks call it (the channels-first ones are a mean/pow chain): the plain nn.LayerNorm
    # modules on 4-D (B, H, W, C) inputs here.
    for m in model.modules():
        if type(m) is nn.LayerNorm:
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out: ln_elems.append(inp[0].numel()) if inp[0].dim() == 4 else None))
    head = model.get_classifier() if hasattr(model, 'get_classifier') else None
    if isinstance(head, nn.Linear):
        hooks.append(head.register_forward_hook(
            lambda mod, inp, out: head_macs.append(inp[0].numel() * mod.out_features)))
    was_training = model.training
    model.eval()
    x = torch.randn(batch, 3, input_size, input_size)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    by_op = {str(k).replace('aten.', ''): int(v) for k, v in counter.get_flop_counts().get('Global', {}).items()}
    total = int(counter.get_total_flops())
    fft = sum(v for k, v in by_op.items() if k.startswith('_fft'))
    return dict(total_flops=total, fft_flops=fft, by_op=by_op, release_fft_macs=sum(release_fft),
                block_layernorm_elems=sum(ln_elems), head_macs=sum(head_macs))


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (a complex filter counts as its 2 real numbers, as in the paper)."""
    return sum(p.numel() for p in model.parameters())


def known_models() -> List[str]:
    """HorNet variants first, then every other timm-registered name."""
    import timm
    import models
    return list(models.HORNET_VARIANTS) + [n for n in timm.list_models() if n not in models.HORNET_VARIANTS]


def check_model_names(names: Sequence[str]) -> None:
    """Raise UserError for a name timm cannot build, listing close matches."""
    avail = known_models()
    avail_set = set(avail)
    for name in names:
        if name not in avail_set:
            close = difflib.get_close_matches(name, avail, n=5, cutoff=0.5)
            hint = f"; did you mean: {', '.join(close)}" if close else '; see models.HORNET_VARIANTS'
            raise UserError(f"unknown model {name!r}{hint}")


def default_input_size(model: nn.Module, fallback: int = 224) -> int:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    size = cfg.get('input_size')
    return int(size[-1]) if size else fallback


def measure(name: str, input_size: Optional[int], gf_impl: str = 'fft') -> Dict[str, Any]:
    """Build ``name`` (random init), count params and FLOPs at ``input_size`` (None: the model's default)."""
    import timm
    model = timm.create_model(name, pretrained=False, num_classes=1000)  # the paper's 1K head (L's default is 22K)
    from models import fast_ops
    n_gf = fast_ops.enable(model, gf_impl=gf_impl)['gf_impl']  # 0: no Global Filter, gf_impl does not apply
    size = input_size or default_input_size(model)
    res = count_flops(model, size)
    ref = PAPER_GFLOPS_224.get(name) if size == 224 else None
    exact = MMPRETRAIN_FLOPS_224.get(name) if size == 224 else None
    macs = res['total_flops'] / 2
    no_fft = (res['total_flops'] - res['fft_flops']) // 2
    mm_style = no_fft - res['head_macs'] + 5 * res['block_layernorm_elems']
    row = dict(
        model=name, input_size=size, gf_impl=gf_impl if n_gf else None,
        params=count_params(model), params_m=count_params(model) / 1e6,
        gmacs=macs / 1e9, fft_gmacs=res['fft_flops'] / 2e9, macs_without_fft=no_fft,
        head_macs=res['head_macs'], block_layernorm_elems=res['block_layernorm_elems'],
        mmpretrain_style_macs=mm_style, mmpretrain_metafile_macs=exact,
        release_calc_flops_fft_macs=res['release_fft_macs'],
        reference_gflops=ref, diff_pct=(100.0 * (macs / 1e9 - ref) / ref) if ref else None,
        mmpretrain_style_diff_pct=(100.0 * (mm_style / 1e9 - ref) / ref) if ref else None,
        torch_flops_by_op=res['by_op'],
    )
    del model
    return row


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of the rows (also readable on a terminal)."""
    head = ['model', 'res', 'params (M)', 'GMACs (ours, with FFT)', 'of which FFT', 'reference', 'diff',
            'mmpretrain-style', 'diff', 'metafile integer']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---'] + ['--:'] * (len(head) - 1)) + '|']

    def pct(v: Optional[float]) -> str:
        return f'{v:+.2f}%' if v is not None else '-'

    for r in rows:
        exact = r['mmpretrain_metafile_macs']
        exact_s = ('= exact' if exact == r['mmpretrain_style_macs'] else f"{exact:,}") if exact else '-'
        cells = [r['model'], str(r['input_size']), f"{r['params_m']:.2f}", f"{r['gmacs']:.3f}",
                 f"{r['fft_gmacs']:.4f}", f"{r['reference_gflops']:.2f}" if r['reference_gflops'] else '-',
                 pct(r['diff_pct']), f"{r['mmpretrain_style_macs'] / 1e9:.3f}", pct(r['mmpretrain_style_diff_pct']),
                 exact_s]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=None, help='timm names (default: every HorNet variant)')
    p.add_argument('--input_size', type=int, default=None, help='square resolution (default: each model\'s own)')
    p.add_argument('--gf_impl', choices=('fft', 'matmul', 'kron'), default='fft',
                   help="Global Filter path: 'fft' counts FFTs by formula, 'matmul' counts the DFT matmuls")
    p.add_argument('--json', default=None, help='also write the rows to this JSON file')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = parse_args(argv)
    try:
        import models
        names = args.models or list(models.HORNET_VARIANTS)
        check_model_names(names)
        if args.input_size is not None and args.input_size < 32:
            raise UserError(f"--input_size must be >= 32 (got {args.input_size})")
        if args.threads:
            torch.set_num_threads(args.threads)
        rows = []
        for name in names:
            _logger.info('counting %s ...', name)
            rows.append(measure(name, args.input_size, args.gf_impl))
        print(format_table(rows))
        print('GMACs = torch FlopCounterMode FLOPs / 2 (fvcore convention: 1 MAC = 1 FLOP); FFTs at 5 N log2 N '
              'FLOPs per complex / 2.5 N log2 N per real transform; elementwise ops not counted. mmpretrain-style = '
              'no FFT, no classifier head, + 5/element for in-block channels-last LayerNorms.')
        if args.json:
            meta = dict(torch=torch.__version__, convention='GMACs = torch FLOPs / 2; FFT radix-2 5NlogN/2.5NlogN',
                        gf_impl=args.gf_impl)
            try:
                with open(args.json, 'w') as f:
                    json.dump(dict(meta=meta, rows=rows), f, indent=2)
            except OSError as e:
                raise UserError(f"cannot write --json {args.json}: {e.strerror}") from None
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
