"""The recipe configs against the original release's commands, TRAINING.md's recipe table against the configs, and
every command and launch template of TRAINING.md parsed with ``main.parse_args`` (nothing is trained).

Parsing validates the flags (names, values, model names, --resume/--finetune files), so a config, a table row or a
documented command that drifts from ``main.py`` or from the original recipe fails here. Commands are parsed with
``--device cpu`` appended (this runs on CPU-only machines, where ``--device cuda`` is rejected). Each test runs in
a temporary working directory in which the files that configs refer to (``./pretrained/...``) exist as empty
placeholders; parsing only checks that they exist, it does not read them.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import timm
import yaml

import main
import models  # noqa: F401  (registers the HorNet variants with timm)

ROOT = Path(__file__).resolve().parent.parent
TRAINING_MD = ROOT / 'TRAINING.md'
CONFIGS = sorted(ROOT.glob('configs/*.yaml'))
RECIPES = [p for p in CONFIGS if p.name.startswith(('in1k_', 'in22k_'))]

# Flags of run_with_submitit.py that are not main.py flags: name -> whether it takes a value.
LAUNCHER_FLAGS = {'--nodes': True, '--ngpus': True, '--timeout': True, '--job_name': True, '--job_dir': True,
                  '--partition': True, '--comment': True, '--use_volta32': False, '--debug': False}
FILE_FLAGS = ('--resume', '--finetune')
# Parsed values that legitimately differ between a config run and the original command it reproduces
# (recipe_batch_size only records the original's effective batch, for the warning when a run differs).
NOT_COMPARED = {'config', 'output_dir', 'recipe_batch_size'}

# The ten recipe commands of the original release's TRAINING.md, verbatim: the reference every config is checked
# against (TRAINING.md shows the first; the table gives the values of all ten).
ORIGINAL_COMMANDS = [
    """python run_with_submitit.py --nodes 4 --ngpus 8 \\
--model hornet_tiny_7x7 --drop_path 0.2 --clip_grad 100 \\
--batch_size 128 --lr 4e-3 --update_freq 1 \\
--model_ema true --model_ema_eval true \\
--data_path /path/to/imagenet-1k \\
--job_dir ./logs/hornet_tiny_7x7""",
    """python run_with_submitit.py --nodes 4 --ngpus 8 \\
--model hornet_tiny_gf --drop_path 0.2 --clip_grad 1 \\
--batch_size 128 --lr 4e-3 --update_freq 1 \\
--model_ema true --model_ema_eval true \\
--data_path /path/to/imagenet-1k \\
--job_dir ./logs/hornet_tiny_gf""",
    """python run_with_submitit.py --nodes 4 --ngpus 8 \\
--model hornet_small_7x7 --drop_path 0.4 --clip_grad 5 \\
--batch_size 64 --lr 4e-3 --update_freq 2 \\
--model_ema true --model_ema_eval true \\
--data_path /path/to/imagenet-1k \\
--job_dir ./logs/hornet_small_7x7""",
    """python run_with_submitit.py --nodes 4 --ngpus 8 \\
--model hornet_small_gf --drop_path 0.4 --clip_grad 1 \\
--batch_size 64 --lr 4e-3 --update_freq 2 --aa rand-m12-mstd0.5-inc1 \\
--model_ema true --model_ema_eval true \\
--data_path /path/to/imagenet-1k \\
--job_dir ./logs/hornet_small_gf""",
    """python run_with_submitit.py --nodes 4 --ngpus 8 \\
--model hornet_base_7x7 --drop_path 0.5 --clip_grad 5 \\
--batch_size 64 --lr 4e-3 --update_freq 2 \\
--model_ema true --model_ema_eval true \\
--data_path /path/to/imagenet-1k \\
--job_dir ./logs/hornet_base_7x7""",
    """python run_with_submitit.py --nodes 4 --ngpus 8 \\
--model hornet_base_gf --drop_path 0.5 --clip_grad 1 \\
--batch_size 64 --lr 4e-3 --update_freq 2 --aa rand-m15-mstd0.5-inc1 \\
--model_ema true --model_ema_eval true \\
--data_path /path/to/imagenet-1k \\
--job_dir ./logs/hornet_base_gf""",
    """python run_with_submitit.py --nodes 8 --ngpus 8 \\
--model hornet_large_7x7 --drop_path 0.2 --clip_grad 5 --weight_decay 0.1 \\
--batch_size 32 --lr 4e-3 --update_freq 2 \\
--warmup_epochs 5 --epochs 90 \\
--data_set image_folder --disable_eval true \\
--data_path /path/to/imagenet-22k \\
--job_dir ./logs/hornet_large_7x7_in22k""",
    """python run_with_submitit.py --nodes 8 --ngpus 8 \\
--model hornet_large_gf --drop_path 0.2 --clip_grad 1 --weight_decay 0.1 \\
--batch_size 32 --lr 4e-3 --update_freq 2 \\
--warmup_epochs 5 --epochs 90 \\
--data_set image_folder --disable_eval true \\
--data_path /path/to/imagenet-22k \\
--job_dir ./logs/hornet_large_gf_in22k""",
    """python run_with_submitit.py --nodes 4 --ngpus 8 \\
--model hornet_large_7x7 --drop_path 0.4 --clip_grad 1 \\
--batch_size 16 --lr 5e-5 --update_freq 1 --weight_decay 1e-8 \\
--warmup_epochs 0 --input_size 384 --epochs 30 \\
--model_ema true --model_ema_eval true --cutmix 0 --mixup 0 \\
--layer_decay 0.7 --finetune ./pretrained/hornet_large_7x7_in22k.pth \\
--data_path /path/to/imagenet-1k \\
--job_dir ./logs/hornet_larget_7x7_img384_ft1k""",
    """python run_with_submitit.py --nodes 4 --ngpus 8 \\
--model hornet_large_gf_img384 --drop_path 0.4 --clip_grad 1 \\
--batch_size 16 --lr 5e-5 --update_freq 1 --weight_decay 1e-8 \\
--warmup_epochs 0 --input_size 384 --epochs 30 \\
--model_ema true --model_ema_eval true --cutmix 0 --mixup 0 \\
--layer_decay 0.7 --finetune ./pretrained/hornet_large_gf_in22k.pth \\
--data_path /path/to/imagenet-1k \\
--job_dir ./logs/hornet_larget_gf_img384_ft1k""",
]


def load_yaml(path: Path) -> Dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def documented_total(path: Path) -> Tuple[int, int, int, int, int]:
    """(nodes, gpus, batch_size, update_freq, total) from the config's 'Total batch of the original run' comment."""
    m = re.search(r'Total batch of the original run: (\d+) nodes x (\d+) GPUs x batch_size (\d+) x '
                  r'update_freq (\d+) = (\d+)', path.read_text())
    assert m, f'{path.name}: no "Total batch of the original run" comment'
    return tuple(int(g) for g in m.groups())  # type: ignore[return-value]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temporary working directory holding placeholder files for every --resume/--finetune in the configs."""
    monkeypatch.chdir(tmp_path)
    for cfg in CONFIGS:
        data = load_yaml(cfg)
        for key in ('resume', 'finetune'):
            value = data.get(key)
            if value and not os.path.isabs(value):
                target = tmp_path / value
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b'')
    return tmp_path


# ------------------------------------------------------------------------------------------------ helpers

def shell_blocks(text: str) -> List[str]:
    """Bodies of the ```bash (and untagged ```) fenced blocks."""
    blocks, current, lang = [], None, None
    for line in text.splitlines():
        if current is None:
            if line.startswith('```'):
                lang, current = line[3:].strip(), []
        elif line.strip() == '```':
            if lang in ('bash', 'sh', 'shell', ''):
                blocks.append('\n'.join(current))
            current = None
        else:
            current.append(line)
    assert current is None, 'unclosed code fence'
    return blocks


def shell_commands(text: str) -> List[List[str]]:
    """Every command of the shell blocks as tokens (comments dropped, backslash continuations joined)."""
    out = []
    for block in shell_blocks(text):
        logical, pending = [], ''
        for line in block.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith('#')):
                continue
            if line.rstrip().endswith('\\'):
                pending += line.rstrip()[:-1] + ' '
                continue
            logical.append(pending + line)
            pending = ''
        if pending:
            logical.append(pending)
        out.extend(shlex.split(cmd, comments=True) for cmd in logical)
    return [c for c in out if c]


def split_at(tokens: List[str], script: str) -> Optional[Tuple[List[str], List[str]]]:
    """(launcher tokens, flags) around the first token naming ``script``, or None."""
    for i, tok in enumerate(tokens):
        if os.path.basename(tok) == script:
            return tokens[:i], tokens[i + 1:]
    return None


def flag_value(flags: List[str], name: str) -> Optional[str]:
    value = None
    for i, tok in enumerate(flags):
        if tok == name and i + 1 < len(flags):
            value = flags[i + 1]
        elif tok.startswith(name + '='):
            value = tok.split('=', 1)[1]
    return value


def for_cpu(flags: List[str], tmp: Path, device: bool = True) -> List[str]:
    """The flags made parseable here: --config resolved against the repository, missing --resume/--finetune files
    replaced by an empty temporary file, --device cpu appended (with bf16 when the command asks for fp16 AMP)
    unless ``device`` is False."""
    out = list(flags)
    for i, tok in enumerate(out[:-1]):
        if tok == '--config' and not os.path.isabs(out[i + 1]) and (ROOT / out[i + 1]).is_file():
            out[i + 1] = str(ROOT / out[i + 1])
        if tok in FILE_FLAGS and not os.path.isfile(out[i + 1]):
            placeholder = tmp / 'placeholders' / Path(out[i + 1]).name
            placeholder.parent.mkdir(parents=True, exist_ok=True)
            placeholder.write_bytes(b'')
            out[i + 1] = str(placeholder)
    if not device:
        return out
    out += ['--device', 'cpu']
    amp = (flag_value(flags, '--use_amp') or '').lower() in ('true', '1', 'yes')
    if amp and flag_value(flags, '--amp_dtype') is None:
        out += ['--amp_dtype', 'bfloat16']  # fp16 autocast is CUDA-only; the flag combination is what is checked
    return out


def without_launcher_flags(flags: List[str]) -> List[str]:
    out, skip = [], False
    for tok in flags:
        if skip:
            skip = False
            continue
        name = tok.split('=', 1)[0]
        if name in LAUNCHER_FLAGS:
            skip = LAUNCHER_FLAGS[name] and '=' not in tok
            continue
        out.append(tok)
    return out


def processes(launcher: List[str]) -> int:
    """Processes a command starts: torchrun's --nnodes x --nproc_per_node, else 1."""
    if not any(os.path.basename(t) == 'torchrun' or t == 'torch.distributed.launch' for t in launcher):
        return 1
    nproc = flag_value(launcher, '--nproc_per_node') or flag_value(launcher, '--nproc-per-node') or '1'
    nnodes = flag_value(launcher, '--nnodes') or '1'
    return int(nproc) * int(nnodes.split(':')[-1])


def recipe_of(job_dir: str) -> Path:
    """The recipe config whose output_dir is the original command's --job_dir."""
    matches = [p for p in RECIPES if load_yaml(p).get('output_dir') == job_dir]
    assert len(matches) == 1, f'no single config with output_dir {job_dir}'
    return matches[0]


def _original(command: str) -> List[str]:
    return split_at(shell_commands(f'```bash\n{command}\n```')[0], 'run_with_submitit.py')[1]


ORIGINALS = [_original(c) for c in ORIGINAL_COMMANDS]
ORIGINAL_IDS = [flag_value(f, '--job_dir') for f in ORIGINALS]


# ------------------------------------------------------------------------------------------------ configs

def test_every_recipe_has_a_config():
    names = {p.stem for p in RECIPES}
    assert len(RECIPES) == 10, sorted(names)
    for variant in ('tiny_7x7', 'tiny_gf', 'small_7x7', 'small_gf', 'base_7x7', 'base_gf'):
        assert f'in1k_hornet_{variant}' in names
    for variant in ('7x7', 'gf'):
        assert f'in22k_hornet_large_{variant}' in names
        assert f'in22k_ft_in1k_hornet_large_{variant}_384' in names


@pytest.mark.parametrize('path', CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parses(path, workdir):
    args = main.parse_args(['--config', str(path), '--device', 'cpu'])
    data = load_yaml(path)
    assert args.model == data['model']
    for key in ('batch_size', 'update_freq', 'epochs', 'input_size'):
        if key in data:
            assert getattr(args, key) == data[key], key
    for key in ('lr', 'weight_decay', 'drop_path', 'clip_grad', 'layer_decay'):
        if key in data:
            assert getattr(args, key) == pytest.approx(float(data[key])), key


@pytest.mark.parametrize('path', RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_model_is_registered(path):
    model = load_yaml(path)['model']
    assert model.startswith('hornet_')
    assert model in timm.list_models('hornet_*'), model


@pytest.mark.parametrize('path', RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_total_batch_comment(path):
    nodes, gpus, batch_size, update_freq, total = documented_total(path)
    data = load_yaml(path)
    assert (data['batch_size'], data['update_freq']) == (batch_size, update_freq)
    assert nodes * gpus * batch_size * update_freq == total
    assert data['recipe_batch_size'] == total  # the warning for a run at another effective batch uses it


def test_no_config_writes_into_a_fixed_tensorboard_dir():
    """TensorBoard logs follow --output_dir (<output_dir>/tb) unless --log_dir is given: a config that set
    log_dir would send every run of it, whatever its --output_dir, into one folder."""
    for path in CONFIGS:
        assert 'log_dir' not in load_yaml(path), path.name


@pytest.mark.parametrize('path', RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_has_no_launcher_keys(path):
    assert not {'--' + k for k in load_yaml(path)} & set(LAUNCHER_FLAGS)


# ------------------------------------------------------------------------------------------------ original commands

def test_every_recipe_has_one_original_command():
    assert sorted(recipe_of(job_dir).name for job_dir in ORIGINAL_IDS) == sorted(p.name for p in RECIPES)


@pytest.mark.parametrize('flags', ORIGINALS, ids=ORIGINAL_IDS)
def test_original_command_matches_its_config(flags, workdir):
    """The original command (launcher flags removed) and its config give the same parsed flags."""
    original = main.parse_args(for_cpu(without_launcher_flags(flags), workdir))
    config = recipe_of(flag_value(flags, '--job_dir'))
    from_config = main.parse_args(['--config', str(config), '--data_path', original.data_path, '--device', 'cpu'])
    nodes, gpus = int(flag_value(flags, '--nodes')), int(flag_value(flags, '--ngpus'))
    assert documented_total(config)[:2] == (nodes, gpus)
    a, b = vars(original), vars(from_config)
    differing = {k: (a[k], b[k]) for k in a if k not in NOT_COMPARED and a[k] != b[k]}
    assert not differing, f'{config.name} differs from the original command: {differing}'


@pytest.mark.parametrize('flags', ORIGINALS, ids=ORIGINAL_IDS)
def test_original_command_parses_with_the_launcher(flags, workdir):
    """The original commands are accepted unchanged by this project's run_with_submitit.py (nothing is submitted;
    it does not check for a GPU on the submitting machine)."""
    launcher_module = pytest.importorskip('run_with_submitit')
    args = launcher_module.parse_args(for_cpu(flags, workdir, device=False))
    assert (args.nodes, args.ngpus) == (int(flag_value(flags, '--nodes')), int(flag_value(flags, '--ngpus')))
    assert args.output_dir == os.path.abspath(flag_value(flags, '--job_dir'))


# ------------------------------------------------------------------------------------------------ TRAINING.md: table

TABLE_HEADER = ('| recipe (`configs/<recipe>.yaml`) | `--model` | `--data_set` | epochs (warm-up) | lr | '
                'weight decay | drop_path | clip_grad | also | original: nodes x GPUs x batch x update_freq | '
                'effective batch | `--update_freq` on 8 GPUs / 1 GPU |')
# Values of a recipe the table shows elsewhere than in its own column (batch, EMA), that are not recipe values
# (paths), or that follow from another column (nb_classes: read from the class folders for image_folder).
NOT_IN_TABLE = {'data_path', 'output_dir', 'config', 'recipe_batch_size', 'batch_size', 'update_freq',
                'model_ema', 'model_ema_eval', 'nb_classes'}


def table_rows(text: str) -> Dict[str, List[str]]:
    """TRAINING.md's recipe table: recipe name -> its cells (backticks kept)."""
    lines = text.splitlines()
    assert TABLE_HEADER in lines, 'TRAINING.md has no recipe table with the expected columns'
    rows = {}
    for line in lines[lines.index(TABLE_HEADER) + 2:]:
        if not line.startswith('|'):
            break
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        rows[cells[0].strip('`')] = cells
    return rows


def _code(cell: str) -> str:
    assert cell.startswith('`') and cell.endswith('`'), cell
    return cell.strip('`')


def _ints(cell: str) -> List[int]:
    return [int(x) for x in re.findall(r'\d+', cell)]


ROWS = table_rows(TRAINING_MD.read_text()) if TRAINING_MD.is_file() else {}


def test_training_md_table_lists_every_recipe():
    assert sorted(ROWS) == sorted(p.stem for p in RECIPES)


@pytest.mark.parametrize('name', sorted(ROWS))
def test_training_md_table_row_matches_its_config(name, workdir):
    """Each column is the config's value; the 'also' flags restate the config (adding them changes nothing); every
    value in which the config departs from main.py's defaults is in the row."""
    (_, model, data_set, epochs, lr, wd, drop_path, clip_grad, also, original, effective, update_freqs) = ROWS[name]
    config = ROOT / 'configs' / f'{name}.yaml'
    args = main.parse_args(['--config', str(config), '--device', 'cpu'])
    assert (args.model, args.data_set) == (_code(model), _code(data_set))
    assert [args.epochs, args.warmup_epochs] == _ints(epochs)
    for cell, value in ((lr, args.lr), (wd, args.weight_decay), (drop_path, args.drop_path),
                        (clip_grad, args.clip_grad)):
        assert float(cell) == pytest.approx(value), (name, cell, value)
    ema = args.model_ema and args.model_ema_eval
    assert ('EMA' in also.split(', ')) == ema, also
    restated = [tok for part in re.findall(r'`([^`]+)`', also) for tok in shlex.split(part)]
    with_also = main.parse_args(['--config', str(config), '--device', 'cpu'] + restated)
    assert vars(with_also) == vars(args), f'{name}: the "also" flags {restated} differ from the config'
    defaults = vars(main.parse_args(['--device', 'cpu']))
    shown = {'model', 'data_set', 'epochs', 'warmup_epochs', 'lr', 'weight_decay', 'drop_path', 'clip_grad'}
    shown |= {tok[2:] for tok in restated if tok.startswith('--')}
    missing = {k for k, v in vars(args).items() if v != defaults[k]} - shown - NOT_IN_TABLE
    assert not missing, f'{name}: the row does not show {sorted(missing)}'
    nodes, gpus, batch_size, update_freq, total = documented_total(config)
    assert _ints(original) == [nodes, gpus, args.batch_size, args.update_freq]
    assert (batch_size, update_freq) == (args.batch_size, args.update_freq)
    assert int(effective) == total
    u8, u1 = _ints(update_freqs)
    assert 8 * args.batch_size * u8 == total and args.batch_size * u1 == total, (name, u8, u1)


# ------------------------------------------------------------------------------------------------ TRAINING.md: commands

COMMANDS = shell_commands(TRAINING_MD.read_text()) if TRAINING_MD.is_file() else []
MAIN_COMMANDS = [s for s in (split_at(c, 'main.py') for c in COMMANDS) if s is not None]
SUBMITIT_COMMANDS = [s for s in (split_at(c, 'run_with_submitit.py') for c in COMMANDS) if s is not None]


def _is_template(launcher: List[str], flags: List[str]) -> bool:
    return any('<' in tok for tok in launcher + flags)


MAIN_TEMPLATES = [c for c in MAIN_COMMANDS if _is_template(*c)]
SUBMITIT_TEMPLATES = [c for c in SUBMITIT_COMMANDS if _is_template(*c)]
PLAIN_MAIN = [c for c in MAIN_COMMANDS if not _is_template(*c)]
PLAIN_SUBMITIT = [c for c in SUBMITIT_COMMANDS if not _is_template(*c)]


def instantiate(tokens: List[str], recipe: str, update_freq: Optional[int] = None) -> List[str]:
    """A template's tokens for one recipe: <recipe>, <N> (the original nodes), <R>, <HOST> and <U> filled in."""
    nodes = documented_total(ROOT / 'configs' / f'{recipe}.yaml')[0]
    values = {'<recipe>': recipe, '<N>': str(nodes), '<R>': '0', '<HOST>': '127.0.0.1', '<U>': str(update_freq)}
    out = []
    for tok in tokens:
        for key, value in values.items():
            tok = tok.replace(key, value)
        assert '<' not in tok, f'unknown placeholder in {tok!r}'
        out.append(tok)
    return out


def test_training_md_has_the_commands():
    assert TRAINING_MD.is_file()
    # templates: torchrun on one machine, on the original N machines, and one process; submitit
    kinds = {(processes(instantiate(launcher, RECIPES[0].stem)) > 1, '--nnodes' in launcher)
             for launcher, _ in MAIN_TEMPLATES}
    assert kinds == {(True, False), (True, True), (False, False)}, kinds
    assert len(SUBMITIT_TEMPLATES) == 1
    documented = {flag_value(flags, '--config') for _, flags in PLAIN_MAIN + PLAIN_SUBMITIT}
    assert 'configs/quickstart.yaml' in documented
    assert {flag_value(flags, '--config') for _, flags in MAIN_TEMPLATES + SUBMITIT_TEMPLATES} == \
        {'configs/<recipe>.yaml'}
    # the original command shown is one of the originals, verbatim
    shown = [flags for _, flags in PLAIN_SUBMITIT if flag_value(flags, '--job_dir')]
    assert shown and all(flags in ORIGINALS for flags in shown)


def _template_ids(templates) -> List[str]:
    return [f'{i}-{"nnodes" if "--nnodes" in launcher else processes(instantiate(launcher, RECIPES[0].stem))}p'
            for i, (launcher, _) in enumerate(templates)]


@pytest.mark.parametrize('recipe', [p.stem for p in RECIPES])
@pytest.mark.parametrize('launcher,flags', MAIN_TEMPLATES, ids=_template_ids(MAIN_TEMPLATES))
def test_training_md_main_template_keeps_every_recipes_effective_batch(launcher, flags, recipe, workdir):
    """<U> is the table's --update_freq for the template's GPUs (8 or 1); without --update_freq the config's own
    (the original's) must give the recipe's effective batch with the original number of processes."""
    u8, u1 = _ints(ROWS[recipe][-1])
    nproc = processes(instantiate(launcher, recipe))
    assert nproc in (1, 8) or '--nnodes' in launcher, launcher
    launcher, flags = instantiate(launcher, recipe), instantiate(flags, recipe, u8 if nproc == 8 else u1)
    args = main.parse_args(for_cpu(flags, workdir))
    assert args.config.endswith(f'configs/{recipe}.yaml')
    *_, total = documented_total(ROOT / 'configs' / f'{recipe}.yaml')
    assert nproc * args.batch_size * args.update_freq == total, ' '.join(launcher + flags)


@pytest.mark.parametrize('recipe', [p.stem for p in RECIPES])
@pytest.mark.parametrize('launcher,flags', SUBMITIT_TEMPLATES, ids=[f'{i}' for i in range(len(SUBMITIT_TEMPLATES))])
def test_training_md_submitit_template_keeps_every_recipes_effective_batch(launcher, flags, recipe, workdir):
    rws = pytest.importorskip('run_with_submitit')
    args = rws.parse_args(for_cpu(instantiate(flags, recipe), workdir, device=False))
    *_, total = documented_total(ROOT / 'configs' / f'{recipe}.yaml')
    assert args.nodes * args.tasks_per_node * args.batch_size * args.update_freq == total


@pytest.mark.parametrize('launcher,flags', PLAIN_MAIN,
                         ids=[f'{i}-{flag_value(f, "--config") or flag_value(f, "--model")}' for i, (_, f) in
                              enumerate(PLAIN_MAIN)])
def test_training_md_main_command_parses(launcher, flags, workdir):
    args = main.parse_args(for_cpu(flags, workdir))
    config = flag_value(flags, '--config')
    if config and Path(config).name in {p.name for p in RECIPES} and not args.eval:
        # every documented way to run a recipe keeps its original effective batch
        *_, total = documented_total(ROOT / config)
        assert processes(launcher) * args.batch_size * args.update_freq == total, ' '.join(launcher + flags)


@pytest.mark.parametrize('launcher,flags', PLAIN_SUBMITIT,
                         ids=[flag_value(f, '--job_dir') or flag_value(f, '--config') for _, f in PLAIN_SUBMITIT])
def test_training_md_submitit_command_parses_and_keeps_its_configs_effective_batch(launcher, flags, workdir):
    rws = pytest.importorskip('run_with_submitit')
    args = rws.parse_args(for_cpu(flags, workdir, device=False))
    if flag_value(flags, '--output_dir') == '':
        assert args.output_dir == args.job_dir  # --output_dir '': the job directory
    config = flag_value(flags, '--config')
    path = ROOT / config if config else recipe_of(flag_value(flags, '--job_dir'))
    wanted = (documented_total(path)[-1] if path.name in {p.name for p in RECIPES}
              else int(load_yaml(path)['batch_size']) * int(load_yaml(path).get('update_freq', 1)))
    assert args.nodes * args.tasks_per_node * args.batch_size * args.update_freq == wanted
