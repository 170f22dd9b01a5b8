"""config.py: main.py's flags come in named groups, and --help shows them."""
from __future__ import annotations

import config
import run_with_submitit

GROUPS = ['model', 'starting weights', 'data', 'augmentation', 'optimizer and schedule', 'regularisation and EMA',
          'checkpoints and output', 'logging', 'evaluation', 'distributed', 'run']


def _flag_groups(parser) -> dict:
    return {a.option_strings[-1]: g.title for g in parser._action_groups for a in g._group_actions}


def test_every_flag_but_help_and_config_is_in_a_named_group_that_help_shows():
    parser = config.get_args_parser()
    groups = _flag_groups(parser)
    ungrouped = sorted(f for f, title in groups.items() if title not in GROUPS)
    assert ungrouped == ['--config', '--help'], ungrouped
    text = parser.format_help()
    positions = [text.index(f'\n{title}:\n') for title in GROUPS]
    assert positions == sorted(positions)  # in this order
    assert groups['--eval_sets'] == groups['--eval_labels'] == groups['--eval'] == 'evaluation'
    assert groups['--lr'] == 'optimizer and schedule' and groups['--model_ema'] == 'regularisation and EMA'


def test_the_slurm_launcher_keeps_the_groups_and_adds_its_own():
    groups = _flag_groups(run_with_submitit.get_args_parser())
    assert groups['--lr'] == 'optimizer and schedule' and groups['--eval_sets'] == 'evaluation'
    assert groups['--nodes'] == 'SLURM (run_with_submitit.py)'
