#!/usr/bin/env python3
"""The summary of a ``scripts/bench/gpu_suite.sh`` run: one markdown file and one JSON from the suite's JSON files.

    python scripts/bench/gpu_report.py OUT_DIR     # writes OUT_DIR/summary.md and OUT_DIR/summary.json

Reads what the suite wrote into OUT_DIR (every file is optional; a missing one becomes a note): eager.json and
compiled*.json (``benchmark.py``: throughput, peak memory, paired ratios, profile), levers.json (the opt-in
levers and the default path; with eager.json's gf_impl rows: each lever's ratio to the default), orig_own.json (the
original code in its own setting), mem_hornet.json / mem_convnext.json (HorNet-L and ConvNeXt-L at batch 32),
roofline.json (``roofline.py``). Ratios are paired: each repeat's img/s over the other case's img/s in the same
repeat, median over repeats; cases in different processes (the memory runs) are compared by their medians.
"""
from __future__ import annotations

import glob
import json
import os
import statistics
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROLES = dict(t7='hornet_tiny_7x7', tgf='hornet_tiny_gf', cnx='convnext_tiny', hl='hornet_large_7x7',
             cl='convnext_large')


def _load(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _med(row: Optional[Dict[str, Any]], what: str) -> Optional[float]:
    if not row or row.get('error'):
        return None
    return (row.get(f'{what}_img_s') or {}).get('median')


def _paired(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]], what: str
            ) -> Optional[Tuple[float, float, float]]:
    """(median, min, max) of a/b per repeat (same process, same rounds); None if either has no numbers."""
    if not a or not b or a.get('error') or b.get('error'):
        return None
    ra, rb = (a.get(f'{what}_img_s') or {}).get('raw') or [], (b.get(f'{what}_img_s') or {}).get('raw') or []
    vals = [x / y for x, y in zip(ra, rb) if x and y]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def _find(res: Optional[Dict[str, Any]], model: str, **key: Any) -> Optional[Dict[str, Any]]:
    """The row of ``model`` matching ``key``; among several, the suite's setting (bf16, channels_last) first."""
    rows = [r for r in (res or {}).get('results', [])
            if r.get('model') == model and all(r.get(k) == v for k, v in key.items())]
    rows.sort(key=lambda r: (r.get('dtype') != 'bf16', not r.get('channels_last'), bool(_levers(r))))
    return rows[0] if rows else None


def _fmt_s(row: Optional[Dict[str, Any]], what: str) -> str:
    if not row:
        return '-'
    if row.get('error'):
        return 'error'
    s = row.get(f'{what}_img_s') or {}
    if s.get('median') is None:
        return '-'
    d = 0 if s['median'] >= 100 else 2
    return f"{s['median']:.{d}f} [{s['min']:.{d}f}-{s['max']:.{d}f}]"


def _fmt_ratio(p: Optional[Tuple[float, float, float]]) -> str:
    return f'{p[0]:.2f}x [{p[1]:.2f}-{p[2]:.2f}]' if p else '-'


def _status(value: Optional[float], goal: float, lower_is_better: bool = False) -> str:
    if value is None:
        return 'not measured'
    ok = value <= goal if lower_is_better else value >= goal
    return '**met**' if ok else 'not met'


LEVER_NAMES = dict(fused_gating='fused gating', triton_dwconv='Triton dwconv')  # benchmark.py's lever flags


def _levers(r: Dict[str, Any]) -> List[str]:
    """The opt-in levers a row has on: a gf_impl other than fft, and every lever flag that is on."""
    on = [f"gf_impl {r['gf_impl']}"] if r.get('gf_impl') not in (None, 'fft') else []
    return on + [name for key, name in LEVER_NAMES.items() if r.get(key)]


def _default_of(res: Optional[Dict[str, Any]], r: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The row of the same run with every lever at its default and all else equal (None if there is none)."""
    same = ('model', 'dtype', 'channels_last', 'compile', 'compile_mode', 'grad_checkpointing')
    for d in (res or {}).get('results', []):
        if all(d.get(k) == r.get(k) for k in same) and not _levers(d):
            return d
    return None


def _label(r: Dict[str, Any]) -> str:
    parts = [('original ' + r['model'][5:]) if r['model'].startswith('orig:') else r['model']]
    if r.get('gf_impl'):
        parts.append(f"gf_impl {r['gf_impl']}")
    parts += [name for key, name in LEVER_NAMES.items() if r.get(key)]
    if r.get('dtype') != 'bf16' or not r.get('channels_last'):
        parts.append(f"{r.get('dtype')} {'channels_last' if r.get('channels_last') else 'NCHW'}")
    return ', '.join(parts)


def _mode(r: Dict[str, Any]) -> str:
    if not r.get('compile'):
        return 'eager'
    m = r.get('compile_mode') or 'default'
    return 'compiled' if m == 'default' else f'compiled ({m})'


def build(out_dir: str) -> Tuple[str, Dict[str, Any]]:
    suite = _load(os.path.join(out_dir, 'suite.json')) or {}
    roles = dict(ROLES, **{k: v for k, v in (suite.get('roles') or {}).items() if v})
    T7, TGF, CNX, HL, CL = (roles[k] for k in ('t7', 'tgf', 'cnx', 'hl', 'cl'))
    eager = _load(os.path.join(out_dir, 'eager.json'))
    compiled = [_load(p) for p in sorted(glob.glob(os.path.join(out_dir, 'compiled*.json')))]
    compiled = [c for c in compiled if c]
    own = _load(os.path.join(out_dir, 'orig_own.json'))
    levers = _load(os.path.join(out_dir, 'levers.json'))
    mem_h = _load(os.path.join(out_dir, 'mem_hornet.json'))
    mem_c = _load(os.path.join(out_dir, 'mem_convnext.json'))
    roof = _load(os.path.join(out_dir, 'roofline.json'))
    notes: List[str] = []
    try:
        with open(os.path.join(out_dir, 'notes.txt')) as f:
            notes += [ln.strip() for ln in f if ln.strip()]
    except OSError:
        pass
    meta = next((r['meta'] for r in [eager, *compiled, mem_h] if r), {})
    summary: Dict[str, Any] = dict(meta=meta, suite=suite, rows=[], levers=[], targets=[], memory=[], roofline=[],
                                   notes=notes)
    lines = [f"# GPU suite: {meta.get('device_name', '?')}" + (' (smoke run: tiny sizes, not a measurement)'
                                                                 if suite.get('smoke') else ''),
             '',
             f"Commit {suite.get('commit', '?')}; torch {meta.get('torch', '?')}, CUDA {meta.get('cuda', '?')}, "
             f"cuDNN {meta.get('cudnn', '?')}, timm {meta.get('timm', '?')}, {meta.get('time', '')}; bf16 autocast, "
             f"batch {suite.get('batch_size', '?')}, {suite.get('input_size', '?')} px. Settings of each run: the "
             f"JSON files beside this one.", '']

    # ---- throughput table
    lines += ['| case | mode | train img/s med [min-max] | infer img/s med [min-max] | train peak MB | '
              f'train / {CNX} | infer / {CNX} | launches / step | GPU busy |',
              '|---|---|--:|--:|--:|--:|--:|--:|--:|']
    for res in [eager, *compiled, own]:
        if not res:
            continue
        for r in res['results']:
            base = _find(res, CNX, dtype=r.get('dtype'), channels_last=r.get('channels_last'))
            prof = r.get('profile') or {}
            mem = (r.get('memory') or {}).get('train', {}).get('peak_mb')
            tr, inf = _paired(r, base, 'train'), _paired(r, base, 'infer')
            busy = prof.get('busy')
            row = dict(case=_label(r), mode=_mode(r), train=_med(r, 'train'), infer=_med(r, 'infer'), peak_mb=mem,
                       train_vs_convnext=tr, infer_vs_convnext=inf, launches=prof.get('launches'), busy=busy,
                       error=r.get('error'))
            summary['rows'].append(row)
            lines.append(f"| {row['case']} | {row['mode']} | {_fmt_s(r, 'train')} | {_fmt_s(r, 'infer')} | "
                         f"{f'{mem:.0f}' if mem else '-'} | {_fmt_ratio(tr) if r['model'] != CNX else '1'} | "
                         f"{_fmt_ratio(inf) if r['model'] != CNX else '1'} | {prof.get('launches', '-')} | "
                         f"{f'{100 * busy:.0f}%' if busy else '-'} |"
                         + (f" error: {r['error'][:80]}" if r.get('error') else ''))
    if not eager:
        lines.append('| (no eager.json: the eager run did not finish) |')

    # ---- levers: each against the default path of the same model in the same process (paired per repeat)
    lines += ['', '| lever | model | train img/s (lever / default) | train: lever / default | infer: lever / default '
              '| train peak MB: lever / default | launches / step (lever / default) |', '|---|---|--:|--:|--:|--:|--:|']
    for res in (eager, levers):
        for r in (res or {}).get('results', []):
            on, d = _levers(r), _default_of(res, r)
            if not on or d is None:
                continue
            peak = [((x.get('memory') or {}).get('train') or {}).get('peak_mb') for x in (r, d)]
            launches = [(x.get('profile') or {}).get('launches') for x in (r, d)]
            item = dict(lever=' + '.join(on), model=r['model'], train=_paired(r, d, 'train'),
                        infer=_paired(r, d, 'infer'), peak_ratio=peak[0] / peak[1] if all(peak) else None,
                        launches=launches, error=r.get('error') or d.get('error'))
            summary['levers'].append(item)
            peak_s = f"{item['peak_ratio']:.2f}x" if item['peak_ratio'] else '-'
            launch_s = ' / '.join(str(n) if n is not None else '-' for n in launches)
            lines.append(f"| {item['lever']} | {r['model']} | {_fmt_s(r, 'train')} / {_fmt_s(d, 'train')} | "
                         f"{_fmt_ratio(item['train'])} | {_fmt_ratio(item['infer'])} | {peak_s} | {launch_s} |"
                         + (f" error: {item['error'][:80]}" if item['error'] else ''))
    if not summary['levers']:
        lines.append('| (no lever rows: no levers.json and no gf_impl rows in eager.json) |')

    # ---- targets
    def target(name: str, value: Optional[Tuple[float, float, float]] | Optional[float], goal: float,
               lower: bool = False, fmt: str = '{:.2f}x') -> None:
        v = value[0] if isinstance(value, tuple) else value
        shown = _fmt_ratio(value) if isinstance(value, tuple) else (fmt.format(value) if value is not None else '-')
        summary['targets'].append(dict(target=name, value=v, goal=goal, lower_is_better=lower,
                                       status=_status(v, goal, lower)))
        lines.append(f"| {name} | {shown} | {'<=' if lower else '>='} {fmt.format(goal)} | {_status(v, goal, lower)} |")

    lines += ['', '| target | measured (paired median [min-max]) | goal | status |', '|---|--:|--:|---|']
    e7, ecn = _find(eager, T7), _find(eager, CNX)
    target(f'{T7} / {CNX}, training, eager', _paired(e7, ecn, 'train'), 1.0)
    target(f'{T7} / {CNX}, inference, eager', _paired(e7, ecn, 'infer'), 1.0)
    for res in compiled:
        mode = (res.get('settings') or {}).get('compile_mode', 'default')
        c7, ccn = _find(res, T7), _find(res, CNX)
        if c7 and ccn:
            tag = 'compiled' if mode == 'default' else f'compiled ({mode})'
            target(f'{T7} / {CNX}, training, {tag}', _paired(c7, ccn, 'train'), 1.0)
            if 'infer' in (res.get('settings') or {}).get('what', ['train', 'infer']):
                target(f'{T7} / {CNX}, inference, {tag}', _paired(c7, ccn, 'infer'), 1.0)
        cg = [r for r in res.get('results', []) if r['model'] == TGF]
        for r in cg:
            target(f"{TGF} (gf_impl {r.get('gf_impl')}) / {T7}, training, compiled", _paired(r, c7, 'train'), 0.9)
    for r in (eager or {}).get('results', []):
        if r['model'] == TGF and r.get('dtype') == (e7 or {}).get('dtype') and \
                r.get('channels_last') == (e7 or {}).get('channels_last'):
            for what in ('train', 'infer'):
                target(f"{TGF} (gf_impl {r.get('gf_impl')}) / {T7}, {'training' if what == 'train' else 'inference'}"
                       ', eager', _paired(r, e7, what), 0.9)
    own_ours, own_orig = _find(own, T7), _find(own, 'orig:hornet_tiny_7x7')
    if e7 and own_orig and _med(own_orig, 'train'):
        v = _med(e7, 'train') / _med(own_orig, 'train')
        summary['targets'].append(dict(target='HorNet-T ours (bf16 channels_last) / original (fp16 NCHW), training',
                                       value=v, goal=None, status='info'))
        lines.append(f"| HorNet-T ours (bf16, channels_last) / original code (fp16, NCHW, its own setting), training "
                     f"(medians of two runs) | {v:.2f}x | (was 1.54x) | info |")
    if own_ours and own_orig:
        target('HorNet-T ours / original, both fp16 NCHW, training', _paired(own_ours, own_orig, 'train'), 1.0)

    # ---- memory
    lines += ['', f'| {HL} vs {CL}, bf16 | checkpointing | train peak MB | train img/s | '
              f'speed vs none (paired) | memory vs {CL} none |', '|---|---|--:|--:|--:|--:|']
    cl_none = _find(mem_c, CL, grad_checkpointing='off')
    cl_peak = ((cl_none or {}).get('memory') or {}).get('train', {}).get('peak_mb')
    for res, model in ((mem_h, HL), (mem_c, CL)):
        none = _find(res, model, grad_checkpointing='off')
        for r in (res or {}).get('results', []):
            peak = ((r.get('memory') or {}).get('train') or {}).get('peak_mb')
            sp = _paired(r, none, 'train') if r is not none else (1.0, 1.0, 1.0)
            rel = peak / cl_peak if peak and cl_peak else None
            summary['memory'].append(dict(model=r['model'], grad_checkpointing=r.get('grad_checkpointing'),
                                          peak_mb=peak, train=_med(r, 'train'), speed_vs_none=sp, vs_convnext_l=rel,
                                          error=r.get('error')))
            lines.append(f"| {r['model']} | {r.get('grad_checkpointing')} | {f'{peak:.0f}' if peak else '-'} | "
                         f"{_fmt_s(r, 'train')} | {_fmt_ratio(sp)} | {f'{rel:.2f}x' if rel else '-'} |")
    if not mem_h:
        lines.append('| (no mem_hornet.json) |')
    hl_none, hl_sel = _find(mem_h, HL, grad_checkpointing='off'), _find(mem_h, HL, grad_checkpointing='selective')
    sel_peak = ((hl_sel or {}).get('memory') or {}).get('train', {}).get('peak_mb')
    lines += ['', '| target | measured | goal | status |', '|---|--:|--:|---|']
    target(f'{HL} selective checkpointing: speed vs none', _paired(hl_sel, hl_none, 'train'), 0.85)
    target(f'{HL} selective checkpointing: peak MB vs {CL} none', sel_peak / cl_peak if sel_peak and cl_peak
           else None, 1.0, lower=True)

    # ---- roofline
    if roof:
        gpu = roof.get('gpu', {})
        lines += ['', f"Roofline bound ({roof['settings']['gpu']}: {gpu.get('bw', 0) / 1e12:.1f} TB/s, "
                      f"{gpu.get('tensor', 0) / 1e12:.0f} TFLOP/s bf16 tensor, {gpu.get('fp32', 0) / 1e12:.0f} fp32; "
                      f"batch {roof['settings']['batch_size']}) against this run's eager medians:", '',
                  '| model | step | bound ms | ops (~launches) | measured launches | measured ms | measured / bound | '
                  'gap per launch (us) |', '|---|---|--:|--:|--:|--:|--:|--:|']
        bs = roof['settings']['batch_size']
        for m in roof['models']:
            for what, a in m['steps'].items():
                if 'error' in a:
                    lines.append(f"| {m['model']} | {what} | error |")
                    continue
                row = _find(eager, m['model'], gf_impl='fft') or _find(eager, m['model'])
                img = _med(row, what)
                bound = a['totals']['bound_s']
                launches = ((row or {}).get('profile') or {}).get('launches') if what == 'train' else None
                meas = bs / img if img else None
                n = launches or a['totals']['ops']
                item = dict(model=m['model'], step=what, bound_ms=1e3 * bound, ops=a['totals']['ops'],
                            measured_launches=launches, measured_ms=1e3 * meas if meas else None,
                            ratio=meas / bound if meas else None,
                            gap_per_launch_us=1e6 * (meas - bound) / n if meas else None)
                summary['roofline'].append(item)
                cells = ['-', '-', '-'] if not meas else [f'{1e3 * meas:.2f}', f'{meas / bound:.2f}x',
                                                           f"{item['gap_per_launch_us']:.1f}"]
                lines.append(f"| {m['model']} | {what} | {1e3 * bound:.2f} | {a['totals']['ops']} | "
                             f"{launches or '-'} | " + ' | '.join(cells) + ' |')
    else:
        lines.append('\n(no roofline.json)')
    if notes:
        lines += ['', 'Notes:'] + [f'- {n}' for n in notes]
    return '\n'.join(lines) + '\n', summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        print('usage: gpu_report.py OUT_DIR (a folder written by scripts/bench/gpu_suite.sh)', file=sys.stderr)
        return 2
    md, summary = build(argv[0])
    with open(os.path.join(argv[0], 'summary.md'), 'w') as f:
        f.write(md)
    with open(os.path.join(argv[0], 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    print(md)
    return 0


if __name__ == '__main__':
    sys.exit(main())
