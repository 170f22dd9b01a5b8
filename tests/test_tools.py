"""Tests of the user-facing tools: scripts/predict.py, scripts/export.py and scripts/plot_log.py.

The command-line paths run the scripts in a subprocess (as a user would) on real files written to tmp_path;
checkpoints are real hornet_micro variants (the tiny ones' blocks at a fraction of the size) saved in the original
release's format ({'model': sd}), evaluated at 64x64 to stay fast on CPU, and the session's main.py checkpoint
(tests/conftest.py). ONNX files are re-checked here with onnxruntime, independently of the script.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

import timm  # noqa: E402

import models  # noqa: E402,F401

SIZE = 64
GOLDEN_RETRIEVER = 207  # the class the test checkpoint is biased towards


def run_script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python scripts/<name> args...`` from the repository root, as the docs say; PYTHONPATH makes this
    checkout importable, as ``pip install -e .`` does."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get('PYTHONPATH')) if p))
    return subprocess.run([sys.executable, f'scripts/{name}', *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, no traceback, exactly one line on stderr containing every needle."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert 'Traceback' not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def run_in_process(name: str, capsys, *args: str) -> subprocess.CompletedProcess:
    """``scripts/<name> args...`` through its main() in this process (no interpreter start-up), for a further error
    case of a script that the test has run as a subprocess: stdout/stderr as printed (log records not included)."""
    capsys.readouterr()
    try:
        code = load_script(name[:-3]).main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess([name, *args], code, out.out, out.err)


def load_script(name: str):
    """Import scripts/<name>.py as a module (for the in-process checks)."""
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', REPO / 'scripts' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trained_like(name: str, num_classes: int = 1000, seed: int = 0) -> torch.nn.Module:
    """A variant whose every branch matters: fresh init has layer scale 1e-6, which would hide the gnConv/GF
    paths from an export check. Weights ~ N(0, 1/fan_in), layer scales 0.2-0.6, unit-variance GF filters."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith(('gamma1', 'gamma2')):
                p.uniform_(0.2, 0.6)
            elif key.endswith('complex_weight'):
                p.normal_(0, 1.0)
            elif p.ndim >= 2:
                p.normal_(0, 1 / math.sqrt(p[0].numel()))
    return model


@pytest.fixture(scope='module')
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('ckpt')


_MODELS: Dict[Path, torch.nn.Module] = {}  # checkpoint path -> the model saved there (reference for export)


@pytest.fixture(scope='module')
def micro_7x7_ckpt(ckpt_dir) -> Iterator[Path]:
    """hornet_micro_7x7 (1000 classes) in the original release's layout, with a head biased towards
    'golden retriever'."""
    model = trained_like('hornet_micro_7x7')
    with torch.no_grad():
        model.head.bias[GOLDEN_RETRIEVER] += 10.0
    path = ckpt_dir / 'hornet_micro_7x7.pth'
    torch.save({'model': model.state_dict(), 'epoch': 299}, path)
    _MODELS[path] = model
    yield path
    path.unlink()
    del _MODELS[path]


@pytest.fixture(scope='module')
def micro_gf_ckpt(ckpt_dir) -> Iterator[Path]:
    path = ckpt_dir / 'hornet_micro_gf.pth'
    model = trained_like('hornet_micro_gf', seed=1)
    torch.save({'model': model.state_dict()}, path)
    _MODELS[path] = model
    yield path
    path.unlink()
    del _MODELS[path]


@pytest.fixture()
def images(tmp_path) -> Dict[str, Path]:
    """A PNG in a nested folder, a JPEG (odd size, grayscale) and a corrupt 'JPEG'."""
    from PIL import Image
    rng = np.random.default_rng(0)
    (tmp_path / 'photos' / 'nested').mkdir(parents=True)
    png = tmp_path / 'photos' / 'nested' / 'a.png'
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(png)
    jpg = tmp_path / 'b.jpg'
    Image.fromarray(rng.integers(0, 255, (50, 41), dtype=np.uint8), mode='L').save(jpg, quality=90)
    (tmp_path / 'photos' / 'notes.txt').write_text('not an image, not picked up from the folder')
    bad = tmp_path / 'corrupt.jpg'
    bad.write_bytes(jpg.read_bytes()[:40])  # a truncated JPEG header
    return {'png': png, 'jpg': jpg, 'folder': tmp_path / 'photos', 'bad': bad}


# ---------------------------------------------------------------------------------------------------- predict

@pytest.mark.slow
def test_predict_prints_imagenet_top5(tmp_path, micro_7x7_ckpt, images):
    from timm.data import ImageNetInfo
    out = tmp_path / 'preds.json'
    proc = run_script('predict.py', '--model', 'hornet_micro_7x7', '--checkpoint', micro_7x7_ckpt, '--input_size',
                      SIZE, '--json', out, images['folder'], images['jpg'])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ''
    info = ImageNetInfo()
    names = {info.index_to_description(i) for i in range(1000)}
    preds = json.loads(out.read_text())['predictions']
    assert [Path(p['path']).name for p in preds] == ['a.png', 'b.jpg']  # the .txt in the folder is ignored
    for pred in preds:
        top = pred['topk']
        probs = [t['prob'] for t in top]
        assert len(top) == 5
        assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
        assert probs == sorted(probs, reverse=True)
        assert all(t['label'] in names for t in top)
        assert top[0]['index'] == GOLDEN_RETRIEVER and top[0]['label'] == 'golden retriever'
        assert pred['path'] in proc.stdout
    assert proc.stdout.count('golden retriever') == 2


def test_predict_other_head_uses_class_names(tmp_path, images, capsys):
    ckpt = tmp_path / 'three.pth'
    torch.save({'model': timm.create_model('hornet_micro_7x7', num_classes=3).state_dict()}, ckpt)
    predict = load_script('predict')
    base = ['--model', 'hornet_micro_7x7', '--checkpoint', str(ckpt), '--input_size', str(SIZE), str(images['png'])]
    assert predict.main(base) == 0
    out = capsys.readouterr().out
    assert out.count('class ') == 3 and 'golden' not in out  # topk 5 clamped to the 3 classes, shown as indices
    names = tmp_path / 'names.txt'
    names.write_text('cat\ndog\nbird\n')
    assert predict.main(base + ['--class_names', str(names), '--topk', '2']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and {lines[1].split()[-2], lines[2].split()[-2]} <= {'cat', 'dog', 'bird'}
    names.write_text('cat\ndog\n')
    assert predict.main(base + ['--class_names', str(names)]) != 0
    assert 'has 2 names but the model has 3 classes' in capsys.readouterr().err
    ckpt.unlink()


def test_predict_without_checkpoint_is_an_error(images, capsys):
    proc = run_script('predict.py', '--model', 'hornet_tiny_7x7', images['png'])
    assert_one_line_error(proc, '--checkpoint', '--allow_random')
    proc = run_in_process('predict.py', capsys, '--checkpoint', 'no/such/file.pth', images['png'])
    assert_one_line_error(proc, 'no/such/file.pth')


def test_predict_corrupt_image_names_the_file(micro_7x7_ckpt, images):
    proc = run_script('predict.py', '--model', 'hornet_micro_7x7', '--checkpoint', micro_7x7_ckpt, '--input_size', SIZE,
                      images['png'], images['bad'])
    assert_one_line_error(proc, str(images['bad']), '--skip_bad')


# ------------------------------------------------------------------------- predict/export on a main.py checkpoint

QS_SIZE = 32  # the resolution the quick-start-style checkpoint is trained at (not the models' 224 default)


@pytest.fixture(scope='module')
def quickstart_run(tmp_path_factory, trained_run):
    """The session's main.py run (tests/conftest.py: a quick-start data set of 4 shape classes, whose label order
    circle, cross, square, triangle differs from the generation order circle, square, triangle, cross; one epoch at
    32 px), a copy of its checkpoint and that copy's ``--eval`` result. The copy's head is replaced by a random, large
    one, so that predictions spread over all classes (one epoch does not learn the shapes) and a wrong class order
    cannot go unnoticed."""
    from tests.train_helpers import run_main
    root = tmp_path_factory.mktemp('quickstart')
    data = trained_run.data
    ckpt = root / 'checkpoint-0.pth'
    raw = torch.load(trained_run.checkpoint, map_location='cpu', weights_only=True)
    assert raw['args']['input_size'] == QS_SIZE and raw['args']['model'] == 'hornet_micro_7x7'
    g = torch.Generator().manual_seed(0)
    raw['model']['head.weight'] = torch.randn(raw['model']['head.weight'].shape, generator=g) * 3.0
    raw['model']['head.bias'] = torch.zeros_like(raw['model']['head.bias'])
    torch.save(raw, ckpt)
    proc = run_main(trained_run.argv(root / 'eval', eval='true', resume=str(ckpt)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((root / 'eval' / 'eval.json').read_text())
    return data, ckpt, result


def test_quickstart_class_names_are_written_in_label_order(trained_run):
    import datasets
    import quickstart
    data = trained_run.data
    marker = json.loads((data / quickstart.QUICKSTART_MARKER).read_text())
    assert marker['classes'] == datasets.find_classes(str(data / 'train')) == ['circle', 'cross', 'square', 'triangle']
    assert marker['classes'] == quickstart.quickstart_class_names(4)
    assert list(quickstart.QUICKSTART_CLASSES[:4]) != marker['classes']  # generation order is not the label order


@pytest.mark.slow
def test_predict_uses_the_checkpoint_resolution_and_class_names_and_matches_eval(tmp_path, quickstart_run):
    """No --model, --input_size or --class_names: predict takes all three from the checkpoint, and its accuracy on
    the validation folder equals ``main.py --eval``'s; each image's label equals an independent reference (the
    model applied to main.py's own validation data set, labels named through that data set's classes)."""
    import argparse

    import datasets
    data, ckpt, result = quickstart_run
    out = tmp_path / 'preds.json'
    proc = run_script('predict.py', '--checkpoint', ckpt, '--topk', '1', '--json', out, data / 'val')
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ''  # no mismatch warning
    report = json.loads(out.read_text())
    assert report['model'] == 'hornet_micro_7x7' and report['input_size'] == QS_SIZE
    assert report['class_names'] == 'the checkpoint (class_names)'  # main.py records the training classes
    preds = {Path(p['path']): p['topk'][0]['label'] for p in report['predictions']}
    assert len(preds) == result['num_samples'] == 40
    correct = sum(path.parent.name == label for path, label in preds.items())
    assert 100.0 * correct / len(preds) == pytest.approx(result['acc1'], abs=1e-9)

    # reference: main.py's validation data set and transform at the recorded resolution
    ns = argparse.Namespace(**torch.load(ckpt, map_location='cpu', weights_only=True)['args'])
    ns.data_backend = None  # the float reference transform (main.py's loader normalises uint8 on the device)
    val, _ = datasets.build_dataset(False, ns)
    model = timm.create_model('hornet_micro_7x7', num_classes=4)
    model.load_state_dict(torch.load(ckpt, map_location='cpu', weights_only=True)['model'])
    model.eval()
    with torch.no_grad():
        logits = model(torch.stack([val[i][0] for i in range(len(val))]))
    expected = {Path(path): val.classes[int(i)] for (path, _), i in zip(val.samples, logits.argmax(-1))}
    assert preds == expected
    assert len(set(expected.values())) >= 3  # predictions spread over the classes: the order is really tested

    # an explicit --input_size wins, with a warning naming the checkpoint's resolution
    proc = run_script('predict.py', '--checkpoint', ckpt, '--input_size', 64, '--json', out, data / 'val')
    assert proc.returncode == 0, proc.stderr
    assert '--input_size 64 differs from the 32 px the checkpoint was trained at' in proc.stderr
    assert json.loads(out.read_text())['input_size'] == 64


def test_predict_class_names_recorded_in_the_checkpoint_win_over_its_data_folder(tmp_path, quickstart_run):
    """A ``class_names`` list stored in the checkpoint is used as is; without it (older checkpoints) the training
    folder's; without both (moved to another machine), predictions are class indices; --class_names always wins."""
    data, ckpt, _ = quickstart_run
    raw = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert raw.pop('class_names') == ['circle', 'cross', 'square', 'triangle']
    older = tmp_path / 'older.pth'
    torch.save(raw, older)
    raw['args']['data_path'] = str(tmp_path / 'moved')
    moved = tmp_path / 'moved.pth'
    torch.save(raw, moved)
    named = tmp_path / 'named.pth'
    torch.save({**raw, 'class_names': ['a', 'b', 'c', 'd']}, named)
    image = sorted((data / 'val' / 'square').iterdir())[0]
    predict = load_script('predict')

    def labels(path: Path, *extra: str) -> set:
        out = tmp_path / 'p.json'
        assert predict.main(['--checkpoint', str(path), '--json', str(out), *extra, str(image)]) == 0
        report = json.loads(out.read_text())
        return report['class_names'], {t['label'] for t in report['predictions'][0]['topk']}

    assert labels(named) == ('the checkpoint (class_names)', {'a', 'b', 'c', 'd'})
    assert labels(older)[0] == f"the class folders of {data / 'train'}"
    assert labels(moved) == ('class indices', {f'class {i}' for i in range(4)})
    names = tmp_path / 'names.txt'
    names.write_text('w\nx\ny\nz\n')
    assert labels(named, '--class_names', str(names)) == (f'--class_names {names}', {'w', 'x', 'y', 'z'})


@pytest.mark.slow
def test_export_uses_the_checkpoint_model_and_resolution(tmp_path, quickstart_run, capsys):
    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (pip install onnxruntime)')
    onnx = pytest.importorskip('onnx', reason='onnx is not installed (pip install onnx)')
    _, ckpt, _ = quickstart_run
    out = tmp_path / 'qs.onnx'
    proc = run_script('export.py', '--checkpoint', ckpt, '--output', out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'exported hornet_micro_7x7 ({QS_SIZE}x{QS_SIZE}' in proc.stdout and 'OK' in proc.stdout
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, QS_SIZE, QS_SIZE]
    proc = run_script('export.py', '--checkpoint', ckpt, '--output', out, '--input_size', 64, '--no_verify')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '--input_size 64 differs from the 32 px' in proc.stderr and '(64x64' in proc.stdout
    proc = run_in_process('export.py', capsys, '--output', out)
    assert_one_line_error(proc, '--model')


def test_export_writes_the_preprocessing_and_class_names_into_the_onnx_metadata(tmp_path, quickstart_run):
    """Read back with onnx alone, the metadata is enough to preprocess an image exactly as ``main.py --eval`` does
    (checked against transforms.build_transform) and to name the outputs in label order."""
    onnx = pytest.importorskip('onnx', reason='onnx is not installed (pip install onnx)')
    from PIL import Image

    import transforms
    data, ckpt, _ = quickstart_run
    out = tmp_path / 'qs.onnx'
    proc = run_script('export.py', '--checkpoint', ckpt, '--output', out, '--input_size', 64, '--no_verify')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta['class_names']) == ['circle', 'cross', 'square', 'triangle']
    assert meta['class_names_source'] == 'the checkpoint (class_names)'  # main.py records them since issue 16
    assert meta['model'] == 'hornet_micro_7x7'
    assert f"metadata preprocessing: {meta['preprocessing']}" in proc.stdout
    assert "metadata class_names: 'circle', 'cross', 'square', 'triangle' (from the checkpoint" in proc.stdout
    assert json.loads(meta['input_size']) == [3, 64, 64] and meta['interpolation'] == 'bicubic'
    assert json.loads(meta['resize']) == {'shorter_side': 73} and float(meta['crop_pct']) == 0.875

    # the metadata applied by hand (PIL resize, crop, scale, normalise) == main.py's evaluation transform
    image = Image.open(sorted((data / 'val' / 'square').iterdir())[0]).convert('RGB').crop((0, 0, 48, 40))
    side = json.loads(meta['resize'])['shorter_side']
    w, h = image.size
    resized = image.resize((side, int(side * h / w)) if w < h else (int(side * w / h), side),
                           Image.Resampling[meta['interpolation'].upper()])
    ch, cw = json.loads(meta['center_crop'])
    top, left = round((resized.height - ch) / 2), round((resized.width - cw) / 2)
    x = torch.from_numpy(np.asarray(resized.crop((left, top, left + cw, top + ch)), dtype=np.float32) / 255)
    x = (x - torch.tensor(json.loads(meta['mean']))) / torch.tensor(json.loads(meta['std']))
    args = argparse.Namespace(**torch.load(ckpt, map_location='cpu', weights_only=True)['args'])
    args.input_size = 64
    reference = transforms.build_transform(False, args)(image)
    torch.testing.assert_close(x.permute(2, 0, 1), reference, rtol=0, atol=1e-5)

    proc = run_script('export.py', '--checkpoint', ckpt, '--output', out, '--no_verify')  # 32 px: no resize
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert 'resize' not in meta and json.loads(meta['center_crop']) == [QS_SIZE, QS_SIZE]


# ---------------------------------------------------------------------------------------------------- export

@pytest.mark.slow
@pytest.mark.parametrize('name,dynamic', [('hornet_micro_7x7', False), ('hornet_micro_gf', True)])
def test_export_onnx_matches_pytorch(tmp_path, request, name, dynamic):
    ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (pip install onnxruntime)')
    onnx = pytest.importorskip('onnx', reason='onnx is not installed (pip install onnx)')
    ckpt = request.getfixturevalue('micro_7x7_ckpt' if name.endswith('7x7') else 'micro_gf_ckpt')
    out = tmp_path / f'{name}.onnx'
    args = ['--model', name, '--checkpoint', ckpt, '--output', out, '--input_size', SIZE]
    proc = run_script('export.py', *args, *(['--dynamic_batch'] if dynamic else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'max abs diff' in proc.stdout and 'OK' in proc.stdout

    graph = onnx.load(str(out))
    assert not {n.op_type for n in graph.graph.node} & {'DFT', 'STFT'}  # the GF went through matmuls
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    assert bool(dims[0].dim_param) == dynamic

    # independent check: reference = PyTorch fp32 eager, the model saved in the checkpoint, FFT path for the GF
    model = _MODELS[ckpt]
    assert {m.gf_impl for m in model.modules() if isinstance(m, models.GlobalLocalFilter)} <= {'fft'}
    x = torch.randn(3 if dynamic else 1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        ref = model(x).numpy()
    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    print(f'{name}: onnxruntime vs PyTorch max abs diff {diff:.3e} (max |logit| {np.abs(ref).max():.2f})')
    del session
    out.unlink()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_export_mismatched_checkpoint_is_one_line(tmp_path, capsys):
    with torch.device('meta'):  # a hornet_tiny_gf checkpoint (only its keys and shapes matter)
        tiny_gf = timm.create_model('hornet_tiny_gf')
    ckpt = tmp_path / 'hornet_tiny_gf.pth'
    torch.save({'model': tiny_gf.to_empty(device='cpu').state_dict()}, ckpt)
    export = load_script('export')
    rc = export.main(['--model', 'hornet_tiny_7x7', '--checkpoint', str(ckpt),
                      '--output', str(tmp_path / 'x.onnx'), '--input_size', str(SIZE)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and 'looks like hornet_tiny_gf' in err[0]
    assert not (tmp_path / 'x.onnx').exists()


# ---------------------------------------------------------------------------------------------------- plot_log

def write_log(path: Path, records: List[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
    return path


def test_plot_log_two_runs(tmp_path):
    full = [dict(epoch=e, train_lr=1e-3 * (e + 1), train_loss=6.9 - 0.3 * e, test_loss=6.5 - 0.3 * e,
                 test_acc1=5.0 * e, test_acc5=8.0 * e, test_acc1_ema=4.5 * e, n_parameters=22_000_000)
            for e in range(12)]
    partial = [dict(epoch=e, train_lr=2e-3, train_loss=7.0 - 0.2 * e) for e in range(8)]  # no test keys
    a = write_log(tmp_path / 'run_a' / 'log.txt', full)
    b = write_log(tmp_path / 'run_b' / 'log.txt', partial)
    (tmp_path / 'plots').mkdir()
    out = tmp_path / 'plots' / 'curves.png'
    proc = run_script('plot_log.py', a, b, '--output', out)
    assert proc.returncode == 0, proc.stderr
    assert 'wrote' in proc.stdout and '8 curves from 2 logs' in proc.stdout
    data = out.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 20_000

    plot_log = load_script('plot_log')
    assert plot_log.labels_for([str(a), str(b)]) == ['run_a', 'run_b']


def test_plot_log_bad_logs_are_one_line(tmp_path):
    empty = tmp_path / 'empty' / 'log.txt'
    empty.parent.mkdir()
    empty.write_text('')
    out = tmp_path / 'c.png'
    assert_one_line_error(run_script('plot_log.py', empty, '--output', out), str(empty), 'empty')
    bad = write_log(tmp_path / 'bad' / 'log.txt', [dict(epoch=0, train_loss=1.0)])
    with bad.open('a') as f:
        f.write('Epoch: [1] this is stdout, not log.txt\n')
    assert_one_line_error(run_script('plot_log.py', bad, '--output', out), f'{bad}:2', 'JSON')
    assert not out.exists()
