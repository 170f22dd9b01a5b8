"""Submit HorNet training to SLURM through submitit: one task per GPU (or CPU tasks), any number of nodes,
with checkpoint-at-the-current-step and requeue on preemption or time limit.

    python run_with_submitit.py --nodes 2 --ngpus 8 --partition gpu --model hornet_tiny_7x7 \\
        --data_path /imagenet --batch_size 128 --lr 4e-3 --update_freq 4
    python run_with_submitit.py ... --dry_run true          # print the sbatch script, submit nothing
    python run_with_submitit.py --device cpu --ngpus 0 --nodes 2 --tasks_per_node 1 ...   # CPU/gloo

Every flag of ``main.py`` is accepted (and ``--config``); the flags below are added. The job directory
(``--job_dir``, default ``./jobs/<job_name or model>``) holds submitit's files (``slurm/<job id>_*``) and is
the default ``--output_dir``: it does not depend on the job id, so a requeued job finds its checkpoints.
An empty ``--output_dir ''`` also means the job directory here (for ``main.py`` alone it means "save nothing"):
a SLURM job must save checkpoints to resume after a requeue, so the launcher never passes an empty one on.
Submitted jobs always auto-resume from the newest checkpoint in ``--output_dir`` (which then wins over
``--resume``, the starting point of the first run only).

How stopping and requeueing work (and why this way)
----------------------------------------------------
In the job, submitit (``submitit/core/submission.py``) installs its signal handlers before it calls
:class:`Trainer`: SIGUSR2 -> ``SignalHandler.checkpoint_and_try_requeue`` (on global rank 0 it calls
``Trainer.checkpoint()``, rewrites the job pickle with the requeue count, runs ``scontrol requeue`` and
exits *at once*, in the middle of whatever step was running; other ranks only log) and SIGTERM -> ignored.
Letting that handler run during training would requeue without a checkpoint of the current step. So:

1. While training runs, ``main.py`` replaces both handlers with ``utils.STOP`` (a flag only). The flag is
   combined across ranks by the one all-reduce of every optimizer step, so all ranks stop after the same
   step, rank 0 writes ``checkpoint-preempt.pth`` and ``main.main`` returns ``EXIT_PREEMPTED`` (3); the
   submitit handlers are put back.
2. Then, if SIGUSR2 was among the signals (SLURM's ``--signal=USR2@<signal_delay_s>`` before the time
   limit, ``scancel --signal=USR2``, or submitit's own preemption signal), global rank 0 calls the
   restored submitit handler itself. That is submitit's own requeue path, unchanged: timed-out vs
   preempted from the elapsed time (timeouts count against ``--max_num_timeout``), ``checkpoint()``,
   ``scontrol requeue``. The other ranks exit with status 3 and write no result.
3. SIGTERM alone saves and exits (status 3) but does not requeue: SLURM also sends SIGTERM for
   ``scancel`` (which must stay cancelled) and requeues preempted jobs itself when its PreemptMode is
   REQUEUE. ``--requeue_on_sigterm true`` makes SIGTERM requeue too (clusters that preempt with SIGTERM
   and PreemptMode=CANCEL).
4. A plain ``scontrol requeue`` (no checkpoint() call) reruns the original submission; the run
   auto-resumes from the newest checkpoint (``checkpoint-preempt.pth`` if SIGTERM arrived in time to
   write it, else the last epoch checkpoint). Resumption is exact either way.

A signal that arrives before training starts or after it ends reaches submitit's handler directly: it
requeues at once, and the rerun resumes from the last checkpoint (or finds training finished).
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import checkpoints
import config
import main as hornet_main
import run_settings
import utils
from errors import UserError

REPO = Path(__file__).resolve().parent
_logger = logging.getLogger('hornet')
# flags holding paths: made absolute at submission (jobs may start in another directory)
_PATH_FLAGS = ('data_path', 'eval_data_path', 'output_dir', 'log_dir', 'resume', 'finetune', 'config')


def get_args_parser() -> argparse.ArgumentParser:
    """``main.py``'s parser plus the SLURM flags (the original run_with_submitit.py's names and units)."""
    p = config.Parser('Submitit for HorNet', parents=[config.get_args_parser()], add_help=False, allow_abbrev=False)
    g = p.add_argument_group('SLURM (run_with_submitit.py)')
    g.add_argument('--ngpus', default=8, type=int, help='GPUs per node (one task per GPU); ignored with --device cpu')
    g.add_argument('--nodes', default=2, type=int, help='number of nodes')
    g.add_argument('--timeout', default=72, type=float, help='job time limit in hours (fractions allowed)')
    g.add_argument('--job_name', default='', type=str, help='SLURM job name (default: the model name)')
    g.add_argument('--job_dir', default='', type=str,
                   help="job directory: submitit's files, and --output_dir when that is unset or ''; "
                        "default ./jobs/<job_name>")
    g.add_argument('--partition', default='', type=str, help='partition (default: the cluster default)')
    g.add_argument('--use_volta32', type=config.str2bool, nargs='?', const=True, default=False,
                   help='add the constraint volta32gb (a FAIR cluster feature name)')
    g.add_argument('--constraint', default='', type=str, help='SLURM --constraint (node features)')
    g.add_argument('--comment', default='', type=str, help='comment passed to the scheduler')
    g.add_argument('--account', default='', type=str)
    g.add_argument('--qos', default='', type=str)
    g.add_argument('--exclude', default='', type=str, help='nodes to avoid')
    g.add_argument('--mem_gb', default=None, type=float, help='memory per node in GB (default: cluster default)')
    g.add_argument('--cpus_per_task', default=10, type=int, help='CPUs per task (data loading workers + 1)')
    g.add_argument('--tasks_per_node', default=None, type=int,
                   help='tasks (processes) per node; default --ngpus, or 1 with --device cpu')
    g.add_argument('--signal_delay_s', default=120, type=int,
                   help='SLURM sends SIGUSR2 this many seconds before the time limit (save + requeue)')
    g.add_argument('--max_num_timeout', default=30, type=int, help='how many times a timed-out job is requeued')
    g.add_argument('--requeue_on_sigterm', type=config.str2bool, default=False,
                   help='also requeue after SIGTERM (by default SIGTERM saves and stops: scancel sends it)')
    g.add_argument('--slurm_setup', action='append', default=[], metavar='LINE',
                   help='shell line run before the job (e.g. "module load cuda"); repeatable')
    g.add_argument('--dry_run', type=config.str2bool, nargs='?', const=True, default=False,
                   help='print the sbatch script and exit without submitting')
    for action in p._actions:  # the same flag means something else here: say so in --help
        if action.dest == 'output_dir':
            action.help = ("checkpoints, log.txt and train.log (run_with_submitit.py: unset or '' means --job_dir; "
                           "a job must save to resume after a requeue)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """CLI + optional YAML (``--config``, which may hold the SLURM flags too), validated as main.py does."""
    parser = get_args_parser()
    args, explicit = config.read_flags_explicit(parser, argv)
    # the checkpoint's model and recipe for flags not given, as main.py does (said on the console at submission)
    for _, line in run_settings.inherit_from_checkpoint(args, explicit, parser).messages():
        print(line, file=sys.stderr)

    cpu = args.device == 'cpu'
    if args.nodes < 1:
        raise UserError(f'--nodes must be >= 1 (got {args.nodes})')
    if not cpu and args.ngpus < 1:
        raise UserError(f'--ngpus must be >= 1 with --device {args.device} (got {args.ngpus}); '
                        f'for CPU training add --device cpu')
    if args.tasks_per_node is None:
        args.tasks_per_node = 1 if cpu else args.ngpus
    if args.tasks_per_node < 1:
        raise UserError(f'--tasks_per_node must be >= 1 (got {args.tasks_per_node})')
    if not cpu and args.tasks_per_node != args.ngpus:
        raise UserError(f'--tasks_per_node {args.tasks_per_node} must equal --ngpus {args.ngpus} on GPUs '
                        f'(one process per GPU)')
    for name in ('cpus_per_task', 'max_num_timeout'):
        if getattr(args, name) < (1 if name == 'cpus_per_task' else 0):
            raise UserError(f'--{name} is out of range (got {getattr(args, name)})')
    if not args.timeout > 0:
        raise UserError(f'--timeout is in hours and must be positive (got {args.timeout})')
    if args.signal_delay_s < 0 or args.signal_delay_s >= args.timeout * 3600:
        raise UserError(f'--signal_delay_s must be in [0, --timeout) (got {args.signal_delay_s} s for '
                        f'{args.timeout} h)')
    if args.mem_gb is not None and args.mem_gb <= 0:
        raise UserError(f'--mem_gb must be positive (got {args.mem_gb})')

    # main.py's checks, except that the GPU need not be on the submitting machine (a login node)
    check = copy.copy(args)
    if check.device != 'cpu':
        check.device = ''  # skips the "CUDA available here?" and "fp16 on CPU" checks, both about the job's nodes
    config.validate_args(check)
    args.finetune, args.resume, args.pretrained = check.finetune, check.resume, check.pretrained  # names -> URLs

    if not args.job_name:
        args.job_name = args.model
    if not args.job_dir:
        args.job_dir = os.path.join('.', 'jobs', args.job_name)
    args.job_dir = os.path.abspath(os.path.expanduser(args.job_dir))
    if not args.output_dir:  # unset, or '' (which main.py alone reads as "save nothing"): the job directory
        args.output_dir = args.job_dir
    for name in _PATH_FLAGS:
        value = getattr(args, name, None)
        if value and not str(value).startswith(('http://', 'https://')):
            setattr(args, name, os.path.abspath(os.path.expanduser(value)))
    if not args.auto_resume and not args.eval:
        _logger.warning('--auto_resume false ignored: a SLURM job must resume after a requeue')
    args.auto_resume = True
    args.dist_url = 'env://'
    return args


def slurm_parameters(args: argparse.Namespace) -> Dict[str, Any]:
    """submitit SlurmExecutor parameters (SLURM's own names) for ``args``."""
    from submitit.slurm.slurm import _convert_mem
    gpus = 0 if args.device == 'cpu' else args.ngpus
    params: Dict[str, Any] = dict(
        job_name=args.job_name,
        time=max(1, int(round(args.timeout * 60))),
        nodes=args.nodes,
        ntasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task,
        signal_delay_s=args.signal_delay_s,
        # requeueable even where the cluster's default is JobRequeue=0 (also: SLURM requeues it after a node failure)
        additional_parameters={'requeue': True},
        # the job imports this repository's modules whatever directory it starts in
        setup=[f'export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}'] + list(args.slurm_setup),
    )
    if gpus:
        params['gpus_per_node'] = gpus
    constraints = [c for c in (args.constraint, 'volta32gb' if args.use_volta32 else '') if c]
    if constraints:
        params['constraint'] = '&'.join(constraints)
    for name in ('partition', 'comment', 'account', 'qos', 'exclude'):
        if getattr(args, name):
            params[name] = getattr(args, name)
    if args.mem_gb is not None:
        params['mem'] = _convert_mem(args.mem_gb)
    return params


def make_executor(args: argparse.Namespace, render_only: bool = False):
    """A submitit SlurmExecutor configured for ``args`` (``render_only``: also without SLURM installed)."""
    import submitit
    cls = submitit.SlurmExecutor
    if render_only:
        class _RenderOnly(submitit.SlurmExecutor):  # same rendering; no srun needed to build it
            @classmethod
            def affinity(cls) -> int:
                return 2
        cls = _RenderOnly
    executor = cls(folder=Path(args.job_dir) / 'slurm' / '%j', max_num_timeout=args.max_num_timeout)
    executor.update_parameters(**slurm_parameters(args))
    return executor


def sbatch_script(args: argparse.Namespace) -> str:
    """The exact sbatch file that :func:`submit` would hand to ``sbatch``."""
    executor = make_executor(args, render_only=True)
    return executor._make_submission_file_text(executor._submitit_command_str, 'dry-run')


def submit(args: argparse.Namespace, trainer: Optional['Trainer'] = None):
    """Submit the training job; returns the submitit Job. ``trainer``: a Trainer (subclass) instance to run."""
    executor = make_executor(args)
    os.makedirs(args.job_dir, exist_ok=True)
    job = executor.submit(trainer if trainer is not None else Trainer(args))
    with open(os.path.join(args.job_dir, 'all_jobids.txt'), 'a') as f:
        f.write(f'{job.job_id}\n')
    return job


class Trainer:
    """The callable that submitit runs in every task; pickled with the parsed args."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def __call__(self) -> Dict[str, Any]:
        import submitit

        dist_env = submitit.helpers.TorchDistributedEnvironment()
        # keep every GPU of the node visible: init_distributed selects cuda:LOCAL_RANK
        dist_env.export(set_cuda_visible_devices=False, overwrite=True)
        args = copy.copy(self.args)
        args.dist_url = 'env://'
        if args.resume and not args.eval and args.auto_resume and args.output_dir \
                and checkpoints.find_resume_checkpoint(args.output_dir) is not None:
            args.resume = ''  # a rerun continues from its own newest checkpoint, not the first run's start
        print(f'HorNet job {os.environ.get("SLURM_JOB_ID")} (restart {os.environ.get("SLURM_RESTART_COUNT", 0)}): '
              f'rank {dist_env.rank}/{dist_env.world_size}, master {dist_env.master_addr}:{dist_env.master_port}, '
              f'output {args.output_dir}', flush=True)
        try:
            code = hornet_main.main(args)
        finally:
            utils.cleanup_distributed()
        if code != hornet_main.EXIT_PREEMPTED:
            return {'rank': dist_env.rank, 'node': os.environ.get('SLURMD_NODENAME'), 'exit_code': code,
                    'output_dir': args.output_dir}
        received = set(utils.STOP.received) or ({utils.STOP.signum} if utils.STOP.signum else set())
        wants_requeue = signal.SIGUSR2 in received or (self.args.requeue_on_sigterm and signal.SIGTERM in received)
        if dist_env.rank == 0 and wants_requeue:
            self._requeue()  # exits
        print(f'rank {dist_env.rank}: stopped by {sorted(signal.Signals(s).name for s in received)} after '
              f'saving checkpoint-preempt.pth' + ('' if wants_requeue else '; not requeued by this job'),
              flush=True)
        raise SystemExit(hornet_main.EXIT_PREEMPTED)  # no result file: the job did not finish

    def _requeue(self) -> None:
        """Requeue through submitit's own handler (restored by main.py after training); fallback scontrol."""
        from submitit.core.job_environment import SignalHandler
        handler = signal.getsignal(signal.SIGUSR2)
        if isinstance(getattr(handler, '__self__', None), SignalHandler):
            handler(signal.SIGUSR2, None)  # checkpoint() + scontrol requeue + sys.exit(-1), or an error
            return
        job_id = os.environ.get('SLURM_JOB_ID')
        if job_id:
            subprocess.check_call(['scontrol', 'requeue', job_id], timeout=60)
            print(f'Requeued job {job_id}', flush=True)
            raise SystemExit(hornet_main.EXIT_PREEMPTED)

    def checkpoint(self) -> Any:
        """Called by submitit on global rank 0 before it requeues: rerun this trainer, resuming."""
        import submitit
        args = copy.copy(self.args)
        args.auto_resume = True
        print('Requeuing: the next run resumes from the newest checkpoint in', args.output_dir, flush=True)
        return submitit.helpers.DelayedSubmission(type(self)(args))


def cli(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = parse_args(argv)
        if args.dry_run:
            print(sbatch_script(args), end='')
            print(f'# dry run: nothing submitted; job dir {args.job_dir}, output dir {args.output_dir}, '
                  f'{args.nodes * args.tasks_per_node} processes', file=sys.stderr)
            return hornet_main.EXIT_OK
        job = submit(args)
    except UserError as e:
        sys.stderr.write(f'error: {e}\n')
        return hornet_main.EXIT_USER_ERROR
    except RuntimeError as e:
        if 'srun' in str(e):  # submitit: "Could not detect srun, are you indeed on a slurm cluster?"
            sys.stderr.write('error: SLURM is not available here (no srun); --dry_run true prints the script\n')
            return hornet_main.EXIT_USER_ERROR
        raise
    print('Submitted job_id:', job.job_id)
    print(f'Logs: {job.paths.stdout}  {job.paths.stderr}')
    print(f'Checkpoints and log.txt: {args.output_dir}')
    return hornet_main.EXIT_OK


if __name__ == '__main__':
    sys.exit(cli())
