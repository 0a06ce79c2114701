"""Probes of the machine, run before and after the comparison so a noisy run shows.

- fsync: append 4 KiB and fdatasync, repeatedly, in a file in the benchmark's base
  directory (the filesystem both systems' data dirs are on).
- loopback: TCP round trips of 64 bytes to an echo thread on 127.0.0.1 (TCP_NODELAY).
- other load: CPU time the whole machine spent (from /proc/stat) beyond what the
  benchmark's own processes used, per second of the run; the other engineer's cluster
  shows up here.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from bench.stats import percentile


def fsync_probe(directory: Path, count: int = 200) -> dict[str, Any]:
    path = directory / "fsync-probe.bin"
    block = os.urandom(4096)
    lat = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(count):
            os.write(fd, block)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    lat.sort()
    return {
        "fsync_p50_ms": round(percentile(lat, 50) or 0, 3),
        "fsync_p99_ms": round(percentile(lat, 99) or 0, 3),
        "fsync_count": count,
    }


def loopback_probe(count: int = 2000) -> dict[str, Any]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def echo() -> None:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                data = conn.recv(64)
                if not data:
                    return
                conn.sendall(data)

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    lat = []
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"x" * 64
        for _ in range(count):
            s = time.perf_counter()
            c.sendall(msg)
            got = 0
            while got < len(msg):
                got += len(c.recv(64))
            lat.append((time.perf_counter() - s) * 1e6)
    t.join(2)
    srv.close()
    lat.sort()
    return {
        "rtt_p50_us": round(percentile(lat, 50) or 0, 1),
        "rtt_p99_us": round(percentile(lat, 99) or 0, 1),
        "rtt_count": count,
    }


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all cores, not idle/iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in fields]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def probe(directory: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.update(fsync_probe(directory))
    out.update(loopback_probe())
    out["loadavg_1m"] = os.getloadavg()[0]
    return out
