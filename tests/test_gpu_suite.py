"""scripts/bench/gpu_suite.sh's command line and gpu_report.py's tables and target checks (no GPU, no model runs).

The suite itself is exercised end to end by ``bash scripts/bench/gpu_suite.sh OUT --smoke`` (minutes on a CPU, too
slow for the test suite); here: its argument handling, and the report built from JSON files shaped like
``benchmark.py --json`` and ``roofline.py --json`` output.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from scripts.bench import gpu_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, 'scripts', 'bench', 'gpu_suite.sh')


def test_suite_help_and_argument_errors(tmp_path):
    proc = subprocess.run(['bash', SUITE, '--help'], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and '--smoke' in proc.stdout and 'ORIG_HORNET' in proc.stdout
    proc = subprocess.run(['bash', SUITE], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and 'usage' in proc.stderr
    proc = subprocess.run(['bash', SUITE, str(tmp_path), '--bogus'], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and 'unknown option --bogus' in proc.stderr
    proc = subprocess.run(['bash', '-n', SUITE], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def _row(model, train, infer=None, **kw):
    r = dict(model=model, dtype='bf16', channels_last=True, compile=False, compile_mode=None, gf_impl=None,
             grad_checkpointing='off', error=None, memory={'train': {'peak_mb': kw.pop('peak', 1000.0)}},
             train_img_s=dict(median=sorted(train)[len(train) // 2], min=min(train), max=max(train), raw=train),
             infer_img_s=dict(median=None, raw=[]) if infer is None else
             dict(median=sorted(infer)[len(infer) // 2], min=min(infer), max=max(infer), raw=infer))
    r.update(kw)
    return r


def _write(d, name, rows, **settings):
    meta = dict(device_name='NVIDIA H200', torch='2.11.0', cuda='13.0', cudnn=91900, timm='1.0.29', time='t')
    (d / name).write_text(json.dumps(dict(meta=meta, settings=settings, results=rows)))


def test_report_pairs_repeats_and_checks_every_target(tmp_path):
    _write(tmp_path, 'eager.json', [
        _row('hornet_tiny_7x7', [100, 200, 300], [400, 400, 400],
             profile=dict(launches=2900, busy=0.5)),
        _row('hornet_tiny_gf', [95, 150, 330], [300, 300, 300], gf_impl='fft'),
        _row('convnext_tiny', [100, 100, 300], [800, 800, 800])])
    _write(tmp_path, 'compiled.json', [_row('hornet_tiny_7x7', [120, 120], compile=True, compile_mode='default'),
                                       _row('convnext_tiny', [100, 100], compile=True, compile_mode='default')],
           compile_mode='default', what=['train'])
    _write(tmp_path, 'mem_hornet.json', [
        _row('hornet_large_7x7', [100, 100], peak=10000.0),
        _row('hornet_large_7x7', [70, 70], peak=4000.0, grad_checkpointing='on'),
        _row('hornet_large_7x7', [90, 80], peak=7000.0, grad_checkpointing='selective')])
    _write(tmp_path, 'mem_convnext.json', [_row('convnext_large', [200, 200], peak=8000.0)])
    roof = dict(settings=dict(gpu='h200', batch_size=128), gpu=dict(bw=4.3e12, tensor=790e12, fp32=67e12),
                models=[dict(model='hornet_tiny_7x7', steps=dict(train=dict(totals=dict(bound_s=0.032, ops=2800))))])
    (tmp_path / 'roofline.json').write_text(json.dumps(roof))
    (tmp_path / 'notes.txt').write_text('original code rows skipped: no original hornet.py\n')
    assert gpu_report.main([str(tmp_path)]) == 0
    summary = json.loads((tmp_path / 'summary.json').read_text())
    t = {x['target']: x for x in summary['targets']}
    # paired per repeat: 100/100, 200/100, 300/300 -> median 1.0 (the medians' ratio would be 200/100 = 2)
    assert t['hornet_tiny_7x7 / convnext_tiny, training, eager']['value'] == pytest.approx(1.0)
    assert t['hornet_tiny_7x7 / convnext_tiny, training, eager']['status'] == '**met**'
    assert t['hornet_tiny_7x7 / convnext_tiny, inference, eager']['value'] == pytest.approx(0.5)
    assert t['hornet_tiny_7x7 / convnext_tiny, inference, eager']['status'] == 'not met'
    assert t['hornet_tiny_7x7 / convnext_tiny, training, compiled']['value'] == pytest.approx(1.2)
    assert t['hornet_tiny_gf (gf_impl fft) / hornet_tiny_7x7, training, eager']['value'] == pytest.approx(0.95)
    assert t['hornet_large_7x7 selective checkpointing: speed vs none']['value'] == pytest.approx(0.85)
    assert t['hornet_large_7x7 selective checkpointing: speed vs none']['status'] == '**met**'
    assert t['hornet_large_7x7 selective checkpointing: peak MB vs convnext_large none']['value'] == \
        pytest.approx(7000 / 8000)
    (rl,) = summary['roofline']
    assert rl['measured_ms'] == pytest.approx(1e3 * 128 / 200) and rl['ratio'] == pytest.approx(0.128 / 0.2 / 0.032)
    assert rl['measured_launches'] == 2900
    md = (tmp_path / 'summary.md').read_text()
    assert md.startswith('# GPU suite: NVIDIA H200') and '| hornet_tiny_gf, gf_impl fft | eager |' in md
    assert '2900' in md and '50%' in md and 'original code rows skipped' in md


def test_report_of_an_empty_folder_says_what_is_missing(tmp_path):
    assert gpu_report.main([str(tmp_path)]) == 0
    md = (tmp_path / 'summary.md').read_text()
    assert 'no eager.json' in md and 'no mem_hornet.json' in md and 'no roofline.json' in md
    assert 'not measured' in md
    assert gpu_report.main([str(tmp_path / 'missing')]) == 2


@pytest.mark.parametrize('original', [False, True])
def test_dry_run_fits_the_eight_minute_budget_in_the_worst_case(tmp_path, original):
    """DRY_RUN=1: every step is assumed to take its whole time limit; the run must still end inside 8 minutes."""
    import re
    args = ['bash', SUITE, str(tmp_path)] + (['--original', '/nonexistent/hornet.py'] if original else [])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, env=dict(os.environ, DRY_RUN='1'))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    total = int(re.search(r'worst case total: (\d+)s', proc.stdout).group(1))
    assert total + 15 <= 480  # + the report
    steps = re.findall(r'\[dry run\] (\w+): up to (\d+)s \(SIGTERM', proc.stdout)
    names = [n for n, _ in steps]
    assert names[:4] == ['eager', 'levers', 'mem_hornet', 'mem_convnext'] and 'compiled' in names
    assert ('orig_own' in names) == original
    assert all(int(s) >= 30 for _, s in steps)
    eager = next(line for line in proc.stdout.splitlines() if line.startswith('[dry run] eager'))
    for flag in ('--dtype bf16', '--channels_last on', '--batch_size 128', '--profile', '--baseline convnext_tiny',
                 'hornet_tiny_7x7 hornet_tiny_gf convnext_tiny', '--gf_impl'):
        assert flag in eager
    assert ('orig:hornet_tiny_gf' in eager) == original
    assert '--gf_impl fft matmul kron' in eager  # the kron lever, paired with fft in the same process
    levers = next(line for line in proc.stdout.splitlines() if line.startswith('[dry run] levers'))
    for flag in ('--models hornet_tiny_7x7 --baseline hornet_tiny_7x7', '--fused_gating off on',
                 '--triton_dwconv off on', '--dtype bf16', '--channels_last on', '--batch_size 128', '--profile'):
        assert flag in levers


@pytest.mark.slow
def test_environment_check_step_passes_here(tmp_path):
    """--check runs the suite's step 0 for real: imports, the model names, the gf_impl choices, the lever flags and
    whether the Triton kernel can run (in smoke mode on the CPU: under TRITON_INTERPRET=1)."""
    proc = subprocess.run(['bash', SUITE, str(tmp_path), '--check', '--smoke'], capture_output=True, text=True,
                          timeout=180, env=dict(os.environ, PY=sys.executable))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'environment check passed' in proc.stdout and 'gf_impl choices: fft matmul kron' in proc.stdout
    has_triton = importlib.util.find_spec('triton') is not None
    assert ('triton: ok' in proc.stdout) == has_triton, proc.stdout[-3000:]
    assert (tmp_path / 'suite.json').exists()
    proc = subprocess.run(['bash', SUITE, str(tmp_path), '--check'], capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, PY=sys.executable))  # the GPU model names are known here too
    assert proc.returncode == 0 and 'environment check passed' in proc.stdout, proc.stdout[-3000:]
