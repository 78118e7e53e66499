"""Connection security for Kafka (SASL, TLS) and Redis (ACL user, TLS), with secrets kept out of sight.

A secret is given either inline (``password``, a ``SecretStr``: printed as ``**********`` by
``protoguard config show`` and by ``repr``) or as a file path (``password_file``: what a
Kubernetes Secret mounted as a volume, or a Docker secret, provides). Files are read when a
client is built, not when settings load, so a rotated secret file is picked up by the next
client and the file's content never sits in the ``Settings`` object.

The methods that map these settings to kafka-python and redis-py keyword arguments live here so
that every client builder (``stream/clients.py``) gets the same, complete mapping.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator
from pydantic_core import PydanticCustomError

from .errors import ConfigError

__all__ = ["KafkaSecurity", "RedisSecurity", "SaslMechanism", "SecurityProtocol", "read_secret"]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def read_secret(value: SecretStr | None, path: Path | None, name: str) -> str | None:
    """The secret's text: ``value`` itself, or the first line of ``path`` (trailing newline dropped).

    ``name`` is the setting's dotted name, used in the error when the file cannot be read; the
    error never contains the secret.
    """
    if value is not None:
        return value.get_secret_value()
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{name}_file: cannot read {path} ({exc.strerror or exc}); "
                          f"mount the secret there or set {name} instead") from exc
    return text.rstrip("\r\n")


def _fail(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


class _Security(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def _check_secret_pair(self, field: str, env: str) -> None:
        if getattr(self, field) is not None and getattr(self, f"{field}_file") is not None:
            raise _fail("secret_twice", f"{field} and {field}_file are both set; keep one ({env}__{field.upper()} "
                                        f"or {env}__{field.upper()}_FILE)")


class KafkaSecurity(_Security):
    """How every Kafka client authenticates and encrypts (``kafka.security.*``).

    ``protocol`` is the listener's security protocol. ``SASL_*`` needs ``sasl_mechanism``,
    ``username`` and a password (``password`` or ``password_file``); ``SSL`` and ``SASL_SSL`` use
    ``ca_file`` to verify the broker (the system's CAs when unset) and ``cert_file``/``key_file``
    for a client certificate when the broker asks for one (mutual TLS). ``check_hostname`` checks
    the broker's certificate against the address dialled; turn it off only for a test CA whose
    certificates lack the broker's name.
    """

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    #: only for an encrypted ``key_file``
    key_password: SecretStr | None = None
    key_password_file: Path | None = None
    check_hostname: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        env = "PROTOGUARD_KAFKA__SECURITY"
        self._check_secret_pair("password", env)
        self._check_secret_pair("key_password", env)
        has_password = self.password is not None or self.password_file is not None
        if self.uses_sasl:
            missing = [name for name, given in (("sasl_mechanism", self.sasl_mechanism is not None),
                                                ("username", bool(self.username)), ("password", has_password))
                       if not given]
            if missing:
                raise _fail("sasl_incomplete", f"protocol {self.protocol} needs {', '.join(missing)} "
                                               f"(e.g. {env}__{missing[0].upper()})")
        elif self.sasl_mechanism is not None or self.username or has_password:
            raise _fail("sasl_unused", f"sasl_mechanism/username/password are set but protocol is {self.protocol}; "
                                       f"set {env}__PROTOCOL=SASL_SSL (or SASL_PLAINTEXT)")
        tls_files = (self.ca_file, self.cert_file, self.key_file)
        if not self.uses_tls and any(f is not None for f in tls_files):
            raise _fail("tls_unused", f"ca_file/cert_file/key_file are set but protocol is {self.protocol}; "
                                      f"set {env}__PROTOCOL=SSL or SASL_SSL")
        if self.key_file is not None and self.cert_file is None:
            raise _fail("tls_key_alone", f"key_file needs cert_file (the client certificate); set {env}__CERT_FILE")
        return self

    def kafka_python_config(self) -> dict[str, Any]:
        """The kafka-python keyword arguments (empty for ``PLAINTEXT``); reads secret files now."""
        if self.protocol == "PLAINTEXT":
            return {}
        config: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_sasl:
            config.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=read_secret(self.password, self.password_file, "kafka.security.password"),
            )
        if self.uses_tls:
            config.update(
                ssl_check_hostname=self.check_hostname,
                ssl_cafile=_str(self.ca_file),
                ssl_certfile=_str(self.cert_file),
                ssl_keyfile=_str(self.key_file),
                ssl_password=read_secret(self.key_password, self.key_password_file, "kafka.security.key_password"),
            )
        return config


class RedisSecurity(_Security):
    """The Redis ACL user and TLS settings (``redis.security.*``).

    ``username``/``password`` log in as an ACL user (Redis 6+; without ``username`` the password
    is the ``default`` user's, i.e. ``requirepass``). The TLS files apply to a ``rediss://`` URL:
    ``ca_file`` verifies the server, ``cert_file``/``key_file`` are the client certificate that a
    server with ``tls-auth-clients yes`` demands. Credentials belong here rather than in the URL,
    where they would show up wherever the URL is printed.
    """

    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True

    @property
    def has_tls_files(self) -> bool:
        return any(f is not None for f in (self.ca_file, self.cert_file, self.key_file))

    @model_validator(mode="after")
    def _consistent(self) -> RedisSecurity:
        env = "PROTOGUARD_REDIS__SECURITY"
        self._check_secret_pair("password", env)
        if self.username and self.password is None and self.password_file is None:
            raise _fail("acl_incomplete", f"username needs a password; set {env}__PASSWORD or {env}__PASSWORD_FILE")
        if self.key_file is not None and self.cert_file is None:
            raise _fail("tls_key_alone", f"key_file needs cert_file (the client certificate); set {env}__CERT_FILE")
        return self

    def redis_py_config(self, *, tls: bool) -> dict[str, Any]:
        """redis-py keyword arguments for ``Redis.from_url``; ``tls`` is whether the URL is ``rediss://``."""
        config: dict[str, Any] = {}
        if self.username:
            config["username"] = self.username
        password = read_secret(self.password, self.password_file, "redis.security.password")
        if password is not None:
            config["password"] = password
        if tls:
            config.update(ssl_check_hostname=self.check_hostname, ssl_cert_reqs="required")
            if self.ca_file is not None:
                config["ssl_ca_certs"] = str(self.ca_file)
            if self.cert_file is not None:
                config["ssl_certfile"] = str(self.cert_file)
            if self.key_file is not None:
                config["ssl_keyfile"] = str(self.key_file)
        return config


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
