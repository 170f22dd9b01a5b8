"""run_with_submitit.py on a real SLURM cluster (2 emulated nodes, see tests/slurm_fixture.py): 2-node x 1-task
CPU training (gloo), preemption signal -> checkpoint at the current step -> requeue -> exact resume, plain
``scontrol requeue``, cancel, and ``--dry_run``.

Jobs are tiny (micro HorNet, 32 px, 48 images, 6 optimizer steps per epoch, 2 epochs). The cluster tests skip
where the fixture cannot start SLURM (not root, no apt-get); the dry-run tests need no cluster.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import time

import pytest
import torch

import run_with_submitit as rws
from tests.slurm_fixture import wait_until  # slurm_cluster comes from conftest.py
from tests.train_helpers import load_model_sd, make_image_folder

EPOCHS = 2


def _flags(data: pathlib.Path, job_dir: pathlib.Path, **overrides) -> list:
    opts = dict(model='hornet_micro_7x7', data_set='IMNET', data_path=data, input_size=32, device='cpu',
                epochs=EPOCHS, batch_size=4, num_workers=0, lr=1e-3, warmup_epochs=1, min_lr=1e-5, aa='none',
                reprob=0, mixup=0, cutmix=0, smoothing=0, drop_path=0, color_jitter=0, nb_classes=4,
                print_freq=1000, seed=3, pin_mem='false',
                nodes=2, tasks_per_node=1, cpus_per_task=1, partition='debug', timeout=0.5,  # 30 min
                job_dir=job_dir)
    opts.update(overrides)
    argv = [f'--{k}={v}' for k, v in opts.items()]
    # the emulated nodes share the loopback interface; one thread per process on this small machine
    return argv + ['--slurm_setup', 'export GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1']


class SlowTrainer(rws.Trainer):
    """The job's Trainer with a 0.5 s pause per optimizer step, so a signal reliably lands mid-training.

    Importable by the job (``tests`` is on its PYTHONPATH); ``checkpoint()`` keeps the class across requeues.
    """

    def __call__(self):
        import engine
        apply = engine.apply_schedules

        def slow(*a, **k):
            time.sleep(0.5)
            return apply(*a, **k)

        engine.apply_schedules = slow
        return super().__call__()


def _state(job) -> str:
    return job.watcher.get_state(job.job_id, mode='force')


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text(errors='replace')
    except OSError:
        return ''


def _details(cluster, job) -> str:
    logs = '\n'.join(f'--- {p.name}\n{_read(p)[-2500:]}' for p in sorted(job.paths.folder.glob('*_log.*')))
    return f'\njob {job.job_id} state {_state(job)}\n{logs}\nslurmctld.log:\n{cluster.log("slurmctld", 15)}'


def _wait_done(cluster, job, timeout: float):
    try:
        wait_until(lambda: job.done(force_check=True), timeout, f'job {job.job_id} to finish', interval=1)
    except pytest.fail.Exception as err:
        raise AssertionError(f'{err}{_details(cluster, job)}') from None
    try:
        return job.results()
    except Exception as err:  # noqa: BLE001
        raise AssertionError(f'job failed: {err}{_details(cluster, job)}') from None


def _sacct_states(cluster, job) -> list:
    out = cluster.run('sacct', '-D', '-X', '-n', '-P', '-o', 'State', '-j', job.job_id)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'), classes=4, train_per_class=12, val_per_class=5)


@pytest.fixture(scope='module')
def reference_job(slurm_cluster, tmp_path_factory, data):
    """An uninterrupted 2-node run (submitted here, awaited by the tests that use it), with the README's
    ``--output_dir ''``: outputs go to the job directory."""
    args = rws.parse_args(_flags(data, tmp_path_factory.mktemp('jobs') / 'reference', output_dir=''))
    return rws.submit(args), args


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.distributed
def test_two_node_training_job_completes_and_writes_final_checkpoint(slurm_cluster, reference_job):
    job, args = reference_job
    results = _wait_done(slurm_cluster, job, 120)
    assert sorted(r['rank'] for r in results) == [0, 1]
    assert {r['exit_code'] for r in results} == {0}
    assert {r['node'] for r in results} == {'n1', 'n2'}, results
    out = pathlib.Path(args.output_dir)
    assert out == pathlib.Path(args.job_dir)  # '' means the (job-id independent) job dir
    ck = torch.load(out / f'checkpoint-{EPOCHS - 1}.pth', map_location='cpu', weights_only=True)
    assert ck['global_step'] == EPOCHS * 6 and ck['epoch_complete']
    assert [json.loads(x)['epoch'] for x in (out / 'log.txt').read_text().splitlines()] == list(range(EPOCHS))
    assert 'Effective batch 8 = 4 (batch) x 1 (update_freq) x 2 (processes)' in (out / 'train.log').read_text()
    assert (out / 'all_jobids.txt').read_text().split() == [job.job_id]
    wait_until(lambda: _state(job) == 'COMPLETED', 20, f'job {job.job_id} to be reported COMPLETED')


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize('how', ['usr2', 'requeue'])
def test_interrupted_job_saves_requeues_resumes_and_matches_uninterrupted_run(slurm_cluster, reference_job,
                                                                              tmp_path, data, how):
    """SIGUSR2 (time limit / preemption warning): checkpoint at the current step, submitit requeues.
    Plain ``scontrol requeue``: SLURM sends SIGTERM and requeues; the rerun auto-resumes."""
    args = rws.parse_args(_flags(data, tmp_path / 'job'))
    out = pathlib.Path(args.output_dir)
    job = rws.submit(args, SlowTrainer(args))
    wait_until(lambda: (out / 'checkpoint-0.pth').exists() or job.done(force_check=True), 90,
               'the end of epoch 0', interval=0.2)
    assert not job.done(), f'job ended before it was interrupted{_details(slurm_cluster, job)}'
    if how == 'usr2':
        slurm_cluster.run('scancel', '--signal=USR2', job.job_id)
    else:
        slurm_cluster.run('scontrol', 'requeue', job.job_id)
    results = _wait_done(slurm_cluster, job, 150)
    assert {r['exit_code'] for r in results} == {0}
    log = (out / 'train.log').read_text()
    assert 'Resuming at epoch 1, step ' in log and 'Resuming at epoch 1, step 0 ' not in log, log[-3000:]
    if how == 'usr2':
        assert 'Received SIGUSR2' in log
        assert 'Requeued job' in _read(job.paths.folder / f'{job.job_id}_0_log.err')
    assert 'REQUEUED' in _sacct_states(slurm_cluster, job)
    assert not (out / 'checkpoint-preempt.pth').exists()  # pruned once an epoch checkpoint passed it

    ref_job, ref_args = reference_job
    _wait_done(slurm_cluster, ref_job, 120)
    ref = load_model_sd(pathlib.Path(ref_args.output_dir) / f'checkpoint-{EPOCHS - 1}.pth')
    got = load_model_sd(out / f'checkpoint-{EPOCHS - 1}.pth')
    for k in ref:
        assert torch.equal(got[k], ref[k]), f'{k} differs from the uninterrupted run'


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.distributed
def test_cancelled_job_is_reported_cancelled_and_not_requeued(slurm_cluster, tmp_path, data):
    args = rws.parse_args(_flags(data, tmp_path / 'job', epochs=20))
    out = pathlib.Path(args.output_dir)
    job = rws.submit(args, SlowTrainer(args))
    wait_until(lambda: 'Start training' in _read(out / 'train.log'), 90, 'training to start', interval=0.2)
    job.cancel(check=True)
    state = wait_until(lambda: _state(job).startswith('CANCELLED') and _state(job), 30,
                       f'job {job.job_id} to be reported CANCELLED')
    assert state.split()[0] == 'CANCELLED', state
    # scancel's SIGTERM: the step in progress is saved, and the job does not requeue itself
    out0 = job.paths.folder / f'{job.job_id}_0_log.out'
    wait_until(lambda: 'not requeued by this job' in _read(out0), 30, 'rank 0 to stop after SIGTERM')
    assert (out / 'checkpoint-preempt.pth').exists()
    wait_until(lambda: job.done(), 10, 'job.done() after cancel')
    assert not job.paths.result_pickle.exists() and not list(job.paths.folder.glob('*_result.pkl'))
    assert _sacct_states(slurm_cluster, job) == ['CANCELLED']


# ------------------------------------------------------------------------------------------------ no cluster

def _no_submission(monkeypatch):
    import submitit.core.utils

    def refuse(*a, **k):
        raise AssertionError('a command was run during a dry run')

    monkeypatch.setattr(submitit.core.utils.CommandFunction, '__call__', refuse)
    monkeypatch.setattr(subprocess, 'run', refuse)


def test_dry_run_prints_sbatch_script_and_submits_nothing(tmp_path, monkeypatch, capsys):
    _no_submission(monkeypatch)
    monkeypatch.chdir(tmp_path)
    code = rws.cli(['--model', 'hornet_micro_7x7', '--data_path', str(tmp_path), '--dry_run'])
    script = capsys.readouterr().out
    assert code == 0
    for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks-per-node=8', '#SBATCH --gpus-per-node=8',
                 '#SBATCH --cpus-per-task=10', '#SBATCH --time=4320', '#SBATCH --signal=USR2@120',
                 '#SBATCH --job-name=hornet_micro_7x7', '#SBATCH --requeue', 'srun ', 'submitit.core._submit'):
        assert line in script, script
    assert 'constraint' not in script and 'partition' not in script and '#SBATCH --mem' not in script
    assert str(tmp_path / 'jobs' / 'hornet_micro_7x7' / 'slurm') in script  # default job dir, not /checkpoint
    assert not (tmp_path / 'jobs').exists()

    code = rws.cli(['--model', 'hornet_micro_7x7', '--data_path', str(tmp_path), '--device', 'cpu', '--nodes', '3',
                    '--cpus_per_task', '2', '--use_volta32', '--constraint', 'a100', '--partition', 'p1',
                    '--account', 'acct', '--qos', 'high', '--mem_gb', '16', '--comment', 'hi there',
                    '--timeout', '1.5', '--signal_delay_s', '300', '--job_dir', 'here', '--dry_run', 'true'])
    script = capsys.readouterr().out
    assert code == 0
    for line in ('#SBATCH --nodes=3', '#SBATCH --ntasks-per-node=1', '#SBATCH --cpus-per-task=2',
                 "#SBATCH --constraint='a100&volta32gb'", '#SBATCH --partition=p1', '#SBATCH --account=acct',
                 '#SBATCH --qos=high', '#SBATCH --mem=16GB', "#SBATCH --comment='hi there'", '#SBATCH --time=90',
                 '#SBATCH --signal=USR2@300', str(tmp_path / 'here' / 'slurm')):
        assert line in script, script
    assert 'gpus' not in script and 'gres' not in script
    assert not (tmp_path / 'here').exists()


@pytest.mark.parametrize('extra, expected', [
    (['--ngpus', '0'], '--ngpus must be >= 1'),
    (['--device', 'cpu', '--timeout', '0.01', '--signal_delay_s', '120'], '--signal_delay_s must be in'),
    (['--ngpus', '4', '--tasks_per_node', '2'], 'must equal --ngpus'),
    (['--nodez', '2'], 'unrecognized arguments: --nodez'),
])
def test_bad_slurm_flags_are_one_line_errors(tmp_path, monkeypatch, capsys, extra, expected):
    _no_submission(monkeypatch)
    code = rws.cli(['--model', 'hornet_micro_7x7', '--data_path', str(tmp_path), '--dry_run', *extra])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_empty_output_dir_means_the_job_dir(tmp_path, monkeypatch, capsys):
    """``--output_dir ''`` (the README's SLURM example) and no --output_dir both mean the job directory, also over
    a config's output_dir; an explicit directory is kept. main.py alone reads '' as "save nothing", which a SLURM
    job cannot do (it must save to resume after a requeue), so the launcher never passes '' on."""
    _no_submission(monkeypatch)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / 'run.yaml'
    config.write_text(f'model: hornet_micro_7x7\ndata_path: {tmp_path}\noutput_dir: ./from_config\n')
    base = ['--model', 'hornet_micro_7x7', '--data_path', str(tmp_path), '--device', 'cpu']
    job_dir = tmp_path / 'jobs' / 'hornet_micro_7x7'

    assert rws.parse_args(base + ['--output_dir', '']).output_dir == str(job_dir)
    assert rws.parse_args(base).output_dir == str(job_dir)
    assert rws.parse_args(base + ['--output_dir=', '--job_dir', 'j']).output_dir == str(tmp_path / 'j')
    assert rws.parse_args(['--config', str(config), '--device', 'cpu']).output_dir == str(tmp_path / 'from_config')
    assert rws.parse_args(['--config', str(config), '--device', 'cpu', '--output_dir', '']).output_dir == str(job_dir)
    assert rws.parse_args(base + ['--output_dir', 'out/x']).output_dir == str(tmp_path / 'out' / 'x')

    # what is submitted: the Trainer's args carry the job dir, and the dry run says where outputs go
    assert rws.cli(base + ['--output_dir', '', '--dry_run']) == 0
    assert f'output dir {job_dir},' in capsys.readouterr().err
    help_text = rws.get_args_parser().format_help()
    assert "'' means --job_dir" in ' '.join(help_text.split())
