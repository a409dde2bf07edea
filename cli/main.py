"""The `vitalstream` command line: one subcommand per job (`vitalstream --help` lists them), each turning the
expected failures (VitalStreamError) into one line and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pipeline.errors import ConfigError, VitalStreamError

if TYPE_CHECKING:
    from runtime.loop import Mode

_NO_BROKER_HINT = (
    "no Kafka bootstrap address: pass --bootstrap host:port or set VITALSTREAM_BOOTSTRAP "
    "(start a local broker with `vitalstream broker`, or run everything at once with `vitalstream demo`)"
)


def main(argv: Sequence[str] | None = None) -> int:
    """The program; `argv` None: the process's own command line (the console script, `python -m cli.main`)."""
    global _PROGRAM
    _PROGRAM = argv is None
    return _main(argv)


_PROGRAM = False  # main() runs as the program, not called by a test or another program


@contextlib.contextmanager
def _importing() -> Iterator[None]:
    """Heavy imports (Prefect): the garbage collector paused while they create objects that live as long as
    the process, and, in the program, those frozen afterwards so that later collections (the interpreter's
    exit included) skip them. Only these: objects frozen at exit are never destroyed, and extensions that
    check for leaks at shutdown (DuckDB's nanobind) then print a page of warnings."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _PROGRAM:
            gc.freeze()
        if was_enabled:
            gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # kafka-python logs every reconnect attempt at ERROR; our own errors say what went wrong, once.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
        return result
    except VitalStreamError as exc:
        print(f"vitalstream: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vitalstream: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `vitalstream config | head`: the reader left; silence the flush at exit instead of a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vitalstream",
        description="Patient sensor streams from Kafka to event-time windows, quality checks and LSTM risk "
        "scores in Parquet.",
    )
    p.add_argument("--config", type=Path, help="TOML settings file (section [vitalstream])")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="embedded broker + simulated patients + scoring, then a summary")
    d.add_argument("--patients", type=int, default=200)
    d.add_argument("--hours", type=float, default=3.0)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--lake", type=Path, help="output directory (default ./lake)")
    d.add_argument("--engine", choices=("torch", "onnx"), help="scoring engine (default: scoring_engine, torch)")
    d.set_defaults(handler=cmd_demo)

    b = sub.add_parser("broker", help="run the embedded Kafka-protocol broker in the foreground")
    b.add_argument("--port", type=int, default=9092)
    b.add_argument("--host", default="127.0.0.1")
    b.set_defaults(handler=cmd_broker)

    s = sub.add_parser("simulate", help="produce simulated patient streams to Kafka")
    s.add_argument("--patients", type=int, default=50)
    s.add_argument("--hours", type=float, default=2.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--bootstrap", help="Kafka bootstrap address (default: VITALSTREAM_BOOTSTRAP)")
    s.set_defaults(handler=cmd_simulate)

    rp = sub.add_parser("replay", help="produce real recordings to Kafka: BIDMC ICU vitals (PhysioNet) or any tidy CSV")
    rp.add_argument(
        "--csv",
        type=Path,
        help="tidy recording (columns subject, ts_utc, stream, value, unit; .csv or .csv.gz) or a BIDMC numerics "
        "CSV (default: the BIDMC copy shipped in sim/bidmc_data/)",
    )
    rp.add_argument(
        "--shift-to-now",
        action="store_true",
        help="tidy recordings: move every time so that the last reading falls in the past hour (default: keep them)",
    )
    rp.add_argument("--bootstrap", help="Kafka bootstrap address (default: VITALSTREAM_BOOTSTRAP)")
    rp.set_defaults(handler=cmd_replay)

    r = sub.add_parser("run", help="run the scoring flow (Prefect) over the four topics")
    r.add_argument("--bootstrap", help="Kafka bootstrap address (default: VITALSTREAM_BOOTSTRAP)")
    r.add_argument("--lake", type=Path, help="output directory (default ./lake)")
    r.add_argument("--group", help="consumer group (default vitalstream-scoring)")
    r.add_argument("--instance", help="scale-out: i/n, this process reads partitions p with p %% n == i")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument(
        "--until-idle",
        dest="mode",
        action="store_const",
        const="until-idle",
        help="stop once caught up with the topics (default)",
    )
    mode.add_argument(
        "--drain",
        dest="mode",
        action="store_const",
        const="drain",
        help="as --until-idle, then close every open window (finished recordings)",
    )
    mode.add_argument(
        "--follow",
        dest="mode",
        action="store_const",
        const="follow",
        help="live: keep running, publishing risk and alerts as windows close, until SIGTERM or Ctrl-C",
    )
    r.add_argument("--engine", choices=("torch", "onnx"), help="scoring engine (default: scoring_engine, torch)")
    r.set_defaults(handler=cmd_run, mode="until-idle")

    t = sub.add_parser("train", help="train the risk model on simulated patients and the real cohorts in data/real/")
    t.add_argument("--patients", type=int, default=600, help="simulated patients (default 600)")
    t.add_argument("--hours", type=float, default=12.0, help="hours per patient (default 12)")
    t.add_argument("--epochs", type=int, default=30, help="most epochs; early stopping may end sooner (default 30)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, help="checkpoint path (default: the shipped checkpoint in models/checkpoints/)")
    t.add_argument("--force", action="store_true", help="replace the checkpoint even if the new one does not beat it")
    t.add_argument(
        "--procedure-seeds",
        type=int,
        nargs="+",
        help="seeds for judging a changed training procedure leave one dataset out (default: "
        "models.promotion.PROCEDURE_SEEDS)",
    )
    _real_arguments(t)
    t.add_argument("--holdout", default="", help="a real cohort left out of training: the whole cohort is test")
    t.set_defaults(handler=cmd_train)

    lo = sub.add_parser("lodo", help="leave one real dataset out: train without each cohort, evaluate on it")
    lo.add_argument("--patients", type=int, help="simulated patients (default: models.train.LODO_PATIENTS)")
    lo.add_argument("--hours", type=float, default=12.0, help="hours per patient (default 12)")
    lo.add_argument("--epochs", type=int, help="most epochs (default: models.train.LODO_EPOCHS)")
    lo.add_argument("--seed", type=int, default=0)
    lo.add_argument("--out", type=Path, help="checkpoint whose card gets the results (default: the shipped one)")
    _real_arguments(lo)
    lo.set_defaults(handler=cmd_lodo)

    oc = sub.add_parser("outcomes", help="does the shipped risk rank in-hospital death? (patients it never saw)")
    oc.add_argument("--real-data", action="append", type=Path, default=[], help="a folder holding cohorts")
    oc.add_argument("--cohort", default="physionet_challenge2012", help="a cohort with outcomes.csv")
    oc.add_argument("--patients", type=int, default=2000, help="stays drawn among those never seen (default 2000)")
    oc.add_argument("--hours", type=float, default=24.0, help="horizon from each stay's first reading (default 24)")
    oc.add_argument("--seed", type=int, default=0, help="which stays are drawn, and the bootstrap")
    oc.add_argument("--model", type=Path, help="checkpoint (default: the shipped one)")
    oc.add_argument("--out", type=Path, help="JSON file (default: outcomes.json beside the checkpoint)")
    oc.set_defaults(handler=cmd_outcomes)

    rv = sub.add_parser(
        "evaluate",
        help="re-evaluate a checkpoint with today's evaluation code (same weights and test patients); "
        "rewrites its figures, card and pictures",
    )
    rv.add_argument("--model", type=Path, help="checkpoint (default: the shipped one)")
    rv.add_argument("--real-data", action="append", type=Path, default=[], help="where its cohorts are now")
    rv.set_defaults(handler=cmd_evaluate)

    ex = sub.add_parser(
        "export-onnx", help="export the risk model to ONNX for onnxruntime (edge devices, --engine onnx)"
    )
    ex.add_argument("--model", type=Path, help="checkpoint (default: model_path, else the shipped one)")
    ex.add_argument("--out", type=Path, help="ONNX file (default: the checkpoint's path with .onnx)")
    ex.set_defaults(handler=cmd_export_onnx)

    q = sub.add_parser(
        "query", help="run SQL over the lake with DuckDB (views: risk_scores, windows, quarantine, alerts, acks)"
    )
    q.add_argument("sql")
    q.add_argument("--lake", type=Path)
    q.set_defaults(handler=cmd_query)

    c = sub.add_parser("config", help="print every setting: effective value, default, environment variable, meaning")
    c.add_argument("--json", action="store_true", help="the effective values only, as JSON")
    c.set_defaults(handler=cmd_config)
    _add_operations_commands(sub)
    return p


def _settings(args: argparse.Namespace, **overrides: Any) -> Any:
    from pipeline.config import load_settings

    return load_settings(args.config).with_overrides(**overrides)


def cmd_config(args: argparse.Namespace) -> int:
    import json

    from pipeline.config import documented

    settings = _settings(args)
    if args.json:
        print(json.dumps(settings.describe(), indent=2, default=str))
        return 0
    for row in documented(settings):
        value, default = json.dumps(row["value"], default=str), json.dumps(row["default"], default=str)
        changed = "" if row["value"] == row["default"] else f"   (default {default})"
        print(f"{row['name']} = {value}{changed}")
        print(f"    {row['doc']}  [{row['env']}]")
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from sim.broker import EmbeddedBroker

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with EmbeddedBroker(port=args.port, host=args.host) as broker:
        print(
            f"broker listening; bootstrap address: {broker.bootstrap}  (Ctrl-C to stop; storage is in memory)",
            flush=True,
        )
        while not stop.wait(0.5):
            if broker.proc is not None and broker.proc.poll() is not None:
                raise VitalStreamError(f"broker exited with code {broker.proc.returncode}; log: {broker.log_path}")
        print("stopping broker", flush=True)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    settings = _settings(args, bootstrap=args.bootstrap)
    if not settings.bootstrap:
        raise ConfigError(_NO_BROKER_HINT)
    n = _simulate_into(settings, settings.bootstrap, args.patients, args.hours, args.seed)
    print(f"produced {n:,} messages for {args.patients} patients x {args.hours} h to {settings.bootstrap}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import time

    from pipeline.kafka_io import ensure_topics
    from pipeline.kafka_publish import produce, producer
    from pipeline.kafka_settings import check_reachable
    from sim.replay import BIDMC_CSV, bidmc_messages, is_tidy, read_bidmc, read_tidy, tidy_messages

    settings = _settings(args, bootstrap=args.bootstrap)
    if not settings.bootstrap:
        raise ConfigError(_NO_BROKER_HINT)
    path = args.csv or BIDMC_CSV
    start_ms = (int(time.time()) // 3600 - 1) * 3_600_000  # an hour-aligned hour ago
    try:
        if is_tidy(path):
            frame = read_tidy(path)
            shift = start_ms + 3_600_000 - int(frame["event_ms"].max()) - 1 if args.shift_to_now else 0
            shift -= shift % 3_600_000 if args.shift_to_now else 0  # whole hours: windows stay aligned
            messages, what = tidy_messages(frame, shift), f"{frame['subject'].nunique()} subjects of {path.name}"
        else:
            frame = read_bidmc(path)
            messages, what = bidmc_messages(frame, start_ms), f"{frame['subject_id'].nunique()} BIDMC patients"
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    kafka = settings.kafka(settings.bootstrap)
    check_reachable(kafka)
    ensure_topics(kafka)
    prod = producer(kafka)
    try:
        n = produce(prod, kafka, messages)
    finally:
        prod.close()
    print(f"produced {n:,} messages ({what}) to {settings.bootstrap}")
    return 0


def _simulate_into(settings: Any, bootstrap: str, patients: int, hours: float, seed: int) -> int:
    from pipeline.kafka_io import ensure_topics
    from pipeline.kafka_publish import produce, producer
    from pipeline.kafka_settings import check_reachable
    from sim.simulate import SimulationConfig, encode, simulate

    kafka = settings.kafka(bootstrap)
    check_reachable(kafka)
    ensure_topics(kafka)
    sim = simulate(SimulationConfig(patients=patients, hours=hours, seed=seed))
    prod = producer(kafka)
    bar = _bar(total=len(sim.readings), desc="producing")
    total = 0
    try:
        for chunk in encode(sim):
            total += produce(prod, kafka, chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        prod.close()
        if bar is not None:
            bar.close()
    return total


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.consumer_process import Launched
    from runtime import prefect_api

    # The consumer process's interpreter first, then Prefect's API server where none is configured: both load
    # their libraries while this one loads the settings.
    child = Launched()
    try:
        with prefect_api.started() as api:
            settings = _settings(
                args,
                bootstrap=args.bootstrap,
                lake=args.lake,
                group=args.group,
                scoring_engine=args.engine,
                instance=args.instance,
            )
            if not settings.bootstrap:
                raise ConfigError(_NO_BROKER_HINT)
            summary = _run_flow(settings, settings.bootstrap, args.mode, child, api)
    finally:
        child.close()  # stopped if the run never took it (a failed preflight)
    _print_summary(summary, settings)
    return 0 if summary["balanced"] else 1


def _run_flow(settings: Any, bootstrap: str, mode: str, child: Any = None, api: Any = None) -> dict[str, Any]:
    """`child`: the consumer's interpreter, launched ahead; `api`: Prefect's local server, launched ahead
    (runtime.prefect_api), waited for right before the flow run."""
    from runtime.wiring import consumer_started, preflight

    preflight(settings, bootstrap)  # expected failures surface here, as one line, before Prefect starts a run
    # The consumer joins its group first: the join overlaps importing Prefect and creating the flow run.
    with consumer_started(settings, bootstrap, cast("Mode", mode), child):
        with _importing():
            from flows.scoring import scoring_flow

        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_drop_expected_tracebacks)
        if api is not None:
            api.ready()
        result: dict[str, Any] = scoring_flow(settings, bootstrap, mode=mode, progress=True)  # type: ignore[call-overload]
    # Great Expectations on the run's sample: its own flow run, after the scoring run's consumer has gone
    # (a deployment every few minutes under `vitalstream serve`); none when there is no sample to validate.
    from ops.quality import pending_samples

    result["validation"] = []
    if pending_samples(settings.lake):
        from flows.quality_report import validation_flow

        result["validation"] = validation_flow(lake=str(settings.lake.resolve()))
    return result


def _drop_expected_tracebacks(record: logging.LogRecord) -> bool:
    """Prefect logs a failed run's exception with its traceback; for an expected failure (broker, lake) the
    CLI's one line says it all."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, VitalStreamError)


def cmd_demo(args: argparse.Namespace) -> int:
    from runtime import prefect_api
    from sim.broker import EmbeddedBroker

    settings = _settings(args, lake=args.lake, scoring_engine=args.engine)
    fresh_demo_lake(settings.lake)
    with prefect_api.started() as api, EmbeddedBroker() as broker:
        print(f"embedded broker at {broker.bootstrap}")
        n = _simulate_into(settings, broker.bootstrap, args.patients, args.hours, args.seed)
        print(f"produced {n:,} messages ({args.patients} patients x {args.hours} h, seed {args.seed})")
        summary = _run_flow(settings, broker.bootstrap, "drain", api=api)
    _print_summary(summary, settings)
    _demo_report(settings)
    return 0 if summary["balanced"] else 1


DEMO_MARK = ".vitalstream-demo"


def fresh_demo_lake(lake: Path) -> None:
    """The demo's broker is new every time, so the lake of an earlier demo (whose state checkpoint holds
    offsets into that demo's topics) is replaced; a lake the demo did not write is refused, never deleted."""
    import shutil

    if lake.is_dir() and any(lake.iterdir()):
        if not (lake / DEMO_MARK).is_file():
            raise ConfigError(
                f"{lake} holds data the demo did not write; the demo starts a fresh lake each time: "
                "give it another --lake (or remove that directory)"
            )
        shutil.rmtree(lake)
    lake.mkdir(parents=True, exist_ok=True)
    (lake / DEMO_MARK).write_text("written by `vitalstream demo`: the next demo replaces this lake\n")


# How the summary says what part of a run waited for its consumer (bench/startup.py reads the figure before it).
JOIN_WAIT = "s of it waiting for the consumer's start and group join"


def _print_summary(s: dict[str, Any], settings: Any) -> None:
    from ops.query import latest_risk

    q = s["quarantined"]
    rate = s["consumed"] / s["seconds"] if s["seconds"] else 0.0
    print(
        f"\nrun {s['run_id']} ({s['mode']}): {s['batches']} batches in {s['seconds']:.1f} s ({rate:,.0f} messages/s; "
        f"{s.get('startup_s', 0.0):.1f} {JOIN_WAIT})"
    )
    print(f"  consumed      {s['consumed']:>10,}")
    print(f"  in windows    {s['windowed']:>10,}   ({s['windows']:,} windows scored)")
    print(f"  duplicates    {s['duplicates']:>10,}")
    print(f"  quarantined   {sum(q.values()):>10,}   " + ", ".join(f"{k} {v}" for k, v in sorted(q.items())))
    print(f"  still open    {s['pending_after']:>10,}   (readings waiting for their window to close)")
    check = "holds" if s["balanced"] else "DOES NOT HOLD"
    print(f"  accounting {check}: consumed = in windows + duplicates + quarantined + change in open")
    for suite, r in sorted(s.get("quality", {}).items()):
        print(f"  suite {suite}: {r['checked']:,} rows checked in Arrow, {r['failed']:,} unexpected (quarantined)")
    for r in s.get("validation", []):
        if "error" in r:
            print(f"  great expectations {r['suite']} (sample {r['sample']}): {r['error']}")
            continue
        detail = ", ".join(f"{k} {v:,}" for k, v in r["failed"].items())
        status = "all as expected" if r["success"] else f"unexpected rows (quarantined): {detail}"
        print(f"  great expectations {r['suite']} (sample {r['sample']}): {r['rows']:,} rows, {status}")
    _print_alerts(s.get("alerts", {}), settings)
    rows = latest_risk(settings.lake, limit=5)
    if rows:
        print("\nhighest-risk patients (latest window):")
        for r in rows:
            print(f"  {r['patient_id']:<12} {r['window_end_utc']} UTC  risk {r['risk_score']:.3f}  {r['risk_level']}")
    print(
        f"\noutputs under {settings.lake.resolve()}/: risk_scores/, windows/, quarantine/, alerts/, acks/ "
        "(Parquet, by date)"
    )
    print(f'  try: vitalstream query "SELECT risk_level, count(*) FROM risk_scores GROUP BY 1" --lake {settings.lake}')


def _print_alerts(counts: dict[str, int], settings: Any) -> None:
    """The run's alert events by condition and state, and where consumers find them."""
    from pipeline.alerts import STATES

    kafka = settings.kafka(settings.bootstrap or "-")
    by: dict[str, dict[str, int]] = {}
    for key, n in counts.items():
        condition, _, state = key.partition(":")
        by.setdefault(condition, {})[state] = n
    print(f"\nalerts: {sum(counts.values()):,} events" + (" (none)" if not counts else ""))
    if by:
        print(f"  {'condition':<24}" + "".join(f"{state:>14}" for state in STATES))
        for condition, states in sorted(by.items()):
            print(f"  {condition:<24}" + "".join(f"{states.get(state, 0):>14,}" for state in STATES))
    print(
        f"  live on {kafka.alerts_topic()} and {kafka.risk_topic()} (JSON, key = patient id; dedupe on alert_id, "
        f"state, sequence); acknowledge on {kafka.ack_topic()}; audit in alerts/ (docs/alerts.md)"
    )


def cmd_query(args: argparse.Namespace) -> int:
    from ops.query import connect
    from pipeline.sink import DATASETS

    settings = _settings(args, lake=args.lake)
    con = connect(settings.lake)
    try:
        import duckdb

        try:
            rel = con.sql(args.sql)
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            empty = [name for name in DATASETS if not any((settings.lake / name).glob("date=*/*.parquet"))]
            if empty and isinstance(exc, duckdb.CatalogException):  # a view the lake cannot have yet
                first += f" (no {', '.join(empty)} in {settings.lake} yet: `vitalstream run` writes them)"
            raise VitalStreamError(f"query failed: {first}") from exc
        if rel is not None:
            rel.show(max_rows=50)
    finally:
        con.close()
    return 0


def _real_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", action="append", help="real cohort to use (repeatable; default: every one found)")
    p.add_argument("--no-real", action="store_true", help="simulated patients only")
    p.add_argument("--real-data", action="append", type=Path, default=[], help="another folder holding cohorts")
    p.add_argument("--real-patients", type=int, default=200, help="patients drawn per cohort (default 200)")
    p.add_argument("--real-hours", type=float, default=240.0, help="hours per real patient (default 240)")


def _cohorts(args: argparse.Namespace) -> tuple[str, ...]:
    from models.cohorts import COHORTS, cohort_file

    if args.no_real:
        return ()
    if args.real:
        unknown = [c for c in args.real if cohort_file(c, tuple(args.real_data)) is None]
        if unknown:
            raise ConfigError(f"real cohort(s) not found: {', '.join(unknown)} (known: {', '.join(COHORTS)})")
        return tuple(args.real)
    return tuple(c for c in COHORTS if cohort_file(c, tuple(args.real_data)) is not None)


def cmd_train(args: argparse.Namespace) -> int:
    from runtime import prefect_api

    with prefect_api.started() as api:  # before Prefect is imported (by flows.training)
        return _train(args, api)


def _train(args: argparse.Namespace, api: Any) -> int:
    from flows.training import training_flow
    from models.lstm import DEFAULT_CHECKPOINT
    from models.promotion import PROCEDURE_SEEDS
    from models.train import print_result

    out = args.out or DEFAULT_CHECKPOINT
    real = tuple(c for c in _cohorts(args) if c != args.holdout)
    roots = tuple(str(r) for r in args.real_data)
    if api is not None:
        api.ready()
    result = training_flow(
        args.patients,
        args.hours,
        args.epochs,
        args.seed,
        out,
        args.force,
        real=real,
        holdout=args.holdout,
        real_roots=roots,
        real_patients=args.real_patients,
        real_hours=args.real_hours,
        procedure_seeds=tuple(args.procedure_seeds or PROCEDURE_SEEDS),
    )
    print_result(result)
    return 0


def cmd_lodo(args: argparse.Namespace) -> int:
    import json

    from models.card import model_card
    from models.figures import real_calibration
    from models.lstm import DEFAULT_CHECKPOINT, load_checkpoint
    from models.train import LODO_EPOCHS, LODO_PATIENTS, TrainConfig, leave_one_dataset_out

    cohorts = _cohorts(args)
    if not cohorts:
        raise ConfigError("no real cohort found (data/real/ or --real-data DIR)")
    cfg = TrainConfig(
        patients=args.patients or LODO_PATIENTS,
        hours=args.hours,
        epochs=args.epochs or LODO_EPOCHS,
        seed=args.seed,
        bootstrap=100,
        real_roots=tuple(str(r) for r in args.real_data),
        real_patients=args.real_patients,
        real_hours=args.real_hours,
    )
    result = leave_one_dataset_out(cfg, cohorts)
    result["command"] = "vitalstream lodo " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])
    out = args.out or DEFAULT_CHECKPOINT
    path = out.with_name("lodo.json")
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    for name, r in result["cohorts"].items():
        print(name, json.dumps(r["targets"], default=str))
    if out.exists():
        ckpt = load_checkpoint(out)
        model_card(ckpt, out.with_name("model_card.md"), ckpt.metrics.get("promotion"), result)
        real_calibration(ckpt, out.parent)
    print(f"wrote {path} ({result['seconds']:.0f} s)")
    return 0


def _checkpoint(path: Path) -> Any:
    """The checkpoint at `path`, or one line saying why not (missing, damaged)."""
    from models.lstm import load_checkpoint
    from pipeline.errors import ModelError

    try:
        return load_checkpoint(path)
    except FileNotFoundError as exc:
        raise ModelError(f"model checkpoint {path} not found (train one with `vitalstream train`)") from exc
    except ValueError as exc:
        raise ModelError(str(exc)) from exc


def _moved_targets(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The target figures (simulated, and per real cohort) that differ at the card's precision."""

    def figures(m: dict[str, Any]) -> dict[tuple[str, str], float]:
        groups = {"simulated": m.get("targets", {})} | {c: r.get("targets", {}) for c, r in m.get("real", {}).items()}
        return {(g, k): float(t["model"]) for g, ts in groups.items() for k, t in ts.items() if "model" in t}

    was, now = figures(old), figures(new)
    out = []
    for key, value in now.items():
        before = was.get(key, float("nan"))
        if math.isnan(before) != math.isnan(value) or abs(before - value) >= 5e-4:
            out.append(f"{key[0]} {key[1]} {before:.3f} -> {value:.3f}")
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from models.card import model_card
    from models.figures import pictures
    from models.lstm import DEFAULT_CHECKPOINT
    from models.train import reevaluate

    path = args.model or DEFAULT_CHECKPOINT
    ckpt = _checkpoint(path)
    try:
        metrics = reevaluate(ckpt, tuple(str(r) for r in args.real_data))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    moved = _moved_targets(ckpt.metrics, metrics)
    ckpt.metrics = metrics
    ckpt.training["re_evaluated"] = f"{datetime.now(UTC):%Y-%m-%d}"
    ckpt.save(path)  # the weights are untouched; the digest now covers the new figures
    suffix = ".candidate" if path.stem.endswith(".candidate") else ""
    model_card(ckpt, path.with_name(f"model_card{suffix}.md"), metrics.get("promotion"))
    pictures(ckpt, path.parent, suffix)
    print(json.dumps(metrics["targets"], indent=1, default=str))
    print(f"re-evaluated {path} ({ckpt.version}); figures that moved: {'; '.join(moved) or 'none'}")
    return 0


def cmd_outcomes(args: argparse.Namespace) -> int:
    import json

    from models.card import model_card
    from models.lstm import DEFAULT_CHECKPOINT
    from models.outcomes import OutcomeConfig, run, summary

    path = args.model or DEFAULT_CHECKPOINT
    ckpt = _checkpoint(path)
    cfg = OutcomeConfig(cohort=args.cohort, patients=args.patients, hours=args.hours, seed=args.seed)
    try:
        result = run(ckpt, cfg, tuple(args.real_data))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    result["command"] = "vitalstream outcomes " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])
    out = args.out or path.with_name("outcomes.json")
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print("\n".join(summary(result)))
    if out == path.with_name("outcomes.json"):  # beside the checkpoint: its card shows them
        model_card(ckpt, path.with_name("model_card.md"), ckpt.metrics.get("promotion"))
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from models.export import export_onnx
    from models.lstm import DEFAULT_CHECKPOINT

    settings = _settings(args)
    path = args.model or settings.model_path or DEFAULT_CHECKPOINT
    ckpt = _checkpoint(path)
    out = args.out or path.with_suffix(".onnx")
    data = export_onnx(ckpt, out)
    beside = out == path.with_suffix(".onnx")  # where `run --engine onnx` looks without onnx_path
    use = "vitalstream run --engine onnx" if beside else f"VITALSTREAM_ONNX_PATH={out} vitalstream run --engine onnx"
    print(f"wrote {out} ({len(data) / 1024:.0f} KiB) from {ckpt.version}; score with it: {use}")
    return 0


def _bar(total: int, desc: str) -> Any:
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=" msg", unit_scale=True, desc=desc, file=sys.stderr)


# --- operations: serve, compact, quality, report ---------------------------------------------------------


def _add_operations_commands(sub: Any) -> None:
    sv = sub.add_parser(
        "serve",
        help="serve the scheduled Prefect deployments (scoring, compaction, validate, quality report, retraining)",
    )
    sv.add_argument("--bootstrap", help="Kafka bootstrap address for the scoring deployment")
    sv.add_argument("--lake", type=Path)
    sv.add_argument("--list", action="store_true", help="print the deployments and their schedules, serve nothing")
    sv.add_argument(
        "--only", help="comma-separated deployments to serve, e.g. compaction,quality-report (default: all five)"
    )
    sv.set_defaults(handler=cmd_serve)

    cp = sub.add_parser("compact", help="merge each date partition's small Parquet files (safe beside a run)")
    cp.add_argument("--lake", type=Path)
    cp.set_defaults(handler=cmd_compact)

    qa = sub.add_parser(
        "quality",
        help="validate pending samples with Great Expectations, delete those older than quality_keep_days, "
        "rebuild the Data Docs site",
    )
    qa.add_argument("--lake", type=Path)
    qa.set_defaults(handler=cmd_quality)

    rp = sub.add_parser("report", help="one patient's streams, risk, high-risk episodes and gaps as HTML + PNG")
    rp.add_argument("--patient", required=True, help="patient id, e.g. P000042")
    rp.add_argument("--hours", type=float, help="hours shown, ending at the patient's last window (default 24)")
    rp.add_argument("--lake", type=Path)
    rp.add_argument("--out", type=Path, help="output directory (default <lake>/_reports)")
    rp.set_defaults(handler=cmd_report)


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import deployments, serve_all

    settings = _settings(args, bootstrap=args.bootstrap, lake=args.lake)
    built = deployments(settings, config_file=args.config)
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        unknown = wanted - {d.name for d in built}
        if unknown:
            raise ConfigError(
                f"unknown deployment(s) {', '.join(sorted(unknown))}; known: {', '.join(d.name for d in built)}"
            )
        built = [d for d in built if d.name in wanted]
    for d in built:
        crons = ", ".join(str(getattr(s.schedule, "cron", s.schedule)) for s in d.schedules or [])
        print(f"{d.name:<28} {crons:<14} {d.entrypoint}")
    if args.list:
        return 0
    serve_all(built)
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from ops.compact import compact

    settings = _settings(args, lake=args.lake)
    r = compact(settings.lake, int(settings.compact_target_mb * 2**20))
    print(
        f"compacted {settings.lake}: {r.files_before} -> {r.files_after} files, {r.rows:,} rows rewritten, "
        f"{r.bytes_before / 2**20:.1f} -> {r.bytes_after / 2**20:.1f} MiB in {r.seconds:.2f} s"
        + (f" ({r.repaired} files of an interrupted run removed)" if r.repaired else "")
    )
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    from ops.datadocs import build_data_docs
    from ops.quality import prune, validate_pending

    settings = _settings(args, lake=args.lake)
    validated = validate_pending(settings.lake)
    if validated:
        print(f"Great Expectations validated {len(validated)} pending sample(s) first")
    removed = prune(settings.lake, settings.quality_keep_days)
    if removed:
        print(f"deleted {removed} quality files older than {settings.quality_keep_days:g} days (quality_keep_days)")
    site = build_data_docs(settings.lake, settings.quality_docs_runs)
    print(
        f"Data Docs: {site.index} ({site.validations} validation results of {site.suites} suites, {site.failed} failed)"
    )
    print(f"  without internet access (GE's index loads JavaScript from CDNs): {site.index.with_name('offline.html')}")
    return 0


def _demo_report(settings: Any) -> None:
    """The demo ends with a picture: the report of the patient whose latest risk is highest."""
    from ops.query import latest_risk
    from ops.report import write_report

    top = latest_risk(settings.lake, limit=1)
    if top:
        patient = top[0]["patient_id"]
        page, png = write_report(settings.lake, patient, settings.report_hours, None, settings.levels())
        print(f"\nreport of the highest-risk patient {patient}: {page}\n  picture: {png}")


def cmd_report(args: argparse.Namespace) -> int:
    from ops.report import write_report

    settings = _settings(args, lake=args.lake)
    hours = args.hours or settings.report_hours
    html, png = write_report(settings.lake, args.patient, hours, args.out, settings.levels())
    print(f"report for {args.patient}: {html}  (picture: {png})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
