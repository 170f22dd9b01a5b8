"""What a newcomer met on a first run (issue 16): loader workers chosen from the cores, and a file that is not an
image found by the folder scan before training starts. Real main.py processes on tiny data sets (32 px, CPU).

Elsewhere: Ctrl-C saving its step (tests/test_training.py, test_cli_usability.py), the ONNX metadata
(test_tools.py), the scan's checks and the class-mismatch message (test_datasets.py).
"""
from __future__ import annotations

import pathlib

import pytest
import yaml

import main as main_mod
import quickstart
import utils
from tests.train_helpers import REPO, base_args, make_image_folder, run_main


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), train_per_class=4, val_per_class=2)


def test_num_workers_auto_follows_the_cores(monkeypatch):
    """On a GPU: this process's share of the cores less one, at most 10; on the CPU: one, none on one core."""
    monkeypatch.delenv('SLURM_CPUS_PER_TASK', raising=False)
    for cores, procs, on_gpu, on_cpu in [(96, 8, 10, 1), (16, 2, 7, 1), (2, 1, 1, 1), (1, 1, 0, 0), (4, 8, 0, 0)]:
        monkeypatch.setattr(utils, 'cpu_cores_available', lambda c=cores: c)
        monkeypatch.setenv('LOCAL_WORLD_SIZE', str(procs))
        workers, why = utils.auto_num_workers('cuda')
        assert workers == on_gpu, (cores, procs, why)
        assert utils.auto_num_workers('cpu')[0] == on_cpu, (cores, procs)
        for w in (workers, on_cpu):  # never the loader's "exceed the cores" warning
            assert w + 1 <= max(1, cores // procs)


@pytest.mark.slow
def test_quickstart_config_picks_workers_from_the_cores_and_an_explicit_count_still_wins(tmp_path):
    """The quick-start config on this machine: no warning that the workers exceed the cores."""
    assert yaml.safe_load((REPO / 'configs' / 'quickstart.yaml').read_text())['num_workers'] == 'auto'
    root = quickstart.make_quickstart_dataset(str(tmp_path / 'qs'), num_classes=3, train_per_class=4, val_per_class=2,
                                              image_size=32)
    argv = ['--config', str(REPO / 'configs' / 'quickstart.yaml'), '--data_path', root, '--input_size', '32',
            '--epochs', '1', '--batch_size', '4', '--output_dir', str(tmp_path / 'out')]
    proc = run_main(argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    workers = min(1, utils.cpu_cores_available() - 1)  # one, none on a single core
    assert f'Data loading workers per process: {workers} (--num_workers auto: training on the CPU' in proc.stderr
    assert f'rank 0 data loader: backend pil, {workers} worker processes' in proc.stderr
    assert 'exceed the' not in proc.stderr
    args = main_mod.parse_args(['--config', str(REPO / 'configs' / 'quickstart.yaml'), '--num_workers', '0'])
    assert args.num_workers == 0
    proc = run_main(argv + ['--num_workers', '0', '--output_dir', str(tmp_path / 'out0')])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'rank 0 data loader: backend pil, 0 worker processes' in proc.stderr
    assert '--num_workers auto' not in proc.stderr


def _with_broken_jpg(data: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    import shutil
    root = tmp_path / 'data'
    shutil.copytree(data, root)
    (root / 'train' / 'class_1' / 'broken.jpg').write_text('<html>404 Not Found</html>\n')
    return root


@pytest.mark.slow
def test_a_text_file_named_jpg_stops_main_before_training_with_one_line(tmp_path, data):
    root = _with_broken_jpg(data, tmp_path)
    broken = root / 'train' / 'class_1' / 'broken.jpg'
    proc = run_main(base_args(root, tmp_path / 'out', epochs=1))
    assert proc.returncode == main_mod.EXIT_USER_ERROR, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr and 'Start training' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"error: cannot read image file '{broken}' (not an image: it starts with b'<html>404 Not Fo'); "
                    f"delete or replace it, or pass --skip_bad_images to leave unreadable images out"), last

    proc = run_main(base_args(root, tmp_path / 'out', epochs=1, skip_bad_images='true'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"leaving out unreadable image file '{broken}'" in proc.stderr
    assert 'train dataset IMNET: 16 samples' in proc.stderr  # 4 classes x 4 images; broken.jpg not among them
    assert 'pass --skip_bad_images' not in proc.stderr
