"""schemas/: wire models and alert ids."""
from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from protoguard.schemas import Alert, DeadLetter, Event, Label, ModelManifest, alert_id


def test_alert_id_is_deterministic_and_version_specific() -> None:
    assert alert_id("e1", "3") == alert_id("e1", "3")
    assert alert_id("e1", "3") != alert_id("e1", "4")
    assert alert_id("e1", "3") != alert_id("e2", "3")


def test_event_refuses_nan_and_accepts_iso_or_epoch_ts() -> None:
    Event(event_id="a", ts="2026-11-23T10:00:00Z", entity="h", features={"x": 1.0})
    Event(event_id="a", ts=1_700_000_000, entity="h", features=[1.0, 2.0])
    with pytest.raises(ValidationError, match="finite number"):
        Event(event_id="a", ts=1, entity="h", features={"x": float("nan")})


def test_label_accepts_only_anomaly_or_normal() -> None:
    Label(event_id="a", label="normal", analyst="ann", ts=datetime.now(UTC))
    with pytest.raises(ValidationError, match="'anomaly' or 'normal'"):
        Label(event_id="a", label="maybe", analyst="ann", ts=datetime.now(UTC))


def test_dead_letter_keeps_original_bytes() -> None:
    raw = b"\xff\x00not json"
    letter = DeadLetter(original_b64=base64.b64encode(raw).decode(), topic="events", partition=0, offset=7,
                        stage="decode", error_class="JSONDecodeError", error_message="bad", ts=datetime.now(UTC))
    assert DeadLetter.model_validate_json(letter.model_dump_json()).original == raw


def test_alert_and_manifest_round_trip_json() -> None:
    alert = Alert(alert_id=alert_id("e", "1"), event_id="e", entity="h", ts=datetime.now(UTC), score=0.9,
                  threshold=0.5, model_version="1", nearest_prototype=2, prototype_distance=0.3,
                  top_features=[{"name": "x", "contribution": 0.2}], components={"reconstruction_error": 0.1})
    assert Alert.model_validate_json(alert.model_dump_json()) == alert
    manifest = ModelManifest(detector="mnp", feature_names=["x"], weights_sha256="ab")
    assert ModelManifest.model_validate_json(manifest.model_dump_json()) == manifest
