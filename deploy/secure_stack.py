"""``protoguard stack up --secure``: the local stack with Kafka SASL_SSL (SCRAM) and Redis TLS + ACL.

What it adds to :class:`~protoguard.deploy.stack.LocalStack`:

- a fresh CA and certificates (``deploy/pki.py``, openssl) under ``<run_dir>/secure/``;
- the broker with a single SASL_SSL listener; its SCRAM-SHA-512 users (``admin`` for the broker
  itself, ``protoguard`` for the clients) are created by the broker's own storage tool at format
  time (``format --add-scram``, KIP-900), so they exist before the first connection;
- redis-server listening on TLS only, demanding client certificates, with the ``default`` user
  off and one ACL user ``protoguard``;
- ``<run_dir>/secure/protoguard.toml`` (and ``protoguard.env``) with the matching client
  settings. Passwords sit in ``*.password`` files (mode 0600) that the settings point at, so
  neither settings file holds a secret.

Passwords and the CA are made on the first ``up`` and reused by later ones (kept, mode 0600, in
``<run_dir>/secure/``): the broker's storage holds the SCRAM users it was formatted with, and a
service that ``up`` restarts must still trust the one left running. ``stack wipe`` starts over.
This is a development stack: the CA is throw-away and the controller listener stays PLAINTEXT on
loopback (only the broker process itself uses it).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..schemas.security import KafkaSecurity, RedisSecurity
from .pki import Pki, make_pki
from .stack import _DEPLOY_DIR, LocalStack

if TYPE_CHECKING:
    import redis

__all__ = ["CLIENT_USER", "SecureLocalStack"]

#: the SCRAM user and Redis ACL user the protoguard processes log in as
CLIENT_USER = "protoguard"
#: the broker's own SCRAM user (inter-broker connections over the SASL_SSL listener)
_ADMIN_USER = "admin"
_MECHANISM = "SCRAM-SHA-512"


class SecureLocalStack(LocalStack):
    """The local stack with every client connection authenticated and encrypted."""

    secure = True
    _redis_scheme = "rediss"

    @property
    def secure_dir(self) -> Path:
        return self.run_dir / "secure"

    @property
    def client_password_file(self) -> Path:
        """The file holding the ``protoguard`` user's password (Kafka SCRAM and Redis ACL alike)."""
        return self.secure_dir / "client.password"

    # ---------------------------------------------------------------- client settings
    def kafka_security(self) -> KafkaSecurity:
        pki = self._pki_paths()
        return KafkaSecurity(protocol="SASL_SSL", sasl_mechanism=_MECHANISM, username=CLIENT_USER,
                             password_file=self.client_password_file, ca_file=pki["ca"])

    def redis_security(self) -> RedisSecurity:
        pki = self._pki_paths()
        return RedisSecurity(username=CLIENT_USER, password_file=self.client_password_file, ca_file=pki["ca"],
                             cert_file=pki["client_cert"], key_file=pki["client_key"])

    def _pki_paths(self) -> dict[str, Path]:
        d = self.secure_dir
        return {"ca": d / "ca.pem", "client_cert": d / "client.pem", "client_key": d / "client.key"}

    # ---------------------------------------------------------------- LocalStack hooks
    def _prepare(self) -> None:
        """Reuse the CA and passwords of an earlier ``up`` when all are there, else make new ones."""
        d = self.secure_dir
        kept = [d / name for name in ("ca.pem", "kafka.p12", "redis.pem", "redis.key", "client.pem", "client.key",
                                      "client.password", "admin.password", "keystore.password")]
        if all(path.exists() for path in kept):
            self._pki = Pki(folder=d, ca_cert=d / "ca.pem", kafka_keystore=d / "kafka.p12",
                            kafka_keystore_password=_read_secret(d / "keystore.password"),
                            redis_cert=d / "redis.pem", redis_key=d / "redis.key",
                            client_cert=d / "client.pem", client_key=d / "client.key")
            self._admin_password = _read_secret(d / "admin.password")
            self._client_password = _read_secret(self.client_password_file)
            return
        self._pki = make_pki(d)
        self._admin_password = secrets.token_urlsafe(24)
        self._client_password = secrets.token_urlsafe(24)
        _write_private(self.client_password_file, self._client_password + "\n")
        _write_private(d / "admin.password", self._admin_password + "\n")
        _write_private(d / "keystore.password", self._pki.kafka_keystore_password + "\n")

    def _redis_conf(self, data_dir: Path) -> str:
        return (_DEPLOY_DIR / "redis-secure.conf").read_text().format(
            redis_port=self.settings.redis_port, data_dir=data_dir, log_file=self.run_dir / "redis.log",
            cert_file=self._pki.redis_cert, key_file=self._pki.redis_key, ca_file=self._pki.ca_cert,
            user=CLIENT_USER, password_sha256=hashlib.sha256(self._client_password.encode()).hexdigest(),
            maxmemory_mb=self.settings.redis_maxmemory_mb,
        )

    def _server_properties(self, data_dir: Path) -> str:
        s = self.settings
        return (_DEPLOY_DIR / "server-secure.properties").read_text().format(
            kafka_port=s.kafka_port, controller_port=s.controller_port, data_dir=data_dir,
            admin_user=_ADMIN_USER, admin_password=self._admin_password, keystore=self._pki.kafka_keystore,
            keystore_password=self._pki.kafka_keystore_password, ca_file=self._pki.ca_cert,
        )

    def _format_args(self) -> list[str]:
        return [arg for user, password in ((_ADMIN_USER, self._admin_password), (CLIENT_USER, self._client_password))
                for arg in ("--add-scram", f"{_MECHANISM}=[name={user},password={password}]")]

    def _kafka_security(self) -> dict[str, Any]:
        return self.kafka_security().kafka_python_config()

    def _redis_client(self, url: str) -> redis.Redis:
        import redis

        return redis.Redis.from_url(url, socket_connect_timeout=1, **self.redis_security().redis_py_config(tls=True))

    def _write_client_config(self, bootstrap: str, redis_url: str) -> str:
        kafka, rds = self.kafka_security(), self.redis_security()
        values: dict[str, dict[str, Any]] = {
            "kafka": {"bootstrap_servers": bootstrap},
            "kafka.security": {"protocol": kafka.protocol, "sasl_mechanism": kafka.sasl_mechanism,
                               "username": kafka.username, "password_file": kafka.password_file,
                               "ca_file": kafka.ca_file, "check_hostname": True},
            "redis": {"url": redis_url},
            "redis.security": {"username": rds.username, "password_file": rds.password_file, "ca_file": rds.ca_file,
                               "cert_file": rds.cert_file, "key_file": rds.key_file, "check_hostname": True},
        }
        toml_lines = ["# Client settings for the secured local stack (written by `protoguard stack up --secure`).",
                      "# Use: protoguard --config <this file> score | labels | trainer | ..."]
        env_lines = ["# The same settings as environment variables: set -a; . <this file>; set +a"]
        for section, entries in values.items():
            toml_lines += ["", f"[{section}]"]
            for key, value in entries.items():
                toml_lines.append(f"{key} = {_toml_value(value)}")
                env = "PROTOGUARD_" + "__".join([*section.split("."), key]).upper()
                env_lines.append(f"{env}={_env_value(value)}")
        path = self.secure_dir / "protoguard.toml"
        path.write_text("\n".join(toml_lines) + "\n")
        (self.secure_dir / "protoguard.env").write_text("\n".join(env_lines) + "\n")
        return str(path)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _read_secret(path: Path) -> str:
    return path.read_text().strip()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _env_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
