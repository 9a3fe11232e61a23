"""A real one-node SLURM cluster for tests: Debian's slurm-wlm + munge, private to one state directory.

Everything the daemons read or write (munge key and socket, spool, state, logs, pid files) lives under
the state directory and the daemons listen on free ports. The one file outside it is the client
configuration /etc/slurm/slurm.conf: the slurm-jobstep plugin strips SLURM_* variables (SLURM_CONF too)
before its `srun`, so inside a job only the default path works. The harness writes that file only if it is
absent or was written by the harness (marker line), never over a real cluster's, and removes it on stop.
The daemons run in the foreground as our children and are stopped by their PIDs.

Used by tests/test_slurm.py; also runnable by hand:
    python tests/helpers/slurm_cluster.py /tmp/slurm-state     # starts a cluster, prints its env, Ctrl-C stops it
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "debug"
# squeue only knows a job until MinJobAge seconds after it ended; the executor's status checks
# (every init_seconds_before_status_checks, growing to 180 s) must see the final state before that.
MIN_JOB_AGE = 600
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# Written by apr-qa tests/helpers/slurm_cluster.py (one-node test cluster); removed when it stops.\n"


class ClusterUnavailable(Exception):
    """SLURM cannot be installed here (not root, no apt, apt failed, a foreign slurm.conf); the tests
    skip with the message. Daemons that were installed but fail to come up raise RuntimeError instead."""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def ensure_installed() -> float:
    """Install slurm-wlm and munge with apt if any daemon is missing; return the seconds spent."""
    if all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS):
        return 0.0
    if sys.platform != "linux":
        raise ClusterUnavailable(f"SLURM test cluster needs Linux, this is {sys.platform}")
    if os.geteuid() != 0:
        raise ClusterUnavailable("SLURM is not installed and installing it needs root (apt-get)")
    if not shutil.which("apt-get"):
        raise ClusterUnavailable("SLURM is not installed and there is no apt-get to install it")
    start = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    update = _run(["apt-get", "update", "-qq"], env=env, timeout=300)
    if update.returncode != 0:
        raise ClusterUnavailable(f"apt-get update failed: {update.stderr.strip()[-300:]}")
    install = _run(["apt-get", "install", "-y", "-qq", *PACKAGES], env=env, timeout=600)
    if install.returncode != 0:
        raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {install.stderr.strip()[-300:]}")
    return time.monotonic() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_memory_mb() -> int:
    with open("/proc/meminfo") as f:
        total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    # Leave headroom for the OS: slurmd drains a node that reports less memory than RealMemory.
    return int(total_kb / 1024 * 0.9)


def slurm_conf(state: Path, host: str, cpus: int, memory_mb: int, ctld_port: int, slurmd_port: int,
               munge_socket: Path) -> str:
    """One node (this host), one default partition, no accounting, no cgroups."""
    return MARKER + f"""\
ClusterName=aprqa
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/slurmd
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
PlugStackConfig={state}/plugstack.conf
# No cgroup v1/v2 controllers are needed: plain /proc process tracking, no task affinity.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
# Accounting off: sacct/sacctmgr have no database here, so status checks must use squeue.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge={MIN_JOB_AGE}
ReturnToService=2
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    state: Path
    host: str
    env: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)
    install_seconds: float = 0.0
    start_seconds: float = 0.0
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    def run(self, *cmd: str, check: bool = True) -> str:
        """Run a SLURM client command against this cluster; return its stdout."""
        proc = _run(list(cmd), env=self.env, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", self.host, "-o", "%T", check=False).strip()

    def stop(self) -> None:
        """Stop the daemons we started, by PID (slurmd and slurmctld first, munged last); remove our slurm.conf."""
        for name in reversed(DAEMONS):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if _ours(SYSTEM_CONF):
            SYSTEM_CONF.unlink()

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for name in DAEMONS:
            log = self.state / f"{name}.log"
            if log.exists():
                out.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


def _ours(conf: Path) -> bool:
    return conf.is_file() and conf.read_text(errors="replace").startswith(MARKER)


def _spawn(cluster: SlurmCluster, name: str, cmd: list[str]) -> None:
    log = open(cluster.state / f"{name}.out", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=cluster.env, start_new_session=True)
    log.close()
    cluster._procs[name] = proc
    cluster.pids[name] = proc.pid


def _wait(what: str, cluster: SlurmCluster, ready, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in cluster._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                                   + cluster.log_tail())
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n" + cluster.log_tail())


def start_cluster(state: Path) -> SlurmCluster:
    """Install if needed, write the daemons' files under `state` and /etc/slurm/slurm.conf, start
    munged, slurmctld and slurmd, and wait for the node to be idle.

    Raises ClusterUnavailable (with the reason) where SLURM cannot be installed, RuntimeError (with the
    daemons' log tails) where it does not come up; daemons already started are stopped before raising.
    """
    if os.geteuid() != 0:
        raise ClusterUnavailable("the SLURM test cluster runs its daemons as root; this user is not root")
    install_seconds = ensure_installed()
    start = time.monotonic()
    state = state.resolve()
    for sub in ("ctld", "slurmd", "munge"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    munge_dir = state / "munge"
    munge_dir.chmod(0o700)
    key = munge_dir / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
    munge_socket = munge_dir / "munge.socket.2"

    if SYSTEM_CONF.exists() and not _ours(SYSTEM_CONF):
        raise ClusterUnavailable(f"{SYSTEM_CONF} exists and belongs to this machine's own SLURM; not replacing it")
    host = socket.gethostname().split(".")[0]
    conf = SYSTEM_CONF
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(slurm_conf(state, host, os.cpu_count() or 1, _node_memory_mb(), _free_port(), _free_port(),
                               munge_socket))
    (state / "plugstack.conf").write_text("")
    env = dict(os.environ, SLURM_CONF=str(conf))
    cluster = SlurmCluster(state=state, host=host, env=env, install_seconds=install_seconds)
    try:
        _spawn(cluster, "munged", ["munged", "--foreground", "--force", f"--key-file={key}",
                                   f"--socket={munge_socket}", f"--pid-file={munge_dir}/munged.pid",
                                   f"--seed-file={munge_dir}/munged.seed", f"--log-file={state}/munged.log"])
        _wait("munge socket", cluster, munge_socket.exists, timeout=20)
        # -i: ignore state from an earlier run of this directory; -D: foreground.
        _spawn(cluster, "slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)])
        _wait("slurmctld", cluster, lambda: "UP" in _run(["scontrol", "ping"], env=env).stdout)
        _spawn(cluster, "slurmd", ["slurmd", "-D", "-f", str(conf)])
        _wait(f"node {host} idle", cluster, lambda: cluster.node_state() == "idle")
    except BaseException:
        cluster.stop()
        raise
    cluster.start_seconds = time.monotonic() - start
    return cluster


if __name__ == "__main__":
    cluster = start_cluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/slurm-state"))
    print(f"installed in {cluster.install_seconds:.1f} s, started in {cluster.start_seconds:.1f} s; "
          f"PIDs {cluster.pids}")
    print(f"export SLURM_CONF={cluster.env['SLURM_CONF']}")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
