"""scripts/benchmark.py end to end on CPU, at tiny settings (each test runs the real script once as a subprocess;
a second run with other flags calls the script's ``main`` in this process).
The script imports the checkout as a package (``pip install -e .``); here PYTHONPATH gives it the same."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'benchmark.py')
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def _main(*args) -> int:
    """The script's main() in this process (no interpreter start-up)."""
    from scripts import benchmark
    return benchmark.main([str(a) for a in args])


def _positive_stats(s):
    assert s['median'] > 0 and s['min'] > 0 and s['max'] >= s['median'] >= s['min']
    assert len(s['raw']) >= 1 and all(v > 0 for v in s['raw'])


@pytest.mark.slow
def test_model_mode_cpu_json(tmp_path):
    out = tmp_path / 'bench.json'
    proc = _run('--models', 'hornet_micro_7x7', '--device', 'cpu', '--batch_size', '2', '--input_size', '32',
                '--repeats', '1', '--warmup', '1', '--json', str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    meta = res['meta']
    for key in ('device', 'device_name', 'torch', 'cuda', 'torch_threads', 'timm'):
        assert key in meta
    assert meta['device'] == 'cpu' and meta['torch'] == __import__('torch').__version__
    st = res['settings']
    assert st['batch_size'] == 2 and st['input_size'] == 32 and st['dtype'] == ['fp32'] and st['repeats'] == 1
    (row,) = res['results']
    assert row['model'] == 'hornet_micro_7x7' and row['error'] is None and row['dtype'] == 'fp32'
    assert row['channels_last'] is False and row['compile'] is False
    import timm
    import models  # noqa: F401
    with torch.device('meta'):
        n = sum(p.numel() for p in timm.create_model('hornet_micro_7x7').parameters())
    assert row['params_m'] == pytest.approx(n / 1e6)
    _positive_stats(row['train_img_s'])
    _positive_stats(row['infer_img_s'])
    assert len(row['train_img_s']['raw']) == 1
    for what in ('train', 'infer'):
        mem = row['memory'][what]
        assert mem['peak_mb'] > 0 and mem['state_mb'] > 0 and mem['method']
    assert row['memory']['train']['state_mb'] > row['memory']['infer']['state_mb']  # AdamW moments
    assert 'hornet_micro_7x7' in proc.stdout and 'img/s' in proc.stdout


@pytest.mark.slow
def test_data_mode_generated_folder(tmp_path):
    out = tmp_path / 'data.json'
    proc = _run('--mode', 'data', '--num_images', '8', '--gen_size', '64', '48', '--data_batch_size', '4',
                '--data_input_size', '32', '--workers', '0', '1', '--repeats', '1', '--json', str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    rows = [(r['pipeline'], r['workers']) for r in res['results']]
    assert rows[:4] == [('reference', 0), ('reference', 1), ('uint8', 0), ('uint8', 1)]  # dali rows if installed
    assert res['settings']['num_images'] == 8 and 'generated' in res['settings']['source']
    for r in res['results']:
        _positive_stats(r['img_s'])
        _positive_stats(r['cpu_ms_per_img'])  # worker CPU time reaped from the exited workers
        assert r['img_s_per_worker'] > 0
    assert 'CPU ms/img' in proc.stdout and 'vs reference' in proc.stdout


def test_bad_input_is_one_line_error(tmp_path, capsys):
    proc = _run('--models', 'hornet_tiny_7xx', '--device', 'cpu')
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith('error: unknown model') and 'hornet_tiny_7x7' in err[-1]
    assert 'Traceback' not in proc.stderr
    assert _main('--mode', 'data', '--data_path', tmp_path / 'missing') != 0
    err = capsys.readouterr().err
    assert 'Traceback' not in err and 'not a directory' in err


@pytest.mark.slow
def test_memory_only_run_with_and_without_grad_checkpointing(tmp_path):
    out = tmp_path / 'mem.json'
    proc = _run('--models', 'hornet_micro_7x7', '--device', 'cpu', '--batch_size', '2', '--input_size', '64',
                '--repeats', '0', '--warmup', '1', '--grad_checkpointing', 'off', 'on', 'selective', '--json', str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())['results']
    assert [r['grad_checkpointing'] for r in rows] == ['off', 'on', 'selective']
    assert 'ckpt' not in rows[0]['label'] and 'ckpt' in rows[1]['label'] and 'sel-ckpt' in rows[2]['label']
    for r in rows:
        assert r['error'] is None and r['train_img_s']['raw'] == []  # nothing timed
        assert r['memory']['train']['peak_mb'] > r['memory']['train']['state_mb'] > 0


@pytest.mark.slow
def test_memory_mode_accounts_every_byte_of_a_fake_training_step(tmp_path):
    """Parameters and AdamW state are exact; activations grow with the batch; checkpointing shrinks them."""
    out = tmp_path / 'mem.json'
    proc = _run('--mode', 'memory', '--models', 'hornet_micro_7x7', '--grad_checkpointing', 'off', 'on', 'selective',
                '--batch_size', '4', '--input_size', '64', '--json', str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())['results']
    import timm
    import models  # noqa: F401
    n = sum(p.numel() for p in timm.create_model('hornet_micro_7x7').parameters())
    gib = {r['grad_checkpointing']: r['gib'] for r in rows}
    for g in gib.values():
        assert abs(g['param'] * 2 ** 30 - 4 * n) < 1e-6 * 2 ** 30  # fp32 parameters
        assert abs(g['opt'] * 2 ** 30 - 8 * n) <= 64 * 1024  # two AdamW moments (+ step counters)
    assert gib['on']['act'] < gib['selective']['act'] < gib['off']['act']
    assert _main('--mode', 'memory', '--models', 'hornet_micro_7x7', '--batch_size', '8', '--input_size', '64',
                 '--json', out) == 0
    act8 = json.loads(out.read_text())['results'][0]['gib']['act']
    assert 1.9 < act8 / gib['off']['act'] < 2.1  # activations scale with the batch


@pytest.mark.slow
def test_profile_gives_top_ops_and_launches_per_step_in_json_and_markdown(tmp_path):
    out, md = tmp_path / 'p.json', tmp_path / 'p.md'
    proc = _run('--models', 'hornet_micro_7x7', '--device', 'cpu', '--batch_size', '2', '--input_size', '32',
                '--dtype', 'bf16', '--channels_last', 'on', '--repeats', '0', '--warmup', '1', '--what', 'train',
                '--profile', '6', '--json', str(out), '--markdown', str(md))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())['results']
    p = row['profile']
    assert p['device'] == 'cpu' and 'error' not in p
    # launches: leaf aten ops that do work (views/allocations excluded), fewer than all aten ops recorded
    assert 100 < p['launches'] < p['aten_ops'] and 'leaf aten ops' in p['launch_count_method']
    assert len(p['ops']) == 6 and p['wall_ms'] > 0
    assert all(0 < o['share'] <= 1 and o['calls'] >= 1 and o['self_cpu_ms'] >= 0 for o in p['ops'])
    assert [o['self_cpu_ms'] for o in p['ops']] == sorted((o['self_cpu_ms'] for o in p['ops']), reverse=True)
    text = md.read_text()
    assert '**Profile of one training step, hornet_micro_7x7 bf16 cl**' in text
    assert '| op | calls | self CPU ms | share of CPU time |' in text
    assert text == proc.stdout[proc.stdout.index('| model'):]


def test_gpu_profile_tables_from_profiler_events():
    """The CUDA branch on CPU: real FunctionEvent objects as torch.profiler builds them for kernels."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    from scripts.bench import profiling

    def ev(i, name, start, end, dev=DeviceType.CPU):
        return FunctionEvent(id=i, name=name, thread=0, start_us=start, end_us=end, use_device='cuda',
                             device_type=dev)

    mm, add, view = ev(1, 'aten::mm', 0, 10), ev(2, 'aten::add', 10, 15), ev(3, 'aten::view', 15, 16)
    k1, k2, k3 = (ev(4, 'sm90_xmma_gemm_bf16', 2, 62, DeviceType.CUDA),
                  ev(5, 'elementwise_kernel', 62, 82, DeviceType.CUDA),
                  ev(6, 'elementwise_kernel', 90, 110, DeviceType.CUDA))
    cp = ev(7, 'Memcpy HtoD (Pageable -> Device)', 120, 121, DeviceType.CUDA)
    p = profiling.summarize_profile([mm, add, view, k1, k2, k3, cp], cuda=True, wall_ms=0.2, top=5)
    assert p['launches'] == 3 and p['memcpy_memset'] == 1 and p['aten_ops'] == 3
    assert [k['kernel'] for k in p['kernels'][:2]] == ['sm90_xmma_gemm_bf16', 'elementwise_kernel']
    gemm, elt = p['kernels'][:2]
    assert gemm['ms'] == pytest.approx(0.060) and elt['calls'] == 2 and elt['ms'] == pytest.approx(0.040)
    assert p['kernel_ms'] == pytest.approx(0.101) and p['busy'] == pytest.approx(0.101 / 0.2)
    md = profiling.format_profile('x', p)
    assert '| kernel | calls | CUDA ms | share | avg us |' in md and '`sm90_xmma_gemm_bf16`' in md
    assert '3 launches' in md and 'self CUDA ms' in md
