"""The trainer process: an APScheduler 3.x job plus a Redis leader lock; the only long-running edge of trainer/.

Two triggers share one job function:

- **schedule**: every ``interval_s``. The time of the last run (by any trainer) lives in Redis,
  so a restarted trainer whose run is overdue runs once at start-up (missed runs coalesce into
  one), and a second trainer skips a scheduled run another trainer has just done.
- **labels**: every ``label_check_s`` the new-label count is read; at ``min_new_labels`` a retrain
  starts. After any run the count restarts from zero, so one batch of labels triggers one run.

Exactly one trainer acts at a time: a run needs the Redis lock ``{prefix}:trainer:lock`` (a
redis-py ``Lock``: a token in a key with a TTL, released only by its owner). A thread renews the
TTL every third of ``lock_timeout_s`` while the fit runs; if renewal ever fails the lock was lost
(e.g. a long GC pause) and the candidate is not promoted. Conditions are re-checked *after* the
lock is taken, which is what makes two simultaneous triggers produce one run.

The job store is APScheduler's in-memory store on purpose: its Redis job store pickles jobs,
and nothing here unpickles bytes from Redis. The schedule is rebuilt from settings at start,
and the state that must survive (last run, label counter) is plain JSON/integers in Redis.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import redis
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from redis.exceptions import LockError

from ..schemas.settings import TrainerSettings
from .retraining import RetrainOutcome, Retrainer

__all__ = ["LeaderLock", "TrainerService"]

log = logging.getLogger(__name__)


class LeaderLock:
    """A Redis lock held for one run, renewed in the background while held."""

    def __init__(self, client: redis.Redis, key: str, *, timeout_s: int) -> None:
        self.client = client
        self.key = key
        self.timeout_s = timeout_s

    @contextmanager
    def hold(self) -> Iterator[threading.Event | None]:
        """Yields an Event that is set if the lock is lost, or None if another trainer holds it."""
        lock = self.client.lock(self.key, timeout=self.timeout_s, blocking=False, thread_local=False)
        if not lock.acquire():
            yield None
            return
        lost, done = threading.Event(), threading.Event()

        def renew() -> None:
            while not done.wait(self.timeout_s / 3):
                try:
                    lock.reacquire()
                except (LockError, redis.RedisError) as exc:
                    log.error("trainer lock %s lost: %s", self.key, exc)
                    lost.set()
                    return

        renewer = threading.Thread(target=renew, name="trainer-lock-renewal", daemon=True)
        renewer.start()
        try:
            yield lost
        finally:
            done.set()
            renewer.join()
            try:
                lock.release()
            except LockError:
                log.warning("trainer lock %s had expired before release", self.key)


class TrainerService:
    """Schedules retrains; :meth:`trigger` is also callable directly (the demo, ``--once``)."""

    def __init__(self, retrainer: Retrainer, lock: LeaderLock, settings: TrainerSettings) -> None:
        self.retrainer = retrainer
        self.lock = lock
        self.settings = settings
        self.outcomes: list[RetrainOutcome] = []
        self._scheduler: BlockingScheduler | None = None

    def _due(self, trigger: str) -> str | None:
        """Why a run should happen now, or None; evaluated again under the lock."""
        if trigger == "labels":
            n_new = self.retrainer.stores.labels.n_new()
            return f"{n_new} new labels" if n_new >= self.settings.min_new_labels else None
        last = self.retrainer.last_run()
        if trigger == "schedule" and last is not None and time.time() - last["ts"] < self.settings.interval_s / 2:
            return None  # another trainer (or a label-triggered run) has just trained
        return trigger

    def trigger(self, trigger: str) -> RetrainOutcome | None:
        """Run a retrain if it is due and this process gets the lock; returns what happened."""
        if self._due(trigger) is None:
            return None
        with self.lock.hold() as lost:
            if lost is None:
                log.debug("retrain (%s) skipped: another trainer holds the lock", trigger)
                return None
            why = self._due(trigger)
            if why is None:
                return None
            log.info("retrain starting: %s", why)
            outcome = self.retrainer.run(trigger, is_leader=lambda: not lost.is_set())
        self.outcomes.append(outcome)
        return outcome

    def _first_scheduled_run(self) -> datetime:
        last = self.retrainer.last_run()
        if last is None:
            return datetime.now().astimezone() + timedelta(seconds=self.settings.interval_s)
        due = datetime.fromtimestamp(last["ts"]).astimezone() + timedelta(seconds=self.settings.interval_s)
        return max(due, datetime.now().astimezone())  # overdue: one run now, however many were missed

    def run_forever(self) -> None:
        """Block running the schedule until ``stop()`` (SIGTERM in the CLI)."""
        s = self.settings
        scheduler = BlockingScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},  # one job at a time in this process
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": s.misfire_grace_s},
        )
        scheduler.add_job(self.trigger, "interval", args=["schedule"], seconds=s.interval_s, id="scheduled-retrain",
                          next_run_time=self._first_scheduled_run())
        scheduler.add_job(self.trigger, "interval", args=["labels"], seconds=s.label_check_s, id="label-trigger",
                          next_run_time=datetime.now().astimezone())
        self._scheduler = scheduler
        log.info("trainer up: every %d s, or at %d new labels (checked every %.1f s)", s.interval_s,
                 s.min_new_labels, s.label_check_s)
        scheduler.start()

    def stop(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
