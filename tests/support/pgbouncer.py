"""Greenvisor started from a pgbouncer.ini (`runpooler --pgbouncer-ini`), as a subprocess."""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.net import port_open
from tests.support.pooler import PoolerError, PoolerProcess


class IniPoolerProcess(PoolerProcess):
    """A pooler whose Postgres port is the ini's ``listen_port`` (the tenant ports stay shut);
    ``tenants`` (an applytenants document) fills the metadata DB as for PoolerProcess."""

    def __init__(
        self,
        workdir: Path,
        ini: Path,
        listen_port: int,
        tenants: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        extra = ["--pgbouncer-ini", str(ini), *kwargs.pop("extra_args", ())]
        super().__init__(workdir, tenants or {"tenants": []}, extra_args=extra, **kwargs)
        self.ini = ini
        self.listen_port = listen_port

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        ports = [self.listen_port, self.http_port]
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise PoolerError(f"runpooler exited with {code} at start:\n{self.log_tail()}")
            serving = "serving pgbouncer.ini" in self.log_text()  # signal handlers set
            if serving and all(port_open(self.host, port) for port in ports):
                return
            time.sleep(0.05)
        raise PoolerError(f"runpooler did not open {ports} in {timeout} s:\n{self.log_tail()}")

    def port(self, mode: str = "") -> int:
        return self.listen_port

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP, then wait for the log line saying the files were read again."""
        assert self.proc is not None
        before = self.log_text().count("pgbouncer.ini reloaded")
        failed = self.log_text().count("reload failed")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            done = text.count("pgbouncer.ini reloaded") > before
            if done or text.count("reload failed") > failed:
                return
            time.sleep(0.05)
        raise PoolerError(f"no reload within {timeout} s:\n{self.log_tail()}")
