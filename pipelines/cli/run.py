"""`lineage-guard run`: turns the command line into a `GuardConfig`, runs it, summarizes."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import click

from lineage_guard import stop
from lineage_guard.cli.secrets import read_kafka_config_file, read_secret_file
from lineage_guard.cli.stopped import stop_message
from lineage_guard.contract.policies import parse_policy
from lineage_guard.contract.validate import suite_rules
from lineage_guard.guard import (
    FilesIO,
    GuardConfig,
    KafkaIO,
    Summary,
    check_job_server,
    resolve_path,
    resolve_store_url,
    run_once,
    sign_checkpoint,
    summary_from_store,
)
from lineage_guard.io.file_io import clear_outputs, is_uri, output_names
from lineage_guard.io.kafka import GroupMembership, KafkaSettings
from lineage_guard.lineage.checkpoints import load_private_key
from lineage_guard.lineage.errors import (
    ConfigError,
    LineageGuardError,
    ServiceUnavailableError,
    UnusableInputError,
    relayed_error,
    strip_step_names,
)
from lineage_guard.lineage.openlineage import RunEmitter, kafka_dataset_namespace, transport_config
from lineage_guard.lineage.private import private_dir
from lineage_guard.lineage.store import open_store, redact_url

log = logging.getLogger(__name__)
EXIT_STOPPED = 130  # 128 + SIGINT, as shells report an interrupted command


def run_guard(**o: Any) -> None:
    config, until_caught_up = _config(o)
    if sys.stderr.isatty():
        logging.getLogger("lineage_guard.progress").setLevel(logging.INFO)
    if config.lineage_store:
        check_store(config.lineage_store)
    total = Summary()  # the runner's metrics: the counts when lineage is off
    started = time.monotonic()
    bounded = until_caught_up or isinstance(config.io, FilesIO)

    def counts() -> Summary:
        return run_counts(config, total)

    emitter = _emitter(o, config, counts, bounded) if o["openlineage"] else None
    error: BaseException | None = None
    signal_name: str | None = None
    # A bounded run stops through the run's stop, which its stages check (`lineage_guard.stop`);
    # the endless streaming job is cancelled through its runner on KeyboardInterrupt
    # (`cli.endless`).
    stopping = stop.stop_on_signals() if bounded else stop.stop_on_signals(_raise_interrupt)
    signal_at = None
    with stopping as run_stop, contextlib.ExitStack() as members:
        config = dataclasses.replace(config, stop=run_stop)
        if emitter is not None:
            emitter.start()
        try:
            if isinstance(config.io, KafkaIO):  # the group's only guard while it runs, or exit 3
                members.enter_context(
                    GroupMembership(config.io.settings, list(config.io.input_topics))
                )
            if not bounded:  # one streaming job on a streaming runner, not a loop of rounds
                from lineage_guard.cli.endless import run_endless

                run_endless(config, o["prism_location"], total, flink_rest=o["flink_rest"])
            else:
                total.add(_guarded(run_once, config))
        except KeyboardInterrupt:
            pass  # stopping an endless run is its normal end (`_raise_interrupt`)
        except BaseException as exc:
            error = exc
            raise
        finally:
            signal_name, signal_at = run_stop.by, run_stop.since
            checkpoint = None
            if error is None:
                checkpoint = sign_checkpoint(config)  # what was written is signed, even if stopped
                if checkpoint is not None and checkpoint.envelope and o["checkpoint_out"]:
                    Path(o["checkpoint_out"]).write_text(checkpoint.envelope + "\n")
            if emitter is not None:
                # A bounded run stopped is unfinished: FAIL.
                unfinished = signal_name is not None and bounded
                emitter.finish(
                    error or (KeyboardInterrupt() if unfinished else None),
                    checkpoint=checkpoint.to_dict() if checkpoint else None,
                )
    print_summary(counts(), config, time.monotonic() - started)
    if signal_name is not None and signal_at is not None:
        click.echo(stop_message(config, signal_name, signal_at), err=True)
        sys.exit(EXIT_STOPPED)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """The endless mode: SIGTERM and SIGINT note the stop and raise KeyboardInterrupt in the
    launcher, which cancels the streaming job through its runner."""
    run_stop = stop.active()
    if run_stop.by is not None:
        stop.exit_at_once()
    run_stop.request(signal.Signals(signum).name)
    raise KeyboardInterrupt


def check_store(url: str) -> None:
    """Opens the lineage store once before the pipeline starts: a store that cannot work
    (bad URL, read-only or non-database file, refused settings) stops the run now, with exit 3.
    An unreachable one is only warned about: the write stage retries it."""
    try:
        open_store(url).close()
    except ServiceUnavailableError as exc:
        log.warning("%s The guard retries it before delivering anything.", exc.message)
        return
    from lineage_guard.web.privileges import warn_if_privileged

    warn_if_privileged(url, "the guard")  # a superuser or the tables' owner could rewrite it


def run_counts(config: GuardConfig, metrics: Summary) -> Summary:
    """The run's counts, from where its lineage is: the hops it recorded in the lineage store
    (exact on every runner, bounded or endless, at any moment). Without lineage, the
    runner's metrics (`metrics`), which a streaming runner may report late."""
    if config.lineage_store:
        try:
            return summary_from_store(config)
        except LineageGuardError as exc:
            log.warning("counts from the runner's metrics: %s", exc.message)
    return metrics


def _emitter(
    o: dict[str, Any], config: GuardConfig, current: Callable[[], Summary], bounded: bool
) -> RunEmitter:
    """OpenLineage events for this run; datasets named per OpenLineage's naming spec."""
    io = config.io
    if isinstance(io, KafkaIO):
        namespace = kafka_dataset_namespace(io.settings.bootstrap_servers)
        inputs = [(namespace, topic) for topic in io.input_topics]
        outputs = [(namespace, io.output_topic), (namespace, io.quarantine_topic)]
    else:
        inputs = [("file", str(Path(p).resolve())) for p in io.inputs]
        outputs = [("file", str(Path(io.out_dir).resolve()))]

    def counts() -> dict[str, dict[str, int]]:
        total = current()
        rules: dict[str, int] = {}
        for key, n in total.stopped.items():  # `quarantined:STAGE:RULE,RULE…` → records
            for rule in key.split(":", 2)[2].split(","):
                rules[rule] = rules.get(rule, 0) + n
        return {
            "content_class": total.by("content_class"),
            "origin_env": total.by("origin_env"),
            "decision": total.decisions(),
            "rules": rules,
        }

    return RunEmitter(
        target=o["openlineage"],
        job_namespace=o["openlineage_namespace"],
        job_name=config.pipeline_name,
        run_id=config.run_id,
        inputs=inputs,
        outputs=outputs,
        counts=counts,
        bounded=bounded,
        assertions=suite_rules(),
        interval_s=o["openlineage_interval"],
        api_key=o["openlineage_api_key"],
    )


def _config(o: dict[str, Any]) -> tuple[GuardConfig, bool]:
    if o["openlineage_api_key_file"]:
        o["openlineage_api_key"] = read_secret_file(
            o["openlineage_api_key_file"], "--openlineage-api-key-file"
        )
    if o["openlineage"]:
        # a bad target fails now, not at the first event
        transport_config(o["openlineage"], api_key=o["openlineage_api_key"])
    elif o["openlineage_api_key"]:
        raise ConfigError("An OpenLineage API key needs --openlineage http(s)://URL.")
    if o["signing_key"]:
        if o["no_lineage"]:
            raise ConfigError("--signing-key signs the lineage store's chains: drop --no-lineage.")
        load_private_key(o["signing_key"])  # a bad key fails now, not after the run
    elif o["checkpoint_out"]:
        raise ConfigError("--checkpoint-out writes the signed checkpoint: give --signing-key.")
    for policy in o["policies"]:
        parse_policy(policy)  # fail now, with the policy's message, not inside a worker
    if "training" in o["policies"] and o["bootstrap_servers"] and not o["until_caught_up"]:
        raise ConfigError(
            "An endless run cannot infer a training export's kind round by round: "
            "use `training:real`, `training:synthetic` or `training:mixed`."
        )
    if "production" not in o["policies"]:
        log.warning(
            "no `production` sink policy: TEST and STAGING records may pass"
        )  # fail now, with the policy's message, not inside a worker
    if o["exactly_once"] and not o["until_caught_up"]:
        raise ConfigError(
            "--exactly-once is for bounded runs (add --until-caught-up): the endless streaming "
            "job commits offsets from its own state, outside Kafka transactions (not yet built)."
        )
    check_job_server(o["runner"], tuple(o["beam_args"]))
    if o["bootstrap_servers"]:
        missing = [
            name for name in ("input_topics", "output_topic", "quarantine_topic") if not o[name]
        ]
        if missing:
            flags = ", ".join("--" + m.replace("_", "-").rstrip("s") for m in missing)
            raise ConfigError(f"Kafka mode needs {flags}.")
        if o["inputs"]:
            raise ConfigError("Give either --bootstrap-servers (Kafka) or --input (files).")
        settings = KafkaSettings(
            bootstrap_servers=o["bootstrap_servers"],
            group_id=o["group_id"],
            client=_kafka_config(o["kafka_config_file"], o["kafka_config"]),
            exactly_once=bool(o["exactly_once"]),
            outage_s=o["service_wait"],
        )
        io: KafkaIO | FilesIO = KafkaIO(
            settings=settings,
            input_topics=tuple(o["input_topics"]),
            output_topic=o["output_topic"],
            quarantine_topic=o["quarantine_topic"],
        )
    else:
        if not o["inputs"]:
            raise ConfigError("Give --input FILE (embedded default) or --bootstrap-servers.")
        inputs = tuple(resolve_path(str(p)) for p in o["inputs"])  # here, on the launcher
        for path, given in zip(inputs, o["inputs"], strict=True):
            if not _is_file(path):
                raise UnusableInputError(
                    f"Cannot read `{given}`: it does not exist or is not a file."
                )
        out_dir = resolve_path(str(o["output_dir"]))
        if not is_uri(out_dir):
            output_dir(Path(out_dir), "--output-dir")
        names = output_names(inputs)
        clear_outputs(out_dir, names)  # a run's output replaces the previous run's
        io = FilesIO(inputs=inputs, out_dir=out_dir, names=names)
    store = None if o["no_lineage"] else resolve_store_url(o["lineage_store"], o["runner"])
    config = GuardConfig(
        io=io,
        policies=tuple(o["policies"]),
        raw_schema=o["raw_schema"],
        schema_registry=o["schema_registry"],
        lineage_store=store,
        lineage_retry_s=o["service_wait"],
        batch_size=o["batch_size"],
        engine=o["engine"],
        pipeline_name=o["pipeline_name"],
        signing_key=str(o["signing_key"]) if o["signing_key"] else None,
        runner=o["runner"],
        beam_args=tuple(o["beam_args"]),
        poll_interval_s=o["poll_interval"],
    )
    return config, bool(o["until_caught_up"])


def output_dir(path: Path, option: str) -> None:
    """Creates an output folder (0700, with its missing parents) or raises a one-line
    `UnusableInputError` that says why it cannot be one."""
    try:
        private_dir(path)
    except FileExistsError:
        raise UnusableInputError(
            f"Cannot write to `{option} {path}`: it exists and is not a folder."
        ) from None
    except OSError as exc:
        raise UnusableInputError(
            f"Cannot create `{option} {path}`: {exc.strerror or exc}."
        ) from None


def _is_file(path: str) -> bool:
    if not is_uri(path):
        return Path(path).is_file()
    from apache_beam.io.filesystems import FileSystems

    try:
        return bool(FileSystems.exists(path))
    except ValueError as exc:  # no filesystem for the scheme (e.g. gs:// without the gcp extra)
        raise ConfigError(f"Cannot read `{path}`: {exc}. Install `lineage-guard[gcp]`?") from exc


def _kafka_config(path: Path | None, pairs: tuple[str, ...]) -> dict[str, str]:
    """--kafka-config-file's settings, then each --kafka-config over them."""
    config = read_kafka_config_file(path) if path is not None else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--kafka-config takes KEY=VALUE, got `{pair}`.")
        config[key] = value
    return config


def _guarded(function: Any, *args: Any) -> Summary:
    """Runs a pipeline round; errors raised inside Beam workers come back as our own."""
    try:
        result: Summary = function(*args)
        return result
    except Exception as exc:
        cause = _our_error(exc)
        if cause is None:
            raise
        raise cause from None


def _our_error(exc: BaseException) -> LineageGuardError | None:
    """Ours, raised in this process (a worker thread) or relayed as text by a worker process
    (`--direct_running_mode=multi_processing`, portable runners)."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, LineageGuardError):
            # Beam appends the step's name to an error it passes on: the user needs ours.
            return type(current)(strip_step_names(current.message))
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return relayed_error(str(exc))


def print_summary(total: Summary, config: GuardConfig, seconds: float | None) -> None:
    lines = [
        f"lineage-guard run `{config.run_id}`: read {total.read}, allowed {total.allowed}, "
        f"quarantined {total.quarantined}, blocked {total.blocked}"
        + (f" in {seconds:.1f} s" if seconds is not None else "")
    ]
    for key, count in sorted(total.stopped.items(), key=lambda kv: -kv[1]):
        outcome, stage, rules = key.split(":", 2)
        lines.append(f"  {count:>8}  {outcome} at {stage}: {rules}")
    if any(p.startswith("training") for p in config.policies) and total.allowed:
        allowed = total.by("allowed_class")
        synthetic = allowed.get("AI_ASSISTED", 0) + allowed.get("SYNTHETIC", 0)
        lines.append(
            f"  training export: {synthetic} of {total.allowed} records generated "
            f"({synthetic / total.allowed:.1%} synthetic ratio)"
        )
    if isinstance(config.io, FilesIO):
        lines.append(f"  output in `{config.io.out_dir}`")
    if config.lineage_store:
        lines.append(f"  lineage in `{redact_url(config.lineage_store)}`")
    click.echo("\n".join(lines), err=True)
