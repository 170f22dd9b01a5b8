"""scripts/bench/roofline.py (and roofline_trace.py): CUDA autocast emulated on CPU, per-op bytes and FLOPs, the
bound, attribution, the CLI."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from scripts.bench import roofline as R
from scripts.bench import roofline_trace as RT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'bench', 'roofline.py')
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))


def test_cuda_autocast_policy_is_emulated_on_cpu_and_removed_afterwards():
    x = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(16, 8, requires_grad=True)
    with RT.CudaAutocastOnCPU(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert F.layer_norm(x, (8,)).dtype == torch.float32          # CUDA: fp32 list (CPU: input dtype)
        assert x.sum().dtype == torch.float32                          # CUDA: fp32_set_opt_dtype
        assert torch.softmax(x, -1).dtype == torch.float32
        assert x.exp().dtype == torch.float32
        assert F.gelu(x).dtype == torch.bfloat16                       # in no list: runs in its input dtype
        y = F.linear(x.float(), w)
        assert y.dtype == torch.bfloat16                               # lower precision, like on CPU
        conv = F.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3))
        assert conv.dtype == torch.bfloat16
        assert torch.addcmul(x, x, torch.randn(4, 8)).dtype == torch.float32   # promote
        loss = (F.layer_norm(x, (8,)).sum() + y.float().sum())
    loss.backward()  # the casts are differentiable, as with real autocast
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert F.layer_norm(x, (8,)).dtype == torch.bfloat16           # the CPU policy is back


def test_bytes_and_flops_of_a_linear_layer_are_exact():
    lin = nn.Linear(64, 32)
    x = torch.randn(8, 64, requires_grad=True)
    rec = RT.OpRecorder()
    with rec:
        lin(x).sum().backward()
    by_op = {}
    for r in rec.records:
        by_op.setdefault((r['op'], r['phase']), []).append(r)
    (addmm,) = by_op[('addmm', 'fwd')]
    # reads: bias (32, broadcast rows count once), x (8x64), weight (32x64); writes: out (8x32); fp32
    assert addmm['bytes'] == 4 * (32 + 8 * 64 + 32 * 64 + 8 * 32)
    assert addmm['flops'] == 2 * 8 * 64 * 32
    assert addmm['kind'] == 'matmul' and addmm['unit'] == 'tensor' and addmm['compute_dtype'] == 'float32'
    mms = [r for r in rec.records if r['op'] == 'mm']
    assert sorted(r['flops'] for r in mms) == [2 * 8 * 64 * 32] * 2  # grad input and grad weight
    views = {'t', 'view', 'expand', 'transpose', 'permute'}
    assert not views & {r['op'] for r in rec.records}


def test_depthwise_conv_flops_count_groups_in_every_gradient():
    x = torch.randn(2, 6, 10, 10, requires_grad=True)
    w = torch.randn(6, 1, 7, 7, requires_grad=True)
    rec = RT.OpRecorder()
    with rec:
        F.conv2d(x, w, padding=3, groups=6).sum().backward()
    fwd = next(r for r in rec.records if r['op'] == 'convolution')
    bwd = next(r for r in rec.records if r['op'] == 'convolution_backward')
    one = 2 * 2 * 10 * 10 * 6 * 1 * 49
    assert fwd['flops'] == one and fwd['kind'] == 'depthwise conv'
    assert bwd['flops'] == 2 * one and bwd['kind'] == 'depthwise conv'  # input and weight gradients
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        F.conv2d(x, w, padding=3, groups=6)
    assert fc.get_total_flops() == one


def test_strided_channel_slice_into_a_convolution_records_the_copy_cudnn_makes():
    x = torch.randn(2, 8, 8, 12)  # NHWC storage; a channel slice of it is dense in neither layout
    sl = x[..., 4:].permute(0, 3, 1, 2)
    w = torch.randn(8, 1, 3, 3)
    rec = RT.OpRecorder()
    with rec:
        F.conv2d(sl, w, padding=1, groups=8)
    ops = [r['op'] for r in rec.records]
    assert ops == ['contiguous (in convolution)', 'convolution']
    assert rec.records[0]['bytes'] == 2 * 4 * sl.numel()


def test_op_time_is_the_roofline_max():
    gpu = dict(bw=1e12, tensor=100e12, tf32=50e12, fp32=10e12)
    mem = dict(unit='cuda_core', kind='elementwise', compute_dtype='float32', bytes=4e9, flops=1e9)
    assert R.op_time(mem, gpu) == (pytest.approx(4e-3), 'memory')
    gemm = dict(unit='tensor', kind='matmul', compute_dtype='bfloat16', bytes=1e6, flops=1e12)
    assert R.op_time(gemm, gpu) == (pytest.approx(1e-2), 'compute')
    assert R.op_time(dict(gemm, compute_dtype='float32'), gpu)[0] == pytest.approx(2e-2)  # TF32 peak
    assert R.op_time(dict(gemm, compute_dtype='float32'), gpu, tf32=False)[0] == pytest.approx(1e-1)
    dw = dict(gemm, kind='depthwise conv')
    assert R.op_time(dw, gpu)[0] == pytest.approx(1e-2)
    assert R.op_time(dw, gpu, depthwise_on_cuda_cores=True)[0] == pytest.approx(1e-1)


def test_module_patterns_and_blocks():
    assert R.module_pattern('stages.2.5.gnconv.pws.1') == 'stages.2.*.gnconv.pws.*'
    assert R.block_of('stages.2.5.gnconv.pws.1') == 'stages.2.5'
    assert R.block_of('stages.2.blocks.5.mlp.fc1') == 'stages.2.blocks.5'
    assert R.module_pattern('') == '(top level)' and R.block_of('head') == 'head'


def test_training_step_of_a_model_is_traced_on_fake_tensors_with_modules_and_cuda_dtypes():
    tr = RT.trace_step('hornet_micro_7x7', batch=4, input_size=64, dtype='bf16', channels_last=True)
    recs = tr['records']
    assert {r['phase'] for r in recs} == {'fwd', 'bwd', 'opt'}
    assert [r['op'] for r in recs if r['phase'] == 'opt'].count('_fused_adamw_') == 1
    norms = [r for r in recs if r['op'] == 'native_layer_norm']
    assert norms and all(r['compute_dtype'] == 'float32' for r in norms)        # CUDA autocast: fp32
    gemms = [r for r in recs if r['kind'] == 'matmul']
    assert gemms and all(r['compute_dtype'] == 'bfloat16' for r in gemms)
    # every forward/backward op of the blocks is attributed to its block
    blocks = {R.block_of(r['module']) for r in recs if r['phase'] != 'opt'}
    assert {'stages.0.0', 'stages.2.0', 'stages.3.0'} <= blocks
    outside = {r['op'] for r in recs if r['phase'] == 'fwd' and not r['module'] and not r['site']}
    assert outside <= {'_to_copy', '_log_softmax', 'nll_loss_forward'}  # the loss, computed outside the model
    a = R.analyse(tr, R.GPUS['h200'])
    t = a['totals']
    assert t['ops'] == len(recs) and t['bound_s'] == pytest.approx(sum(r['time_s'] for r in recs))
    assert sum(k['share'] for k in a['kinds']) == pytest.approx(1.0)
    assert t['bound_s'] >= max(t['all_bytes_s'] * 0, t['all_flops_tensor_s'])  # never below the FLOP bound
    assert t['bound_s'] >= t['all_bytes_s'] * (t['memory_bound_s'] / t['bound_s']) - 1e-12
    infer = RT.trace_step('hornet_micro_7x7', batch=4, input_size=64, dtype='bf16', channels_last=True, what='infer')
    fwd_flops = sum(r['flops'] for r in infer['records'] if r['unit'] == 'tensor')
    train_flops = sum(r['flops'] for r in recs if r['unit'] == 'tensor')
    assert 2.9 * fwd_flops < train_flops <= 3.0 * fwd_flops  # backward = 2x forward, but no grad for the image
    assert not any(r['phase'] == 'bwd' for r in infer['records'])


def test_measured_rows_come_from_benchmark_json(tmp_path):
    rows = [dict(model='m', dtype='bf16', channels_last=True, compile=False, gf_impl=None, error=None,
                 train_img_s=dict(median=100.0), infer_img_s=dict(median=400.0)),
            dict(model='m', dtype='bf16', channels_last=False, compile=False, gf_impl=None, error=None,
                 train_img_s=dict(median=1.0), infer_img_s=dict(median=1.0)),
            dict(model='g', dtype='bf16', channels_last=True, compile=False, gf_impl='matmul', error=None,
                 train_img_s=dict(median=2.0), infer_img_s=dict(median=2.0)),
            dict(model='g', dtype='bf16', channels_last=True, compile=False, gf_impl='fft', error=None,
                 train_img_s=dict(median=50.0), infer_img_s=dict(median=None)),
            dict(model='m', dtype='bf16', channels_last=True, compile=False, gf_impl=None, error=None,
                 fused_gating=True, train_img_s=dict(median=3.0), infer_img_s=dict(median=3.0))]  # a lever row
    p = tmp_path / 'b.json'
    p.write_text(json.dumps(dict(results=rows)))
    got = R.load_measured_json(str(p), 'bf16', True, 'fft')
    assert got == {'m': {'train': 100.0, 'infer': 400.0}, 'g': {'train': 50.0}}
    assert R.parse_measured(['m=1305:5432', 'n=10']) == {'m': {'train': 1305.0, 'infer': 5432.0},
                                                         'n': {'train': 10.0}}


@pytest.mark.slow
def test_cli_writes_json_and_markdown_with_measured_over_bound(tmp_path):
    out, md = tmp_path / 'r.json', tmp_path / 'r.md'
    proc = subprocess.run([sys.executable, SCRIPT, '--models',
                           'hornet_micro_7x7', '--batch_size', '2', '--input_size', '64', '--gpu', 'a100',
                           '--measured', 'hornet_micro_7x7=100:400', '--json', str(out), '--markdown', str(md)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res['settings']['gpu'] == 'a100' and res['gpu']['bw'] == R.GPUS['a100']['bw']
    (m,) = res['models']
    for what, img_s in (('train', 100.0), ('infer', 400.0)):
        a = m['steps'][what]
        meas = a['measured']
        assert meas['step_s'] == pytest.approx(2 / img_s)
        assert meas['ratio'] == pytest.approx(meas['step_s'] / a['totals']['bound_s'])
        assert math.isclose(meas['gap_per_op_us'], 1e6 * (meas['step_s'] - a['totals']['bound_s']) / a['totals']['ops'])
    text = md.read_text()
    assert '| hornet_micro_7x7 | train |' in text and 'measured / bound' in text and 'Blocks by stage' in text
    proc = subprocess.run([sys.executable, SCRIPT, '--models', 'hornet_tiny_7xx'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr and 'unknown model' in proc.stderr
