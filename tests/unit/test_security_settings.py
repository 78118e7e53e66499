"""kafka.security / redis.security: validation that names the fix, secrets from files, masking, client keywords."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from protoguard.cli.config_cmd import mask_url, masked_settings
from protoguard.schemas.errors import ConfigError
from protoguard.schemas.security import KafkaSecurity, RedisSecurity
from protoguard.schemas.settings import KafkaSettings, RedisSettings, load_settings
from protoguard.stream.clients import consumer_config, kafka_common_config, producer_config


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("PROTOGUARD_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_plaintext_by_default_adds_nothing_to_client_configs() -> None:
    assert kafka_common_config("127.0.0.1:9092") == {"bootstrap_servers": "127.0.0.1:9092"}
    assert RedisSecurity().redis_py_config(tls=False) == {}


def test_sasl_ssl_reaches_every_kafka_client_with_the_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    kafka = KafkaSettings(bootstrap_servers="b:9093", security=KafkaSecurity(
        protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username="pg", password_file=secret,
        ca_file=tmp_path / "ca.pem"))
    expected = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "pg",
                "sasl_plain_password": "s3cret", "ssl_cafile": str(tmp_path / "ca.pem"), "ssl_check_hostname": True}
    for config in (kafka_common_config(kafka), consumer_config(kafka, "g"), producer_config(kafka)):
        assert expected.items() <= config.items()


def test_secret_file_that_cannot_be_read_names_the_setting(tmp_path: Path) -> None:
    security = KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", username="pg",
                             password_file=tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"kafka\.security\.password_file: cannot read .*missing"):
        security.kafka_python_config()


@pytest.mark.parametrize(("env", "message"), [
    ({"PROTOGUARD_KAFKA__SECURITY__PROTOCOL": "SASL_SSL"},
     r"kafka\.security: protocol SASL_SSL needs sasl_mechanism, username, password"),
    ({"PROTOGUARD_KAFKA__SECURITY__USERNAME": "pg", "PROTOGUARD_KAFKA__SECURITY__PASSWORD": "x"},
     r"protocol is PLAINTEXT; set PROTOGUARD_KAFKA__SECURITY__PROTOCOL=SASL_SSL"),
    ({"PROTOGUARD_KAFKA__SECURITY__PROTOCOL": "SASL_SSL", "PROTOGUARD_KAFKA__SECURITY__SASL_MECHANISM": "PLAIN",
      "PROTOGUARD_KAFKA__SECURITY__USERNAME": "pg", "PROTOGUARD_KAFKA__SECURITY__PASSWORD": "x",
      "PROTOGUARD_KAFKA__SECURITY__PASSWORD_FILE": "/run/pw"}, r"password and password_file are both set"),
    ({"PROTOGUARD_KAFKA__SECURITY__SASL_MECHANISM": "GSSAPI"}, r"kafka\.security\.sasl_mechanism"),
    ({"PROTOGUARD_REDIS__SECURITY__CA_FILE": "/ca.pem"}, r"the url is not rediss://"),
    ({"PROTOGUARD_REDIS__SECURITY__USERNAME": "pg"}, r"username needs a password"),
])
def test_inconsistent_security_settings_stop_with_the_fix(clean_env: pytest.MonkeyPatch, env: dict[str, str],
                                                         message: str) -> None:
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_redis_acl_and_tls_keywords_for_rediss(tmp_path: Path) -> None:
    redis = RedisSettings(url="rediss://r:6380/0", security=RedisSecurity(
        username="pg", password="pw", ca_file=tmp_path / "ca.pem", cert_file=tmp_path / "c.pem",
        key_file=tmp_path / "c.key"))
    assert redis.security.redis_py_config(tls=True) == {
        "username": "pg", "password": "pw", "ssl_check_hostname": True, "ssl_cert_reqs": "required",
        "ssl_ca_certs": str(tmp_path / "ca.pem"), "ssl_certfile": str(tmp_path / "c.pem"),
        "ssl_keyfile": str(tmp_path / "c.key")}


def test_config_show_masks_every_secret(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PROTOGUARD_KAFKA__SECURITY__PROTOCOL", "SASL_SSL")
    clean_env.setenv("PROTOGUARD_KAFKA__SECURITY__SASL_MECHANISM", "SCRAM-SHA-256")
    clean_env.setenv("PROTOGUARD_KAFKA__SECURITY__USERNAME", "pg")
    clean_env.setenv("PROTOGUARD_KAFKA__SECURITY__PASSWORD", "kafka-secret")
    clean_env.setenv("PROTOGUARD_REDIS__URL", "rediss://app:url-secret@10.0.0.5:6380/0")
    clean_env.setenv("PROTOGUARD_REDIS__SECURITY__PASSWORD", "redis-secret")
    settings = load_settings()
    shown = json.dumps(masked_settings(settings))
    for secret in ("kafka-secret", "url-secret", "redis-secret"):
        assert secret not in shown
    for secret in ("kafka-secret", "redis-secret"):  # SecretStr: hidden from repr (and so from logs) too
        assert secret not in repr(settings)
    assert masked_settings(settings)["redis"]["url"] == "rediss://app:**********@10.0.0.5:6380/0"
    assert masked_settings(settings)["kafka"]["security"]["password"] == "**********"


def test_mask_url_keeps_urls_without_password() -> None:
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url("redis://:pw@[::1]:6379/0") == "redis://:**********@[::1]:6379/0"
