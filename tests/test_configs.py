"""The recipe configs and every command of TRAINING.md parse with ``main.parse_args`` (nothing is trained).

Parsing validates the flags (names, values, model names, --resume/--finetune files), so a config or a documented
command that drifts from ``main.py`` fails here. Commands are parsed with ``--device cpu`` appended (this runs on
CPU-only machines, where ``--device cuda`` is rejected). Each test runs in a temporary working directory in which
the files that configs refer to (``./pretrained/...``) exist as empty placeholders; parsing only checks that they
exist, it does not read them.
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


def _load(path: Path) -> Dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _documented_total(path: Path) -> Tuple[int, int, int, int, int]:
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
        data = _load(cfg)
        for key in ('resume', 'finetune'):
            value = data.get(key)
            if value and not os.path.isabs(value):
                target = tmp_path / value
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b'')
    return tmp_path


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
    data = _load(path)
    assert args.model == data['model']
    for key in ('batch_size', 'update_freq', 'epochs', 'input_size'):
        if key in data:
            assert getattr(args, key) == data[key], key
    for key in ('lr', 'weight_decay', 'drop_path', 'clip_grad', 'layer_decay'):
        if key in data:
            assert getattr(args, key) == pytest.approx(float(data[key])), key


@pytest.mark.parametrize('path', RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_model_is_registered(path):
    model = _load(path)['model']
    assert model.startswith('hornet_')
    assert model in timm.list_models('hornet_*'), model


@pytest.mark.parametrize('path', RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_total_batch_comment(path):
    nodes, gpus, batch_size, update_freq, total = _documented_total(path)
    data = _load(path)
    assert (data['batch_size'], data['update_freq']) == (batch_size, update_freq)
    assert nodes * gpus * batch_size * update_freq == total
    assert data['recipe_batch_size'] == total  # the warning for a run at another effective batch uses it


def test_no_config_writes_into_a_fixed_tensorboard_dir():
    """TensorBoard logs follow --output_dir (<output_dir>/tb) unless --log_dir is given: a config that set
    log_dir would send every run of it, whatever its --output_dir, into one folder."""
    for path in CONFIGS:
        assert 'log_dir' not in _load(path), path.name


@pytest.mark.parametrize('path', RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_has_no_launcher_keys(path):
    assert not {'--' + k for k in _load(path)} & set(LAUNCHER_FLAGS)


# ------------------------------------------------------------------------------------------------ TRAINING.md

def _shell_blocks(text: str) -> List[str]:
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
    assert current is None, 'TRAINING.md has an unclosed code fence'
    return blocks


def _commands(text: str) -> List[List[str]]:
    """Every command of the shell blocks as tokens (comments dropped, backslash continuations joined)."""
    out = []
    for block in _shell_blocks(text):
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


def _split_at(tokens: List[str], script: str) -> Optional[Tuple[List[str], List[str]]]:
    for i, tok in enumerate(tokens):
        if os.path.basename(tok) == script:
            return tokens[:i], tokens[i + 1:]
    return None


def _value(flags: List[str], name: str) -> Optional[str]:
    value = None
    for i, tok in enumerate(flags):
        if tok == name and i + 1 < len(flags):
            value = flags[i + 1]
        elif tok.startswith(name + '='):
            value = tok.split('=', 1)[1]
    return value


def _for_cpu(flags: List[str], tmp: Path, device: bool = True) -> List[str]:
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
    if (_value(flags, '--use_amp') or '').lower() in ('true', '1', 'yes') and _value(flags, '--amp_dtype') is None:
        out += ['--amp_dtype', 'bfloat16']  # fp16 autocast is CUDA-only; the flag combination is what is checked
    return out


def _without_launcher_flags(flags: List[str]) -> List[str]:
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


def _processes(launcher: List[str]) -> int:
    """Processes a command starts: torchrun's --nnodes x --nproc_per_node, else 1."""
    if not any(os.path.basename(t) == 'torchrun' or t == 'torch.distributed.launch' for t in launcher):
        return 1
    nproc = _value(launcher, '--nproc_per_node') or _value(launcher, '--nproc-per-node') or '1'
    nnodes = _value(launcher, '--nnodes') or '1'
    return int(nproc) * int(nnodes.split(':')[-1])


COMMANDS = _commands(TRAINING_MD.read_text()) if TRAINING_MD.is_file() else []
MAIN_COMMANDS = [s for s in (_split_at(c, 'main.py') for c in COMMANDS) if s is not None]
SUBMITIT_COMMANDS = [s for s in (_split_at(c, 'run_with_submitit.py') for c in COMMANDS) if s is not None]


def test_training_md_has_the_commands():
    assert TRAINING_MD.is_file()
    # 10 recipes x (torchrun 1 node, torchrun N nodes, one GPU), evaluation and quick-start commands
    assert len(MAIN_COMMANDS) >= 35, len(MAIN_COMMANDS)
    assert len(SUBMITIT_COMMANDS) == 10, len(SUBMITIT_COMMANDS)
    documented = {_value(flags, '--config') for _, flags in MAIN_COMMANDS}
    for cfg in CONFIGS:
        assert f'configs/{cfg.name}' in documented, f'{cfg.name} is not used by any command in TRAINING.md'


@pytest.mark.parametrize('launcher,flags', MAIN_COMMANDS,
                         ids=[f'{i}-{_value(f, "--config") or _value(f, "--model")}' for i, (_, f) in
                              enumerate(MAIN_COMMANDS)])
def test_training_md_main_command_parses(launcher, flags, workdir):
    args = main.parse_args(_for_cpu(flags, workdir))
    config = _value(flags, '--config')
    if config and Path(config).name in {p.name for p in RECIPES} and not args.eval:
        # every documented way to run a recipe keeps its original effective batch
        *_, total = _documented_total(ROOT / config)
        assert _processes(launcher) * args.batch_size * args.update_freq == total, ' '.join(launcher + flags)


@pytest.mark.parametrize('launcher,flags', SUBMITIT_COMMANDS,
                         ids=[_value(f, '--job_dir') or str(i) for i, (_, f) in enumerate(SUBMITIT_COMMANDS)])
def test_training_md_submitit_command_matches_its_config(launcher, flags, workdir):
    """The original command (launcher flags removed) and its config give the same parsed flags."""
    original = main.parse_args(_for_cpu(_without_launcher_flags(flags), workdir))
    job_dir = _value(flags, '--job_dir')
    matches = [p for p in RECIPES if _load(p).get('output_dir') == job_dir]
    assert len(matches) == 1, f'no single config with output_dir {job_dir}'
    from_config = main.parse_args(['--config', str(matches[0]), '--data_path', original.data_path,
                                   '--device', 'cpu'])
    nodes, gpus = int(_value(flags, '--nodes')), int(_value(flags, '--ngpus'))
    assert _documented_total(matches[0])[:2] == (nodes, gpus)
    a, b = vars(original), vars(from_config)
    differing = {k: (a[k], b[k]) for k in a if k not in NOT_COMPARED and a[k] != b[k]}
    assert not differing, f'{matches[0].name} differs from the original command: {differing}'


@pytest.mark.parametrize('launcher,flags', SUBMITIT_COMMANDS,
                         ids=[_value(f, '--job_dir') or str(i) for i, (_, f) in enumerate(SUBMITIT_COMMANDS)])
def test_training_md_submitit_command_parses_with_the_launcher(launcher, flags, workdir):
    """The original commands are accepted unchanged by this project's run_with_submitit.py (nothing is submitted;
    it does not check for a GPU on the submitting machine)."""
    launcher_module = pytest.importorskip('run_with_submitit')
    args = launcher_module.parse_args(_for_cpu(flags, workdir, device=False))
    assert (args.nodes, args.ngpus) == (int(_value(flags, '--nodes')), int(_value(flags, '--ngpus')))
    assert args.output_dir == os.path.abspath(_value(flags, '--job_dir'))
