"""One settings object: defaults < TOML file (`--config` or VITALSTREAM_CONFIG) < VITALSTREAM_* env < CLI."""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.kafka_settings import KafkaSettings
from pipeline.model_contract import RiskLevels
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
    max_batch_records: int = 50_000
    quality_sample_rows: int = 20_000
    connect_timeout_s: float = 10.0
    kafka_security: dict[str, Any] = field(default_factory=dict)  # security_protocol, ssl_*, sasl_* passed through
    kafka_bulk_decode: bool = True  # record batches to columns in bulk (pipeline/record_batches.py)
    # operations: schedules, compaction, reports, quality
    score_cron: str = "* * * * *"
    compact_cron: str = "0 * * * *"
    validate_cron: str = "*/5 * * * *"
    quality_cron: str = "30 6 * * *"
    retrain_cron: str = "0 2 * * *"
    schedule_timezone: str = "UTC"
    compact_target_mb: float = 128.0
    report_hours: float = 24.0
    artifact_top_patients: int = 10
    quality_docs_runs: int = 200
    quality_keep_days: float = 14.0
    # model
    scoring_engine: str = "torch"  # "torch" or "onnx" (onnxruntime, as on an edge device)
    onnx_path: Path | None = (
        None  # None: <model_path>.onnx when it exists (`vitalstream export-onnx`), else exported in memory
    )
    # robustness, scale-out, privacy
    dlq_topic: str = ""  # dead-letter topic for every quarantined message; "" means <topic_prefix>dlq
    broker_outage_timeout_s: float = 120.0  # how long a run waits for a broker that stopped answering
    assignment_timeout_s: float = 30.0  # how long to wait for the consumer group to assign partitions
    instance: str = ""  # scale-out: "i/n" reads partitions p with p % n == i (n processes, same group)
    pseudonymise: bool = False  # patient and device ids as HMAC-SHA256 pseudonyms (key: VITALSTREAM_PSEUDONYM_KEY)
    # live outputs and alerts
    alert_policy: Path | None = None  # None: the shipped schemas/alert_policy.json
    risk_topic: str = ""  # "" means <topic_prefix>risk
    alerts_topic: str = ""  # "" means <topic_prefix>alerts
    metrics_port: int = 0  # Prometheus endpoint of live runs; 0: off

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
            risk_topic_name=self.risk_topic,
            alerts_topic_name=self.alerts_topic,
            bulk_decode=self.kafka_bulk_decode,
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


# One line per setting, shown by `vitalstream config` and checked against the README's table by a test.
# Kept beside the class rather than as field metadata so that adding a setting touches no existing line.
SETTING_DOCS: dict[str, str] = {
    "bootstrap": "Kafka bootstrap address(es), host:port[,host:port]; run/simulate need one, demo starts its own",
    "topic_prefix": "topic names are prefix + stream (glucose, heart_rate, respiration, fall)",
    "partitions": "partitions per topic when creating them, equal for all four; bounds the scoring workers",
    "group": "consumer group; also names the state checkpoint under lake/_state/ and the Parquet files",
    "lake": "output directory (risk_scores/, windows/, quarantine/, _quality/, _state/)",
    "window_minutes": "tumbling window length, aligned to the epoch",
    "allowed_lateness_minutes": "how long after its end a window waits for out-of-order readings",
    "idle_timeout_minutes": "event time a partition may trail the leader before it stops holding the watermark",
    "risk_medium": "calibrated probability at which risk_level becomes medium",
    "risk_high": "calibrated probability at which risk_level becomes high",
    "model_path": "an alternative .pt checkpoint (default: the shipped one)",
    "max_batch_records": "most messages per micro-batch (larger is not faster, and takes more memory)",
    "quality_sample_rows": "rows per suite and sample that Great Expectations validates (failing rows first)",
    "connect_timeout_s": "how long to wait for the broker before failing",
    "kafka_security": "TLS/SASL options passed to kafka-python (security_protocol, ssl_*, sasl_*)",
    "kafka_bulk_decode": "decode fetched record batches in bulk; false: kafka-python's per-record parser (slower)",
    "score_cron": "`vitalstream serve`: when to start the live scoring run if it is not running (cron)",
    "compact_cron": "`vitalstream serve`: when Parquet compaction runs (cron)",
    "validate_cron": "`vitalstream serve`: when Great Expectations validates the samples scoring runs wrote (cron)",
    "quality_cron": "`vitalstream serve`: when the data-quality report (Data Docs) is rebuilt (cron)",
    "retrain_cron": "`vitalstream serve`: when the model is retrained (cron); writes a candidate checkpoint",
    "schedule_timezone": "time zone the cron schedules are read in",
    "compact_target_mb": "compaction merges a date partition's small files into files of about this size",
    "report_hours": "`vitalstream report`: hours shown, ending at the patient's last window",
    "artifact_top_patients": "rows of the highest-risk table each scoring run publishes as a Prefect artifact",
    "quality_keep_days": "days quality samples and GE results are kept (deleted by `quality`, daily report); 0: all",
    "quality_docs_runs": "newest validation runs per suite the Data Docs site shows (older: see quality_keep_days)",
    "scoring_engine": "torch (PyTorch) or onnx (onnxruntime, as on an edge device); run/demo --engine",
    "onnx_path": "ONNX file for --engine onnx (default <model_path>.onnx if present, else exported in memory)",
    "dlq_topic": "dead-letter topic for every quarantined message (default <topic_prefix>dlq)",
    "broker_outage_timeout_s": "how long a run waits, with backoff, for a broker that stopped answering (then exit 3)",
    "assignment_timeout_s": "how long to wait for the consumer group to assign partitions before reporting it",
    "instance": "scale-out: i/n reads partitions p with p mod n = i (n processes, one group)",
    "pseudonymise": "patient and device ids as HMAC-SHA256 pseudonyms (key in VITALSTREAM_PSEUDONYM_KEY)",
    "alert_policy": "alert policy JSON: thresholds, hysteresis, repeats, severity (default schemas/alert_policy.json)",
    "risk_topic": "live topic of every scored window (default <topic_prefix>risk)",
    "alerts_topic": "live topic of alert events (default <topic_prefix>alerts); acks: <topic_prefix>alerts.ack",
    "metrics_port": "Prometheus metrics endpoint port of live runs (run --follow, serve); 0 turns it off",
}


def documented(settings: Settings) -> list[dict[str, Any]]:
    """Every setting with its effective value, default, environment variable and one-line doc."""
    defaults = Settings()
    shown = settings.describe()
    return [
        {
            "name": f.name,
            "value": shown[f.name],
            "default": getattr(defaults, f.name),
            "env": "VITALSTREAM_<OPTION> per option" if f.name == "kafka_security" else f"VITALSTREAM_{f.name.upper()}",
            "doc": SETTING_DOCS.get(f.name, ""),
        }
        for f in fields(Settings)
    ]


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
        elif name == "kafka_security":
            raise ConfigError(
                f"{key} is not read: set each option as its own variable, e.g. VITALSTREAM_SECURITY_PROTOCOL=SSL "
                "and VITALSTREAM_SSL_CAFILE=/path/ca.pem (or a [vitalstream.kafka_security] table in the TOML file)"
            )
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
    if (
        settings.compact_target_mb <= 0
        or settings.report_hours <= 0
        or settings.artifact_top_patients < 1
        or settings.quality_docs_runs < 1
        or settings.quality_keep_days < 0
    ):
        raise ConfigError(
            "compact_target_mb and report_hours must be > 0, artifact_top_patients and quality_docs_runs >= 1, "
            "quality_keep_days >= 0"
        )
    if settings.scoring_engine not in ("torch", "onnx"):
        raise ConfigError(f"scoring_engine must be torch or onnx, not {settings.scoring_engine!r}")
    if not 0 <= settings.metrics_port < 65536:
        raise ConfigError(f"metrics_port must be within 0-65535 (0: off), not {settings.metrics_port}")
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
