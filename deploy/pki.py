"""A throw-away certificate authority for the secured local stack, made with ``openssl``.

One CA signs a server certificate for the Kafka broker, one for redis-server (both valid for
127.0.0.1 and localhost, so clients keep hostname checking on) and one client certificate (Redis
is run with ``tls-auth-clients yes``). The broker gets its key and chain as a PKCS#12 keystore,
the format Java reads natively; clients read the PEM files. Keys are unencrypted files with mode
0600 under the stack's run directory: this is a development CA, never one to trust elsewhere.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..schemas.errors import StackError

__all__ = ["Pki", "make_pki"]

#: RSA 2048 keeps generation under a second on 2 cores; the certificates live as long as the stack
_KEY_BITS = 2048
_DAYS = 30


@dataclass(frozen=True)
class Pki:
    """Paths of what :func:`make_pki` wrote (all under one folder)."""

    folder: Path
    ca_cert: Path
    kafka_keystore: Path
    kafka_keystore_password: str
    redis_cert: Path
    redis_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path, env: dict[str, str] | None = None) -> None:
    cmd = ["openssl", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=None if env is None else {**os.environ, **env})
    if proc.returncode != 0:
        raise StackError(f"openssl {args[0]} failed (exit {proc.returncode}): {proc.stderr[-1500:]}")


def _private(path: Path) -> Path:
    os.chmod(path, 0o600)
    return path


def _issue(folder: Path, name: str, ca_cert: Path, ca_key: Path, *, server: bool) -> tuple[Path, Path]:
    """A key and a CA-signed certificate named ``name`` (server: SAN 127.0.0.1/localhost)."""
    key, csr, cert, ext = (folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem", folder / f"{name}.ext")
    usage = "serverAuth,clientAuth" if server else "clientAuth"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
             f"extendedKeyUsage={usage}"]
    if server:
        lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
    ext.write_text("\n".join(lines) + "\n")
    _openssl("req", "-new", "-newkey", f"rsa:{_KEY_BITS}", "-nodes", "-keyout", key, "-out", csr,
             "-subj", f"/O=protoguard local stack/CN={name}")
    _private(key)
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
             "-days", str(_DAYS), "-sha256", "-extfile", ext)
    csr.unlink()
    ext.unlink()
    return cert, key


def make_pki(folder: Path) -> Pki:
    """Create a fresh CA and the broker, Redis and client certificates in ``folder`` (replaced)."""
    if shutil.which("openssl") is None:
        raise StackError("openssl is not on PATH; install it (apt-get install openssl) for `stack up --secure`")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.chmod(folder, 0o700)
    ca_key, ca_cert = folder / "ca.key", folder / "ca.pem"
    _openssl("req", "-x509", "-newkey", f"rsa:{_KEY_BITS}", "-nodes", "-keyout", ca_key, "-out", ca_cert,
             "-days", str(_DAYS), "-sha256", "-subj", "/O=protoguard local stack/CN=protoguard local CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _private(ca_key)
    kafka_cert, kafka_key = _issue(folder, "kafka", ca_cert, ca_key, server=True)
    redis_cert, redis_key = _issue(folder, "redis", ca_cert, ca_key, server=True)
    client_cert, client_key = _issue(folder, "client", ca_cert, ca_key, server=False)
    store_password = secrets.token_urlsafe(18)
    keystore = folder / "kafka.p12"
    _openssl("pkcs12", "-export", "-in", kafka_cert, "-inkey", kafka_key, "-certfile", ca_cert, "-name", "kafka",
             "-out", keystore, "-passout", "env:PROTOGUARD_KEYSTORE_PASSWORD",
             env={"PROTOGUARD_KEYSTORE_PASSWORD": store_password})  # not on argv, where ps shows it
    _private(keystore)
    return Pki(folder=folder, ca_cert=ca_cert, kafka_keystore=keystore, kafka_keystore_password=store_password,
               redis_cert=redis_cert, redis_key=redis_key, client_cert=client_cert, client_key=client_key)
