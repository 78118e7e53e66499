"""stream/alerting.py: alerts carry what the model saw; a non-finite score still gives a readable alert."""
from __future__ import annotations

import numpy as np
import orjson

from protoguard.schemas.alerts import Alert, alert_id
from protoguard.stream.alerting import NON_FINITE_SCORE, build_alerts
from protoguard.stream.decode import decode_batch
from protoguard.stream.scoring import ScoredBatch


def _batch(n: int):
    values = [orjson.dumps({"event_id": f"e{i}", "ts": 1_700_000_000 + i, "entity": f"h{i}",
                            "features": {"a": float(i), "b": 1.0}}) for i in range(n)]
    return decode_batch(values, ["a", "b"])


def test_nan_and_inf_scores_become_alerts_with_a_reason_and_valid_json() -> None:
    batch = _batch(4)
    scores = np.array([np.nan, 0.2, 0.9, np.inf], np.float32)
    scored = ScoredBatch(scores=scores, thresholds=np.full(4, 0.5, np.float32),
                         components={"network_output": scores[[0, 2, 3]]})
    alerts = build_alerts(batch, scored, model_version="7", feature_names=["a", "b"])
    assert [a.event_id for _, _, a in alerts] == ["e0", "e2", "e3"]
    for key, value, alert in alerts:
        parsed = Alert.model_validate_json(value)  # a consumer can read it back: no NaN / null score
        assert np.isfinite(parsed.score) and parsed.alert_id == alert_id(alert.event_id, "7")
        assert key == alert.entity.encode()
    nan_alert, normal_alert, inf_alert = (a for _, _, a in alerts)
    assert nan_alert.components == {NON_FINITE_SCORE: 1.0}
    assert inf_alert.components == {NON_FINITE_SCORE: 1.0}
    assert normal_alert.components == {"network_output": np.float32(0.9).item()}
    assert NON_FINITE_SCORE not in normal_alert.components
