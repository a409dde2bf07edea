"""One settings object: defaults < TOML file (`--config` or VITALSTREAM_CONFIG) < VITALSTREAM_* env < CLI."""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.kafka_io import KafkaSettings
from pipeline.score import RiskLevels
from pipeline.window import WindowConfig

_SECURITY_KEYS = (
    "security_protocol",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_check_hostname",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
)


@dataclass(frozen=True)
class Settings:
    bootstrap: str | None = None  # host:port[,host:port]; None starts the embedded broker
    topic_prefix: str = "vitals."
    partitions: int = 3  # per topic, the same for all four (co-partitioned by patient id)
    group: str = "vitalstream-scoring"
    lake: Path = Path("lake")
    window_minutes: float = 5.0
    allowed_lateness_minutes: float = 2.0
    idle_timeout_minutes: float = 10.0  # event time a source may trail the leader before it stops holding the watermark
    risk_medium: float = 0.2  # calibrated probability at which risk_level becomes "medium"
    risk_high: float = 0.5
    model_path: Path | None = None  # None: the shipped checkpoint
    max_batch_records: int = 200_000
    quality_sample_rows: int = 20_000
    connect_timeout_s: float = 10.0
    kafka_security: dict[str, Any] = field(default_factory=dict)  # security_protocol, ssl_*, sasl_* passed through
    # issue 4: robustness
    dlq_topic: str = ""  # dead-letter topic for every quarantined message; "" means <topic_prefix>dlq
    broker_outage_timeout_s: float = 120.0  # how long a run waits for a broker that stopped answering
    assignment_timeout_s: float = 30.0  # how long to wait for the consumer group to assign partitions
    instance: str = ""  # scale-out: "i/n" reads partitions p with p % n == i (n processes, same group)
    pseudonymise: bool = False  # patient and device ids as HMAC-SHA256 pseudonyms (key: VITALSTREAM_PSEUDONYM_KEY)

    def kafka(self, bootstrap: str | None = None) -> KafkaSettings:
        address = bootstrap or self.bootstrap
        if not address:
            raise ConfigError("no Kafka bootstrap address (set --bootstrap or VITALSTREAM_BOOTSTRAP)")
        return KafkaSettings(
            bootstrap=address,
            topic_prefix=self.topic_prefix,
            partitions=self.partitions,
            connect_timeout_s=self.connect_timeout_s,
            security=dict(self.kafka_security),
            dlq_topic=self.dlq_topic,
            instance=self.instance_index(),
            assignment_timeout_s=self.assignment_timeout_s,
        )

    def instance_index(self) -> tuple[int, int] | None:
        """`instance` "i/n" as (i, n); None when unset (one process, partitions assigned by the group)."""
        if not self.instance:
            return None
        i, _, n = self.instance.partition("/")
        try:
            index, count = int(i), int(n)
        except ValueError:
            raise ConfigError(f"instance={self.instance!r}: expected i/n, e.g. 0/2 and 1/2 for two processes") from None
        if not 0 <= index < count:
            raise ConfigError(f"instance={self.instance!r}: need 0 <= i < n")
        return index, count

    def state_name(self) -> str:
        """Names the state checkpoint and the lake's files: one per group, and per instance when scaled out."""
        ix = self.instance_index()
        return self.group if ix is None else f"{self.group}.{ix[0]}of{ix[1]}"

    def window(self) -> WindowConfig:
        return WindowConfig(
            window=timedelta(minutes=self.window_minutes),
            allowed_lateness=timedelta(minutes=self.allowed_lateness_minutes),
            idle_timeout=timedelta(minutes=self.idle_timeout_minutes),
        )

    def levels(self) -> RiskLevels:
        return RiskLevels(medium=self.risk_medium, high=self.risk_high)

    def with_overrides(self, **overrides: Any) -> Settings:
        return _coerce(replace(self, **{k: v for k, v in overrides.items() if v is not None}))

    def describe(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["kafka_security"] = {k: ("***" if "password" in k else v) for k, v in self.kafka_security.items()}
        return doc


def load_settings(config_file: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    path = config_file or (Path(env["VITALSTREAM_CONFIG"]) if env.get("VITALSTREAM_CONFIG") else None)
    if path is not None:
        try:
            values.update(tomllib.loads(path.read_text()).get("vitalstream", {}))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    names = {f.name for f in fields(Settings)}
    security = dict(values.pop("kafka_security", {}))
    for key, raw in env.items():
        if not key.startswith("VITALSTREAM_") or key == "VITALSTREAM_CONFIG":
            continue
        name = key.removeprefix("VITALSTREAM_").lower()
        if name.removeprefix("kafka_") in _SECURITY_KEYS:
            security[name.removeprefix("kafka_")] = raw
        elif name in names:
            values[name] = raw
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return _coerce(Settings(**values, kafka_security=security))


def _coerce(s: Settings) -> Settings:
    """Env and TOML give strings; turn each into its declared type with a clear error."""
    out: dict[str, Any] = {}
    for f in fields(Settings):
        v = getattr(s, f.name)
        if v is None or f.name == "kafka_security":
            out[f.name] = v
            continue
        kind = str(f.type)
        try:
            if "Path" in kind:
                out[f.name] = Path(v)
            elif kind.startswith("int"):
                out[f.name] = int(v)
            elif kind.startswith("float"):
                out[f.name] = float(v)
            elif kind.startswith("bool"):
                out[f.name] = _bool(v)
            else:
                out[f.name] = str(v)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"setting {f.name}={v!r} is not a valid {kind}") from exc
    settings = Settings(**out)
    if settings.partitions < 1 or settings.window_minutes <= 0 or settings.allowed_lateness_minutes < 0:
        raise ConfigError("partitions must be >= 1, window_minutes > 0, allowed_lateness_minutes >= 0")
    if not 0 < settings.risk_medium < settings.risk_high < 1:
        raise ConfigError("risk thresholds must satisfy 0 < risk_medium < risk_high < 1")
    settings.instance_index()  # validates "i/n"
    return settings


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(v)
