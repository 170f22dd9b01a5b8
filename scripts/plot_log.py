#!/usr/bin/env python
"""Plot training curves (loss, top-1/top-5 accuracy, learning rate) from one or more ``log.txt`` files.

Usage (from the repository root)::

    python scripts/plot_log.py output/hornet_tiny/log.txt --output curves.png
    python scripts/plot_log.py runs/a/log.txt runs/b/log.txt --output compare.png

A log has one JSON object per epoch and line, as written by training (ConvNeXt layout): ``epoch``, ``train_lr``,
``train_loss``, ``test_loss``, ``test_acc1``, ``test_acc5``, optionally ``test_acc1_ema`` ... Missing keys only
drop their curves. Each log is one colour, labelled by its folder name.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

try:
    from errors import UserError
except ModuleNotFoundError as e:  # run as a file from a checkout that is not installed: one line naming the fix
    from install_hint import exit_with_install_hint  # scripts/ is the first import path when run as a file
    exit_with_install_hint(e, 'scripts.plot_log')

_logger = logging.getLogger('plot_log')

# (panel title, y label, [(key, line style, curve name)])
PANELS: List[Tuple[str, str, List[Tuple[str, str, str]]]] = [
    ('Loss', 'loss', [('train_loss', '-', 'train'), ('test_loss', '--', 'test'), ('test_loss_ema', ':', 'test EMA')]),
    ('Accuracy', 'accuracy (%)', [('test_acc1', '-', 'top-1'), ('test_acc5', '--', 'top-5'),
                                  ('test_acc1_ema', ':', 'top-1 EMA'), ('test_acc5_ema', '-.', 'top-5 EMA')]),
    ('Learning rate', 'lr', [('train_lr', '-', 'lr')]),
]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description='Plot loss, accuracy and learning rate vs epoch from log.txt files.')
    p.add_argument('logs', nargs='+', metavar='LOG', help='log.txt files (one JSON object per line)')
    p.add_argument('--output', default='curves.png', help='PNG file to write (default: curves.png)')
    p.add_argument('--title', default=None, help='figure title')
    p.add_argument('--log_lr', action='store_true', help='logarithmic learning-rate axis')
    p.add_argument('--dpi', type=int, default=120)
    p.add_argument('-v', '--verbose', action='store_true', help='log progress (INFO)')
    return p.parse_args(argv)


def read_log(path: str) -> List[Dict[str, object]]:
    """Epoch records of one log; a line that is not a JSON object raises a UserError naming file and line."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise UserError(f"log not found: {path} (check the path)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read log {path}: {' '.join(str(e).split())}") from None
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not JSON ({e.msg}); a log has one JSON object per line "
                            f"as training writes it") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{lineno}: a JSON {type(record).__name__}, not an object; a log has one "
                            f"JSON object per line as training writes it")
        records.append(record)
    if not records:
        raise UserError(f"{path}:1: the log is empty (no epoch finished yet?); plot it after the first epoch")
    return records


def series(records: Sequence[Dict[str, object]], key: str) -> Tuple[List[float], List[float]]:
    """(epochs, values) of ``key``; epochs default to the line index, non-numeric values are skipped."""
    xs, ys = [], []
    for i, rec in enumerate(records):
        value = rec.get(key)
        epoch = rec.get('epoch', i)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        xs.append(float(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else float(i))
        ys.append(float(value))
    return xs, ys


def labels_for(paths: Sequence[str]) -> List[str]:
    """Legend names: the parent folder of each log, made unique with more of the path where needed."""
    resolved = [Path(p).resolve() for p in paths]
    names = [p.parent.name or str(p.parent) for p in resolved]
    for depth in range(2, 6):
        dup = {n for n in names if names.count(n) > 1}
        if not dup:
            break
        names = [('/'.join(p.parent.parts[-depth:]) if n in dup else n) for n, p in zip(names, resolved)]
    if len(set(names)) < len(names):  # same folder given twice, or identical tails: fall back to the paths
        names = [str(p) for p in paths]
    return names


def plot(logs: Dict[str, List[Dict[str, object]]], output: str, title: Optional[str], log_lr: bool, dpi: int) -> int:
    """Draw the panels and save the PNG; returns the number of curves drawn."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.5 * len(PANELS), 4.2), constrained_layout=True)
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    drawn = 0
    for ax, (panel, ylabel, keys) in zip(axes, PANELS):
        styles_used = []
        for i, (label, records) in enumerate(logs.items()):
            for key, style, curve in keys:
                xs, ys = series(records, key)
                if not ys:
                    continue
                ax.plot(xs, ys, style, color=colors[i % len(colors)], marker='.' if len(xs) < 20 else None,
                        label=label)
                drawn += 1
                if (style, curve) not in styles_used:
                    styles_used.append((style, curve))
        ax.set_title(panel)
        ax.set_xlabel('epoch')
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if panel == 'Learning rate' and log_lr and styles_used:
            ax.set_yscale('log')
        if not styles_used:
            ax.text(0.5, 0.5, 'no data in the logs', ha='center', va='center', transform=ax.transAxes, color='gray')
            continue
        # one legend for the runs (colours), one for the curves (line styles) when a panel has several
        runs = [Line2D([], [], color=colors[i % len(colors)], label=label) for i, label in enumerate(logs)]
        first = ax.legend(handles=runs, loc='upper right' if panel != 'Accuracy' else 'lower right', fontsize=8)
        if len(styles_used) > 1:
            ax.add_artist(first)
            kinds = [Line2D([], [], color='black', linestyle=s, label=c) for s, c in styles_used]
            ax.legend(handles=kinds, loc='center right', fontsize=8)
    if title:
        fig.suptitle(title)
    try:
        fig.savefig(output, dpi=dpi)
    except OSError as e:
        raise UserError(f"cannot write --output {output}: {' '.join(str(e).split())}") from None
    finally:
        plt.close(fig)
    return drawn


def run(args: argparse.Namespace) -> None:
    """Read every log, plot, report."""
    if not Path(args.output).resolve().parent.is_dir():
        raise UserError(f"cannot write --output {args.output}: its folder does not exist (create it first)")
    if Path(args.output).suffix.lower() != '.png':
        raise UserError(f"--output {args.output} must end in .png")
    logs = {label: read_log(path) for label, path in zip(labels_for(args.logs), args.logs)}
    known = {key for _, _, keys in PANELS for key, _, _ in keys}
    if not any(series(records, key)[1] for records in logs.values() for key in known):
        raise UserError(f"nothing to plot: no numeric value of {', '.join(sorted(known))} in "
                        f"{', '.join(args.logs)}")
    for label, records in logs.items():
        present = sorted(known & set().union(*records))
        _logger.info('%s: %d epochs, keys %s', label, len(records), ', '.join(present) or 'none')
    drawn = plot(logs, args.output, args.title, args.log_lr, args.dpi)
    print(f"wrote {args.output} ({drawn} curves from {len(logs)} log{'s' if len(logs) > 1 else ''})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: returns the exit status; user errors are one line on stderr."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    for name in ('plot_log',):  # -v: our progress, not every library's INFO chatter
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        run(args)
    except UserError as e:
        print(f"plot_log.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('plot_log.py: interrupted', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
