"""scripts/flops.py: torch's FlopCounterMode plus registered FFT formulas, and the paper's HorNet-T count."""
import importlib.util
import math
import os

import pytest
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_flops():
    spec = importlib.util.spec_from_file_location('hornet_flops_script', os.path.join(ROOT, 'scripts', 'flops.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


flops = _load_flops()


def test_conv2d_count_matches_hand_formula():
    conv = nn.Conv2d(3, 16, kernel_size=3, stride=2, padding=1)  # 32x32 -> 16x16
    res = flops.count_flops(conv, 32)
    macs = 16 * 16 * 16 * 3 * 3 * 3  # out positions * c_out * c_in * k * k (bias not counted)
    assert res['total_flops'] == 2 * macs
    dw = nn.Conv2d(3, 3, kernel_size=7, padding=3, groups=3)
    assert flops.count_flops(dw, 32)['total_flops'] == 2 * (32 * 32 * 3 * 49)


def test_fft_formulas():
    # rfft2 over (H, W) = (8, 8) of a (2, 3, 8, 8) tensor: 6 real transforms of N=64 points at 2.5 N log2 N.
    assert flops.fft_r2c_flop((2, 3, 8, 8), [2, 3], 1, True, out_shape=(2, 3, 8, 5)) == 6 * 2.5 * 64 * 6
    assert flops.fft_c2r_flop((2, 3, 8, 5), [2, 3], 1, 8, out_shape=(2, 3, 8, 8)) == 6 * 2.5 * 64 * 6
    assert flops.fft_c2c_flop((1, 1, 4, 4), [2, 3], 1, True, out_shape=(1, 1, 4, 4)) == 5 * 16 * 4


def test_fft_is_counted_for_global_filter_model():
    import models
    model = models.HorNet(depths=(1, 1, 1, 1), base_dim=16, orders=(2, 2, 2, 2),
                          gf_sizes=(None, None, (4, 3), (2, 2)), num_classes=10)
    size = 64  # stage 3 runs at 4x4, stage 4 at 2x2
    with_fft = flops.count_flops(model, size, count_fft=True)
    without = flops.count_flops(model, size, count_fft=False)
    expected = 0.0
    for m, hw in zip([m for m in model.modules() if isinstance(m, models.GlobalLocalFilter)], (4, 2)):
        n = hw * hw
        expected += 2 * 2.5 * n * math.log2(n) * m.dw.in_channels  # one rfft2 + one irfft2 per channel
    assert expected > 0
    assert '_fft_r2c' in with_fft['by_op'] and '_fft_c2r' in with_fft['by_op']
    assert with_fft['total_flops'] - without['total_flops'] == pytest.approx(expected, abs=4)


def test_hornet_tiny_7x7_matches_paper():
    row = flops.measure('hornet_tiny_7x7', 224)
    assert row['gmacs'] == pytest.approx(3.98, rel=0.01)
    assert row['params_m'] == pytest.approx(22.4, abs=0.1)
    assert row['fft_gmacs'] == 0
    # the published integer (mmpretrain metafile) is reproduced exactly by its counting convention
    assert row['mmpretrain_style_macs'] == row['mmpretrain_metafile_macs'] == 3976156352


def test_unknown_model_is_one_line_error(capsys):
    assert flops.main(['--models', 'hornet_tiny_7xx']) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: unknown model') and 'hornet_tiny_7x7' in err and '\n' not in err
