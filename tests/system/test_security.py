"""Security and privacy on the real broker and flow: TLS pass-through, pseudonymised patient ids (no raw id
in the lake or the logs), no payloads in INFO logs, and lake files readable by owner and group only.

Tansu 0.6.0's `--cert`/`--key` flags do not give a TLS listener (measured: `--cert` with `--key` is refused
by its command line, either alone leaves the listener in plain text), so TLS terminates in a small proxy in
front of it, as a TLS load balancer would; the broker advertises the proxy, so every connection kafka-python
makes (bootstrap, metadata, fetch, commit) goes through TLS, verified against a test CA.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.kafka_io import ensure_topics
from pipeline.kafka_publish import produce, producer
from pipeline.kafka_settings import KafkaSettings
from sim.broker import EmbeddedBroker, free_port
from sim.simulate import SimulationConfig, encode, simulate

pytestmark = pytest.mark.integration


# --- TLS ------------------------------------------------------------------------------------------------


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost: (ca, cert, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject: str, issuer: x509.Name, public: object) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(public)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        build("vitalstream test CA", name("vitalstream test CA"), ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        build("localhost", ca.subject, key.public_key())
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class TLSProxy:
    """Accepts TLS on `port` and relays the plain bytes to the broker; counts completed handshakes."""

    def __init__(self, port: int, target: tuple[str, int], cert: Path, key: Path) -> None:
        self.port = port
        self.target = target
        self.handshakes = 0
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self.handshakes += 1
        upstream = socket.create_connection(self.target)
        threading.Thread(target=_pipe, args=(upstream, tls), daemon=True).start()
        _pipe(tls, upstream)

    def close(self) -> None:
        self.server.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedBroker, TLSProxy, Path]]:
    """A broker reachable only through TLS (the proxy's port is the one it advertises): (broker, proxy, CA)."""
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_certificates(folder)
    proxy_port = free_port()
    with EmbeddedBroker(advertised=f"127.0.0.1:{proxy_port}") as broker:
        proxy = TLSProxy(proxy_port, ("127.0.0.1", broker.port), cert, key)
        yield broker, proxy, ca
        proxy.close()
        assert broker.proc is not None
        broker.proc.kill()  # in-memory and throwaway: no need for its 5 s graceful stop


def test_a_pseudonymised_run_over_tls_leaves_no_raw_id_in_the_lake_or_logs_and_private_files(
    tls_broker: tuple[EmbeddedBroker, TLSProxy, Path], prefect_session: None, tmp_path: Path
) -> None:
    """One CLI run configured from the environment: TLS settings passed through to every Kafka client,
    pseudonymised ids, INFO logs captured."""
    from prefect.settings import PREFECT_API_URL

    _, proxy, ca = tls_broker
    bootstrap = f"127.0.0.1:{proxy.port}"
    prefix = "priv."
    security = {"security_protocol": "SSL", "ssl_cafile": str(ca)}
    kafka = KafkaSettings(bootstrap, topic_prefix=prefix, partitions=2, security=security)
    ensure_topics(kafka)
    sim = simulate(SimulationConfig(patients=6, hours=0.3, seed=8, malformed_rate=0.02))
    raw_ids = set(sim.readings.column("patient_id").unique().to_pylist())
    prod = producer(kafka)
    produced = sum(produce(prod, kafka, chunk) for chunk in encode(sim))
    prod.close()
    # Plain text to the TLS port gets nowhere: the settings, not luck, carry the connections.
    with pytest.raises(Exception):  # noqa: B017 - kafka-python's bootstrap failure, whatever its type
        ensure_topics(KafkaSettings(bootstrap, topic_prefix=prefix, connect_timeout_s=2))
    handshakes_before = proxy.handshakes

    lake = tmp_path / "lake"
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_LOGGING_LEVEL": "INFO",  # INFO logs are under test
        "VITALSTREAM_TOPIC_PREFIX": prefix,
        "VITALSTREAM_SECURITY_PROTOCOL": "SSL",
        "VITALSTREAM_SSL_CAFILE": str(ca),
        "VITALSTREAM_PSEUDONYMISE": "true",
        "VITALSTREAM_PSEUDONYM_KEY": "test-key-0123456789abcdef",
    }
    cmd = [sys.executable, "-m", "cli.main", "run", "--bootstrap", bootstrap, "--lake", str(lake)]
    r = subprocess.run([*cmd, "--group", "priv", "--drain"], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert proxy.handshakes >= handshakes_before + 2  # the run's consumer and dead-letter/admin clients, over TLS
    logs = r.stdout + r.stderr
    assert f"{produced:,}" in logs  # the run's summary is there: every message consumed
    assert "ps-" in logs  # the summary names patients, by pseudonym

    # Not in the logs: raw ids, device ids (they embed the id), message bodies or reading values.
    for pid in raw_ids:
        assert pid not in logs
    assert '{"patient_id"' not in logs and '"ts":' not in logs  # no message bodies
    # no bytes reprs; a lookbehind, since Prefect's task-run names ("write-batch-11b'") end in hex digits
    assert not re.search(r"(?<![\w-])b'", logs)

    # Not in the lake: every Parquet value (decoded: the files are compressed) and every other file's bytes.
    files = [p for p in lake.rglob("*") if p.is_file()]
    parquet = [p for p in files if p.suffix == ".parquet"]
    assert any("quarantine" in str(p) for p in parquet) and any("_quality" in str(p) for p in parquet)
    for path in parquet:
        text = repr(pq.read_table(path).to_pylist())
        assert not any(pid in text for pid in raw_ids), path
        table = pq.read_table(path)
        if "patient_id" in table.column_names:
            assert all(v is None or v.startswith("ps-") for v in table.column("patient_id").to_pylist()), path
    for path in set(files) - set(parquet):
        data = path.read_bytes()
        assert not any(pid.encode() in data for pid in raw_ids), path

    # Readable by owner and group only.
    for path in [lake, *lake.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0, (path, oct(mode))
        if path.is_dir():
            assert mode == 0o750, (path, oct(mode))
        elif path.suffix == ".parquet" and "_quality" not in path.parts:
            assert mode == 0o640, (path, oct(mode))


def test_pseudonymise_without_a_key_is_a_one_line_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    monkeypatch.delenv("VITALSTREAM_PSEUDONYM_KEY", raising=False)
    monkeypatch.setenv("VITALSTREAM_PSEUDONYMISE", "yes")
    assert main(["run", "--bootstrap", "127.0.0.1:9", "--lake", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "VITALSTREAM_PSEUDONYM_KEY" in err, err


def test_pseudonyms_are_keyed_stable_and_keep_nulls() -> None:
    from pipeline.privacy import pseudonymise

    ids = pa.array(["P1", None, "P2", "P1"])
    a = pseudonymise(ids, b"k" * 16).to_pylist()
    b = pseudonymise(ids, b"j" * 16).to_pylist()
    assert a[0] == a[3] != a[2] and a[1] is None and all(x.startswith("ps-") for x in (a[0], a[2]))
    assert a[0] != b[0]  # another key, another pseudonym: not a plain hash anyone could recompute
