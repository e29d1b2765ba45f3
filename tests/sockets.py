"""The listening sockets of a process tree (psutil): what the embedded Ray exposes.

Loopback means 127.0.0.0/8 or ::1, IPv4-mapped loopback (``::ffff:127.0.0.1``) included;
Unix sockets are not network sockets and are not listed.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass, field

import psutil

#: the one listener Ray 2.60 opens on every interface whatever the node address: each Serve
#: replica's inter-deployment gRPC server (``[::]:0``), behind Ray's token authentication
RAY_WILDCARD_PROCESS = "ray::ServeReplica"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Listener:
    ip: str
    port: int
    pid: int
    process: str = field(compare=False)     # its title changes (a replica's shutdown call)

    @property
    def loopback(self) -> bool:
        addr = ipaddress.ip_address(self.ip.split("%", 1)[0])
        mapped = getattr(addr, "ipv4_mapped", None)
        return (mapped or addr).is_loopback

    def __str__(self) -> str:
        return f"{self.ip}:{self.port} ({self.process}, pid {self.pid})"


def listening(root: int) -> set[Listener]:
    """Every TCP socket listening in process ``root`` or any of its descendants now (one
    pass over the machine's sockets where allowed, else one per process)."""
    try:
        top = psutil.Process(root)
        procs = {p.pid: p for p in [top, *top.children(recursive=True)]}
    except psutil.Error:
        return set()
    try:
        conns = [(c, c.pid) for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.pid in procs]
    except psutil.AccessDenied:                 # macOS without root
        conns = []
        for pid, proc in procs.items():
            try:
                conns += [(c, pid) for c in proc.net_connections(kind="tcp")
                          if c.status == psutil.CONN_LISTEN]
            except psutil.Error:                # ended meanwhile
                continue
    found = set()
    for conn, pid in conns:
        try:
            name = " ".join(procs[pid].cmdline())[:80]
        except psutil.Error:
            continue
        found.add(Listener(conn.laddr.ip, conn.laddr.port, pid, name))
    return found


def exposed(found: set[Listener]) -> list[Listener]:
    """The listeners not on loopback, but for Ray's own exception (one per replica)."""
    wide = [s for s in found if not s.loopback]
    allowed = [s for s in wide if s.process.startswith(RAY_WILDCARD_PROCESS)]
    per_pid = {s.pid for s in allowed}
    if len(per_pid) != len(allowed):            # a replica opened a second one
        return wide
    return [s for s in wide if s not in allowed]


class Watcher:
    """Collects :func:`listening` of a process tree every ``every`` seconds until stopped
    (a command's processes come and go while it runs)."""

    def __init__(self, root: int, every: float = 0.5) -> None:
        self.root, self.every, self.seen = root, every, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.seen |= listening(self.root)

    def stop(self) -> set[Listener]:
        self._stop.set()
        self._thread.join()
        return self.seen
