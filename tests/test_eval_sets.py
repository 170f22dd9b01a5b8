"""eval_sets.py: ImageNet val (folders and flat + labels), ReaL, V2, -A, -R and -Sketch, scored as papers report.

The fixtures are real image files (JPEG and PNG, flat grey) in each released layout, with a handful of classes drawn
from timm's real class lists. The model is a lookup: it reads an image's grey level (its "code") back from the
normalised input and returns that code's row of a logit table the test chose, so each metric is checked against an
independent numpy computation over the same table. The images go through --eval's own transform and device
normalisation (eval_transform + loaders.wrap_loader).

Run as a script (``torchrun --nproc_per_node N tests/test_eval_sets.py MANIFEST OUT``), this module evaluates the
manifest's sets on N gloo processes and writes rank 0's results, for the 1 process = N processes test.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent

import eval_sets  # noqa: E402
import loaders  # noqa: E402
from errors import UserError  # noqa: E402

STEP = 4            # grey level of code c is STEP * c (room for JPEG's +-1 rounding)
CODES = 64
SIZE = 40           # image side; the eval transform resizes to 54 and crops 48
ARGS = argparse.Namespace(input_size=48, crop_pct=None, imagenet_default_mean_and_std=True, data_backend='pil',
                          remode='pixel', model='lookup', batch_size=2, use_amp=False, channels_last=False,
                          dist_eval=True, device='cpu', eval_labels=None)


# ----------------------------------------------------------------------------------------------------------------------
# The model: image code -> a chosen row of logits
# ----------------------------------------------------------------------------------------------------------------------

class CodeModel(nn.Module):
    """Logits ``table[code]``, where ``code`` is the image's grey level / STEP read back from the normalised input."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        self.register_buffer('table', table.float())
        self.mean, self.std = IMAGENET_DEFAULT_MEAN[0], IMAGENET_DEFAULT_STD[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = (x[:, 0].float() * self.std + self.mean).mean((1, 2)) * 255.0
        code = torch.round(grey / STEP).long().clamp(0, CODES - 1)
        return self.table[code]


def make_table(manifest: Dict[str, Any], num_classes: int = 1000) -> torch.Tensor:
    """Random logits, then per image the scenario its manifest entry names, relative to its scored classes."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(CODES, 1000, generator=g, dtype=torch.float64)
    for entry in manifest['scenarios']:
        row = table[entry['code']]
        top = float(row.max())
        pos, cols = entry['positives'], entry['columns']
        others = [c for c in cols if c not in pos]
        if entry['scenario'] == 'hit':               # a positive class first
            row[pos[-1]] = top + 2
        elif entry['scenario'] == 'third':           # a positive class third among the scored classes
            row[pos[0]] = top + 2
            row[others[0]], row[others[1]] = top + 3, top + 4
        elif entry['scenario'] == 'miss':            # every positive class last
            row[pos] = float(row.min()) - 1
        elif entry['scenario'] == 'masked_hit':      # first among the scored classes, not among all 1000
            row[pos[0]] = top + 2
            row[next(c for c in range(1000) if c not in cols)] = top + 5
    if num_classes == 1000:
        return table.float()
    from models.weights import in1k_to_21k_map
    big = torch.full((CODES, num_classes), 50.0, dtype=torch.float64)  # every non-1K row wins unless mapped out
    big[:, in1k_to_21k_map()] = table
    return big.float()


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures: every layout, with their codes, targets and scenarios
# ----------------------------------------------------------------------------------------------------------------------

def _write(path: pathlib.Path, code: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = np.full((SIZE, SIZE, 3), STEP * code, dtype=np.uint8)
    if path.suffix.lower() in ('.jpeg', '.jpg'):
        Image.fromarray(grey).save(path, format='JPEG', quality=100)
    else:
        Image.fromarray(grey).save(path, format='PNG')


def build_fixtures(root: pathlib.Path) -> Dict[str, Any]:
    """Write one folder per layout under ``root``; return the manifest (sets, labels files, per-image truth)."""
    syn = eval_sets.in1k_synsets()
    a_idx, r_idx = eval_sets.subset_indices('a'), eval_sets.subset_indices('r')
    real = eval_sets.real_label_sets()
    codes = iter(range(1, CODES))
    sets: Dict[str, List[Dict[str, Any]]] = {}
    scenarios: List[Dict[str, Any]] = []
    cycle = ['hit', 'third', 'miss', 'hit', 'masked_hit', 'third', 'hit']

    def add(name: str, rel: str, target: Any, columns: List[int], positives: List[int], scenario: str,
            code: Optional[int] = None) -> int:
        code = next(codes) if code is None else code
        _write(root / rel, code)
        sets.setdefault(name, []).append({'file': rel, 'code': code, 'target': target})
        scenarios.append({'code': code, 'columns': columns, 'positives': positives, 'scenario': scenario})
        return code

    all_cols = list(range(1000))
    # imagenet, ImageFolder: 7 images in 3 wnid folders (classes 0, 5, 999)
    for i, cls in enumerate([0, 0, 5, 5, 5, 999, 999]):
        sc = cycle[i] if cycle[i] != 'masked_hit' else 'hit'
        add('imagenet', f'imagenet/{syn[cls]}/{i}.{"JPEG" if i % 2 else "png"}', cls, all_cols, [cls], sc)
    # imagenet, flat ILSVRC2012 val folder + --eval_labels; the same folder is also evaluated as real
    flat_classes = {2: 970, 3: 231, 4: 809, 5: 0, 6: 57}  # image number -> label; 970/231/809 are in its ReaL set
    flat_codes = {}
    for i, (number, cls) in enumerate(flat_classes.items()):
        flat_codes[number] = add('flat', f'flat/ILSVRC2012_val_{number:08d}.JPEG', cls, all_cols, real[number - 1]
                                 or [cls], ['third', 'hit', 'miss', 'hit', 'third'][i])
    for number, cls in flat_classes.items():
        sets.setdefault('real_flat', []).append({'file': f'flat/ILSVRC2012_val_{number:08d}.JPEG',
                                                 'code': flat_codes[number], 'target': real[number - 1]})
    # real, ImageFolder with ILSVRC2012 names: 1 and 22 have empty ReaL sets (left out); 2 is hit via its 2nd label
    for i, number in enumerate([1, 2, 3, 4, 17, 22, 26]):
        labels = real[number - 1]
        sc = ['hit', 'hit', 'third', 'miss', 'hit', 'hit', 'third'][i]
        folder = syn[labels[0]] if labels else syn[1]
        add('real', f'real/{folder}/ILSVRC2012_val_{number:08d}.JPEG', labels, all_cols, labels or [1], sc)
    # v2: folders named by class index; 2 and 10 (not ImageFolder's sorted-name order 0, 1)
    for i, cls in enumerate([0, 2, 2, 10, 10, 999, 999]):
        sc = cycle[i] if cycle[i] != 'masked_hit' else 'miss'
        add('v2', f'v2/{cls}/{i:04x}.jpeg', cls, all_cols, [cls], sc)
    # a, r: wnid folders of their 200 classes; targets are positions in timm's 200-index list
    for kind, idx, picks in (('a', a_idx, [0, 0, 7, 7, 7, 199, 199]), ('r', r_idx, [3, 3, 150, 150])):
        for i, t in enumerate(picks):
            add(kind, f'{kind}/{syn[idx[t]]}/{i}.jpg', t, idx, [idx[t]], cycle[i])
    # sketch: wnid folders of the 1000
    for i, cls in enumerate([10, 10, 500, 500]):
        add('sketch', f'sketch/{syn[cls]}/sketch_{i}.JPEG', cls, all_cols, [cls], ['hit', 'miss', 'third', 'hit'][i])

    csv = root / 'LOC_val_solution.csv'
    csv.write_text('ImageId,PredictionString\n' + ''.join(
        f'ILSVRC2012_val_{n:08d},{syn[c]} 10 20 30 40 {syn[c]} 1 2 3 4\n' for n, c in flat_classes.items())
        + f'ILSVRC2012_val_00049999,{syn[3]} 1 2 3 4\n')  # labels of images not in the folder are fine
    lines = root / 'val_labels.txt'
    lines.write_text(''.join(f'ILSVRC2012_val_{n:08d}.JPEG {syn[c]}\n' for n, c in flat_classes.items()))
    specs = [f'imagenet={root / "imagenet"}', f'imagenet={root / "flat"}', f'real={root / "real"}',
             f'real={root / "flat"}', f'v2={root / "v2"}', f'a={root / "a"}', f'r={root / "r"}',
             f'sketch={root / "sketch"}']
    return {'root': str(root), 'specs': specs, 'csv': str(csv), 'lines': str(lines), 'sets': sets,
            'scenarios': scenarios}


def expected(manifest: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The set's numbers computed directly from the logit table (numpy, float64)."""
    table = make_table(manifest).double().numpy()
    kind = 'real' if name.startswith('real') else name if name in ('a', 'r') else 'single'
    cols = np.array(eval_sets.subset_indices(kind) if kind in ('a', 'r') else range(1000))
    hit1 = hit5 = 0
    losses, scored = [], 0
    for img in manifest['sets'][name]:
        logits = table[img['code']][cols]
        order = np.argsort(-logits)
        if kind == 'real':
            if not img['target']:
                continue
            positives = set(img['target'])
            hit1 += int(order[0] in positives)
            hit5 += int(any(int(c) in positives for c in order[:5]))
        else:
            t = img['target']
            hit1 += int(order[0] == t)
            hit5 += int(t in order[:5])
            m = logits.max()
            losses.append(m + np.log(np.exp(logits - m).sum()) - logits[t])
        scored += 1
    return {'images': scored, 'acc1': 100.0 * hit1 / scored, 'acc5': 100.0 * hit5 / scored,
            'loss': float(np.mean(losses)) if losses else None,
            'left_out': sum(1 for img in manifest['sets'][name] if kind == 'real' and not img['target'])}


def run_sets(manifest: Dict[str, Any], specs: Sequence[str], labels: Optional[str], num_classes: int = 1000,
             dist_eval: bool = True, batch_size: int = 2) -> List[eval_sets.SetResult]:
    """What main.py's --eval_sets path does: parse, build with --eval's transform, evaluate with the exact loader."""
    import utils
    parsed = eval_sets.parse_eval_sets(list(specs), labels)
    sets = eval_sets.build_eval_sets(parsed, eval_sets.eval_transform(ARGS))
    device = utils.dist_state().device
    model = CodeModel(make_table(manifest, num_classes)).to(device)
    return eval_sets.evaluate_sets(
        model, sets, num_classes=num_classes,
        make_loader=lambda d: eval_sets.eval_loader(d, batch_size=batch_size, dist_eval=dist_eval,
                                                    wrap=lambda l: loaders.wrap_loader(l, ARGS, device)))


@pytest.fixture(scope='module')
def manifest(tmp_path_factory) -> Dict[str, Any]:
    return build_fixtures(tmp_path_factory.mktemp('eval_sets'))


@pytest.fixture(scope='module')
def all_results(manifest) -> Dict[str, eval_sets.SetResult]:
    return {r.name: r for r in run_sets(manifest, manifest['specs'], manifest['csv'])}


NAMES = {'imagenet:imagenet': 'imagenet', 'imagenet:flat': 'flat', 'real:real': 'real', 'real:flat': 'real_flat',
         'v2': 'v2', 'a': 'a', 'r': 'r', 'sketch': 'sketch'}


# ----------------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------------

def test_sets_share_one_run_and_are_named_by_kind(all_results):
    assert list(all_results) == list(NAMES)  # repeated kinds get ':<folder>'


@pytest.mark.parametrize('name', list(NAMES))
def test_each_set_scores_as_an_independent_computation(manifest, all_results, name):
    got, want = all_results[name], expected(manifest, NAMES[name])
    assert got.images == want['images'] and got.left_out == want['left_out']
    assert got.acc1 == pytest.approx(want['acc1'], abs=1e-9)
    assert got.acc5 == pytest.approx(want['acc5'], abs=1e-9)
    if want['loss'] is None:
        assert got.loss is None
    else:
        assert got.loss == pytest.approx(want['loss'], rel=1e-5)
    assert 0 < got.acc1 < 100 and got.acc1 <= got.acc5  # the fixtures make every metric informative


def test_a_and_r_restrict_the_logits_to_their_200_classes(manifest, all_results):
    """Images whose best class overall is outside ImageNet-A's 200 still count as top-1 hits, and the loss is
    over the 200 logits; unrestricted scoring would give other numbers."""
    a = all_results['a']
    assert a.classes == 200
    table = make_table(manifest).double().numpy()
    idx = eval_sets.subset_indices('a')
    unrestricted = np.mean([np.argmax(table[i['code']]) == idx[i['target']] for i in manifest['sets']['a']]) * 100
    assert a.acc1 > unrestricted
    assert a.acc1 == pytest.approx(expected(manifest, 'a')['acc1'])


def test_real_leaves_out_images_with_an_empty_label_set_and_accepts_any_label(manifest, all_results):
    real = all_results['real:real']
    assert real.left_out == 2 and real.images == 5  # ILSVRC2012_val_00000001 and _00000022 have no ReaL label
    assert real.loss is None
    # top-1 hits: _00000017, and _00000002 whose logits put 795, the second label of its ReaL set [970, 795], first
    assert eval_sets.real_label_sets()[1] == [970, 795]
    assert real.acc1 == pytest.approx(40.0) == expected(manifest, 'real')['acc1']
    assert real.acc5 == pytest.approx(80.0)  # _00000003 and _00000026 have a label third; _00000004 misses


def test_flat_folder_is_scored_by_its_labels_file_in_either_format(manifest, all_results):
    flat_spec = [s for s in manifest['specs'] if s.endswith('flat') and s.startswith('imagenet')]
    with_lines = run_sets(manifest, flat_spec, manifest['lines'])[0]
    with_csv = all_results['imagenet:flat']
    assert dataclasses.replace(with_lines, seconds=0, name='x') == dataclasses.replace(with_csv, seconds=0, name='x')
    assert with_csv.acc1 == pytest.approx(expected(manifest, 'flat')['acc1'])
    assert eval_sets.read_labels_file(manifest['csv'])['ILSVRC2012_val_00000002'] == eval_sets.in1k_synsets()[970]


def test_v2_folders_are_class_indices_not_sorted_names(manifest):
    spec = eval_sets.parse_eval_sets([f'v2={manifest["root"]}/v2'])[0]
    built = eval_sets.build_eval_set(spec, None)
    assert sorted({t for _, t in built.samples}) == [0, 2, 10, 999]
    assert all(os.path.basename(os.path.dirname(p)) == str(t) for p, t in built.samples)


def test_a_22k_head_is_scored_through_its_imagenet_1k_rows(manifest, all_results):
    big = {r.name: r for r in run_sets(manifest, manifest['specs'], manifest['csv'], num_classes=21841)}
    for name, r in all_results.items():
        other = big[name]
        assert (other.images, other.acc1, other.acc5, other.left_out) == (r.images, r.acc1, r.acc5, r.left_out), name
        assert (other.loss is None) == (r.loss is None) and (r.loss is None or other.loss == pytest.approx(r.loss))
    with pytest.raises(UserError, match='model has 10 classes'):
        eval_sets.head_columns(10)


def test_timm_class_lists_agree_with_each_other():
    """-A/-R's index lists point at their own wnids in the 1000-class list (the restriction uses the indices)."""
    import pkgutil
    syn = eval_sets.in1k_synsets()
    assert len(syn) == 1000 and syn == sorted(syn)
    for kind in ('a', 'r'):
        listed = pkgutil.get_data('timm.data', f'_info/imagenet_{kind}_synsets.txt').decode().split()
        assert [syn[i] for i in eval_sets.subset_indices(kind)] == listed
    real = eval_sets.real_label_sets()
    assert len(real) == 50000 and sum(1 for r in real if not r) == 3163  # the ReaL paper's 46837 labelled images


def test_a_timm_without_the_data_file_is_one_line_naming_the_version_needed():
    needed = r"timm/data/_info/no_such_file.txt, which timm .* lacks; install timm >= 1\.0\.12"
    with pytest.raises(UserError, match=needed):
        eval_sets._timm_info('no_such_file.txt', 'ImageNet-A')


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------

def test_table_and_json_carry_the_same_numbers(all_results):
    results = list(all_results.values())
    table = eval_sets.format_table(results)
    lines = table.splitlines()
    assert lines[0].split() == ['set', 'images', 'Acc@1', 'Acc@5', 'loss', 'img/s']
    real_row = next(line for line in lines if line.startswith('real:real '))
    assert real_row.split()[1:5] == ['5', f'{all_results["real:real"].acc1:.3f}',
                                     f'{all_results["real:real"].acc5:.3f}', 'n/a']
    assert 'real:real: 2 images with an empty ReaL label set left out' in table
    settings = eval_sets.eval_settings(ARGS, num_classes=1000)
    doc = json.loads(json.dumps(eval_sets.results_json(results, '/ck.pth', 'ab' * 32, settings)))
    assert doc['checkpoint'] == '/ck.pth' and doc['sha256'] == 'ab' * 32
    assert doc['settings']['preprocessing'].startswith('bicubic resize to 54, center crop 48')
    assert list(doc['sets']) == list(all_results)
    assert doc['sets']['real:real']['loss'] is None and doc['sets']['real:real']['left_out'] == 2
    assert doc['sets']['v2']['acc1'] == all_results['v2'].acc1


# ----------------------------------------------------------------------------------------------------------------------
# Layout errors: one line naming the set, the folder and what was expected
# ----------------------------------------------------------------------------------------------------------------------

def _wnids(n: int, offset: int = 0) -> List[str]:
    return eval_sets.in1k_synsets()[offset:offset + n]


def _case_v2_with_wnid_folders(root: pathlib.Path):
    _write(root / 'v2' / _wnids(1)[0] / 'x.jpg', 1)
    return [f'v2={root / "v2"}'], None, ['not a class index 0..999', 'use imagenet=PATH', str(root / 'v2')]


def _case_a_with_1000_classes(root: pathlib.Path):
    for w in _wnids(1000):
        (root / 'a' / w).mkdir(parents=True)
    return [f'a={root / "a"}'], None, ['not one of the 200 classes of ImageNet-A', 'there are 1000 class folders',
                                        str(root / 'a')]


def _case_flat_without_labels(root: pathlib.Path):
    _write(root / 'val' / 'ILSVRC2012_val_00000001.JPEG', 1)
    return [f'imagenet={root / "val"}'], None, ['needs --eval_labels', str(root / 'val')]


def _case_file_missing_from_labels(root: pathlib.Path):
    _write(root / 'val' / 'ILSVRC2012_val_00000001.JPEG', 1)
    _write(root / 'val' / 'ILSVRC2012_val_00000002.JPEG', 1)
    (root / 'l.txt').write_text(f'ILSVRC2012_val_00000001.JPEG {_wnids(1)[0]}\n')
    return [f'imagenet={root / "val"}'], str(root / 'l.txt'), [
        str(root / 'val' / 'ILSVRC2012_val_00000002.JPEG'), 'missing from --eval_labels']


def _case_real_with_other_names(root: pathlib.Path):
    _write(root / 'r' / _wnids(1)[0] / 'cat.jpg', 1)
    return [f'real={root / "r"}'], None, ['not an ILSVRC2012 validation file name', str(root / 'r')]


def _case_imagenet_non_wnid_folder(root: pathlib.Path):
    _write(root / 'in' / 'cats' / 'x.png', 1)
    return [f'imagenet={root / "in"}'], None, ["folder '" + str(root / 'in' / 'cats') + "'", '1000 ImageNet-1K wnids']


def _case_imagenet_index_folders(root: pathlib.Path):
    _write(root / 'in' / '7' / 'x.png', 1)
    return [f'sketch={root / "in"}'], None, ['use v2=PATH']


def _case_v2_flat(root: pathlib.Path):
    _write(root / 'v2' / 'x.png', 1)
    return [f'v2={root / "v2"}'], None, ['holds image files but no class folders', 'folders named by class index']


def _case_mixed_layout(root: pathlib.Path):
    _write(root / 'm' / 'x.png', 1)
    _write(root / 'm' / _wnids(1)[0] / 'y.png', 1)
    return [f'imagenet={root / "m"}'], None, ['holds both class folders']


def _case_empty_class_folder(root: pathlib.Path):
    _write(root / 's' / _wnids(1)[0] / 'y.png', 1)
    (root / 's' / _wnids(2)[1]).mkdir()
    return [f'sketch={root / "s"}'], None, ['has no image files', str(root / 's' / _wnids(2)[1])]


def _case_unknown_kind(root: pathlib.Path):
    (root / 'x').mkdir()
    return [f'imagenet-c={root / "x"}'], None, ['expected KIND=PATH', 'imagenet, real, v2, a, r, sketch']


def _case_missing_folder(root: pathlib.Path):
    return [f'r={root / "nope"}'], None, ['does not exist', '200 folders named by wnid']


def _case_bad_labels_line(root: pathlib.Path):
    _write(root / 'val' / 'ILSVRC2012_val_00000001.JPEG', 1)
    (root / 'l.txt').write_text('ILSVRC2012_val_00000001.JPEG 65\n')
    return [f'imagenet={root / "val"}'], str(root / 'l.txt'), ['line 1', "<file name> <wnid>"]


def _case_same_set_twice(root: pathlib.Path):
    _write(root / 'in' / _wnids(1)[0] / 'x.png', 1)
    return [f'imagenet={root / "in"}', f'imagenet={root / "in"}/'], None, ['given twice']


ERROR_CASES = [v for k, v in sorted(globals().items()) if k.startswith('_case_')]


@pytest.mark.parametrize('case', ERROR_CASES, ids=[c.__name__[len('_case_'):] for c in ERROR_CASES])
def test_layout_problems_are_one_line_naming_set_folder_and_expectation(tmp_path, case):
    specs, labels, needles = case(tmp_path)
    with pytest.raises(UserError) as info:
        for spec in eval_sets.parse_eval_sets(specs, labels):
            eval_sets.build_eval_set(spec, None)
    message = str(info.value)
    assert '\n' not in message
    for needle in needles:
        assert needle in message, message


# ----------------------------------------------------------------------------------------------------------------------
# Distributed: 3 gloo processes give the 1-process numbers
# ----------------------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _numbers(r: Dict[str, Any]) -> tuple:
    return r['name'], r['images'], r['left_out'], r['acc1'], r['acc5']


@pytest.mark.slow
@pytest.mark.distributed
def test_three_processes_give_the_single_process_numbers(tmp_path, manifest, all_results):
    path = tmp_path / 'manifest.json'
    path.write_text(json.dumps(manifest))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '3', '--master_port', str(_free_port()),
           str(pathlib.Path(__file__)), str(path), str(tmp_path / 'out.json')]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((tmp_path / 'out.json').read_text())
    single = [dataclasses.asdict(r) for r in all_results.values()]
    for layout in ('sharded', 'rank0_only'):
        got = out[layout]
        assert [_numbers(r) for r in got] == [_numbers(r) for r in single], layout  # counts: exactly equal
        for g, s in zip(got, single):  # loss: the same per-image values, summed in another order
            assert (g['loss'] is None and s['loss'] is None) or g['loss'] == pytest.approx(s['loss'], rel=1e-6)
    assert out['world_size'] == 3 and out['shard_sizes'] == [[len(range(r, n, 3)) for r in range(3)]
                                                             for n in out['set_sizes']]


# ----------------------------------------------------------------------------------------------------------------------
# main.py --eval --eval_sets: one command, the numbers of evaluate_sets called directly
# ----------------------------------------------------------------------------------------------------------------------

CLI_ARGS = argparse.Namespace(input_size=32, crop_pct=None, imagenet_default_mean_and_std=True, data_backend='pil',
                              remode='pixel', batch_size=4)  # hornet_micro_7x7 at 32 px: the 40 px images cropped


def _micro(num_classes: int, favoured: int, seed: int) -> nn.Module:
    """A micro HorNet whose head prefers class ``favoured`` by a wide margin, so that accuracies are not all 0."""
    import timm

    import models  # noqa: F401  (registers the HorNet variants)
    torch.manual_seed(seed)
    model = timm.create_model('hornet_micro_7x7', num_classes=num_classes)
    with torch.no_grad():
        model.head.bias[favoured] += 10.0
    return model.eval()


def _direct(model: nn.Module, specs: Sequence[str], num_classes: int) -> List[eval_sets.SetResult]:
    """evaluate_sets called directly, with --eval's transform and loader (1.5 x --batch_size per batch)."""
    sets = eval_sets.build_eval_sets(eval_sets.parse_eval_sets(list(specs)), eval_sets.eval_transform(CLI_ARGS))
    wrap = lambda loader: loaders.wrap_loader(loader, CLI_ARGS, torch.device('cpu'))  # noqa: E731
    return eval_sets.evaluate_sets(model, sets, num_classes=num_classes, make_loader=lambda d: eval_sets.eval_loader(
        d, batch_size=int(1.5 * CLI_ARGS.batch_size), wrap=wrap))


def _cli(argv: Sequence[str]) -> int:
    import main
    return main.cli(['--device', 'cpu', '--batch_size', str(CLI_ARGS.batch_size), '--num_workers', '0', *argv])


def _table_rows(stdout: str) -> List[List[str]]:
    """The rows of a printed table (name, images, Acc@1, Acc@5, loss; img/s left out: it is a timing)."""
    lines = stdout.splitlines()
    start = lines.index(next(line for line in lines if line.split()[:2] == ['set', 'images'])) + 2
    rows = []
    for line in lines[start:]:
        if not line.strip() or ':' in line.split()[0] or line.startswith('EMA'):
            break
        rows.append(line.split()[:5])
    return rows


def _expected_rows(results: Sequence[eval_sets.SetResult]) -> List[List[str]]:
    return [[r.name, str(r.images), f'{r.acc1:.3f}', f'{r.acc5:.3f}', f'{r.loss:.4f}'] for r in results]


def _same_numbers(got: Dict[str, Any], want: Sequence[eval_sets.SetResult]) -> None:
    assert list(got) == [r.name for r in want]
    for r in want:
        g = got[r.name]
        assert (g['images'], g['classes'], g['acc1'], g['acc5']) == (r.images, r.classes, r.acc1, r.acc5), r.name
        assert g['loss'] == pytest.approx(r.loss, rel=1e-5), r.name  # thread counts may reorder float sums


def test_eval_sets_from_the_command_line_print_and_save_what_evaluate_sets_computes(tmp_path, manifest, capsys):
    import hashlib

    import checkpoints
    specs = [f'imagenet={manifest["root"]}/imagenet', f'a={manifest["root"]}/a']
    a_idx = eval_sets.subset_indices('a')
    model, ema = _micro(1000, favoured=5, seed=1), _micro(1000, favoured=a_idx[7], seed=2)
    ckpt = checkpoints.save_training_checkpoint(tmp_path, 0, {  # what main.py writes; it records model and size
        'model': model.state_dict(), 'model_ema': ema.state_dict(), 'optimizer': {}, 'epoch': 0, 'global_step': 1,
        'step_in_epoch': 0, 'epoch_complete': True,
        'args': {'model': 'hornet_micro_7x7', 'input_size': 32, 'nb_classes': 1000}})
    out = tmp_path / 'eval'
    assert _cli(['--eval', 'true', '--resume', str(ckpt), '--model_ema_eval', 'true', '--output_dir', str(out),
                 '--eval_sets', *specs]) == 0
    printed = capsys.readouterr().out
    want, want_ema = _direct(model, specs, 1000), _direct(ema, specs, 1000)
    assert want[0].acc1 == pytest.approx(100 * 3 / 7) and want_ema[1].acc1 == pytest.approx(100 * 3 / 7)
    assert _table_rows(printed) == _expected_rows(want)
    assert _table_rows(printed.split('EMA weights:')[1]) == _expected_rows(want_ema)
    doc = json.loads((out / 'eval.json').read_text())
    _same_numbers(doc['sets'], want)
    _same_numbers(doc['sets_ema'], want_ema)
    assert doc['checkpoint'] == str(ckpt) and doc['sha256'] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert doc['settings']['model'] == 'hornet_micro_7x7' and doc['settings']['input_size'] == 32


def test_a_22k_file_is_scored_through_its_1k_rows_without_nb_classes(tmp_path, manifest, capsys):
    from models.weights import IN22K_CLASSES, in1k_to_21k_map
    specs = [f'imagenet={manifest["root"]}/imagenet', f'sketch={manifest["root"]}/sketch']
    model = _micro(IN22K_CLASSES, favoured=int(in1k_to_21k_map()[5]), seed=3)
    path = tmp_path / 'hornet_micro_22k.pth'
    torch.save({'model': model.state_dict()}, path)  # as released: weights only, no recorded args
    out = tmp_path / 'eval'
    assert _cli(['--model', 'hornet_micro_7x7', '--input_size', '32', '--eval', '--resume', str(path),
                 '--output_dir', str(out), '--eval_sets', *specs]) == 0
    want = _direct(model, specs, IN22K_CLASSES)
    assert want[0].acc1 == pytest.approx(100 * 3 / 7)  # class 5, through its 22K row
    assert _table_rows(capsys.readouterr().out) == _expected_rows(want)
    doc = json.loads((out / 'eval.json').read_text())
    _same_numbers(doc['sets'], want)
    assert doc['settings']['head_classes'] == IN22K_CLASSES and 'sets_ema' not in doc


@pytest.mark.parametrize('argv, message', [
    (['--eval_sets', 'v2=/x'], '--eval_sets scores the weights of --resume on test sets and exits: add --eval true'),
    (['--eval', '--resume', '{ckpt}', '--eval_labels', '/x.csv'], '--eval_labels /x.csv labels a flat ImageNet val'),
    (['--eval', '--resume', '{ckpt}', '--eval_sets', 'v2={root}/imagenet'], "--eval_sets v2={root}/imagenet: "),
])
def test_eval_set_flag_errors_are_one_line_before_the_model_is_built(tmp_path, manifest, capsys, argv, message):
    ckpt = tmp_path / 'w.pth'
    torch.save({'model': {}}, ckpt)
    fill = dict(ckpt=str(ckpt), root=manifest['root'])
    assert _cli(['--model', 'hornet_micro_7x7', *[a.format(**fill) for a in argv]]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and message.format(**fill) in errors[0], err
    assert 'Model hornet_micro_7x7' not in err and 'Traceback' not in err


def _distributed_main(manifest_path: str, out_path: str) -> None:
    import torch.distributed as dist

    import utils
    ds = utils.init_distributed('cpu')
    manifest = json.loads(pathlib.Path(manifest_path).read_text())
    result: Dict[str, Any] = {'world_size': ds.world_size}
    for layout, dist_eval in (('sharded', True), ('rank0_only', False)):
        rs = run_sets(manifest, manifest['specs'], manifest['csv'], dist_eval=dist_eval)
        result[layout] = [dataclasses.asdict(r) for r in rs]
    built = eval_sets.build_eval_sets(eval_sets.parse_eval_sets(manifest['specs'], manifest['csv']), None)
    sizes = torch.tensor([len(eval_sets.eval_loader(s, batch_size=2).sampler) for s in built])
    gathered = [torch.zeros_like(sizes) for _ in range(ds.world_size)]
    dist.all_gather(gathered, sizes)
    result['set_sizes'] = [len(s) for s in built]
    result['shard_sizes'] = torch.stack(gathered, 1).tolist()
    if ds.is_main:
        pathlib.Path(out_path).write_text(json.dumps(result))
    utils.cleanup_distributed()


if __name__ == '__main__':
    _distributed_main(sys.argv[1], sys.argv[2])
