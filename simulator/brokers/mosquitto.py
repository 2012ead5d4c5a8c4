"""A Mosquitto broker on loopback, started and stopped by the simulator's benchmarks and the
test suite (the reference broker: Debian's `mosquitto` package)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


class MosquittoMissing(RuntimeError):
    pass


def find_mosquitto() -> str | None:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and Path(cand).exists():
            return cand
    return None


def max_nofile() -> None:
    """preexec_fn for a broker that must hold many connections: soft open-files limit := hard."""
    import resource
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Mosquitto:
    """`Mosquitto(workdir).start()`; `.url`, `.port`; `.stop(kill=False)`. `extra_conf` lines
    are appended to a minimal loopback config (anonymous, no persistence)."""

    def __init__(self, workdir, extra_conf: str = "", port: int | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.port = port or free_port(host)
        self.url = "mqtt://%s:%d" % (host, self.port)
        self.workdir = Path(workdir)
        self.conf = self.workdir / ("mosquitto-%d.conf" % self.port)
        self.conf.write_text("listener %d %s\nallow_anonymous true\npersistence false\n%s"
                             % (self.port, host, extra_conf))
        self.proc: subprocess.Popen | None = None

    def start(self, preexec_fn=None) -> "Mosquitto":
        exe = find_mosquitto()
        if exe is None:
            raise MosquittoMissing("mosquitto is not installed (Debian package 'mosquitto'; "
                                   "`make test` installs it)")
        logpath = self.workdir / ("mosquitto-%d.log" % self.port)
        with open(logpath, "ab") as log:
            self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start; see %s" % logpath)

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # busy with tens of thousands of clients
                self.proc.kill()
                self.proc.wait(5)

    def nofile(self) -> int:
        """The broker's open-files limit, as the kernel applies it (-1 when unknown)."""
        try:
            for line in Path("/proc/%d/limits" % self.proc.pid).read_text().splitlines():
                if line.startswith("Max open files"):
                    return int(line.split()[3])
        except (OSError, ValueError, AttributeError):
            pass
        return -1

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
