"""The long-running processes: scorer (one member or a supervised set), label consumer, trainer.

Each function builds its objects through the composition root, runs until told to stop (a signal,
or an idle limit for batch jobs and tests), and returns the process's exit code. The CLI only
parses flags and calls one of these.
"""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

from .composition import build_label_worker, build_scoring_worker, build_trainer_service
from .schemas.errors import ConfigError
from .schemas.settings import Settings
from .stream.clients import ensure_topics
from .stream.supervisor import StatusFile, WorkerSupervisor

__all__ = ["run_label_consumer", "run_scorer", "run_trainer", "topic_partitions"]

log = logging.getLogger("protoguard.services")


def topic_partitions(settings: Settings) -> dict[str, int]:
    """Every topic the pipeline uses, with its partition count (created if missing)."""
    k = settings.kafka
    return {k.events_topic: k.n_partitions, k.alerts_topic: k.n_partitions, k.dlq_topic: 1, k.labels_topic: 1}


def run_scorer(settings: Settings, *, workers: int = 1, exit_when_idle_s: float | None = None,
               status_file: Path | None = None, config: Path | None = None, log_level: str = "INFO") -> int:
    """One scorer process, or (``workers`` > 1) a parent that runs that many as child processes."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")
    if workers > 1:
        return _supervise(settings, workers, exit_when_idle_s=exit_when_idle_s, config=config, log_level=log_level)
    k = settings.kafka
    ensure_topics(k, topic_partitions(settings))
    worker = build_scoring_worker(settings)
    worker.install_signal_handlers()
    if status_file is not None:  # a child of --workers: the parent serves HTTP for all children
        worker.health = StatusFile(status_file, worker.readiness)
        log.info("scorer worker up: group %s, topic %s", k.consumer_group, k.events_topic)
    else:
        port = worker.start_health_server()
        log.info("scorer up: group %s, topic %s, metrics on :%d", k.consumer_group, k.events_topic, port)
    worker.run(until=(lambda: worker.idle_s() > exit_when_idle_s) if exit_when_idle_s is not None else None)
    return 0


def _supervise(settings: Settings, workers: int, *, exit_when_idle_s: float | None, config: Path | None,
               log_level: str) -> int:
    argv = [sys.executable, "-m", "protoguard.cli.main", "--log-level", log_level]
    if config is not None:
        argv += ["--config", str(config)]
    argv.append("score")
    if exit_when_idle_s is not None:
        argv += ["--exit-when-idle-s", str(exit_when_idle_s)]
    supervisor = WorkerSupervisor(argv, workers, metrics_port=settings.stream.metrics_port,
                                  metrics_host=settings.stream.metrics_host)
    return supervisor.run()


def run_label_consumer(settings: Settings, *, exit_when_idle_s: float | None = None) -> int:
    ensure_topics(settings.kafka, topic_partitions(settings))
    worker = build_label_worker(settings)
    worker.install_signal_handlers()
    log.info("label consumer up: group %s, topic %s", settings.kafka.labels_group, settings.kafka.labels_topic)
    worker.run(until=(lambda: worker.idle_s() > exit_when_idle_s) if exit_when_idle_s is not None else None)
    return 0


def run_trainer(settings: Settings, *, once: str | None = None) -> int:
    """The scheduler (periodic and label-triggered retrains), or one trigger now with ``once``."""
    service = build_trainer_service(settings)
    if once is not None:
        outcome = service.trigger(once)
        print(outcome.decision if outcome else "not due / lock held")
        return 0

    def stop(*_: Any) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    service.run_forever()
    return 0
