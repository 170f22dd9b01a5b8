#!/usr/bin/env python3
"""Throw-away SLURM cluster on this machine, with emulated nodes (for tests and local trials).

Usage (as root, on Debian/Ubuntu; only the Python standard library is needed):

    python tests/slurm_local.py start  [--dir DIR] [--nodes 2] [--cpus-per-node 2] [--gpus-per-node 0]
                                         [--mem-per-node 4000] [--timeout 90]
    python tests/slurm_local.py status --dir DIR
    python tests/slurm_local.py stop   --dir DIR

``start`` installs what is missing (``apt-get install -y --no-install-recommends slurmctld slurmd
slurm-client munge slurmdbd mariadb-server``, after one ``apt-get update`` when the package lists are
missing or stale), writes every file under DIR (default: a fresh temporary directory) and starts, in
this order: munged, MariaDB (loopback only, data directory under DIR), slurmdbd (job accounting, so
``sacct`` and submitit see CANCELLED/REQUEUED states), slurmctld and one ``slurmd -N nI`` per emulated
node n1..nN (all at 127.0.0.1, each on its own port). Every port is picked free at start, so several
clusters can run side by side. The daemons run in a private mount namespace whose /etc/hosts (a
private copy, bind-mounted; the real file is not touched) maps n1..nN to 127.0.0.1: jobs inherit that
namespace, so a MASTER_ADDR of ``n1`` resolves inside jobs. Client commands (sbatch, squeue, sacct,
scontrol, submitit) only need ``SLURM_CONF``::

    source DIR/env.sh            # export SLURM_CONF=DIR/slurm.conf
    sinfo; sbatch --wrap 'hostname'; sacct

``start`` returns once ``sinfo`` shows every node idle, and prints DIR on its last stdout line. The
cluster: partition ``debug`` (default, no time limit), nodes with ``--cpus-per-node`` CPUs and
``--mem-per-node`` MB (declared, not checked against the host: ``SlurmdParameters=config_overrides``),
``--gpus-per-node`` fake GPUs (``/dev/null`` symlinks; jobs get CUDA_VISIBLE_DEVICES set), scheduler
passes every second, 10 s credential lifetime (a requeued job is eligible again after about 10 s).

``stop`` stops every daemon by its pid file (then any job process left in the cluster's namespace),
drops the /etc/hosts bind mount with it, and leaves DIR with its logs (DIR/log/*.log). ``status``
prints which daemons run and ``sinfo``; exit status 0 when all run.

Exit status: 0 ok; 1 failure (message and log tail on stderr); 2 not root, or apt-get needed but
missing; 75 the package install failed for lack of network.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
# programs used here, each from one of the packages above
PROGRAMS = ["slurmctld", "slurmd", "sinfo", "sbatch", "sacctmgr", "scontrol", "munged", "mungekey",
            "munge", "slurmdbd", "mariadbd", "mariadb-install-db"]
EX_NETWORK = 75
NETWORK_HINTS = ("Temporary failure resolving", "Could not resolve", "Failed to fetch", "Could not connect",
                 "Network is unreachable", "Connection timed out", "Unable to connect", "No route to host")
# stop order: clients of a daemon go before the daemon
DAEMONS = ["slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"]


class Fail(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[slurm_local] {msg}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no {path})"
    return f"--- last lines of {path} ---\n" + "\n".join(text[-lines:])


def client_env(d: Path) -> dict:
    env = dict(os.environ)
    env["SLURM_CONF"] = str(d / "slurm.conf")
    return env


def run_quiet(cmd: list, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def pid_state(pid: int) -> str | None:
    """'R', 'S', 'Z', ... or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def alive(pid: int) -> bool:
    state = pid_state(pid)
    return state is not None and state not in ("Z", "X")


def read_pid(path: Path, comm: str) -> int | None:
    """The pid in a pid file, if that process is alive and is ``comm`` (guards against reused pids)."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        actual = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if alive(pid) and actual == comm[:15] else None


def pid_files(d: Path) -> list[tuple[str, Path]]:
    run = d / "run"
    try:
        nodes = read_cluster_env(d)["NODES"].split()
    except (OSError, KeyError):
        nodes = sorted(p.name[len("slurmd."):-len(".pid")] for p in run.glob("slurmd.*.pid"))
    out = [("slurmd", run / f"slurmd.{n}.pid") for n in nodes]
    out += [(name, run / f"{name}.pid") for name in DAEMONS if name != "slurmd"]
    return out


def terminate(pids: list[int], grace: float = 10.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free now, below the usual ephemeral range (32768+)."""
    chosen: list[int] = []
    rng = random.Random()
    tries = 0
    while len(chosen) < count:
        tries += 1
        if tries > 5000:
            raise Fail("could not find free TCP ports in 12000-32000")
        port = rng.randrange(12000, 32000)
        if port in chosen:
            continue
        ok = True
        for host in ("0.0.0.0", "127.0.0.1"):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    ok = False
                    break
        if ok:
            chosen.append(port)
    return chosen


# ---------------------------------------------------------------------------------------------- packages
def missing_packages() -> list[str]:
    missing = []
    for pkg in PACKAGES:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True) if shutil.which("dpkg-query") else None
        if res is None or res.returncode != 0 or "install ok installed" not in res.stdout:
            missing.append(pkg)
    if not missing and not all(shutil.which(p) for p in PROGRAMS):
        missing = list(PACKAGES)
    return missing


def apt(args: list[str], what: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300", *args]
    log(" ".join(cmd))
    res = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        out = res.stdout.strip()
        last = out.splitlines()[-1] if out else ""
        if any(h in out for h in NETWORK_HINTS):
            raise Fail(f"{what} failed for lack of network (apt-get: {last})", EX_NETWORK)
        raise Fail(f"{what} failed (apt-get exit {res.returncode}):\n{out[-3000:]}")


def lists_fresh() -> bool:
    lists = Path("/var/lib/apt/lists")
    files = [p for p in lists.glob("*_Packages*")] if lists.is_dir() else []
    return bool(files) and time.time() - max(p.stat().st_mtime for p in files) < 7 * 86400


def ensure_packages() -> None:
    missing = missing_packages()
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise Fail(f"apt-get is not available: cannot install {' '.join(missing)}", 2)
    # Keep the packages' init scripts from starting the system-wide services during the install.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        updated = False
        if not lists_fresh():
            apt(["update"], "apt-get update")
            updated = True
        try:
            apt(["install", "-y", "--no-install-recommends", *PACKAGES], "package install")
        except Fail as err:
            if updated or err.code == EX_NETWORK:
                raise
            apt(["update"], "apt-get update")
            apt(["install", "-y", "--no-install-recommends", *PACKAGES], "package install")
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    still = missing_packages()
    if still:
        raise Fail(f"packages still missing after apt-get install: {' '.join(still)}")


# ------------------------------------------------------------------------------------------------ config
def write_configs(d: Path, nodes: int, cpus: int, gpus: int, mem: int) -> None:
    for sub in ("run", "log", "state", "spool", "munge", "mysql", "tmp"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)  # munged checks the directories above its socket
    (d / "munge").chmod(0o755)
    ctld_port, dbd_port, db_port, *node_ports = free_ports(3 + nodes)
    name = f"loc{ctld_port}"
    munge_sock = d / "munge" / "munge.socket"
    if not all(os.stat(p).st_mode & 0o001 for p in [d, *d.parents]) or len(str(munge_sock)) > 100:
        # munged wants every directory above its socket searchable by all (pytest's tmp dirs are 0700)
        # and socket paths are short: then the socket lives in a 0755 directory of its own in /tmp.
        sock_dir = Path(tempfile.mkdtemp(prefix=f"slurm-local-{name}-"))
        sock_dir.chmod(0o755)
        munge_sock = sock_dir / "munge.socket"
    hostname = socket.gethostname().split(".")[0]
    names = [f"n{i}" for i in range(1, nodes + 1)]

    hosts = Path("/etc/hosts").read_text()
    (d / "hosts").write_text(hosts.rstrip("\n") + "\n# slurm_local emulated nodes\n127.0.0.1 "
                             + " ".join(names) + "\n")

    gres_line = ""
    if gpus:
        (d / "dev").mkdir(exist_ok=True)
        for k in range(gpus):
            link = d / "dev" / f"nvidia{k}"
            if not link.is_symlink():
                link.symlink_to("/dev/null")
        files = f"{d}/dev/nvidia[0-{gpus - 1}]" if gpus > 1 else f"{d}/dev/nvidia0"
        (d / "gres.conf").write_text(f"NodeName=n[1-{nodes}] Name=gpu File={files}\n")
        gres_line = f" Gres=gpu:{gpus}"

    node_lines = "\n".join(
        f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname={n} Port={p} CPUs={cpus} RealMemory={mem}"
        f"{gres_line} State=UNKNOWN" for n, p in zip(names, node_ports))
    conf = f"""# written by tests/slurm_local.py
ClusterName={name}
SlurmctldHost={hostname}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_sock},cred_expire=10
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
TmpFS={d}/tmp
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=20
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={munge_sock}
JobCompType=jobcomp/none
{"GresTypes=gpu" if gpus else ""}
{node_lines}
PartitionName=debug Nodes=n[1-{nodes}] Default=YES MaxTime=UNLIMITED State=UP OverSubscribe=NO
"""
    (d / "slurm.conf").write_text(conf)

    dbd = f"""# written by tests/slurm_local.py
AuthType=auth/munge
AuthInfo=socket={munge_sock}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={d}/run/slurmdbd.pid
LogFile={d}/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=root
StorageLoc=slurm_acct_db
"""
    dbd_path = d / "slurmdbd.conf"
    dbd_path.write_text(dbd)
    dbd_path.chmod(0o600)

    (d / "cluster.env").write_text(
        f"NAME={name}\nNODES={' '.join(names)}\nDB_PORT={db_port}\nDBD_PORT={dbd_port}\n"
        f"CTLD_PORT={ctld_port}\nMUNGE_SOCKET={munge_sock}\n")
    (d / "env.sh").write_text(f"# source this file to talk to the slurm_local cluster in {d}\n"
                              f"export SLURM_CONF={d}/slurm.conf\n")


def read_cluster_env(d: Path) -> dict:
    out = {}
    for line in (d / "cluster.env").read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


# ------------------------------------------------------------------------------------------------- start
def wait_for(check, timeout: float, what: str, logfile: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise Fail(f"{what} did not come up within {timeout:.0f} s\n{tail(logfile)}")
        time.sleep(0.25)


def mysql_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            return len(s.recv(64)) > 4  # the server greeting
    except OSError:
        return False


def start_daemons(d: Path) -> None:
    """Runs inside the private mount namespace (see cmd_start): hosts mapping, then every daemon."""
    cfg = read_cluster_env(d)
    env = client_env(d)
    subprocess.run(["mount", "--bind", str(d / "hosts"), "/etc/hosts"], check=True)
    (d / "run" / "mntns").write_text(os.readlink("/proc/self/ns/mnt") + "\n")

    # munge
    key = d / "munge" / "munge.key"
    if not key.exists():
        subprocess.run(["mungekey", "-c", "-k", str(key)], check=True, stdout=subprocess.DEVNULL)
    key.chmod(0o600)
    sock = cfg["MUNGE_SOCKET"]
    log("starting munged")
    subprocess.run(["munged", f"--key-file={key}", f"--socket={sock}", f"--pid-file={d}/run/munged.pid",
                    f"--log-file={d}/log/munged.log", f"--seed-file={d}/munge/munged.seed", "--num-threads=2"],
                   check=True, env=env)

    def munge_ok() -> bool:
        enc = run_quiet(["munge", "-n", "-S", sock])
        return enc.returncode == 0 and subprocess.run(
            ["unmunge", "-S", sock], input=enc.stdout, text=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL).returncode == 0
    wait_for(munge_ok, 20, "munged", d / "log" / "munged.log")

    # MariaDB for slurmdbd: own datadir, loopback, no grant tables (nothing else can reach it)
    datadir = d / "mysql" / "data"
    if not (datadir / "mysql").exists():
        log("initialising MariaDB data directory")
        res = run_quiet(["mariadb-install-db", "--no-defaults", f"--datadir={datadir}", "--user=root",
                         "--skip-test-db", "--auth-root-authentication-method=normal"], timeout=180)
        if res.returncode != 0:
            raise Fail(f"mariadb-install-db failed:\n{res.stdout[-3000:]}")
    log("starting mariadbd")
    db_log = d / "log" / "mariadbd.log"
    with open(db_log, "ab") as out:
        subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={datadir}", "--user=root", f"--port={cfg['DB_PORT']}",
             "--bind-address=127.0.0.1", f"--socket={d}/mysql/mysqld.sock", f"--pid-file={d}/run/mariadbd.pid",
             f"--log-error={db_log}", "--skip-grant-tables", "--skip-name-resolve", "--skip-log-bin",
             "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M", "--innodb-flush-log-at-trx-commit=0",
             "--max-connections=50"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True)
    wait_for(lambda: mysql_ready(int(cfg["DB_PORT"])), 60, "mariadbd", db_log)

    # slurmdbd, then register the cluster
    log("starting slurmdbd")
    subprocess.run(["slurmdbd"], check=True, env=env)
    state = {"out": ""}

    def cluster_added() -> bool:
        res = run_quiet(["sacctmgr", "-i", "add", "cluster", cfg["NAME"]], env=env)
        state["out"] = res.stdout
        return res.returncode == 0 or "already exists" in res.stdout
    try:
        wait_for(cluster_added, 60, "slurmdbd", d / "log" / "slurmdbd.log")
    except Fail as err:
        raise Fail(f"{err}\nlast sacctmgr output: {state['out'].strip()}") from None

    log("starting slurmctld")
    subprocess.run(["slurmctld"], check=True, env=env)
    wait_for(lambda: run_quiet(["scontrol", "ping"], env=env).stdout.count("is UP") > 0, 30,
             "slurmctld", d / "log" / "slurmctld.log")

    for node in cfg["NODES"].split():
        log(f"starting slurmd -N {node}")
        (d / "spool" / node).mkdir(parents=True, exist_ok=True)
        subprocess.run(["slurmd", "-N", node], check=True, env=env)


def nodes_idle(d: Path, names: list[str]) -> tuple[bool, str]:
    res = run_quiet(["sinfo", "-h", "-N", "-o", "%N %t"], env=client_env(d))
    states = dict(line.split()[:2] for line in res.stdout.splitlines() if len(line.split()) >= 2)
    return all(states.get(n) == "idle" for n in names), res.stdout.strip()


def cmd_start(args) -> int:
    if os.geteuid() != 0:
        raise Fail("needs root (it installs packages and runs the SLURM daemons as root)", 2)
    if not Path("/etc/debian_version").exists() and not shutil.which("apt-get"):
        raise Fail("needs a Debian-like system with apt-get", 2)
    for tool in ("unshare", "mount"):
        if not shutil.which(tool):
            raise Fail(f"needs '{tool}' (util-linux)", 2)
    t0 = time.monotonic()
    ensure_packages()
    t_pkgs = time.monotonic() - t0

    d = Path(args.dir).resolve() if args.dir else Path(tempfile.mkdtemp(prefix="slurm-local-"))
    d.mkdir(parents=True, exist_ok=True)
    if running_daemons(d):
        raise Fail(f"a cluster is already running in {d} (stop it with: slurm_local.py stop --dir {d})")
    write_configs(d, args.nodes, args.cpus_per_node, args.gpus_per_node, args.mem_per_node)
    names = read_cluster_env(d)["NODES"].split()

    cmd = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, os.path.abspath(__file__),
           "_daemons", "--dir", str(d)]
    try:
        # output to a file, not a pipe: a daemon that kept an inherited pipe open would block us
        start_log = d / "log" / "start.log"
        with open(start_log, "ab") as out:
            rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=300).returncode
        if rc != 0:
            raise Fail(f"starting the daemons failed (see {start_log}):\n"
                       f"{start_log.read_text(errors='replace').strip()[-6000:]}")
        deadline = time.monotonic() + args.timeout
        while True:
            ok, out = nodes_idle(d, names)
            if ok:
                break
            if time.monotonic() > deadline:
                logs = "\n".join([tail(d / "log" / "slurmctld.log")]
                                 + [tail(d / "log" / f"slurmd.{n}.log", 15) for n in names])
                raise Fail(f"nodes not idle after {args.timeout} s; sinfo says:\n{out}\n{logs}")
            time.sleep(0.25)
    except BaseException:
        stop_cluster(d, quiet=True)
        raise
    log(f"cluster up in {time.monotonic() - t0:.1f} s (packages {t_pkgs:.1f} s); "
        f"{len(names)} nodes idle; logs in {d}/log")
    print(f"# source {d}/env.sh   (or: export SLURM_CONF={d}/slurm.conf)")
    print(d)
    return 0


# -------------------------------------------------------------------------------------------- stop/status
def running_daemons(d: Path) -> list[tuple[str, int]]:
    out = []
    for comm, pf in pid_files(d):
        pid = read_pid(pf, comm)
        if pid:
            out.append((comm, pid))
    return out


def namespace_pids(ns: str) -> list[int]:
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if os.readlink(entry / "ns" / "mnt") == ns and alive(int(entry.name)):
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def stop_cluster(d: Path, quiet: bool = False) -> None:
    try:
        ns = (d / "run" / "mntns").read_text().strip()
    except OSError:
        ns = ""
    running = running_daemons(d)
    for comm in DAEMONS:
        pids = [pid for c, pid in running if c == comm]
        if pids:
            if not quiet:
                log(f"stopping {comm} ({' '.join(map(str, pids))})")
            if comm == "munged" and ns:
                # the last daemon: drop the hosts bind mount while its namespace still exists
                subprocess.run(["nsenter", f"--mount=/proc/{pids[0]}/ns/mnt", "umount", "/etc/hosts"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            terminate(pids)
    # job processes (slurmstepd and its children) outlive slurmd: end those of this cluster's namespace
    try:
        sock_dir = Path(read_cluster_env(d)["MUNGE_SOCKET"]).parent
        if sock_dir.name.startswith("slurm-local-") and sock_dir != d / "munge":
            shutil.rmtree(sock_dir, ignore_errors=True)
    except (OSError, KeyError):
        pass
    if ns and ns != os.readlink("/proc/self/ns/mnt"):
        left = namespace_pids(ns)
        if left:
            if not quiet:
                log(f"ending {len(left)} leftover job process(es): {' '.join(map(str, left))}")
            terminate(left, grace=3)


def cmd_stop(args) -> int:
    d = Path(args.dir).resolve()
    if not (d / "slurm.conf").exists():
        raise Fail(f"no slurm_local cluster in {d}")
    stop_cluster(d)
    still = running_daemons(d)
    if still:
        raise Fail(f"still running: {still}")
    log(f"stopped; logs kept in {d}/log")
    return 0


def cmd_status(args) -> int:
    d = Path(args.dir).resolve()
    if not (d / "slurm.conf").exists():
        raise Fail(f"no slurm_local cluster in {d}")
    running = dict((f"{c}:{pid}", pid) for c, pid in running_daemons(d))
    all_up = True
    for comm, pf in pid_files(d):
        pid = read_pid(pf, comm)
        label = comm if comm != "slurmd" else pf.name[len("slurmd."):-len(".pid")] + " slurmd"
        print(f"{label:16s} {'running pid ' + str(pid) if pid else 'stopped'}")
        all_up &= pid is not None
    if running:
        res = run_quiet(["sinfo", "-N", "-o", "%N %P %t %c %m %G"], env=client_env(d))
        print(res.stdout.rstrip())
    print(f"SLURM_CONF={d}/slurm.conf")
    return 0 if all_up else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slurm_local.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{start,stop,status}")
    p = sub.add_parser("start", help="install if needed, start a cluster, wait until all nodes are idle")
    p.add_argument("--dir", help="cluster directory (default: a new temporary directory)")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--cpus-per-node", type=int, default=2)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--mem-per-node", type=int, default=4000, help="RealMemory in MB")
    p.add_argument("--timeout", type=float, default=90, help="seconds to wait for idle nodes")
    for name, text in (("stop", "stop the cluster's daemons (logs are kept)"),
                       ("status", "show daemons and nodes")):
        q = sub.add_parser(name, help=text)
        q.add_argument("--dir", required=True)
    q = sub.add_parser("_daemons")  # internal: runs inside the private mount namespace
    q.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    if getattr(args, "nodes", 1) < 1 or getattr(args, "cpus_per_node", 1) < 1 or getattr(args, "gpus_per_node", 0) < 0:
        parser.error("--nodes and --cpus-per-node must be >= 1, --gpus-per-node >= 0")
    try:
        if args.cmd == "start":
            return cmd_start(args)
        if args.cmd == "stop":
            return cmd_stop(args)
        if args.cmd == "status":
            return cmd_status(args)
        start_daemons(Path(args.dir))
        return 0
    except Fail as err:
        print(f"slurm_local: {err}", file=sys.stderr)
        return err.code
    except subprocess.CalledProcessError as err:
        print(f"slurm_local: command failed ({err.returncode}): {' '.join(map(str, err.cmd))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
