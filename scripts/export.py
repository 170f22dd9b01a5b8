#!/usr/bin/env python
"""Export a HorNet variant to ONNX and check the file against PyTorch with onnxruntime.

Usage (from the repository root)::

    python scripts/export.py --checkpoint output/quickstart/checkpoint-best.pth --output quickstart.onnx
    python scripts/export.py --model hornet_tiny_7x7 --checkpoint hornet_tiny_7x7.pth --output hornet_tiny.onnx
    python scripts/export.py --model hornet_base_gf --checkpoint ckpt.pth --output gf.onnx --dynamic_batch

Global Filter variants are exported through the DFT-as-matmul path (``fast_ops.enable(model, gf_impl="matmul")``: plain MatMul ops,
no FFT), which computes the same function as the reference rfft2/irfft2 path. After export the ONNX model runs in
onnxruntime on a random input and is compared with the PyTorch fp32 eager model (reference FFT path); the script
exits non-zero when they disagree beyond ``--atol``/``--rtol``.

A checkpoint written by ``main.py`` records its variant (``args.model``) and resolution (``args.input_size``): they
are the defaults of ``--model`` and ``--input_size``. An explicit ``--input_size`` wins, with a warning when it
differs from the checkpoint's.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

try:
    from errors import UserError
    import checkpoint_meta  # noqa: I100  (errors first: the one-line hint names the first missing module)
except ModuleNotFoundError as e:  # run as a file from a checkout that is not installed: one line naming the fix
    from install_hint import exit_with_install_hint  # scripts/ is the first import path when run as a file
    exit_with_install_hint(e, 'scripts.export')

if TYPE_CHECKING:  # torch, timm and the models are imported once the arguments are checked (fast errors)
    import numpy as np
    import torch
    import torch.nn as nn

_logger = logging.getLogger('export')

DEFAULT_OPSET = 17  # LayerNormalization is a single op from opset 17


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description='Export a HorNet variant to ONNX and verify it with onnxruntime.')
    p.add_argument('--model', default=None, help='variant name, e.g. hornet_tiny_7x7, hornet_base_gf (default: the '
                   'one the checkpoint records, else the variant its weights look like)')
    p.add_argument('--checkpoint', default=None, help='weights (any supported format); without it the '
                   'random initial weights are exported')
    p.add_argument('--use_ema', action='store_true', help='export the EMA weights of a training checkpoint')
    p.add_argument('--output', required=True, help='ONNX file to write')
    p.add_argument('--input_size', type=int, default=None,
                   help="image side (default: the checkpoint's args.input_size, else the model's, 224 or 384)")
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET})')
    p.add_argument('--dynamic_batch', action='store_true', help='make the batch dimension dynamic')
    p.add_argument('--exporter', choices=('auto', 'legacy', 'dynamo'), default='auto',
                   help="torch.onnx exporter: 'legacy' (TorchScript, dynamo=False), 'dynamo' (needs onnxscript), "
                        "'auto' = legacy if this torch still has it, else dynamo")
    p.add_argument('--atol', type=float, default=1e-4, help='verification: absolute tolerance')
    p.add_argument('--rtol', type=float, default=1e-3, help='verification: relative tolerance')
    p.add_argument('--no_verify', action='store_true', help='skip the onnxruntime check')
    p.add_argument('--seed', type=int, default=0, help='seed of the random verification input')
    p.add_argument('--class_names', default=None, help='text file with one class name per line, in label order, '
                   "for the file's metadata (default: as predict.py finds them)")
    p.add_argument('-v', '--verbose', action='store_true', help='log progress (INFO)')
    return p.parse_args(argv)


def build_model(name: Optional[str], checkpoint: Optional[str],
                use_ema: bool) -> Tuple[nn.Module, str, checkpoint_meta.CheckpointInfo]:
    """Create the model with the checkpoint's class count (0 for a backbone-only file) and load it strictly;
    returns the model, its variant name and what the checkpoint records about its run."""
    import timm

    import models  # noqa: F401  (registers the HorNet variants with timm)
    from models import CheckpointError, safe_load
    from models.weights import extract_state_dict, guess_variant

    known = timm.list_models('hornet*')
    if name is not None and name not in known:
        raise UserError(f"unknown model {name!r} (choose one of: {', '.join(known)})")
    if checkpoint is None:
        if name is None:
            raise UserError('pass --model NAME (or --checkpoint FILE, whose variant is then used)')
        _logger.warning('no --checkpoint: exporting the random initial weights')
        return timm.create_model(name).eval(), name, checkpoint_meta.CheckpointInfo()
    try:
        raw = safe_load(checkpoint)
        info = checkpoint_meta.read_info(raw)
        sd = extract_state_dict(raw, use_ema=use_ema, path=checkpoint)
        if name is None:
            name = info.model if info.model in known else guess_variant(sd)
            if name is None:
                raise UserError(f"{checkpoint} does not record its model and does not look like a released variant: "
                                f"pass --model NAME")
            _logger.info('model %s (from the checkpoint)', name)
        num_classes = checkpoint_meta.head_classes(sd) or 0
        if num_classes == 0:
            _logger.warning('%s has no classifier head: exporting the pooled features', checkpoint)
        from models.hornet import create_model_with_weights
        model = create_model_with_weights(name, num_classes, sd, checkpoint)
    except CheckpointError as e:  # already one line naming the file and the fix
        raise UserError(str(e)) from None
    return model.eval(), name, info


def set_gf_impl(model: nn.Module, impl: str) -> int:
    """Switch every Global Filter to ``impl``; returns how many there are (0 for 7x7 models)."""
    from models import fast_ops
    return fast_ops.enable(model, gf_impl=impl)['gf_impl']


def _output_name(model: nn.Module) -> str:
    return 'logits' if getattr(model, 'num_classes', 1) else 'features'


def _export_legacy(model: nn.Module, x, output: str, opset: int, dynamic_batch: bool) -> None:
    import torch
    axes = {'input': {0: 'batch'}, _output_name(model): {0: 'batch'}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=DeprecationWarning)  # "legacy TorchScript-based exporter"
        # the Global Filter reads H and W as Python numbers: constants of this trace, as the input size is fixed
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        torch.onnx.export(model, (x,), output, dynamo=False, opset_version=opset, input_names=['input'],
                          output_names=[_output_name(model)], dynamic_axes=axes, do_constant_folding=True)


def _export_dynamo(model: nn.Module, x, output: str, opset: int, dynamic_batch: bool) -> None:
    import torch
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError('the dynamo ONNX exporter needs onnxscript (pip install onnxscript), '
                        'or use --exporter legacy') from None
    shapes = ({0: torch.export.Dim('batch', min=1)},) if dynamic_batch else None
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=['input'],
                                output_names=[_output_name(model)], dynamic_shapes=shapes)
    program.save(output)


def export(model: nn.Module, output: str, input_size: int, opset: int, dynamic_batch: bool, exporter: str) -> str:
    """Write ``model`` to ``output``; returns the exporter that was used."""
    import torch
    # torch.export specialises a size-1 dim to a constant, so a dynamic batch is traced with 2 images
    x = torch.randn(2 if dynamic_batch else 1, 3, input_size, input_size)
    order = {'auto': ('legacy', 'dynamo'), 'legacy': ('legacy',), 'dynamo': ('dynamo',)}[exporter]
    errors = []
    for kind in order:
        fn = _export_legacy if kind == 'legacy' else _export_dynamo
        try:
            with torch.no_grad():
                fn(model, x, output, opset, dynamic_batch)
            return kind
        except UserError as e:  # a missing package: say so plainly when it was the only exporter to try
            if len(order) == 1:
                raise
            errors.append(f"{kind}: {e}")
        except Exception as e:  # exporters raise many types; report the first line of each
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            errors.append(f"{kind}: {type(e).__name__}: {first[:300]}")
            _logger.info('%s exporter failed', kind, exc_info=True)
    raise UserError(f"ONNX export of {output} failed ({'; '.join(errors)}); try another --opset or --exporter, "
                    f"-v shows the full error")


def metadata(model: nn.Module, name: str, info: checkpoint_meta.CheckpointInfo, input_size: int,
             names_file: Optional[str]) -> Dict[str, str]:
    """What a runtime needs besides the graph, as ONNX ``metadata_props`` (string values, lists and dicts as
    JSON): the preprocessing of ``main.py --eval`` at this size and the class names in label order (those
    predict.py prints; none when only indices are known)."""
    from scripts.predict import class_names
    pre = checkpoint_meta.eval_preprocessing(info, input_size)
    meta = {'model': name, 'preprocessing': pre.pop('description')}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in pre.items()})
    num_classes = int(getattr(model, 'num_classes', 0) or 0)
    if num_classes:
        names, source = class_names(model, names_file, info)
        meta['num_classes'] = str(num_classes)
        if source != 'class indices':
            meta['class_names'] = json.dumps(names)
            meta['class_names_source'] = source
    return meta


def write_metadata(output: str, meta: Dict[str, str]) -> Sequence[str]:
    """Store ``meta`` in the file's ``metadata_props`` (replacing keys of the same name); returns the lines that
    report it."""
    try:
        import onnx
    except ImportError:
        raise UserError('the onnx package is missing (pip install onnx): it writes the preprocessing and class '
                        'names into the file') from None
    model = onnx.load(output)
    kept = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, output)
    lines = [f"metadata preprocessing: {meta['preprocessing']}"]
    if 'class_names' in meta:
        names = json.loads(meta['class_names'])
        shown = ', '.join(repr(n) for n in names[:4]) + (f', ... ({len(names)} in all)' if len(names) > 4 else '')
        lines.append(f"metadata class_names: {shown} (from {meta['class_names_source']})")
    elif 'num_classes' in meta:
        lines.append(f"metadata class_names: none known for the {meta['num_classes']} classes (pass --class_names "
                     f"FILE to add them)")
    lines.append(f"metadata keys (onnx.load(path).metadata_props): {', '.join(meta)}")
    return lines


def check_graph(output: str) -> Tuple[int, int, list]:
    """Validate the file with onnx.checker; returns (node count, opset, FFT-like op types found)."""
    try:
        import onnx
    except ImportError:
        raise UserError('the onnx package is missing (pip install onnx), or pass --no_verify') from None
    model = onnx.load(output)
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    opset = next((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), -1)
    return len(ops), opset, sorted({op for op in ops if op in ('DFT', 'STFT')})


def verify(model: nn.Module, output: str, input_size: int, batch: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Run the ONNX file in onnxruntime and the PyTorch model (fp32 eager, reference FFT) on the same input."""
    import torch
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError('onnxruntime is missing (pip install onnxruntime), or pass --no_verify') from None
    x = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    set_gf_impl(model, 'fft')
    with torch.no_grad():
        ref = model.float()(x).numpy()
    session = ort.InferenceSession(output, providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return got, ref


def run(args: argparse.Namespace) -> int:
    """Export, then verify; returns the exit status."""
    if args.input_size is not None and args.input_size < 32:
        raise UserError(f"--input_size {args.input_size} is too small (HorNet needs at least 32 pixels)")
    released_variant = checkpoint_meta.check_checkpoint_arg(args.checkpoint)  # a file, URL or released name
    out = Path(args.output)
    if not out.resolve().parent.is_dir():
        raise UserError(f"cannot write --output {args.output}: its folder does not exist (create it first)")
    if out.suffix != '.onnx':
        _logger.warning('--output %s does not end in .onnx', args.output)

    import numpy as np
    model, name, info = build_model(args.model or released_variant, args.checkpoint, args.use_ema)
    size = checkpoint_meta.resolve_input_size(args.input_size, info,
                                              int(model.pretrained_cfg.get('input_size', (3, 224, 224))[-1]))
    n_gf = set_gf_impl(model, 'matmul')
    start = time.perf_counter()
    kind = export(model, args.output, size, args.opset, args.dynamic_batch, args.exporter)
    seconds = time.perf_counter() - start
    n_nodes, opset, fft_ops = check_graph(args.output) if not args.no_verify else (0, args.opset, [])
    print(f"exported {name} ({size}x{size}, opset {opset}, {kind} exporter"
          f"{', Global Filter as matmul' if n_gf else ''}{', dynamic batch' if args.dynamic_batch else ''}) "
          f"to {args.output} in {seconds:.1f} s ({out.stat().st_size / 2**20:.1f} MiB)")
    for line in write_metadata(args.output, metadata(model, name, info, size, args.class_names)):
        print(line)
    if args.no_verify:
        return 0
    if fft_ops:
        _logger.warning('the graph contains %s ops: not every runtime supports them', ', '.join(fft_ops))
    batch = 2 if args.dynamic_batch else 1
    got, ref = verify(model, args.output, size, batch, args.seed)
    if got.shape != ref.shape:
        raise UserError(f"ONNX output shape {got.shape} != PyTorch {ref.shape} for {args.output} (re-export)")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    ok = bool(np.all(diff <= args.atol + args.rtol * np.abs(ref)))
    print(f"onnxruntime vs PyTorch fp32 eager (batch {batch}, {n_nodes} nodes): max abs diff {diff.max():.3e}, "
          f"max |ref| {np.abs(ref).max():.3e}, tolerance atol {args.atol:g} + rtol {args.rtol:g}: "
          f"{'OK' if ok else 'MISMATCH'}")
    if not ok:
        print(f"export.py: error: {args.output} disagrees with PyTorch (max abs diff {diff.max():.3e}); the file is "
              f"kept for inspection: try another --opset/--exporter, or report the model and versions",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: returns the exit status; user errors are one line on stderr."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    for logger in ('export', 'models', 'checkpoint_meta'):  # -v: our progress, not every library's INFO chatter
        logging.getLogger(logger).setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return run(args)
    except UserError as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('export.py: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
