"""Released weights by name: timm tags, and downloads of ``pretrained=True`` / ``--resume URL`` / ``--finetune URL``
/ ``predict.py --checkpoint URL``, tested for real against an HTTP server on 127.0.0.1 that each test starts.

The served files are small fixture checkpoints (hornet_micro_7x7) made here; the released cfgs are pointed at the
local server with ``pretrained_cfg_overlay=dict(url=...)``. ``TORCH_HOME`` is a per-test folder, so the download
cache (``$TORCH_HOME/hub/checkpoints``) starts empty in every test.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import pathlib
import socket
import threading
from typing import Dict, Tuple

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent

import timm  # noqa: E402

import models  # noqa: E402,F401
from models import downloads as P  # noqa: E402
from models.hornet import load_pretrained_file  # noqa: E402
from models.weights import CheckpointError, in1k_to_21k_map, select_in1k_head_rows  # noqa: E402
from tests.train_helpers import base_args, make_image_folder, run_main  # noqa: E402

MICRO = 'hornet_micro_7x7'


# ------------------------------------------------------------------------------------------ a real local server

class Server:
    """A threaded HTTP/1.0 server on 127.0.0.1:<free port>. ``routes[path] = (body, mode)``; mode 'ok' serves the
    body, 'cut' announces twice its length and closes the connection after the first half. Other paths: 404."""

    def __init__(self) -> None:
        self.routes: Dict[str, Tuple[bytes, str]] = {}
        self.requests: Dict[str, int] = {}
        routes, requests = self.routes, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                requests[self.path] = requests.get(self.path, 0) + 1
                if self.path not in routes:
                    self.send_error(404, 'Not Found')
                    return
                body, mode = routes[self.path]
                self.send_response(200)
                self.send_header('Content-Type', 'application/octet-stream')
                self.send_header('Content-Length', str(2 * len(body) if mode == 'cut' else len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if mode == 'cut' else body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes, mode: str = 'ok') -> str:
        self.routes[path] = (body, mode)
        return self.url(path)

    def url(self, path: str) -> str:
        return f'http://127.0.0.1:{self.port}{path}'

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(10)
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> pathlib.Path:
    """An empty download cache: TORCH_HOME=<tmp>/torch, so files land in <tmp>/torch/hub/checkpoints."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    return tmp_path / 'torch' / 'hub' / 'checkpoints'


def free_port() -> int:
    """A port with nothing listening on it (connections are refused)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mmpretrain_keys(sd):
    """mmpretrain's names for the original release's keys (its documented conversion)."""
    out = {}
    for k, v in sd.items():
        if k.startswith('head.'):
            out['head.fc.' + k[5:]] = v
            continue
        if k.startswith('norm.'):
            k = 'norm3.' + k[5:]
        k = k.replace('gnconv.pws.', 'gnconv.projs.')
        if k.endswith(('.gamma1', '.gamma2')):
            k += '.weight'
        out['backbone.' + k] = v
    return out


@pytest.fixture(scope='module')
def micro_sd() -> Dict[str, torch.Tensor]:
    """Weights of hornet_micro_7x7 whose every branch matters (layer scales 0.3, not the init's 1e-6)."""
    torch.manual_seed(0)
    model = timm.create_model(MICRO)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'gamma' in name:
                p.fill_(0.3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def logits(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return model.eval()(x)


def no_partial_files(folder: pathlib.Path) -> bool:
    return not folder.exists() or not [p for p in folder.iterdir() if p.name.endswith('.partial')]


def one_line(err: BaseException) -> str:
    text = str(err)
    assert '\n' not in text, text
    return text


# ------------------------------------------------------------------------------------------------ pretrained=True

def test_pretrained_true_downloads_checks_hash_caches_and_loads_like_the_file(server, cache, micro_sd, tmp_path):
    data = to_bytes({'model': micro_sd})
    name = f'micro-{sha256(data)[:8]}.pth'  # torch.hub's convention: the name carries the sha256 prefix
    url = server.add('/weights/' + name, data)
    model = timm.create_model(MICRO, pretrained=True, pretrained_cfg_overlay=dict(url=url, hf_hub_id=None))
    local = tmp_path / 'micro.pth'
    local.write_bytes(data)
    direct = timm.create_model(MICRO)
    load_pretrained_file(direct, str(local))
    assert torch.equal(logits(model), logits(direct))
    for k, v in model.state_dict().items():
        assert torch.equal(v, micro_sd[k]), k
    assert (cache / name).read_bytes() == data  # cached under its own name in torch's hub folder
    assert no_partial_files(cache)
    assert server.requests == {'/weights/' + name: 1}

    # cache hit: the server is gone, the file is loaded from the cache without touching the network
    server.stop()
    again = timm.create_model(MICRO, pretrained=True, pretrained_cfg_overlay=dict(url=url, hf_hub_id=None))
    assert torch.equal(logits(again), logits(direct))


def test_mmpretrain_format_is_converted_and_a_released_entry_gives_name_and_hash(server, cache, micro_sd,
                                                                                  monkeypatch):
    """A URL of the released table (here: one registered for the test, shaped like the original release's
    ``/f/<id>/?dl=1`` links, which have no file name) is cached as ``<variant>.<tag>.pth`` and hash-checked with the
    table's sha256 prefix; mmpretrain's {'state_dict': backbone./head.fc. keys} is converted on load."""
    data = to_bytes({'meta': {'epoch': 300}, 'state_dict': mmpretrain_keys(micro_sd)})
    url = server.add('/f/0123456789abcdef0123/?dl=1', data)
    entry = P.ReleasedFile(MICRO, 'test_in1k', url, 'mmpretrain', 'ImageNet-1K', 1000, f'{MICRO}.test_in1k.pth',
                           sha256_prefix=sha256(data)[:8])
    monkeypatch.setitem(P._BY_URL, url, entry)
    model = timm.create_model(MICRO, pretrained=True, pretrained_cfg_overlay=dict(url=url))
    for k, v in model.state_dict().items():
        assert torch.equal(v, micro_sd[k]), k
    assert (cache / f'{MICRO}.test_in1k.pth').is_file()

    # the same entry with a wrong prefix: an error, and nothing under the final name
    (cache / f'{MICRO}.test_in1k.pth').unlink()
    monkeypatch.setitem(P._BY_URL, url, entry.__class__(**{**entry.__dict__, 'sha256_prefix': 'deadbeef'}))
    with pytest.raises(CheckpointError) as e:
        timm.create_model(MICRO, pretrained=True, pretrained_cfg_overlay=dict(url=url))
    assert 'sha256' in one_line(e.value) and 'deadbeef' in str(e.value)
    assert not (cache / f'{MICRO}.test_in1k.pth').exists() and no_partial_files(cache)


def test_404_is_one_line_naming_the_url_and_the_way_around(server, cache):
    url = server.url('/missing-0123abcd.pth')
    with pytest.raises(CheckpointError) as e:
        timm.create_model(MICRO, pretrained=True, pretrained_cfg_overlay=dict(url=url, hf_hub_id=None))
    msg = one_line(e.value)
    assert url in msg and 'HTTP 404' in msg and "pretrained_cfg_overlay=dict(file=" in msg
    assert not cache.exists() or not list(cache.iterdir())


def test_wrong_hash_is_an_error_and_leaves_no_file(server, cache, micro_sd):
    data = to_bytes({'model': micro_sd})
    assert not sha256(data).startswith('deadbeef')
    url = server.add('/micro-deadbeef.pth', data)
    with pytest.raises(CheckpointError) as e:
        timm.create_model(MICRO, pretrained=True, pretrained_cfg_overlay=dict(url=url, hf_hub_id=None))
    msg = one_line(e.value)
    assert url in msg and 'sha256' in msg and 'nothing was saved' in msg
    assert not (cache / 'micro-deadbeef.pth').exists()
    assert not list(cache.iterdir())  # no partial file either


def test_connection_cut_mid_file_is_an_error_and_leaves_no_file(server, cache, micro_sd):
    data = to_bytes({'model': micro_sd})
    url = server.add('/cut.pth', data, mode='cut')
    with pytest.raises(CheckpointError) as e:
        timm.create_model(MICRO, pretrained=True, pretrained_cfg_overlay=dict(url=url, hf_hub_id=None))
    msg = one_line(e.value)
    assert url in msg and 'cut' in msg and f'of {2 * len(data)} bytes' in msg
    assert not list(cache.iterdir())


def test_no_server_is_one_line_naming_the_url_and_how_to_pass_a_file(cache):
    url = f'http://127.0.0.1:{free_port()}/hornet_micro.pth'
    with pytest.raises(CheckpointError) as e:
        timm.create_model(MICRO, pretrained=True, pretrained_cfg_overlay=dict(url=url, hf_hub_id=None))
    msg = one_line(e.value)
    assert url in msg and 'connection refused' in msg
    assert "pretrained_cfg_overlay=dict(file='/path/to/file.pth')" in msg and str(cache) in msg
    # the same for a path given to the training/eval commands (safe_load under --resume/--finetune)
    from models.weights import safe_load
    with pytest.raises(CheckpointError) as e:
        safe_load(url)
    msg = one_line(e.value)
    assert url in msg and '--resume /path/to/file.pth' in msg


def test_a_web_page_instead_of_a_checkpoint_is_refused(server, cache):
    url = server.add('/f/abc/?dl=1', b'<!DOCTYPE html><html><body>Please log in</body></html>')
    with pytest.raises(CheckpointError) as e:
        timm.create_model(MICRO, pretrained=True, pretrained_cfg_overlay=dict(url=url, hf_hub_id=None))
    assert 'not a checkpoint' in one_line(e.value)
    assert not list(cache.iterdir())


def test_cache_names_keep_hash_names_and_separate_other_urls():
    a = P.cache_file_name('https://h/run1/checkpoint-best.pth')
    b = P.cache_file_name('https://h/run2/checkpoint-best.pth')
    assert a != b and a.startswith('checkpoint-best.') and a.endswith('.pth')
    assert P.cache_file_name('https://h/x/hornet-tiny_3rdparty_in1k_20220915-0e8eedff.pth') == \
        'hornet-tiny_3rdparty_in1k_20220915-0e8eedff.pth'
    assert P.expected_sha256_prefix('https://h/x/w-0e8eedff.pth') == '0e8eedff'
    assert P.expected_sha256_prefix('https://h/x/ckpt-ade.pth') is None  # too short to be a hash
    assert P.cache_file_name('https://h/f/abc/?dl=1').endswith('.pth')


# ------------------------------------------------------------------------------------------------ released cfgs

def test_released_tags_urls_and_hashes():
    tags = set(timm.list_pretrained('hornet*'))
    for f in P.RELEASED:
        assert f.name in tags
        cfg = timm.models.get_pretrained_cfg(f.name)
        assert cfg.url == f.url and cfg.num_classes == f.num_classes
        if f.source == 'mmpretrain':
            assert f.url.startswith('https://download.openmmlab.com/') and f.sha256_prefix
            assert f.url.endswith(f'-{f.sha256_prefix}.pth') and P.cache_file_name(f.url) == f.url.rsplit('/', 1)[1]
        else:
            assert f.tag in ('in1k', 'in22k') and f.url.startswith('https://cloud.tsinghua.edu.cn/f/')
            assert P.cache_file_name(f.url) == f'{f.name}.pth'
    for variant in ('hornet_tiny_7x7', 'hornet_tiny_gf', 'hornet_small_7x7', 'hornet_small_gf',
                    'hornet_base_7x7', 'hornet_base_gf'):
        assert timm.models.get_pretrained_cfg(variant).tag == 'in1k'  # the original release is the default
        assert {t for t in tags if t.startswith(variant + '.')} == {f'{variant}.in1k', f'{variant}.mmpretrain_in1k'}
    assert not any('in22k_ft_in1k' in t for t in tags)


@pytest.mark.parametrize('variant', ['hornet_large_7x7', 'hornet_large_gf', 'hornet_large_gf_img384'])
def test_large_cfgs_are_22k_models_with_the_file_head_size(variant):
    tags = {t for t in timm.list_pretrained('hornet*') if t.startswith(variant + '.')}
    assert tags == {f'{variant}.in22k', f'{variant}.mmpretrain_in22k'}
    assert timm.models.get_pretrained_cfg(variant).tag == 'in22k'
    for tag in tags:
        assert timm.models.get_pretrained_cfg(tag).num_classes == 21841
        assert next(f for f in P.RELEASED if f.name == tag).trained_on == 'ImageNet-22K'
    with torch.device('meta'):
        model = timm.create_model(variant)
    assert model.num_classes == 21841 and model.head.weight.shape[0] == 21841


@pytest.mark.parametrize('name', ['hornet_base_gf_img384', 'hornet_micro_7x7', 'hornet_isotropic_small_7x7'])
def test_variants_without_released_weights_say_so(name, cache):
    assert timm.models.get_pretrained_cfg(name).url in (None, '')
    with pytest.raises((CheckpointError, RuntimeError)) as e, torch.device('meta'):  # meta: skip the init
        timm.create_model(name, pretrained=True)
    assert 'no released weights' in str(e.value).lower() or 'no pretrained weights' in str(e.value).lower()
    assert not cache.exists()  # nothing was downloaded


# --------------------------------------------------------------------------------- 22K head -> ImageNet-1K rows

def test_in1k_map_is_the_original_file():
    rows = in1k_to_21k_map()
    assert rows.dtype == torch.int64 and rows.shape == (1000,)
    assert int(rows.min()) == 209 and int(rows.max()) == 10458 and len(set(rows.tolist())) == 1000


def test_22k_head_keeps_exactly_the_mapped_rows():
    torch.manual_seed(0)
    w, b = torch.randn(21841, 8), torch.randn(21841)
    sd = {'stem.weight': torch.randn(3), 'head.weight': w, 'head.bias': b}
    rows = torch.load(REPO / 'models' / 'in1k_to_21k_map.pth', weights_only=True)
    out = select_in1k_head_rows(sd, 1000)
    assert torch.equal(out['head.weight'], w[rows]) and torch.equal(out['head.bias'], b[rows])
    for i in (0, 1, 500, 999):
        assert torch.equal(out['head.weight'][i], w[rows[i]])
    assert torch.equal(out['stem.weight'], sd['stem.weight'])
    # mmpretrain names and a wrapped checkpoint too
    mm = {'backbone.norm3.weight': torch.ones(8), 'head.fc.weight': w, 'head.fc.bias': b}
    mm = select_in1k_head_rows({'meta': {}, 'state_dict': mm}, 1000)
    assert torch.equal(mm['head.weight'], w[rows]) and torch.equal(mm['head.bias'], b[rows])
    # nothing to do: another class count, or a head that is not the 22K one
    assert select_in1k_head_rows(sd, 10) is sd
    small = {'head.weight': torch.randn(1000, 8), 'head.bias': torch.randn(1000)}
    assert select_in1k_head_rows(small, 1000) is small


# --------------------------------------------------------------------------------------- main.py and predict.py

@pytest.fixture(scope='module')
def data4(tmp_path_factory) -> pathlib.Path:
    return make_image_folder(tmp_path_factory.mktemp('data4'), classes=4, train_per_class=2, val_per_class=3)


def _acc_line(stdout: str) -> str:
    lines = [ln for ln in stdout.splitlines() if ln.startswith('* Acc@1')]
    assert len(lines) == 1, stdout
    return lines[0]


@pytest.mark.slow
def test_main_eval_resume_url(server, cache, data4, tmp_path, capsys):
    """``main.py --eval true --resume <URL>``: the file is downloaded once into the cache and evaluated (strict
    load; eval.json names the URL and the sha256 of the served bytes); offline it is a one-line error."""
    torch.manual_seed(0)
    data = to_bytes({'model': timm.create_model(MICRO, num_classes=4).state_dict()})
    url = server.add('/run1/checkpoint-best.pth', data)
    args = dict(eval='true', mixup=0, cutmix=0)
    proc = run_main(base_args(data4, tmp_path / 'b', resume=url, **args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _acc_line(proc.stdout)
    result = json.loads((tmp_path / 'b' / 'eval.json').read_text())
    assert result['checkpoint'] == url and result['sha256'] == sha256(data)
    assert server.requests == {'/run1/checkpoint-best.pth': 1}  # --eval reads the file twice, downloads it once
    assert [p.read_bytes() for p in cache.iterdir()] == [data]

    # offline: a one-line error naming the URL and how to pass a downloaded file (main.py's cli in this process)
    import main as main_mod
    dead = f'http://127.0.0.1:{free_port()}/ckpt.pth'
    capsys.readouterr()
    assert main_mod.cli(base_args(data4, tmp_path / 'c', resume=dead, **args)) != 0
    stderr = capsys.readouterr().err
    assert 'Traceback' not in stderr
    err = [ln for ln in stderr.splitlines() if ln.startswith('error:')]
    assert len(err) == 1 and dead in err[0] and '--resume /path/to/file.pth' in err[0], stderr


@pytest.mark.slow
def test_main_finetune_url_from_a_22k_model_keeps_the_1k_rows(server, cache, tmp_path):
    """``--finetune <22K file URL> --nb_classes 1000`` goes through select_in1k_head_rows (whose exact rows are
    tested above) and loads the 1000-row head strictly instead of starting a new one."""
    torch.manual_seed(0)
    sd = timm.create_model(MICRO, num_classes=21841).state_dict()
    url = server.add('/hornet_micro_22k.pth', to_bytes({'model': sd}))
    data = make_image_folder(tmp_path / 'data1000', classes=1000, train_per_class=0, val_per_class=1, size=32)
    args = dict(eval='true', mixup=0, cutmix=0, nb_classes=1000, batch_size=64)
    proc = run_main(base_args(data, None, finetune=url, **args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert 'kept the 1000 ImageNet-1K rows' in out and 'keeping the model' not in out
    _acc_line(proc.stdout)


def test_predict_checkpoint_url(server, cache, micro_sd, tmp_path, capsys):
    import importlib.util
    from PIL import Image
    spec = importlib.util.spec_from_file_location('_predict_for_url', REPO / 'scripts' / 'predict.py')
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    img = tmp_path / 'x.png'
    Image.new('RGB', (40, 40), (200, 30, 30)).save(img)
    data = to_bytes({'model': micro_sd})
    local = tmp_path / 'm.pth'
    local.write_bytes(data)
    url = server.add('/m.pth', data)
    outs = []
    for ck in (str(local), url):
        js = tmp_path / f'{len(outs)}.json'
        assert predict.main(['--model', MICRO, '--checkpoint', ck, '--input_size', '32', '--json', str(js),
                             str(img)]) == 0
        outs.append(json.loads(js.read_text())['predictions'])
    assert outs[0] == outs[1]
    capsys.readouterr()
