"""schemas/settings.py: file + environment, errors that name the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from protoguard.schemas.errors import ConfigError
from protoguard.schemas.settings import load_settings


def test_defaults_load_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.kafka.events_topic == "events"
    assert settings.stream.max_wait_ms > 0


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "protoguard.toml"
    config.write_text('[stream]\nmax_batch = 100\nmax_wait_ms = 7\n[kafka]\nevents_topic = "in"\n')
    monkeypatch.setenv("PROTOGUARD_STREAM__MAX_WAIT_MS", "20")
    settings = load_settings(config)
    assert settings.stream.max_wait_ms == 20          # env wins
    assert settings.stream.max_batch == 100           # file kept for the other field of the section
    assert settings.kafka.events_topic == "in"


def test_bad_value_names_field_value_and_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTOGUARD_STREAM__MAX_WAIT_MS", "-5")
    with pytest.raises(ConfigError, match=r"stream\.max_wait_ms: input should be greater than 0 \(got '-5'\); "
                                          r"set it in protoguard.toml or PROTOGUARD_STREAM__MAX_WAIT_MS"):
        load_settings()


def test_unknown_field_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "protoguard.toml"
    config.write_text("[stream]\nmax_wiat_ms = 5\n")
    with pytest.raises(ConfigError, match=r"stream\.max_wiat_ms: extra inputs are not permitted"):
        load_settings(config)


def test_missing_and_broken_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[stream\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)


def test_weighting_names_and_the_old_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer.weighting takes a rule name; configs from when it was a switch keep working
    (true = the spec's weighting, false = none), and a wrong name is refused by field."""
    assert load_settings().trainer.weighting == "spec"
    config = tmp_path / "protoguard.toml"
    config.write_text("[trainer]\nweighting = false\n")
    assert load_settings(config).trainer.weighting == "off"
    monkeypatch.setenv("PROTOGUARD_TRAINER__WEIGHTING", "true")
    assert load_settings(config).trainer.weighting == "spec"
    monkeypatch.setenv("PROTOGUARD_TRAINER__WEIGHTING", "adaptive")
    assert load_settings(config).trainer.weighting == "adaptive"
    monkeypatch.setenv("PROTOGUARD_TRAINER__WEIGHTING", "strong")
    with pytest.raises(ConfigError, match=r"trainer\.weighting"):
        load_settings(config)


def test_screen_pool_is_on_by_default_and_can_be_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer.screen_pool (issue 12, round 15) defaults to the product's choice; a value that is
    no boolean is refused by field."""
    from protoguard.trainer.training import PRODUCT_MNP_PARAMS

    assert load_settings().trainer.screen_pool is PRODUCT_MNP_PARAMS["screen_pool"] is True
    config = tmp_path / "protoguard.toml"
    config.write_text("[trainer]\nscreen_pool = false\n")
    settings = load_settings(config).trainer
    assert settings.screen_pool is False
    monkeypatch.setenv("PROTOGUARD_TRAINER__SCREEN_POOL", "maybe")
    with pytest.raises(ConfigError, match=r"trainer\.screen_pool"):
        load_settings(config)
