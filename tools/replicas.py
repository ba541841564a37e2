"""Two wlmserver replicas on one shared folder, behind Debian's HAProxy in TCP mode.

Sites with several campuses, or that want no single point of failure, run more than one
server. This starts two ``wlmserver --poll`` replicas (as on a network share) on one database
root and HAProxy in front of them on loopback, then shows:

1. the answers are identical: each replica directly and through HAProxy;
2. a file dropped into the shared folder is served by both (and how long that takes, bounded
   by the poll interval);
3. with one replica killed (SIGKILL) under load, queries through HAProxy go on being answered
   by the other; the report says how many failed around the kill (associations in flight on
   the killed replica die with it) and how long until all succeed again.

Usage::

    python3 tools/replicas.py [--root wlistdb] [--poll 1] [--clients 4] [--seconds 6]

Needs ``haproxy`` (``apt-get install haproxy``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE

if str(Path(__file__).resolve().parent) not in sys.path:  # run as a script or loaded by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from ports import free_port, wait_for_port

HAPROXY = Path("/usr/sbin/haproxy")
ROOT = Path(__file__).resolve().parent.parent / "wlistdb"
WORKLIST = "1.2.840.10008.5.1.4.31"


def query(port: int, aet: str, timeout: float = 10.0) -> list[tuple[str, str]] | None:
    """(PatientID, SPS ID) of every answer to a universal query, sorted; None on failure."""
    ae = AE(ae_title="REPLICACHECK")
    ae.add_requested_context(WORKLIST)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    identifier = Dataset()
    identifier.PatientID = ""
    item = Dataset()
    item.ScheduledProcedureStepID = ""
    identifier.ScheduledProcedureStepSequence = [item]
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if not assoc.is_established:
        return None
    answers: list[tuple[str, str]] = []
    try:
        for status, answer in assoc.send_c_find(identifier, WORKLIST):
            if status is None or "Status" not in status:  # no response: timeout or abort
                return None
            if status.Status == 0xFF00 and answer is not None:
                sps = answer.ScheduledProcedureStepSequence[0]
                answers.append((str(answer.PatientID), str(sps.ScheduledProcedureStepID)))
            elif status.Status != 0x0000:
                return None
    finally:
        if assoc.is_established:
            assoc.release()
    return sorted(answers)


@dataclass
class Cluster:
    """Two replicas and HAProxy, started by :func:`start`; :meth:`stop` ends them all."""

    root: Path
    replicas: list[subprocess.Popen[bytes]]
    replica_ports: list[int]
    haproxy: subprocess.Popen[bytes]
    port: int
    workdir: Path
    logs: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        for process in [*self.replicas, self.haproxy]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.replicas, self.haproxy]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


HAPROXY_CONFIG = """\
global
    log stderr format raw local0 warning
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 2
    option redispatch
frontend worklist
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance leastconn
    server a 127.0.0.1:{a} check inter 300ms fall 2 rise 2
    server b 127.0.0.1:{b} check inter 300ms fall 2 rise 2
"""


def start(root: Path, poll: float, workdir: Path) -> Cluster:
    """Start two ``wlmserver --poll`` replicas on ``root`` and HAProxy in front of them."""
    ports = [free_port(), free_port()]
    replicas = []
    logs = []
    for n, port in enumerate(ports):
        log = workdir / f"replica{n}.log"
        logs.append(log)
        command = [sys.executable, "-m", "wlmserver", "-dfp", str(root), "--bind", "127.0.0.1"]
        command += ["--poll", str(poll), str(port)]
        with log.open("wb") as handle:
            replicas.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle))
    for port in ports:
        wait_for_port(port)
    port = free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, a=ports[0], b=ports[1]))
    log = workdir / "haproxy.log"
    logs.append(log)
    with log.open("wb") as handle:
        haproxy = subprocess.Popen(
            [str(HAPROXY), "-db", "-f", str(config)], stdout=handle, stderr=subprocess.STDOUT
        )
    wait_for_port(port)
    return Cluster(root, replicas, ports, haproxy, port, workdir, logs)


def first_aet(root: Path) -> str:
    """The first AE folder of a database root."""
    return sorted(p.name for p in root.iterdir() if p.is_dir())[0]


def identical(cluster: Cluster, aet: str) -> dict[str, int]:
    """Query each replica and HAProxy; raise unless all answers are the same."""
    each = [query(p, aet) for p in (*cluster.replica_ports, cluster.port)]
    if any(a is None for a in each) or not all(a == each[0] for a in each):
        raise AssertionError(f"answers differ: {[None if a is None else len(a) for a in each]}")
    return {"answers": len(each[0] or [])}


def drop_is_served_by_both(cluster: Cluster, aet: str, seconds: float = 30.0) -> list[float]:
    """Drop a file (temporary name, then rename) into the shared folder; seconds until each
    replica answers it."""
    source = sorted((cluster.root / aet).glob("*.wl"))[0]
    temporary = cluster.root / aet / ".replica-drop.wl.tmp"
    before = [len(query(p, aet) or []) for p in cluster.replica_ports]
    shutil.copyfile(source, temporary)
    dropped = time.monotonic()
    temporary.rename(cluster.root / aet / "replica-drop.wl")
    waited = []
    for port, count in zip(cluster.replica_ports, before, strict=True):
        while len(query(port, aet) or []) <= count:
            if time.monotonic() - dropped > seconds:
                raise AssertionError(f"replica on port {port}: the drop not served in {seconds} s")
            time.sleep(0.05)
        waited.append(time.monotonic() - dropped)
    return waited


def failover(cluster: Cluster, aet: str, clients: int, seconds: float) -> dict[str, float]:
    """Query through HAProxy from ``clients`` threads for ``seconds``; SIGKILL replica 0 at
    a third of the time. Counts answered and failed queries, before and after the kill."""
    expected = query(cluster.port, aet)
    stop = threading.Event()
    results: list[tuple[float, bool]] = []
    lock = threading.Lock()

    def loop() -> None:
        while not stop.is_set():
            try:
                ok = query(cluster.port, aet, timeout=5.0) == expected
            except Exception:  # a connection dying under pynetdicom: a failed query
                ok = False
            with lock:
                results.append((time.monotonic(), ok))

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds / 3)
    killed = time.monotonic()
    cluster.replicas[0].kill()
    time.sleep(seconds * 2 / 3)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    after = [(t, ok) for t, ok in results if t >= killed]
    failures = [t for t, ok in after if not ok]
    last_failure = max(failures, default=killed)
    settled = [ok for t, ok in after if t > last_failure]
    return {
        "queries": len(results),
        "answered before the kill": sum(ok for t, ok in results if t < killed),
        "failed before the kill": sum(not ok for t, ok in results if t < killed),
        "answered after the kill": sum(ok for _, ok in after),
        "failed after the kill": len(failures),
        "seconds from the kill to the last failure": round(last_failure - killed, 2),
        "answered after the last failure": sum(settled),
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=ROOT, help="database to copy (default wlistdb/)")
    p.add_argument("--poll", type=float, default=1.0, help="the replicas' --poll seconds")
    p.add_argument("--clients", type=int, default=4, help="query threads during the failover")
    p.add_argument("--seconds", type=float, default=6.0, help="length of the failover run")
    args = p.parse_args(argv)
    if not HAPROXY.exists():
        raise SystemExit(f"{HAPROXY} not found: apt-get install haproxy")
    with tempfile.TemporaryDirectory(prefix="wlm-replicas-") as tmp:
        work = Path(tmp)
        root = work / "shared"
        shutil.copytree(args.root, root)
        cluster = start(root, args.poll, work)
        try:
            aet = first_aet(root)
            print(
                f"two replicas (--poll {args.poll}) on ports {cluster.replica_ports}, "
                f"HAProxy on {cluster.port}; AE title {aet}"
            )
            print(f"1. identical answers from both replicas and HAProxy: {identical(cluster, aet)}")
            waited = drop_is_served_by_both(cluster, aet)
            print("2. dropped file served by both after " + ", ".join(f"{w:.2f} s" for w in waited))
            print(f"3. replica on port {cluster.replica_ports[0]} killed under load:")
            for key, value in failover(cluster, aet, args.clients, args.seconds).items():
                print(f"   {key}: {value}")
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
