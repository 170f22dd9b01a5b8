"""A real, throw-away SLURM cluster for tests: the session-scoped ``slurm_cluster`` fixture.

Use it from any test module with::

    # the slurm_cluster fixture is registered in tests/conftest.py; helpers: from tests.slurm_fixture import make_executor, wait_until

    def test_something(slurm_cluster, tmp_path):
        executor = make_executor(tmp_path, nodes=2, tasks_per_node=1)
        job = executor.submit(some_module_level_function)   # importable by the job process
        ...

The fixture runs ``tests/slurm_local.py start`` in a temporary directory (installing the Debian
packages on first use), yields a :class:`SlurmCluster`, and runs ``slurm_local.py stop`` at the end of
the session. While it is active, ``os.environ`` has ``SLURM_CONF`` (so submitit's sbatch/sacct/scancel
calls reach this cluster) and the repository root prepended to ``PYTHONPATH`` (so job processes, which
inherit the submitting environment and use this ``sys.executable``, can import ``tests.*``); both are
restored afterwards. It skips (with the reason) when not root, when apt-get is missing, or when the
package install fails for lack of network. One pytest process starts one cluster; clusters of
concurrent pytest processes use different ports and directories.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "slurm_local.py"
EX_NOT_POSSIBLE = 2  # not root / no apt-get (slurm_local.py exit status)
EX_NETWORK = 75  # package install failed for lack of network


@dataclass
class SlurmCluster:
    dir: Path
    nodes: list = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    def env(self) -> dict:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> str:
        """Runs a SLURM client command (``cluster.run("scontrol", "requeue", "12")``); returns stdout+stderr."""
        res = subprocess.run(list(cmd), env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stdout.strip()}")
        return res.stdout

    def log(self, name: str, lines: int = 40) -> str:
        """Last lines of DIR/log/<name>.log (slurmctld, slurmd.n1, slurmdbd, munged, mariadbd, start)."""
        path = self.dir / "log" / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no {path})"


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    """Polls ``predicate()`` until it returns a truthy value (returned) or fails the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def make_executor(folder, **params):
    """A submitit AutoExecutor on the ``debug`` partition; ``params`` go to ``update_parameters``
    (without the ``slurm_`` prefix where submitit accepts both)."""
    import submitit

    executor = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster="slurm")
    params = {"slurm_partition": "debug", "timeout_min": 30, "cpus_per_task": 1, **params}
    executor.update_parameters(**params)
    return executor


def _start_cluster(directory: Path) -> SlurmCluster:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("SLURM cluster fixture needs root (installs packages, runs slurmctld/slurmd)")
    res = subprocess.run([sys.executable, str(SCRIPT), "start", "--dir", str(directory), "--nodes", "2",
                          "--cpus-per-node", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=1200)
    if res.returncode in (EX_NOT_POSSIBLE, EX_NETWORK):
        pytest.skip(f"no SLURM cluster: {res.stderr.strip().splitlines()[-1]}")
    if res.returncode != 0:
        pytest.fail(f"slurm_local.py start failed ({res.returncode}):\n{res.stderr[-8000:]}", pytrace=False)
    return SlurmCluster(dir=directory, nodes=["n1", "n2"])


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Starts a 2-node cluster (n1, n2; 2 CPUs each; partition ``debug``) for the session."""
    cluster = _start_cluster(tmp_path_factory.mktemp("slurm"))
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PYTHONPATH")}
    os.environ["SLURM_CONF"] = str(cluster.conf)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), saved["PYTHONPATH"]) if p)
    try:
        yield cluster
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        res = subprocess.run([sys.executable, str(SCRIPT), "stop", "--dir", str(cluster.dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        if res.returncode != 0:
            print(f"warning: slurm_local.py stop failed:\n{res.stdout}", file=sys.stderr)
