"""Every ``main.py`` and ``run_with_submitit.py`` command of README.md parses, and every documented way to run a
config (README.md and TRAINING.md) keeps the effective batch the config was written for (nothing is trained); README
stays short (at most 15 KB).

The effective batch is processes x --batch_size x --update_freq. A recipe config documents its original one in
its "Total batch of the original run" comment (4096 or 512); the quick-start config is written for one process, so
its effective batch is its own batch_size x update_freq. TRAINING.md's recipe commands are also checked in
tests/test_configs.py; this file adds README.md and the quick-start commands of both pages.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

import main
from tests.test_configs import (RECIPES, ROOT, TRAINING_MD, documented_total, flag_value, for_cpu, load_yaml,
                                processes, shell_commands, split_at, workdir)  # noqa: F401  (workdir is a fixture)

README = ROOT / 'README.md'
QUICKSTART = ROOT / 'configs' / 'quickstart.yaml'


def _main_commands(path: Path):
    return [s for s in (split_at(c, 'main.py') for c in shell_commands(path.read_text())) if s is not None]


def _submitit_commands(path: Path):
    return [s for s in (split_at(c, 'run_with_submitit.py') for c in shell_commands(path.read_text())) if s is not None]


README_MAIN = _main_commands(README)
README_SUBMITIT = _submitit_commands(README)
QUICKSTART_MAIN = [(launcher, flags) for launcher, flags in README_MAIN + _main_commands(TRAINING_MD)
                   if flag_value(flags, '--config') == 'configs/quickstart.yaml']


def _wanted_total(config: str) -> int:
    path = ROOT / config
    if path.name in {p.name for p in RECIPES}:
        return documented_total(path)[-1]
    data = load_yaml(path)
    return int(data['batch_size']) * int(data.get('update_freq', 1))


def _ids(commands) -> List[str]:
    return [f'{i}-{flag_value(f, "--config") or flag_value(f, "--model")}' for i, (_, f) in enumerate(commands)]


def test_readme_is_at_most_15_kb():
    assert README.stat().st_size <= 15 * 1024, f'README.md is {README.stat().st_size} bytes: move details to docs/'


def test_readme_has_the_commands():
    configs = {flag_value(flags, '--config') for _, flags in README_MAIN}
    assert {'configs/quickstart.yaml', 'configs/in1k_hornet_tiny_7x7.yaml'} <= configs, configs
    assert len(README_SUBMITIT) == 1
    assert len(QUICKSTART_MAIN) >= 4  # README and TRAINING.md: the quick start, on one process and on two


@pytest.mark.parametrize('launcher,flags', README_MAIN, ids=_ids(README_MAIN))
def test_readme_main_command_parses_and_keeps_the_configs_effective_batch(launcher, flags, workdir):
    args = main.parse_args(for_cpu(flags, workdir))
    config = flag_value(flags, '--config')
    if config and not args.eval:
        total = processes(launcher) * args.batch_size * args.update_freq
        assert total == _wanted_total(config), ' '.join(launcher + ['main.py'] + flags)


@pytest.mark.parametrize('launcher,flags', QUICKSTART_MAIN, ids=_ids(QUICKSTART_MAIN))
def test_quickstart_commands_keep_the_quickstart_batch(launcher, flags, workdir):
    args = main.parse_args(for_cpu(flags, workdir, device=False))
    assert processes(launcher) * args.batch_size * args.update_freq == _wanted_total('configs/quickstart.yaml')


@pytest.mark.parametrize('launcher,flags', README_SUBMITIT, ids=_ids(README_SUBMITIT))
def test_readme_slurm_command_parses_and_keeps_the_configs_effective_batch(launcher, flags, workdir):
    rws = pytest.importorskip('run_with_submitit')
    args = rws.parse_args(for_cpu(flags, workdir, device=False))
    if flag_value(flags, '--output_dir') == '':
        assert args.output_dir == args.job_dir  # --output_dir '': the job directory
    nproc = args.nodes * args.tasks_per_node
    assert nproc * args.batch_size * args.update_freq == _wanted_total(flag_value(flags, '--config'))
