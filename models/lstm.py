"""A multivariate LSTM over a patient's last L windows of per-stream features and presence masks.

One file for the network, as in nanoGPT: a config dataclass, one module, a plain forward, and safe
checkpoint I/O (tensors and plain Python values only, loaded with `weights_only=True`, and a SHA-256
digest over everything that shapes a score, checked on load).

The network has two outputs:
- risk logits, one per head: an event of any kind, and one per condition, starting within the horizon;
- a forecast (mean and log-variance, in normalised units) of each vital's window mean, made from the
  hidden state one step back (a forecast of the window being scored, from the windows before it: an
  observed value outside its interval is an anomaly) and from the last step (the next window's value).
Post-processing (calibration, the "any" risk from the condition heads, intervals in physical units)
is NumPy on the network's outputs, so the PyTorch and ONNX engines share it exactly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.paths import DEFAULT_CHECKPOINT  # re-exported: its home does not import torch
from pipeline.features import VITALS
from pipeline.model_contract import (
    CONDITION_STREAMS,
    CONDITIONS,
    HEADS,
    MODEL_FEATURES,
    ModelContract,
    sensor_configuration,
)


def vital_pairs(stats: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """(feature index, presence index) for each vital statistic in `stats`."""
    return tuple(
        (MODEL_FEATURES.index(f"{prefix}_{s}"), MODEL_FEATURES.index(f"{stream}_present"))
        for stream, prefix in VITALS.items()
        for s in stats
    )


@dataclass
class LSTMConfig:
    n_features: int = len(MODEL_FEATURES)
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1
    window_count: int = 12  # L: windows of context per score
    horizon_minutes: int = 60  # H: an event starting within H after window_end is a positive
    heads: tuple[str, ...] = HEADS
    # Inputs added inside the network: each vital statistic minus the patient's own mean over the earlier
    # windows of the context (0 where there is none), so "high for this patient" is visible, not only "high".
    # Only the statistics a present stream always has (min, max and slope need two readings).
    baseline_pairs: tuple[tuple[int, int], ...] = field(default_factory=lambda: vital_pairs(("mean", "last")))
    # Inputs added inside the network: each vital's trend across windows, the least-squares slope of its window
    # means (per window step) over the windows of the context so far that hold it. A CGM every 5 minutes puts
    # one reading in each window, where the within-window slope is missing: the trend is across windows.
    trend_pairs: tuple[tuple[int, int], ...] = field(default_factory=lambda: vital_pairs(("mean",)))
    # With N > 0, the same trends again over the last N windows only (a recent turn is not averaged away by
    # an hour of history): the 30-minute extrapolation a clinician reads off a CGM. 0: none (older checkpoints).
    recent_trend_windows: int = 0
    # A linear map from the last step's inputs (with the derived ones below) straight to the risk logits,
    # beside the LSTM's head: "last value plus trend" is one linear combination away instead of something
    # the recurrent layers must rediscover from a simulator-heavy mix. Each condition's map reads only its
    # own stream's inputs (`_input_streams`; the overall head reads all): a pattern across streams that only
    # the simulator has cannot enter this way. False in older checkpoints.
    skip: bool = False
    # Inputs added inside the network: each vital's last value carried forward from the latest window of the
    # context that holds it, and how many windows ago that was (over the context length). A 15-minute CGM
    # or an hourly chart leaves most windows without the value, where the window's own columns say nothing.
    # Empty in older checkpoints.
    carry_pairs: tuple[tuple[int, int], ...] = ()
    # Conditions judged from their own stream alone (model_contract.CONDITION_STREAMS): their logits come from a
    # second pass of the same network over the context with every other stream absent (zeros, as a stream the
    # patient does not wear reads), so a pattern across streams that real devices do not share (a wrist heart
    # rate that foretells hypoglycaemia in the simulator) cannot move them. Empty in older checkpoints.
    own_stream_heads: tuple[str, ...] = ()
    # Forecast targets: each vital's window mean, masked by its presence flag.
    forecast_pairs: tuple[tuple[int, int], ...] = field(default_factory=lambda: vital_pairs(("mean",)))


def _stream_of(feature: str) -> str:
    """The stream a model feature describes (`glucose_mg_dl_mean` -> glucose, `fall_count` -> fall)."""
    for stream, prefix in VITALS.items():
        if feature.startswith((prefix, f"{stream}_")):
            return stream
    return feature.split("_")[0]


def _input_streams(cfg: LSTMConfig) -> list[str]:
    """The stream of each of the network's inputs, in `RiskLSTM.inputs` order."""
    names = MODEL_FEATURES[: cfg.n_features]
    out = [_stream_of(n) for n in names]
    out += [_stream_of(names[f]) for f, _ in cfg.baseline_pairs]
    out += [_stream_of(names[f]) for f, _ in cfg.trend_pairs] * (2 if cfg.recent_trend_windows > 0 else 1)
    out += [_stream_of(names[f]) for f, _ in cfg.carry_pairs] * 2
    return out


def absent_inputs(center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """[F] float32: what `models.scorer.feature_matrix` makes of a window in which no stream has a reading
    (values null -> 0; counts and presence 0, normalised: a count of 0 is not 0 then). How a stream the
    patient does not wear reads to the network (a test keeps this and `feature_matrix` in step)."""
    names = MODEL_FEATURES[: len(center)]
    raw = np.array([0.0 if n.endswith(("_count", "_present")) else np.nan for n in names], np.float64)
    return np.nan_to_num((raw - np.asarray(center)) / np.asarray(scale), nan=0.0).astype(np.float32)


class RiskLSTM(nn.Module):
    def __init__(self, cfg: LSTMConfig) -> None:
        super().__init__()
        if cfg.window_count < 2:
            raise ValueError("window_count must be >= 2 (the anomaly forecast looks one window back)")
        self.cfg = cfg
        base = torch.tensor(cfg.baseline_pairs, dtype=torch.long).reshape(-1, 2)
        self.base_value: torch.Tensor
        self.base_present: torch.Tensor
        self.register_buffer("base_value", base[:, 0].clone(), persistent=False)
        self.register_buffer("base_present", base[:, 1].clone(), persistent=False)
        trend = torch.tensor(cfg.trend_pairs, dtype=torch.long).reshape(-1, 2)
        self.trend_value: torch.Tensor
        self.trend_present: torch.Tensor
        self.register_buffer("trend_value", trend[:, 0].clone(), persistent=False)
        self.register_buffer("trend_present", trend[:, 1].clone(), persistent=False)
        carry = torch.tensor(cfg.carry_pairs, dtype=torch.long).reshape(-1, 2)
        self.carry_value: torch.Tensor
        self.carry_present: torch.Tensor
        self.register_buffer("carry_value", carry[:, 0].clone(), persistent=False)
        self.register_buffer("carry_present", carry[:, 1].clone(), persistent=False)
        n_trends = len(cfg.trend_pairs) * (2 if cfg.recent_trend_windows > 0 else 1)
        n_in = cfg.n_features + len(cfg.baseline_pairs) + n_trends + 2 * len(cfg.carry_pairs)
        self.lstm = nn.LSTM(
            n_in,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.head = nn.Linear(cfg.hidden, len(cfg.heads))
        self.forecast = nn.Linear(cfg.hidden, 2 * len(cfg.forecast_pairs))
        streams = _input_streams(cfg)
        own = [[h not in CONDITION_STREAMS or s == CONDITION_STREAMS[h] for s in streams] for h in cfg.heads]
        self.skip = nn.Linear(n_in, len(cfg.heads), bias=False) if cfg.skip else None
        self.skip_mask: torch.Tensor  # [heads, inputs]: what each head's skip reads
        self.register_buffer("skip_mask", torch.tensor(own, dtype=torch.float32), persistent=False)
        # per stream judged alone: which raw features it keeps, and which heads take that pass's logits
        # (buffers, not saved: they follow the module to a device and are derived from the config)
        features = [_stream_of(n) for n in MODEL_FEATURES[: cfg.n_features]]
        self.own_streams = list(dict.fromkeys(CONDITION_STREAMS[h] for h in cfg.own_stream_heads))
        # what a stream the patient does not wear reads as (`absent_inputs`: counts of 0 are not 0
        # once normalised); set from the checkpoint's normalisation by `Checkpoint.model` and training
        self.absent: torch.Tensor
        self.register_buffer("absent", torch.zeros(cfg.n_features), persistent=False)
        for i, stream in enumerate(self.own_streams):
            keep = torch.tensor([f == stream for f in features], dtype=torch.float32)
            heads = torch.tensor([h in cfg.own_stream_heads and CONDITION_STREAMS[h] == stream for h in cfg.heads])
            self.register_buffer(f"own_keep_{i}", keep, persistent=False)
            self.register_buffer(f"own_heads_{i}", heads, persistent=False)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, L, n_features] -> the LSTM's inputs: x with the derived inputs (deviation from the
        patient's own earlier windows, trends) appended."""
        if len(self.cfg.baseline_pairs):
            value = x.index_select(2, self.base_value)
            present = x.index_select(2, self.base_present)
            seen = torch.cumsum(value * present, dim=1) - value * present  # sums over earlier windows only
            count = torch.cumsum(present, dim=1) - present
            delta = (value - seen / count.clamp(min=1.0)) * present * (count > 0).to(x.dtype)
            x_in = torch.cat([x, delta], dim=2)
        else:
            x_in = x
        if len(self.cfg.trend_pairs):
            x_in = torch.cat([x_in, self.trends(x)], dim=2)
            if self.cfg.recent_trend_windows > 0:
                x_in = torch.cat([x_in, self.trends(x, self.cfg.recent_trend_windows)], dim=2)
        if len(self.cfg.carry_pairs):
            x_in = torch.cat([x_in, self.carried(x)], dim=2)
        return x_in

    def carried(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, L, 2K]: per step, each carry vital's value in the latest window up to that step that holds
        it (0 before the first), then its age in windows over L (1 before the first). A loop over the L steps:
        short, causal, and exportable to ONNX."""
        v = x.index_select(2, self.carry_value)
        w = x.index_select(2, self.carry_present)
        last, age = torch.zeros_like(v[:, 0]), torch.full_like(v[:, 0], float(x.shape[1]))
        values, ages = [], []
        for t in range(x.shape[1]):
            seen = w[:, t] > 0
            last = torch.where(seen, v[:, t], last)
            age = torch.where(seen, torch.zeros_like(age), age + 1.0)
            values.append(last)
            ages.append(age.clamp(max=float(x.shape[1])) / x.shape[1])
        return torch.cat([torch.stack(values, dim=1), torch.stack(ages, dim=1)], dim=2)

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, L, n_features] -> LSTM outputs [batch, L, hidden] (causal: step t sees windows <= t)."""
        return self.recurrent(self.inputs(x))

    def recurrent(self, x: torch.Tensor) -> torch.Tensor:
        """The LSTM over inputs already extended by `inputs`."""
        # explicit zero state with the batch's size: the ONNX graph then takes any batch size
        h0 = x.new_zeros((self.cfg.layers, x.shape[0], self.cfg.hidden))
        out, _ = self.lstm(x, (h0, h0))
        return out

    def trends(self, x: torch.Tensor, span: int = 0) -> torch.Tensor:
        """[batch, L, K]: per step, the slope of each trend vital over the present windows up to that step
        (with `span` > 0: among the last `span` steps only; 0 with fewer than two), from cumulative sums
        (causal, and exportable to ONNX)."""
        v = x.index_select(2, self.trend_value)
        w = x.index_select(2, self.trend_present)
        s = torch.arange(x.shape[1], dtype=x.dtype, device=x.device).reshape(1, -1, 1)

        def total(a: torch.Tensor) -> torch.Tensor:
            c = torch.cumsum(a, dim=1)
            if 0 < span < x.shape[1]:  # minus the sum up to `span` steps back: a moving sum
                c = c - torch.cat([torch.zeros_like(c[:, :span]), c[:, :-span]], dim=1)
            return c

        n = total(w)
        s_vs, s_s = total(w * v * s), total(w * s)
        s_v, s_ss = total(w * v), total(w * s * s)
        den = n * s_ss - s_s * s_s
        ok = (n >= 2).to(x.dtype) * (den > 1e-6).to(x.dtype)
        return ok * (n * s_vs - s_s * s_v) / torch.where(den > 1e-6, den, torch.ones_like(den))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [batch, L, n_features] -> (risk logits [batch, heads], forecast [batch, 2, 2K]).

        forecast[:, 0] predicts the last window (from the windows before it), forecast[:, 1] the next one;
        each row holds K means then K log-variances, in normalised units."""
        x_in = self.inputs(x)
        out = self.recurrent(x_in)
        forecast: torch.Tensor = self.forecast(out[:, -2:])
        return self.own_stream_logits(x, self.risk_logits(x_in, out)), forecast

    def own_stream_logits(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """`own_stream_heads`: those conditions' logits from a pass of the same network over `x` with every
        other stream absent (as a patient who does not wear it reads); the other heads keep `logits`."""
        # a window with no reading at all (a gap in the context) is all zeros, as `models.scorer.sequences` fills it
        window = (x != 0).any(dim=2, keepdim=True).to(x.dtype)
        for i in range(len(self.own_streams)):
            keep = getattr(self, f"own_keep_{i}")
            own_in = self.inputs(x * keep + self.absent * (1 - keep) * window)
            logits = torch.where(
                getattr(self, f"own_heads_{i}"), self.risk_logits(own_in, self.recurrent(own_in)), logits
            )
        return logits

    def risk_logits(self, x_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The risk logits [batch, heads] from the last step: the LSTM's head, plus the linear skip."""
        logits: torch.Tensor = self.head(out[:, -1])
        if self.skip is not None:
            logits = logits + x_in[:, -1] @ (self.skip.weight * self.skip_mask).T
        return logits


@dataclass
class Checkpoint:
    """Everything needed to score: weights, the config, the feature order and normalisation, calibration,
    provenance (training config, data, metrics)."""

    config: LSTMConfig
    state_dict: dict[str, torch.Tensor]
    feature_names: list[str]
    center: list[float]
    scale: list[float]
    temperature: list[float] = field(default_factory=list)  # per head, applied to logits (1.0 = none)
    version: str = "untrained"
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    # Per head, an isotonic map from probability to calibrated probability: {"x": [...], "y": [...]}
    # knots, applied with linear interpolation; an empty dict leaves the head as it is.
    isotonic: list[dict[str, list[float]]] = field(default_factory=list)
    # "conditions": 1 - prod(1 - p_condition) over the assessed conditions; "head": the any-event head's own
    # probability (masked where nothing is assessed); either then calibrated per sensor configuration.
    any_source: str = "conditions"
    # Per sensor configuration (model_contract.sensor_configuration, e.g. "glucose+heart_rate"), an isotonic
    # map for the overall risk combined from that configuration's assessed conditions.
    isotonic_by_config: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # Per forecast vital, the multiple of the predicted standard deviation that covered `forecast_coverage`
    # of validation windows (split conformal); an observation outside is an anomaly.
    forecast_z: list[float] = field(default_factory=list)
    forecast_coverage: float = 0.99
    digest: str = ""  # SHA-256 over the tensors and every other field but this one; checked on load

    def contract(self) -> ModelContract:
        """What this network reads and answers (see pipeline.model_contract), from what the checkpoint stores:
        the feature order, the heads, the context length and the training data's window length."""
        window_ms = int(self.training.get("config", {}).get("window_ms", 300_000))
        conditions = tuple(h for h in self.config.heads if h != "any")
        return ModelContract(tuple(self.feature_names), conditions, window_ms, self.config.window_count)

    def model(self) -> RiskLSTM:
        net = RiskLSTM(self.config)
        net.load_state_dict(self.state_dict)
        net.absent.copy_(torch.from_numpy(absent_inputs(np.asarray(self.center), np.asarray(self.scale))))
        net.eval()
        return net

    def probabilities(
        self, logits: np.ndarray, assessed: np.ndarray | None = None, keys: np.ndarray | None = None
    ) -> np.ndarray:
        """Network logits [N, heads] -> calibrated probabilities [N, heads] (float64).

        With `assessed` ([N, conditions] bool, CONDITIONS order) a condition that is not assessed gets NaN,
        and the overall risk (`any_source` "conditions": 1 - prod(1 - p) over the assessed conditions only;
        "head": the any-event head) is calibrated with the map of its sensor configuration, else the
        overall map; NaN when nothing is assessed. `keys`: each row's configuration (default: from `assessed` alone)."""
        heads = self.config.heads
        t = np.asarray(self.temperature or [1.0] * len(heads), dtype=np.float64)
        p = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64) / t))
        cond = [heads.index(c) for c in CONDITIONS if c in heads]
        for i in cond:
            p[:, i] = self._iso(i, p[:, i])
        if assessed is not None:
            return self._assessed_only(p, np.asarray(assessed, dtype=bool), cond, keys)
        if self.any_source == "conditions" and cond:
            p[:, heads.index("any")] = 1.0 - np.prod(1.0 - p[:, cond], axis=1)
        if "any" in heads:
            i = heads.index("any")
            p[:, i] = self._iso(i, p[:, i])
        return p

    def _assessed_only(
        self, p: np.ndarray, assessed: np.ndarray, cond: list[int], keys: np.ndarray | None
    ) -> np.ndarray:
        pc = np.where(assessed, p[:, cond], np.nan)
        p[:, cond] = pc
        any_i = self.config.heads.index("any")
        if self.any_source == "conditions":
            p[:, any_i] = 1.0 - np.prod(1.0 - np.where(assessed, pc, 0.0), axis=1)
        # else the any-event head's own probability, which read every input the configuration has
        keys = sensor_configuration(assessed) if keys is None else keys
        fallback = self.isotonic[any_i] if any_i < len(self.isotonic) else {}
        for key in np.unique(keys).tolist():
            knots = self.isotonic_by_config.get(key) or fallback
            rows = keys == key
            if knots:
                p[rows, any_i] = np.interp(p[rows, any_i], knots["x"], knots["y"])
        p[~assessed.any(axis=1), any_i] = np.nan
        return p

    def _iso(self, head: int, p: np.ndarray) -> np.ndarray:
        knots = self.isotonic[head] if head < len(self.isotonic) else {}
        if not knots:
            return p
        return np.interp(p, knots["x"], knots["y"])

    def forecast_intervals(self, forecast: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Network forecast [N, 2K] (one step) -> (mean, low, high), each [N, K], in the features' units."""
        k = len(self.config.forecast_pairs)
        idx = [f for f, _ in self.config.forecast_pairs]
        center = np.asarray(self.center, dtype=np.float64)[idx]
        scale = np.asarray(self.scale, dtype=np.float64)[idx]
        mu = np.asarray(forecast[:, :k], dtype=np.float64)
        sd = np.exp(0.5 * np.clip(np.asarray(forecast[:, k:], dtype=np.float64), -20, 20))
        z = np.asarray(self.forecast_z or [2.576] * k, dtype=np.float64)
        return center + scale * mu, center + scale * (mu - z * sd), center + scale * (mu + z * sd)

    def _doc(self) -> dict[str, Any]:
        doc = {k: v for k, v in asdict(self).items() if k not in ("config", "state_dict", "digest")}
        if not doc["isotonic_by_config"]:
            del doc["isotonic_by_config"]  # absent in checkpoints from before sensor configurations
        config = asdict(self.config)
        # absent in checkpoints from before these inputs: their digests stay valid
        for name in ("recent_trend_windows", "skip", "carry_pairs", "own_stream_heads"):
            if not config[name]:
                del config[name]
        doc["config"] = config
        return doc

    def compute_digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.state_dict):
            tensor = self.state_dict[name].detach().cpu().contiguous()
            h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            h.update(tensor.numpy().tobytes())
        # plain values in a canonical form: tuples and lists hash alike, key order does not matter
        h.update(json.dumps(self._doc(), sort_keys=True, default=str).encode())
        return h.hexdigest()

    def save(self, path: Path) -> None:
        self.digest = self.compute_digest()
        doc = self._doc()
        doc["state_dict"] = self.state_dict
        doc["digest"] = self.digest
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(doc, tmp)
        tmp.replace(path)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def load_checkpoint(path: Path = DEFAULT_CHECKPOINT) -> Checkpoint:
    """Load without unpickling arbitrary objects and verify the digest: a foreign, corrupt or edited
    file raises ValueError with what to do about it."""
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError for unsafe or corrupt files
        raise ValueError(f"{path}: not a valid VitalStream checkpoint ({type(exc).__name__}: {exc})") from exc
    try:
        cfg = {k: _tuples(v) for k, v in doc["config"].items()}
        ckpt = Checkpoint(
            config=LSTMConfig(**cfg),
            state_dict=doc["state_dict"],
            feature_names=list(doc["feature_names"]),
            center=list(doc["center"]),
            scale=list(doc["scale"]),
            temperature=list(doc.get("temperature") or [1.0] * len(cfg["heads"])),
            version=str(doc["version"]),
            metrics=dict(doc.get("metrics", {})),
            training=dict(doc.get("training", {})),
            isotonic=[dict(k) for k in doc.get("isotonic", [])],
            any_source=str(doc.get("any_source", "head")),
            isotonic_by_config={str(k): dict(v) for k, v in dict(doc.get("isotonic_by_config", {})).items()},
            forecast_z=list(doc.get("forecast_z", [])),
            forecast_coverage=float(doc.get("forecast_coverage", 0.99)),
            digest=str(doc.get("digest", "")),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path}: checkpoint is incomplete or from an older version ({exc}); retrain it with `vitalstream train`"
        ) from exc
    if not ckpt.digest:
        raise ValueError(
            f"{path}: checkpoint has no integrity digest (older format); retrain it with `vitalstream train`"
        )
    if ckpt.compute_digest() != ckpt.digest:
        raise ValueError(
            f"{path}: checkpoint contents do not match their SHA-256 digest (the file was modified or corrupted "
            "after training); restore it from version control or retrain it with `vitalstream train`"
        )
    try:
        ckpt.model()  # shapes must match the config
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: checkpoint weights do not match its config ({exc})") from exc
    return ckpt
