"""Released weights by name on the command line: ``--finetune hornet_tiny_7x7.in1k``, ``--eval true --resume
<name>``, ``--pretrained`` and ``predict.py --checkpoint <name>``.

No test touches the real network: a name is pointed at the local HTTP server of ``tests/test_pretrained.py`` by
registering a release entry for the tiny test model (``hornet_micro_7x7.in1k``) in ``models.downloads``'s tables,
so main.py runs in-process (``main.cli``) to see it. ``TORCH_HOME`` is a per-test folder (empty download cache).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent

import timm  # noqa: E402

import main  # noqa: E402
from models import downloads as P  # noqa: E402
from models.weights import in1k_to_21k_map  # noqa: E402
from tests.test_pretrained import (MICRO, cache, data4, free_port, micro_sd, server, sha256,  # noqa: E402,F401
                                   to_bytes)
from tests.train_helpers import base_args, load_model_sd  # noqa: E402

NAME = f'{MICRO}.in1k'


def register(monkeypatch, url: str, data: bytes = b'', name: str = NAME) -> P.ReleasedFile:
    """Make ``name`` a released file served at ``url`` (hash-checked when ``data`` is given)."""
    variant, tag = name.split('.')
    entry = P.ReleasedFile(variant, tag, url, 'original release', 'ImageNet-1K', 1000, f'{name}.pth',
                           sha256_prefix=sha256(data)[:8] if data else None)
    monkeypatch.setitem(P._BY_NAME, name, entry)
    monkeypatch.setitem(P._BY_URL, url, entry)
    return entry


@pytest.fixture
def quiet_logging():
    """main.cli configures the root logger for a run; restore it for the tests that follow."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def cli(argv, capsys):
    code = main.cli(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def error_lines(err: str):
    return [ln for ln in err.splitlines() if ln.startswith('error:')]


@pytest.fixture
def sd4(micro_sd):
    """The fixture weights with a 4-class head (the tiny data set's)."""
    torch.manual_seed(5)
    head = timm.create_model(MICRO, num_classes=4).state_dict()
    return {**micro_sd, 'head.weight': head['head.weight'], 'head.bias': head['head.bias']}


def test_finetune_by_name_downloads_the_release_once_and_trains_from_it(server, cache, data4, sd4, tmp_path,
                                                                        monkeypatch, capsys, quiet_logging):
    data = to_bytes({'model': sd4})
    entry = register(monkeypatch, server.add('/f/micro/?dl=1', data), data)
    frozen = dict(lr=0, min_lr=0, warmup_epochs=0, weight_decay=0, epochs=1, mixup=0, cutmix=0, drop_path=0)
    code, _, err = cli(base_args(data4, tmp_path / 'run', finetune=NAME, **frozen), capsys)
    assert code == 0, err[-3000:]
    trained = load_model_sd(tmp_path / 'run' / 'checkpoint-0.pth')  # lr 0: exactly the released weights
    assert trained.keys() == sd4.keys() and all(torch.equal(trained[k], sd4[k]) for k in sd4)
    assert (cache / entry.file_name).read_bytes() == data
    assert server.requests == {'/f/micro/?dl=1': 1}
    saved = torch.load(tmp_path / 'run' / 'checkpoint-0.pth', weights_only=True)['args']
    assert saved['finetune'] == entry.url  # the run records where its weights came from


def test_eval_resume_by_name_and_pretrained_evaluate_the_release(server, cache, data4, sd4, tmp_path, monkeypatch,
                                                                 capsys, quiet_logging):
    data = to_bytes({'model': sd4})
    local = tmp_path / 'local.pth'
    local.write_bytes(data)
    entry = register(monkeypatch, server.add('/f/micro/?dl=1', data), data)
    opts = dict(eval='true', mixup=0, cutmix=0)
    code, expected, err = cli(base_args(data4, None, resume=str(local), **opts), capsys)
    assert code == 0, err[-3000:]
    code, out, err = cli(base_args(data4, tmp_path / 'e', resume=NAME, **opts), capsys)
    assert code == 0, err[-3000:]
    assert out == expected and out.startswith('* Acc@1')
    result = json.loads((tmp_path / 'e' / 'eval.json').read_text())
    assert result['checkpoint'] == entry.url and result['sha256'] == sha256(data)
    # --pretrained: the model's default released weights, here the same file (from the cache: no new request)
    code, out, err = cli(base_args(data4, None, pretrained='true', **opts), capsys)
    assert code == 0, err[-3000:]
    assert out == expected
    assert server.requests == {'/f/micro/?dl=1': 1}


def test_resume_by_name_for_training_points_to_finetune(data4, capsys, quiet_logging):
    code, _, err = cli(base_args(data4, None, resume='hornet_tiny_7x7.in1k'), capsys)
    assert code == 2 and error_lines(err) == [
        'error: --resume hornet_tiny_7x7.in1k: released weights have no optimizer state to resume training from; '
        'use --finetune hornet_tiny_7x7.in1k to train from them (or add --eval true)'], err


def test_pretrained_errors_name_the_fix(data4, tmp_path, capsys, quiet_logging):
    code, _, err = cli(base_args(data4, None, pretrained='true', finetune='hornet_tiny_7x7.in1k'), capsys)
    assert code == 2 and len(error_lines(err)) == 1 and 'give only one' in err, err
    code, _, err = cli(base_args(data4, None, pretrained='true', model='hornet_micro_gf'), capsys)
    assert code == 2 and len(error_lines(err)) == 1, err
    assert 'hornet_micro_gf has no released weights' in err and 'hornet_tiny_7x7' in err


def test_names_map_to_the_release_table_without_downloading(data4, cache):
    args = main.parse_args(base_args(data4, None, model='hornet_large_gf', finetune='hornet_large_gf.in22k'))
    assert args.finetune == timm.models.get_pretrained_cfg('hornet_large_gf.in22k').url
    args = main.parse_args(base_args(data4, None, model='hornet_tiny_7x7', pretrained='true'))
    assert args.finetune == timm.models.get_pretrained_cfg('hornet_tiny_7x7').url and not args.pretrained
    main.validate_args(args)  # a second validation (run_with_submitit's) keeps the result
    args = main.parse_args(base_args(data4, None, model='hornet_tiny_7x7', eval='true',
                                     resume='hornet_tiny_7x7.mmpretrain_in1k'))
    assert args.resume.endswith('/hornet-tiny_3rdparty_in1k_20220915-0e8eedff.pth')
    assert not cache.exists()


@pytest.mark.parametrize('spec, expected', [
    ('hornet_tiny_7x7.in22k', 'file not found, and it is not a released name either (released weights of '
                              'hornet_tiny_7x7: hornet_tiny_7x7.in1k, hornet_tiny_7x7.mmpretrain_in1k)'),
    ('hornet_base_gf_img384.in1k', 'file not found, and hornet_base_gf_img384 has no released weights'),
    ('hornet_tiny_7x7.pth', 'file not found (check the path)'),
])
def test_a_name_that_is_no_release_lists_the_released_ones(data4, capsys, spec, expected, quiet_logging):
    code, _, err = cli(base_args(data4, None, finetune=spec), capsys)
    assert code == 2 and len(error_lines(err)) == 1 and f'--finetune {spec}: {expected}' in err, err


def test_offline_name_is_one_line_naming_the_url_and_the_cache_path(data4, cache, tmp_path, monkeypatch, capsys,
                                                                     quiet_logging):
    entry = register(monkeypatch, f'http://127.0.0.1:{free_port()}/f/micro/?dl=1')
    code, _, err = cli(base_args(data4, tmp_path / 'run', finetune=NAME, epochs=1), capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    assert entry.url in lines[0] and 'connection refused' in lines[0]
    assert f'copy it to {cache / entry.file_name}' in lines[0]
    assert not (tmp_path / 'run' / 'checkpoint-0.pth').exists()


def _predict_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location('_predict_by_name', REPO / 'scripts' / 'predict.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predict_by_name_prints_imagenet_class_names(server, cache, micro_sd, tmp_path, monkeypatch, capsys):
    from PIL import Image
    from timm.data import ImageNetInfo
    predict = _predict_module()
    img = tmp_path / 'x.png'
    Image.new('RGB', (40, 40), (200, 30, 30)).save(img)
    data = to_bytes({'model': micro_sd})  # a 1000-class head that carries no class names
    register(monkeypatch, server.add('/f/micro/?dl=1', data), data)
    js = tmp_path / 'p.json'
    assert predict.main(['--checkpoint', NAME, '--input_size', '32', '--topk', '3', '--json', str(js), str(img)]) == 0
    out = capsys.readouterr().out
    result = json.loads(js.read_text())
    assert result['model'] == MICRO and result['checkpoint'] == NAME  # the variant of the name, no --model
    imagenet = ImageNetInfo('imagenet-1k')
    for item in result['predictions'][0]['topk']:
        assert item['label'] == imagenet.index_to_description(item['index'])
        assert f"{item['label']} ({item['index']})" in out
    assert 'class ' not in out

    # offline: the same one-line error, as predict.py's
    P._BY_NAME[NAME] = dataclasses.replace(P._BY_NAME[NAME], url=f'http://127.0.0.1:{free_port()}/gone.pth',
                                           file_name='gone.pth')
    assert predict.main(['--checkpoint', NAME, str(img)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'predict.py: error: released weights {NAME}: cannot download http://127.0.0.1:')
    assert f'copy it to {cache / "gone.pth"}' in err and '\n' not in err


def test_predict_names_only_the_mapped_rows_of_a_22k_head():
    """timm's 'imagenet-22k' table is in another class order than the released 22K heads (none of the 1000 rows of
    the release's in1k_to_21k_map.pth agrees with it), so only those rows get names."""
    from timm.data import ImageNetInfo
    rows = in1k_to_21k_map().tolist()
    in22k = ImageNetInfo('imagenet-22k').label_names()
    in1k = ImageNetInfo('imagenet-1k')
    assert not any(r < len(in22k) and in22k[r] == in1k.index_to_label_name(i) for i, r in enumerate(rows))
    predict = _predict_module()
    with torch.device('meta'):
        model = timm.create_model(MICRO, num_classes=21841)
    names, source = predict.class_names(model, None)
    assert len(names) == 21841 and 'in1k_to_21k_map' in source
    assert names[rows[0]] == in1k.index_to_description(0) and names[rows[999]] == in1k.index_to_description(999)
    assert names[0] == 'class 0' and sum(not n.startswith('class ') for n in names) == 1000


def test_slurm_launcher_passes_the_release_url_not_a_path(data4, tmp_path, monkeypatch):
    """run_with_submitit.py makes path flags absolute for jobs started elsewhere; a name is not a path."""
    import run_with_submitit as rws
    monkeypatch.chdir(tmp_path)
    args = rws.parse_args(['--model', 'hornet_tiny_7x7', '--data_path', str(data4), '--pretrained'])
    assert args.finetune == timm.models.get_pretrained_cfg('hornet_tiny_7x7').url and not args.pretrained
    args = rws.parse_args(['--model', 'hornet_tiny_7x7', '--data_path', str(data4), '--finetune',
                           'hornet_tiny_7x7.mmpretrain_in1k'])
    assert args.finetune == timm.models.get_pretrained_cfg('hornet_tiny_7x7.mmpretrain_in1k').url


@pytest.fixture
def keep_logger_levels():
    """export.py's main sets the levels of these loggers for its run; later tests need the old ones."""
    loggers = [logging.getLogger(n) for n in ('export', 'models', 'checkpoint_meta')]
    levels = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, levels):
        lg.setLevel(level)


def test_export_by_name_exports_the_release(server, cache, micro_sd, tmp_path, monkeypatch, capsys,
                                            keep_logger_levels):
    import importlib.util
    pytest.importorskip('onnxruntime')
    spec = importlib.util.spec_from_file_location('_export_by_name', REPO / 'scripts' / 'export.py')
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    data = to_bytes({'model': micro_sd})
    register(monkeypatch, server.add('/f/micro/?dl=1', data), data)
    out = tmp_path / 'micro.onnx'
    assert export.main(['--checkpoint', NAME, '--output', str(out), '--input_size', '32']) == 0, \
        capsys.readouterr().err
    assert out.is_file() and server.requests == {'/f/micro/?dl=1': 1}
    assert export.main(['--checkpoint', f'{MICRO}.in22k', '--output', str(out)]) == 2
    err = capsys.readouterr().err
    assert f'checkpoint not found: {MICRO}.in22k, and it is not a released name either' in err, err
