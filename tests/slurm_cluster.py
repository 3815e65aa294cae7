"""A real one-node Slurm cluster on this machine for the tests: Debian's munge and slurm-wlm, started as root
with their own socket, ports and state in a temporary folder, stopped by their pids."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")


def why_not() -> str:
    """Why no cluster can start here (empty: it can)."""
    if os.geteuid() != 0:
        return "starting munged, slurmctld and slurmd needs root"
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if missing:
        return f"Slurm is not installed (apt-get install slurm-wlm munge); missing {', '.join(missing)}"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, log: Path, seconds: float = 30) -> None:
    end = time.time() + seconds
    while time.time() < end:
        if ok():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up; {log}: {log.read_text()[-2000:] if log.is_file() else 'no log'}")


def _sinfo_idle(conf: Path) -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env={**os.environ,
                                                                                        "SLURM_CONF": str(conf)})
    return out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated")


@contextmanager
def slurm_cluster(tmp: Path):
    """munged, slurmctld and slurmd; yields the slurm.conf path (``SLURM_CONF`` is set while the cluster runs)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool", "munge"):
        (tmp / d).mkdir(exist_ok=True)
    os.chmod(tmp, 0o755)
    sock, host = tmp / "munge" / "munge.sock", socket.gethostname().split(".")[0]
    key = tmp / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))
    os.chmod(key, 0o400)
    conf = tmp / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=lpttest", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}", "AuthType=auth/munge",
        f"AuthInfo=socket={sock}", f"StateSaveLocation={tmp / 'state'}", f"SlurmdSpoolDir={tmp / 'spool'}",
        f"SlurmctldPidFile={tmp / 'slurmctld.pid'}", f"SlurmdPidFile={tmp / 'slurmd.pid'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "ReturnToService=2", "MpiDefault=none",
        "SchedulerType=sched/builtin", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "KillWait=10", "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0", "MinJobAge=5",
        f"SlurmctldLogFile={tmp / 'slurmctld.log'}", f"SlurmdLogFile={tmp / 'slurmd.log'}",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory=1000 State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = []
    old = os.environ.get("SLURM_CONF")
    try:
        daemons.append(subprocess.Popen(["munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                                         f"--pid-file={tmp / 'munge' / 'munged.pid'}",
                                         f"--log-file={tmp / 'munge' / 'munged.log'}",
                                         f"--seed-file={tmp / 'munge' / 'seed'}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait("munged", sock.exists, tmp / "munge" / "munged.log")
        daemons.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        daemons.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf), "-N", host], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait("the Slurm node", lambda: _sinfo_idle(conf), tmp / "slurmd.log")
        os.environ["SLURM_CONF"] = str(conf)
        yield conf
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
