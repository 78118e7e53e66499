"""One ``Settings`` model for every process: a TOML file plus ``PROTOGUARD_*`` environment overrides.

Nested fields use ``__`` in the environment: ``PROTOGUARD_STREAM__MAX_WAIT_MS=20`` sets
``stream.max_wait_ms``. Environment beats file, file beats defaults. Settings are read once, by
the CLI, and passed down as values; no other module reads the environment.

A bad value stops the process with :class:`~protoguard.schemas.errors.ConfigError` whose
message names the field, the offending value and where to set it.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError
from .security import KafkaSecurity, RedisSecurity

__all__ = [
    "ENV_PREFIX",
    "KafkaSettings",
    "RedisSettings",
    "Settings",
    "StackSettings",
    "StreamSettings",
    "TrainerSettings",
    "load_settings",
]

ENV_PREFIX = "PROTOGUARD_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """Where the broker is and what the topics are called."""

    bootstrap_servers: str = "127.0.0.1:19092"
    events_topic: str = "events"
    alerts_topic: str = "alerts"
    labels_topic: str = "labels"
    dlq_topic: str = "events.dlq"
    n_partitions: int = Field(default=4, ge=1)
    consumer_group: str = "protoguard-scorers"
    labels_group: str = "protoguard-labels"
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Client tuning, sized for micro-batches (README "Kafka client settings" says why each value).
    #: the broker answers a fetch as soon as this many bytes are ready: 1 = lowest latency; under
    #: load fetches fill up anyway, so a larger value only helps a lightly loaded consumer's CPU
    fetch_min_bytes: int = Field(default=1, ge=1)
    #: how long the broker holds a fetch that has less than ``fetch_min_bytes`` (an idle long poll)
    fetch_max_wait_ms: int = Field(default=200, ge=0, le=10_000)
    #: per-partition fetch size: 4 MiB holds a whole 2,048-event batch of 186-feature events
    max_partition_fetch_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    fetch_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    #: producer: wait this long for more sends to one partition (alerts of a batch go out together)
    linger_ms: int = Field(default=5, ge=0, le=60_000)
    batch_size: int = Field(default=512 * 1024, ge=1024)
    #: "lz4" / "zstd" need the ``compression`` extra (``pip install protoguard[compression]``)
    compression_type: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "none"
    #: SASL/TLS for every client (schemas/security.py); PLAINTEXT by default
    security: KafkaSecurity = KafkaSecurity()


class RedisSettings(_Section):
    """Redis connection and the key prefix every protoguard key starts with."""

    url: str = "redis://127.0.0.1:16379/0"
    prefix: str = "pg"
    #: ACL user and TLS files (schemas/security.py); TLS needs a ``rediss://`` url
    security: RedisSecurity = RedisSecurity()

    @model_validator(mode="after")
    def _tls_needs_rediss(self) -> RedisSettings:
        if self.security.has_tls_files and not self.url.startswith("rediss://"):
            raise PydanticCustomError("tls_without_rediss", "redis.security has TLS files but the url is not "
                                      "rediss://; set PROTOGUARD_REDIS__URL=rediss://host:port/0")
        return self


class StreamSettings(_Section):
    """Scorer behaviour: micro-batch bounds, state TTLs, side HTTP port."""

    max_batch: int = Field(default=2048, ge=1, le=65_536)
    #: the most time spent gathering one batch after its first record (batches close earlier when
    #: nothing more is waiting: see stream/batching.py)
    max_wait_ms: int = Field(default=50, gt=0)
    #: how long one poll waits for the first record of a batch (an idle scorer sleeps in it)
    idle_poll_ms: int = Field(default=500, gt=0, le=10_000)
    #: the longest wait between retries while Redis or the broker is away
    max_backoff_s: float = Field(default=30.0, gt=0, le=600)
    features_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    reservoir_size: int = Field(default=20_000, ge=10)
    metrics_port: int = Field(default=0, ge=0, le=65_535)
    #: address the metrics/health server binds: 0.0.0.0 for probes from outside the pod/container,
    #: 127.0.0.1 to keep it local to the machine
    metrics_host: str = "0.0.0.0"
    model_poll_s: float = Field(default=2.0, gt=0)
    #: a member whose group join has not completed for this long is replaced by a fresh consumer
    #: (kafka-python can leave a member refused mid-rebalance out of the group for good); well above
    #: a healthy rebalance, which waits at most for the slowest member's batch
    join_stall_s: float = Field(default=60.0, ge=5)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    n_top_features: int = Field(default=3, ge=0)
    #: a dead letter keeps at most this many bytes of the original message (with its full size and
    #: sha256): base64 adds a third, so this must stay well under the producer's 1 MiB request limit
    dead_letter_max_bytes: int = Field(default=64 * 1024, ge=0, le=512 * 1024)
    #: an event with a feature this many training ranges beyond what an MNP model was fitted on is
    #: an alert (component out_of_training_range) whatever the score: networks extrapolate badly
    #: and can call such events normal. 0 turns the guard off
    out_of_range_spans: float = Field(default=100.0, ge=0)


class TrainerSettings(_Section):
    """When and how the trainer retrains and what the promotion gate demands."""

    interval_s: int = Field(default=3600, gt=0)
    min_new_labels: int = Field(default=50, ge=1)
    alert_budget: float = Field(default=0.02, gt=0, lt=1)
    holdout_fraction: float = Field(default=0.3, gt=0, lt=1)
    lock_timeout_s: int = Field(default=600, gt=0)
    keep_versions: int = Field(default=10, ge=2)
    #: MNP's epoch budget (joint training and autoencoder pretraining, each early-stopped): 200 was
    #: chosen over 30 on the benchmark's validation part (issue 12, benchmarks/results/dev)
    n_epochs: int = Field(default=200, ge=1)
    #: how often the trainer checks the new-label count (the label trigger's latency)
    label_check_s: float = Field(default=5.0, gt=0)
    #: a scheduled run this long after the previous one (any trainer's) is skipped as already done
    misfire_grace_s: int = Field(default=300, gt=0)
    #: the gate needs this many held-back labels, both classes present, to compare two models
    gate_min_labels: int = Field(default=10, ge=2)
    #: how much worse (absolute AUC-PR / precision) a candidate may be and still count as "not worse"
    gate_tolerance: float = Field(default=0.01, ge=0, lt=1)
    #: trusted labels (audit + pinned, never trained on) decide the gate once there are
    #: ``gate_min_labels`` of them with at least this many anomalies; held-back labels otherwise
    gate_min_trusted_anomalies: int = Field(default=5, ge=1)
    #: the poisoning alarm: reject when the share of new labels contradicting the champion's confident
    #: scores exceeds the historical share by this much (absolute) ...
    gate_max_disagreement_jump: float = Field(default=0.10, gt=0, lt=1)
    #: ... and a one-sided two-proportion z-test gives at least this z (2.5: about 1 in 160 by chance;
    #: both conditions must hold, so small honest wobbles never alarm)
    gate_disagreement_z: float = Field(default=2.5, gt=0)
    #: confident labels needed in the new batch and in the history before they are compared
    gate_min_disagreement_labels: int = Field(default=20, ge=1)
    #: "alert_budget": alert this share of recent traffic; "precision_target": lowest threshold whose
    #: precision on held-back labels reaches ``precision_target`` (falls back to the budget when
    #: labels are too few), never alerting more than the budget
    threshold_mode: Literal["alert_budget", "precision_target"] = "alert_budget"
    precision_target: float = Field(default=0.8, gt=0, le=1)
    warm_start: bool = True
    #: MNP's likelihood weighting of the unlabelled pool (trainer/detectors/mnp_weighting.py):
    #: "spec" is the paper code's mild form (the default), "adaptive" sets its strength from the data,
    #: "rank" does so on s_max and reconstruction error together, "off" is for ablations;
    #: true / false (the old boolean form) mean "spec" / "off"
    weighting: Literal["adaptive", "rank", "spec", "off"] = "spec"
    #: with 2+ labelled anomalies, leave the pool's least-normal rows (the estimated contamination
    #: share) out and pretrain again before joint training: about twice the pretraining time, chosen
    #: on the benchmark's validation part (benchmarks/results/dev/issue12_round15_screen_product.md)
    screen_pool: bool = True
    #: independent MNP fits per model, scores averaged: each costs one fit and one forward pass more;
    #: 3 gained AUC-PR on the benchmark's validation part over 1 (benchmarks/results/dev)
    n_members: int = Field(default=3, ge=1, le=10)
    random_state: int | None = None

    @field_validator("weighting", mode="before")
    @classmethod
    def _weighting_from_bool(cls, value: Any) -> Any:
        """Configs written when the setting was a switch: on meant the spec's weighting."""
        if isinstance(value, bool):
            return "spec" if value else "off"
        if isinstance(value, str) and value.lower() in ("true", "false"):  # environment variables
            return "spec" if value.lower() == "true" else "off"
        return value


class StackSettings(_Section):
    """The embedded local stack (Kafka from Maven jars, redis-server from Debian)."""

    kafka_version: str = "4.3.1"
    run_dir: Path = Path(".run")
    cache_dir: Path = Path.home() / ".cache" / "protoguard"
    kafka_port: int = Field(default=19092, ge=1, le=65_535)
    controller_port: int = Field(default=19093, ge=1, le=65_535)
    redis_port: int = Field(default=16379, ge=1, le=65_535)
    kafka_heap_mb: int = Field(default=512, ge=256)
    #: how long the broker waits for more members before a new group's first join completes: 0 makes
    #: a lone consumer start at once (tests, demo); the stream benchmark sets a few seconds so that
    #: the N members of ``score --workers N`` share the backlog from the start
    group_initial_rebalance_delay_ms: int = Field(default=0, ge=0, le=300_000)
    #: redis-server's ``maxmemory``; with ``noeviction`` a full Redis refuses writes rather than
    #: evict a model blob (README "Local stack" sizes it: features x rate x TTL + reservoir + models)
    redis_maxmemory_mb: int = Field(default=2048, ge=64)
    start_timeout_s: float = Field(default=90.0, gt=0)


class Settings(BaseSettings):
    """Configuration of every protoguard process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    stream: StreamSettings = StreamSettings()
    trainer: TrainerSettings = TrainerSettings()
    stack: StackSettings = StackSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first so it overrides the file values passed in as init kwargs.
        return (env_settings, init_settings)


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    env_name = ENV_PREFIX + "__".join(str(part) for part in error["loc"]).upper()
    given = error.get("input")
    given_text = "" if isinstance(given, dict) else f" (got {given!r})"
    message = error["msg"][0].lower() + error["msg"][1:]
    return f"{loc}: {message}{given_text}; set it in protoguard.toml or {env_name}"


def load_settings(path: Path | str | None = None) -> Settings:
    """Read settings from ``path`` (TOML, optional), then ``PROTOGUARD_*`` environment overrides.

    Raises
    ------
    ConfigError
        When the file is unreadable or any field is invalid; every bad field is listed by name.
    """
    file_values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            file_values = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        details = "\n  ".join(_describe(err) for err in exc.errors())
        raise ConfigError(f"invalid configuration:\n  {details}") from exc
