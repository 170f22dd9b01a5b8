"""A real SLURM cluster (2 emulated nodes on this machine) driven through submitit.

The cluster comes from the session fixture ``tests.slurm_fixture.slurm_cluster`` (skips when not root,
without apt-get, or without network for the first install). Each test takes well under a minute. A cancelled job:
tests/test_submitit_training.py (a real training job).
"""

from __future__ import annotations

import pytest

from tests import slurm_jobs
from tests.slurm_fixture import make_executor, wait_until  # slurm_cluster comes from conftest.py

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _state(job) -> str:
    return job.watcher.get_state(job.job_id, mode="force")


def _details(cluster, job) -> str:
    def read(fn):
        try:
            return fn() or ""
        except Exception as err:  # noqa: BLE001 - diagnostics only
            return f"({err})"

    return (f"\njob {job.job_id} state {_state(job)}\nstdout:\n{read(job.stdout)}\nstderr:\n{read(job.stderr)}"
            f"\nslurmctld.log:\n{cluster.log('slurmctld', 20)}")


def _wait_done(cluster, job, timeout: float):
    try:
        wait_until(lambda: job.done(force_check=True), timeout, f"job {job.job_id} to finish")
    except pytest.fail.Exception as err:
        raise AssertionError(f"{err}{_details(cluster, job)}") from None


@pytest.mark.distributed
def test_two_node_job_gets_two_ranks_on_two_nodes(slurm_cluster, tmp_path):
    executor = make_executor(tmp_path, nodes=2, tasks_per_node=1, cpus_per_task=1, timeout_min=30)
    job = executor.submit(slurm_jobs.allreduce_rank_plus_one)
    _wait_done(slurm_cluster, job, 50)
    try:
        results = job.results()
    except Exception as err:
        raise AssertionError(f"job failed: {err}{_details(slurm_cluster, job)}") from None
    assert sorted(r[0] for r in results) == [0, 1]
    assert {r[1] for r in results} == {2}
    assert len({r[2] for r in results}) == 2, results
    assert set(r[2] for r in results) <= set(slurm_cluster.nodes)
    assert {r[3] for r in results} == {3.0}


def test_requeue_signal_reaches_job_and_job_reruns(slurm_cluster, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    executor = make_executor(tmp_path / "jobs", nodes=1, tasks_per_node=1)
    job = executor.submit(slurm_jobs.run_twice, str(markers))
    wait_until(lambda: (markers / "first").exists(), 30, "the first run to start")
    assert not (markers / "second").exists()
    slurm_cluster.run("scontrol", "requeue", job.job_id)
    _wait_done(slurm_cluster, job, 50)
    result = job.result()
    assert result["run"] == "second", result
    assert (markers / "second").exists()
    assert int(result["restart_count"]) >= 1, result
    # the result file appears just before the job ends: give SLURM a moment to record it
    wait_until(lambda: _state(job) == "COMPLETED", 20, f"job {job.job_id} to be reported COMPLETED")
