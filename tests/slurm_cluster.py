"""A throwaway one-node SLURM cluster for the tests: Debian's slurm-wlm and munge, no accounting DB.

`start_cluster()` installs the packages with apt if `slurmctld` is missing, writes
/etc/slurm/slurm.conf for this host (no slurmdbd, no cgroup plugins), creates a munge key if there
is none, starts munged, slurmctld and slurmd in the foreground as children of this process, and
waits until `sinfo` shows the node idle. `Cluster.stop()` stops only the daemons it started.
Anything that prevents this raises `SlurmUnavailable` with the reason, for the test to skip on.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MARKER = "# written by forgetlab tests/slurm_cluster.py"
PARTITION = "debug"
PACKAGES = ["slurm-wlm", "munge"]


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here; the message says why."""


@dataclass
class Cluster:
    node: str
    partition: str
    cpus: int
    mem_mb: int
    state_dir: Path | None
    procs: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the daemons this harness started (slurmd, slurmctld, munged), newest first."""
        if self.procs:  # our own cluster: cancel what a failed test may have left in it
            user = pwd.getpwuid(os.geteuid()).pw_name
            try:
                _run(["scancel", "--user", user], timeout=15)
                deadline = time.monotonic() + 15  # until the queue holds none of them (or give up)
                while _run(["squeue", "--noheader", "--user", user], timeout=15).stdout.strip() and time.monotonic() < deadline:
                    time.sleep(0.2)
            except (OSError, subprocess.SubprocessError):
                pass
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if self.state_dir is not None and SLURM_CONF.exists() and MARKER in SLURM_CONF.read_text(errors="replace"):
            # leave no config behind without a controller: SLURM's commands (which Snakemake's slurm
            # plugin runs at every start) would wait ~9 s for a controller that is not there
            SLURM_CONF.unlink()
        self.procs.clear()

    def log_tail(self, n: int = 40) -> str:
        if self.state_dir is None:
            return ""
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.state_dir / name
            if path.exists():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(parts)


def _run(cmd: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def install() -> None:
    """apt-get install slurm-wlm and munge if slurmctld is missing."""
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable("slurmctld is not installed and apt-get is not available to install slurm-wlm")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install_cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    proc = _run(install_cmd, timeout=900, env=env)
    if proc.returncode != 0:  # the package lists may be missing or stale
        _run(["apt-get", "update", "-q"], timeout=300, env=env)
        proc = _run(install_cmd, timeout=900, env=env)
    if proc.returncode != 0 or shutil.which("slurmctld") is None:
        raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {(proc.stderr or proc.stdout)[-500:]}")


def node_hardware() -> dict[str, str]:
    """`slurmd -C`'s view of this host: NodeName, CPUs, Boards, ..., RealMemory."""
    proc = _run(["slurmd", "-C"])
    if proc.returncode != 0:
        raise SlurmUnavailable(f"slurmd -C failed: {proc.stderr.strip()}")
    first = proc.stdout.splitlines()[0]
    return dict(item.split("=", 1) for item in first.split())


def write_config(node: str, hw: dict[str, str], state_dir: Path) -> tuple[int, int]:
    """The one-node slurm.conf: no accounting storage, no cgroups; returns (cpus, mem_mb)."""
    cpus = int(hw.get("CPUs") or os.cpu_count() or 1)
    real = int(hw["RealMemory"])
    mem_mb = max(256, real - max(512, real // 20))  # a bit below the machine's, so slurmd never drains it
    topology = " ".join(f"{k}={hw[k]}" for k in ("Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore") if k in hw)
    conf = f"""{MARKER}
ClusterName=forgetlab-test
SlurmctldHost={node}
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={state_dir}/state
SlurmdSpoolDir={state_dir}/spool
SlurmctldPidFile={state_dir}/slurmctld.pid
SlurmdPidFile={state_dir}/slurmd.pid
SlurmctldLogFile={state_dir}/slurmctld.log
SlurmdLogFile={state_dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
ReturnToService=2
MinJobAge=3600
DefMemPerCPU=1000
NodeName={node} CPUs={cpus} {topology} RealMemory={mem_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(conf)
    return cpus, mem_mb


def ensure_munge_key() -> None:
    if MUNGE_KEY.exists():
        return
    MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
    MUNGE_KEY.write_bytes(os.urandom(1024))
    MUNGE_KEY.chmod(0o400)
    try:
        user = pwd.getpwnam("munge")
        os.chown(MUNGE_KEY, user.pw_uid, user.pw_gid)
        os.chown(MUNGE_KEY.parent, user.pw_uid, user.pw_gid)
    except KeyError:
        pass


def munge_works() -> bool:
    if shutil.which("munge") is None:
        return False
    try:
        enc = _run(["munge", "-n"], timeout=10)
        return enc.returncode == 0 and _run(["unmunge"], input=enc.stdout, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def start_munged(state_dir: Path) -> subprocess.Popen | None:
    """munged in the foreground, as the munge user when there is one; None if one already answers."""
    if munge_works():
        return None
    ensure_munge_key()
    log = open(state_dir / "munged.out", "w")
    try:
        user = pwd.getpwnam("munge")
    except KeyError:
        user = None
    for d in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        if user:
            os.chown(d, user.pw_uid, user.pw_gid)
    if user:
        proc = subprocess.Popen(["munged", "-F"], user=user.pw_uid, group=user.pw_gid, stdout=log, stderr=subprocess.STDOUT)
    else:
        proc = subprocess.Popen(["munged", "-F", "--force"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if munge_works():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.terminate()
    raise SlurmUnavailable(f"munged did not start: {(state_dir / 'munged.out').read_text()[-500:]}")


def node_state(node: str) -> str:
    try:
        proc = _run(["sinfo", "-h", "-N", "-n", node, "-o", "%t"], timeout=20)
    except subprocess.TimeoutExpired:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def daemon_running(name: str) -> bool:
    """Whether a process with this command name runs (read from /proc; nothing is signalled)."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                return True
        except OSError:
            continue
    return False


def start_cluster(timeout: float = 60) -> Cluster:
    """Bring up (or reuse) the one-node test cluster; raises SlurmUnavailable with the reason."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("starting a test SLURM cluster needs root (apt-get, /etc/slurm, the daemons)")
    install()
    if SLURM_CONF.exists() and MARKER not in SLURM_CONF.read_text(errors="replace"):
        raise SlurmUnavailable(f"{SLURM_CONF} exists and was not written by this harness; not touching a real cluster")
    node = socket.gethostname().split(".")[0]
    try:
        socket.gethostbyname(node)
    except OSError:
        raise SlurmUnavailable(f"the host name {node!r} does not resolve; slurmctld could not bind to it")
    hw = node_hardware()

    # a cluster left running by an earlier session of this harness: use it, and leave it running
    if daemon_running("slurmctld") and node_state(node).rstrip("*") in ("idle", "mix", "alloc"):
        text = SLURM_CONF.read_text()
        cpus = int(text.split(f"NodeName={node} CPUs=")[1].split()[0])
        mem_mb = int(text.split("RealMemory=")[1].split()[0])
        return Cluster(node, PARTITION, cpus, mem_mb, state_dir=None)

    state_dir = Path(tempfile.mkdtemp(prefix="forgetlab-slurm-"))
    (state_dir / "state").mkdir()
    (state_dir / "spool").mkdir()
    cpus, mem_mb = write_config(node, hw, state_dir)
    cluster = Cluster(node, PARTITION, cpus, mem_mb, state_dir)
    try:
        munged = start_munged(state_dir)
        if munged is not None:
            cluster.procs.append(munged)
        for cmd in (["slurmctld", "-D", "-c"], ["slurmd", "-D"]):
            out = open(state_dir / f"{cmd[0]}.out", "w")
            cluster.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = node_state(node)
            if state.rstrip("*") == "idle":
                return cluster
            dead = [p.args[0] for p in cluster.procs if p.poll() is not None]
            if dead:
                raise SlurmUnavailable(f"{', '.join(dead)} exited at start:\n{cluster.log_tail()}")
            time.sleep(0.5)
        raise SlurmUnavailable(f"node {node} not idle after {timeout:.0f} s (state {state!r}):\n{cluster.log_tail()}")
    except BaseException:
        cluster.stop()
        raise
