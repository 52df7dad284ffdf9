"""A real ZooKeeper server for tests (Debian's zookeeper package), standalone, on a free port.

Started with the JVM directly (ZooKeeperServerMain, the class zkServer.sh runs for a
standalone server) with a private zoo.cfg: a temp dataDir, the admin server off, a short
tick so session timeouts of a few seconds are allowed. One per test session: the JVM start
is the slow part.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.net import free_port

JARS = "/usr/share/java"
CLASSPATH_JARS = (
    "zookeeper.jar",
    "zookeeper-jute.jar",
    "slf4j-api.jar",
    "slf4j-simple.jar",
    "metrics-core.jar",
    "snappy-java.jar",
    "netty-handler.jar",
    "netty-common.jar",
    "netty-transport.jar",
    "netty-buffer.jar",
    "netty-codec.jar",
    "netty-resolver.jar",
    "netty-transport-native-epoll.jar",
    "netty-transport-native-unix-common.jar",
)


def available() -> bool:
    return shutil.which("java") is not None and Path(JARS, "zookeeper.jar").exists()


def ruok(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"ruok")
            return sock.recv(4) == b"imok"
    except OSError:
        return False


class ZooKeeperServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "zookeeper.log"

    @property
    def hosts(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ZooKeeperServer:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "zoo.cfg"
        cfg.write_text(
            "tickTime=500\n"
            f"dataDir={data}\n"
            f"clientPort={self.port}\n"
            f"clientPortAddress={self.host}\n"
            "admin.enableServer=false\n"
            "minSessionTimeout=1000\n"
            "maxSessionTimeout=60000\n"
            "4lw.commands.whitelist=ruok\n"
        )
        classpath = ":".join(str(Path(JARS, jar)) for jar in CLASSPATH_JARS)
        cmd = [
            "java", "-Xmx256m", "-XX:+UseSerialGC", "-cp", classpath,
            "org.apache.zookeeper.server.ZooKeeperServerMain", str(cfg),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ZooKeeper exited at start: {self.log_path.read_text()[-2000:]}"
                )
            if ruok(self.host, self.port):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ZooKeeper did not answer within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
