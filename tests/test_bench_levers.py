"""The opt-in levers as benchmark.py flags (--fused_gating, --triton_dwconv): which cases are built, that the switch
reaches the blocks, the one-line errors, the rows they give (model and memory mode), and gpu_report.py's lever table.

The script imports the checkout as a package (``pip install -e .``); here PYTHONPATH gives it the same."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from scripts.bench import cli, gpu_report
from scripts.bench.model import build_cases
from models.hornet import GnConv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'benchmark.py')
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
ENV.pop('TRITON_INTERPRET', None)
HAS_TRITON = importlib.util.find_spec('triton') is not None


def _run(*args, env=ENV, timeout=180):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def _gnconv_flags(model, lever):
    return {getattr(m, lever) for m in model.modules() if isinstance(m, GnConv)}


def test_each_lever_value_is_a_case_and_reaches_every_block_and_models_without_the_switch_get_one_case():
    triton = ['off', 'on'] if HAS_TRITON else ['off']  # switching it on needs triton importable (not a GPU)
    args = cli.parse_args(['--models', 'hornet_micro_7x7', 'convnext_atto', '--fused_gating', 'off', 'on',
                           '--triton_dwconv', *triton, '--input_size', '32', '--batch_size', '1'])
    cases = build_cases(args, torch.device('cpu'), None)
    got = [(c.name, c.levers['fused_gating'], c.levers['triton_dwconv']) for c in cases]
    hornet = [('hornet_micro_7x7', fg, td) for fg in (False, True) for td in (False, True)[:len(triton)]]
    assert got == hornet + [('convnext_atto', None, None)]  # no switch: built once, recorded as not applying
    for c in cases[:-1]:
        assert _gnconv_flags(c.model, 'fused_gating') == {c.levers['fused_gating']}
        assert _gnconv_flags(c.model, 'triton_dwconv') == {c.levers['triton_dwconv']}
    assert cases[0].label == 'hornet_micro_7x7 fp32 nchw' and cases[-2].label.endswith(
        'fused-gating triton-dw' if HAS_TRITON else 'fused-gating')
    assert cases[-1].key()['fused_gating'] is None and cases[-1].label == 'convnext_atto fp32 nchw'


@pytest.mark.slow
def test_triton_lever_on_the_cpu_without_the_interpreter_is_a_one_line_error():
    proc = _run('--models', 'hornet_micro_7x7', '--device', 'cpu', '--triton_dwconv', 'off', 'on')
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith('error: --triton_dwconv on') and 'TRITON_INTERPRET=1' in line
    proc = _run('--mode', 'memory', '--models', 'hornet_micro_7x7', '--triton_dwconv', 'on')
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr and '--mode model only' in proc.stderr
    proc = _run('--fused_gating', 'maybe')
    assert proc.returncode == 2 and "expected on or off, got 'maybe'" in proc.stderr


def test_fused_gating_rows_are_timed_side_by_side_with_the_default_path(tmp_path):
    out, md = tmp_path / 'l.json', tmp_path / 'l.md'
    proc = _run('--models', 'hornet_micro_7x7', 'convnext_atto', '--device', 'cpu', '--batch_size', '1',
                '--input_size', '32', '--repeats', '2', '--warmup', '0', '--what', 'train', '--fused_gating', 'off',
                'on', '--json', str(out), '--markdown', str(md))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())['results']
    assert [(r['model'], r['fused_gating'], r['triton_dwconv']) for r in rows] == [
        ('hornet_micro_7x7', False, False), ('hornet_micro_7x7', True, False), ('convnext_atto', None, None)]
    fused = rows[1]
    assert fused['error'] is None and fused['baseline'] == 'hornet_micro_7x7 fp32 nchw'
    assert len(fused['train_ratio_vs_baseline']['raw']) == 2  # paired with the default path, repeat by repeat
    text = md.read_text()
    assert '| levers |' in text and '| hornet_micro_7x7 | fp32 | nchw | off | - | off | fused-gating |' in text


@pytest.mark.slow
def test_memory_mode_counts_less_activation_memory_with_fused_gating(tmp_path):
    out = tmp_path / 'm.json'
    proc = _run('--mode', 'memory', '--models', 'hornet_micro_7x7', 'convnext_atto', '--fused_gating', 'off', 'on',
                '--batch_size', '2', '--input_size', '64', '--json', str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())['results']
    assert [(r['model'], r['fused_gating']) for r in rows] == [
        ('hornet_micro_7x7', False), ('hornet_micro_7x7', True), ('convnext_atto', None)]
    off, on = rows[0]['gib'], rows[1]['gib']
    assert on['param'] == off['param'] and on['opt'] == off['opt']
    assert on['act'] < off['act']  # the gating products are recomputed in backward, not kept
    assert '| fused gating |' in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason='triton is not installed')
def test_triton_lever_runs_the_kernel_under_the_interpreter_on_the_cpu(tmp_path):
    """Inference only: the interpreted kernel takes seconds per forward (tests/test_fast_ops.py checks backward)."""
    out = tmp_path / 't.json'
    proc = _run('--models', 'hornet_micro_7x7', '--device', 'cpu', '--batch_size', '1', '--input_size', '32',
                '--repeats', '1', '--warmup', '0', '--what', 'infer', '--triton_dwconv', 'off', 'on',
                '--json', str(out), env=dict(ENV, TRITON_INTERPRET='1'), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'triton depthwise conv unavailable' not in proc.stderr  # the kernel ran, not torch's fallback
    rows = json.loads(out.read_text())['results']
    assert [r['triton_dwconv'] for r in rows] == [False, True] and rows[1]['label'].endswith('triton-dw')
    assert rows[1]['infer_img_s']['median'] > 0


def _row(model, train, infer=None, **kw):
    """A result row shaped like ``benchmark.py --json`` output."""
    r = dict(model=model, dtype='bf16', channels_last=True, compile=False, compile_mode=None, gf_impl=None,
             grad_checkpointing='off', fused_gating=False, triton_dwconv=False, error=None,
             memory={'train': {'peak_mb': kw.pop('peak', 1000.0)}}, profile=kw.pop('profile', {}),
             train_img_s=dict(median=sorted(train)[len(train) // 2], min=min(train), max=max(train), raw=train),
             infer_img_s=dict(median=None, raw=[]) if infer is None else
             dict(median=sorted(infer)[len(infer) // 2], min=min(infer), max=max(infer), raw=infer))
    r.update(kw)
    return r


def test_report_gives_each_lever_its_paired_ratio_to_the_default_path(tmp_path):
    default = _row('hornet_tiny_7x7', [100, 200, 100], [400, 400, 400], profile=dict(launches=3000))
    levers = [default,
              _row('hornet_tiny_7x7', [110, 180, 120], [440, 400, 360], fused_gating=True, peak=800.0,
                   profile=dict(launches=2500)),
              _row('hornet_tiny_7x7', [150, 300, 150], triton_dwconv=True),
              _row('hornet_tiny_7x7', [50, 50, 50], fused_gating=True, triton_dwconv=True, error='RuntimeError: x')]
    (tmp_path / 'levers.json').write_text(json.dumps(dict(meta={}, settings={}, results=levers)))
    eager = [_row('hornet_tiny_gf', [100, 100, 100], gf_impl='fft'),
             _row('hornet_tiny_gf', [90, 130, 120], gf_impl='kron'), _row('convnext_tiny', [100, 100, 100])]
    (tmp_path / 'eager.json').write_text(json.dumps(dict(meta={}, settings={}, results=eager)))
    assert gpu_report.main([str(tmp_path)]) == 0
    got = {(x['model'], x['lever']): x for x in json.loads((tmp_path / 'summary.json').read_text())['levers']}
    assert set(got) == {('hornet_tiny_gf', 'gf_impl kron'), ('hornet_tiny_7x7', 'fused gating'),
                        ('hornet_tiny_7x7', 'Triton dwconv'), ('hornet_tiny_7x7', 'fused gating + Triton dwconv')}
    fg = got[('hornet_tiny_7x7', 'fused gating')]
    assert fg['train'] == pytest.approx([1.1, 0.9, 1.2])  # median, min, max of 110/100, 180/200, 120/100
    assert fg['infer'] == pytest.approx([1.0, 0.9, 1.1]) and fg['peak_ratio'] == pytest.approx(0.8)
    assert fg['launches'] == [2500, 3000]
    assert got[('hornet_tiny_7x7', 'Triton dwconv')]['train'] == pytest.approx([1.5, 1.5, 1.5])
    assert got[('hornet_tiny_gf', 'gf_impl kron')]['train'] == pytest.approx([1.2, 0.9, 1.3])
    assert got[('hornet_tiny_7x7', 'fused gating + Triton dwconv')]['error'] == 'RuntimeError: x'
    md = (tmp_path / 'summary.md').read_text()
    assert '| fused gating | hornet_tiny_7x7 |' in md and '1.10x [0.90-1.20]' in md and '2500 / 3000' in md


def test_dispatcher_without_the_checkout_importable_says_how_to_install_it():
    """``python -S`` loads no site-packages, so no editable install makes ``scripts`` importable."""
    env = {k: v for k, v in ENV.items() if k != 'PYTHONPATH'}
    proc = subprocess.run([sys.executable, '-S', SCRIPT, '--help'], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: cannot import 'scripts': install this checkout first (pip install -e . in the repository root), "
        "or run python -m scripts.benchmark from the root"]
