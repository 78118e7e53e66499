"""Start, check and stop the local Kafka (KRaft, from Maven Central jars) + redis-server stack.

Why a process manager of our own instead of docker compose: the target machines (CI included)
have no container engine, and the tests must talk to the same real broker the demo uses. The
jars are resolved once with ``mvn`` into a cache outside the clone and reused by later runs.

``up`` is safe to repeat: it starts only the service that is not running (a pid recorded in
``stack.json`` that is alive and is that program) and never wipes data. The broker's KRaft
storage is formatted once, when it does not exist yet, and reused afterwards (its cluster id is
kept in ``meta.properties``); Redis keeps an append-only file under the run folder. So bringing
back a crashed Redis leaves the broker, its pid and its topics alone, and Redis returns with the
registry, labels and reservoir it had. Only ``wipe`` (refused while anything runs) deletes data.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..schemas.errors import StackError
from ..schemas.settings import StackSettings

if TYPE_CHECKING:
    import redis

__all__ = ["LocalStack", "ServiceState", "StackInfo", "free_port"]

_DEPLOY_DIR = Path(__file__).resolve().parent
#: Seconds between SIGTERM and SIGKILL when stopping: a broker with a few topics shuts down in
#: 2-5 s on 2 cores; longer means it is stuck.
_STOP_GRACE_S = 20.0
#: Popen handles of the services this process started, kept so they are reaped on stop rather
#: than garbage-collected while still running (which is what a detached service does).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def free_port() -> int:
    """A currently free TCP port on loopback (for tests that run a private stack)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class StackInfo:
    """What ``up`` wrote to ``<run_dir>/stack.json``: enough for another process to connect or stop it."""

    kafka_pid: int
    redis_pid: int
    bootstrap_servers: str
    redis_url: str
    kafka_version: str
    run_dir: str
    started_at: float
    startup_s: float
    #: whether Kafka speaks SASL_SSL and Redis TLS + ACL (``stack up --secure``)
    secure: bool = False
    #: the TOML file with matching client settings (``protoguard --config FILE ...``); secure stacks only
    client_config: str | None = None
    #: the services the last ``up`` had to start ("kafka", "redis"); the others were left running
    started: tuple[str, ...] = ()

    @classmethod
    def read(cls, run_dir: Path) -> StackInfo | None:
        path = run_dir / "stack.json"
        if not path.exists():
            return None
        values = json.loads(path.read_text())
        values["started"] = tuple(values.get("started", ()))
        return cls(**values)


@dataclass(frozen=True)
class ServiceState:
    """One service of the stack as ``up`` sees it: its recorded pid and whether that pid still runs it."""

    name: str
    pid: int | None
    is_running: bool


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


#: what each service's command line contains: a recorded pid that now runs something else (the pid
#: was reused after a crash or reboot) does not count as the service
_PROGRAM = {"kafka": "kafka.Kafka", "redis": "redis-server"}


def _runs(pid: int | None, program: str) -> bool:
    """Whether ``pid`` is alive and its command line is ``program``'s."""
    if pid is None or not _pid_alive(pid):
        return False
    try:
        return program.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (not Linux): trust the pid


def _run(cmd: list[str], what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        shown = " ".join("<redacted>" if "password=" in arg else arg for arg in cmd)  # SCRAM users on argv
        raise StackError(f"{what} failed (exit {proc.returncode}): {shown}\n{tail}")
    return proc


class LocalStack:
    """The local stack described by ``settings``; methods are idempotent where it makes sense.

    Plain: Kafka PLAINTEXT and Redis without a password, both on loopback. The ``_``-prefixed
    hooks (config templates, extra format arguments, client security, client settings file) are
    what :class:`~protoguard.deploy.secure_stack.SecureLocalStack` overrides.
    """

    #: whether this stack is the secured variant (recorded in stack.json)
    secure = False
    _redis_scheme = "redis"

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.run_dir = Path(settings.run_dir).resolve()
        self.cache_dir = Path(settings.cache_dir).expanduser().resolve()

    # ---------------------------------------------------------------- installation
    @property
    def kafka_libs(self) -> Path:
        return self.cache_dir / f"kafka-{self.settings.kafka_version}" / "libs"

    def ensure_kafka_jars(self) -> Path:
        """Resolve the broker jars with mvn into the cache (once per version)."""
        libs = self.kafka_libs
        if (libs / ".complete").exists():
            return libs
        if shutil.which("mvn") is None:
            raise StackError("mvn is not on PATH; install Maven (apt-get install maven) to fetch the Kafka jars")
        staging = libs.with_name("libs.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _run(
            [
                "mvn", "-q", "-B", "-f", str(_DEPLOY_DIR / "pom.xml"),
                f"-Dkafka.version={self.settings.kafka_version}",
                "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
                "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
            ],
            "resolving the Kafka jars with mvn",
        )
        (staging / ".complete").write_text(self.settings.kafka_version)
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        return libs

    @staticmethod
    def ensure_redis_server() -> str:
        """Path of redis-server, installing Debian's package when it is missing."""
        found = shutil.which("redis-server")
        if found:
            return found
        if shutil.which("apt-get") is None:
            raise StackError("redis-server is missing and apt-get is not available; install redis-server")
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run([*sudo, "apt-get", "update", "-qq"], "apt-get update", env=env)
        _run([*sudo, "apt-get", "install", "-y", "-qq", "redis-server"], "apt-get install redis-server", env=env)
        found = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).exists():
            raise StackError("apt-get installed redis-server but the binary was not found")
        return found

    # ---------------------------------------------------------------- lifecycle
    @property
    def kafka_data(self) -> Path:
        return self.run_dir / "kafka-data"

    @property
    def redis_data(self) -> Path:
        return self.run_dir / "redis-data"

    def services(self) -> dict[str, ServiceState]:
        """Each service's recorded pid and whether it is running (for ``up`` and ``stack status``)."""
        info = StackInfo.read(self.run_dir)
        pids = {"kafka": info.kafka_pid if info else None, "redis": info.redis_pid if info else None}
        return {name: ServiceState(name, pid, _runs(pid, _PROGRAM[name])) for name, pid in pids.items()}

    def status(self) -> StackInfo | None:
        """The running stack's info, or None unless both services started from this run dir are running."""
        info = StackInfo.read(self.run_dir)
        if info is None or not all(state.is_running for state in self.services().values()):
            return None
        return info

    def up(self) -> StackInfo:
        """Start whichever of Kafka and Redis is not running, wait until both answer, return the stack.

        A running service is left alone (same pid, same data); a stopped one is started on the data
        it left. Refuses to mix plain and secure: a secure stack's storage holds SCRAM users and its
        Redis an ACL user that the plain variant would not have (and the reverse).
        """
        previous = StackInfo.read(self.run_dir)
        states = self.services()
        if previous is not None and previous.secure != self.secure and any(st.is_running for st in states.values()):
            raise StackError(f"a {'secure' if previous.secure else 'plain'} stack is running from {self.run_dir}; "
                             f"run `protoguard stack down` first")
        self._check_storage_kind()
        _reap_exited_children()
        started = time.monotonic()
        to_start = [name for name, st in states.items() if not st.is_running]
        s = self.settings
        bootstrap = f"127.0.0.1:{s.kafka_port}"
        redis_url = f"{self._redis_scheme}://127.0.0.1:{s.redis_port}/0"
        if previous is not None and not to_start:
            self._wait_redis(previous.redis_url, previous.redis_pid)
            self._wait_kafka(previous.bootstrap_servers, previous.kafka_pid)
            return previous
        for name in to_start:
            port = s.kafka_port if name == "kafka" else s.redis_port
            if _port_open(f"127.0.0.1:{port}"):
                raise StackError(f"cannot start {name}: port {port} is taken by a process this stack did not "
                                 f"start (stack.json in {self.run_dir} records no running {name}); stop it or "
                                 f"choose another stack.{name}_port")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()  # the secure stack reuses its CA and passwords: the running service still trusts them
        pids = {"kafka": previous.kafka_pid if previous else 0, "redis": previous.redis_pid if previous else 0}
        fresh: list[int] = []
        try:
            if "redis" in to_start:
                pids["redis"] = self._start_redis(self.ensure_redis_server())
                fresh.append(pids["redis"])
            if "kafka" in to_start:
                pids["kafka"] = self._start_kafka(self.ensure_kafka_jars())
                fresh.append(pids["kafka"])
            self._wait_redis(redis_url, pids["redis"])
            self._wait_kafka(bootstrap, pids["kafka"])
        except BaseException:
            for pid in fresh:  # only what this call started; a service that was running stays up
                self._stop_pid(pid)
            raise
        info = StackInfo(
            kafka_pid=pids["kafka"],
            redis_pid=pids["redis"],
            bootstrap_servers=bootstrap,
            redis_url=redis_url,
            kafka_version=self.broker_version() or "unknown",
            run_dir=str(self.run_dir),
            started_at=time.time(),
            startup_s=round(time.monotonic() - started, 2),
            secure=self.secure,
            client_config=self._write_client_config(bootstrap, redis_url),
            started=tuple(to_start),
        )
        (self.run_dir / "stack.json").write_text(json.dumps(asdict(info), indent=2))
        return info

    def down(self) -> bool:
        """Stop what ``up`` started (SIGTERM, then SIGKILL after a grace period); the data stays."""
        info = StackInfo.read(self.run_dir)
        if info is None:
            return False
        for name, state in self.services().items():
            if state.is_running and state.pid is not None:
                self._stop_pid(state.pid)
        (self.run_dir / "stack.json").unlink(missing_ok=True)
        return True

    def wipe(self) -> list[Path]:
        """Delete the broker's and Redis's data (every topic, model, label); refused while either runs."""
        running = [name for name, state in self.services().items() if state.is_running]
        if running:
            raise StackError(f"refusing to wipe the data of running services ({', '.join(running)}); "
                             f"run `protoguard stack down` first")
        removed = [p for p in (self.kafka_data, self.redis_data, self._storage_marker) if p.exists()]
        for path in removed:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return removed

    @property
    def _storage_marker(self) -> Path:
        return self.run_dir / "storage.json"

    def _check_storage_kind(self) -> None:
        """Refuse to start on storage formatted by the other variant (plain vs secure)."""
        if not self._storage_marker.exists():
            return
        secure = bool(json.loads(self._storage_marker.read_text()).get("secure"))
        if secure != self.secure:
            raise StackError(f"the data under {self.run_dir} belongs to a {'secure' if secure else 'plain'} stack; "
                             f"start that variant, or `protoguard stack wipe` (deletes every topic and model)")

    def broker_version(self) -> str | None:
        """The version the broker printed in its log ("Kafka version: 4.3.1")."""
        log = self.run_dir / "kafka-logs" / "server.log"
        if not log.exists():
            return None
        match = re.search(r"Kafka version: (\S+)", log.read_text(errors="replace"))
        return match.group(1) if match else None

    # ---------------------------------------------------------------- hooks (the secure stack overrides these)
    def _prepare(self) -> None:
        """Runs before the services start (the secure stack makes its CA and passwords here)."""

    def _redis_conf(self, data_dir: Path) -> str:
        return (_DEPLOY_DIR / "redis.conf").read_text().format(
            redis_port=self.settings.redis_port, data_dir=data_dir, log_file=self.run_dir / "redis.log",
            maxmemory_mb=self.settings.redis_maxmemory_mb,
        )

    def _server_properties(self, data_dir: Path) -> str:
        s = self.settings
        return (_DEPLOY_DIR / "server.properties").read_text().format(
            kafka_port=s.kafka_port, controller_port=s.controller_port, data_dir=data_dir,
            group_initial_rebalance_delay_ms=s.group_initial_rebalance_delay_ms,
        )

    def _format_args(self) -> list[str]:
        """Extra ``StorageTool format`` arguments (SCRAM users for the secure stack)."""
        return []

    def _kafka_security(self) -> dict[str, object]:
        """kafka-python security keywords for the readiness check's admin client."""
        return {}

    def _redis_client(self, url: str) -> redis.Redis:
        import redis

        return redis.Redis.from_url(url, socket_connect_timeout=1)

    def _write_client_config(self, bootstrap: str, redis_url: str) -> str | None:
        """Write client settings matching this stack; the plain stack needs none (the defaults)."""
        return None

    # ---------------------------------------------------------------- internals
    def _start_redis(self, redis_bin: str) -> int:
        data = self.redis_data
        data.mkdir(parents=True, exist_ok=True)  # kept: the append-only file brings the data back
        conf_path = self.run_dir / "redis.conf"
        conf_path.write_text(self._redis_conf(data))
        os.chmod(conf_path, 0o600)
        proc = subprocess.Popen(
            [redis_bin, str(conf_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _CHILDREN[proc.pid] = proc
        return proc.pid

    def _start_kafka(self, libs: Path) -> int:
        s = self.settings
        data = self.kafka_data
        logs = self.run_dir / "kafka-logs"
        tmp = self.run_dir / "kafka-tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # scratch only (native libraries unpacked by the JVM)
        for folder in (data, logs, tmp):
            folder.mkdir(parents=True, exist_ok=True)
        props_path = self.run_dir / "server.properties"
        props_path.write_text(self._server_properties(data))
        os.chmod(props_path, 0o600)  # the secure variant holds the broker's own SCRAM and keystore passwords
        java = shutil.which("java")
        if java is None:
            raise StackError("java is not on PATH; Kafka 4.x needs Java 17+")
        heap = f"-Xmx{s.kafka_heap_mb}m"
        jvm = [
            java, f"-Xms{s.kafka_heap_mb}m", heap, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", f"-Dkafka.logs.dir={logs}",
            f"-Dlog4j2.configurationFile={_DEPLOY_DIR / 'log4j2.properties'}",
            f"-Djava.io.tmpdir={tmp}", f"-DZstdTempFolder={tmp}", f"-Dorg.xerial.snappy.tempdir={tmp}",
            "-cp", f"{libs}/*",
        ]
        if not (data / "meta.properties").exists():  # formatted once; a restart keeps topics and offsets
            _run([*jvm, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(props_path),
                  *self._format_args()],
                 "formatting the Kafka storage")
            self._storage_marker.write_text(json.dumps({"secure": self.secure, "formatted_at": time.time()}))
        with open(self.run_dir / "kafka.out", "ab") as out:
            proc = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(props_path)], stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        return proc.pid

    def _wait_redis(self, url: str, pid: int) -> None:
        import redis

        deadline = time.monotonic() + self.settings.start_timeout_s
        client = self._redis_client(url)
        while True:
            if not _pid_alive(pid):
                raise StackError(f"redis-server exited during start; see {self.run_dir / 'redis.log'}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"redis-server did not answer PING within {self.settings.start_timeout_s}s")
            time.sleep(0.1)

    def _wait_kafka(self, bootstrap: str, pid: int) -> None:
        """Wait until an admin request (describe cluster) succeeds, not merely an open port."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + self.settings.start_timeout_s
        while True:
            if not _pid_alive(pid):
                tail = (self.run_dir / "kafka.out").read_text(errors="replace")[-2000:]
                raise StackError(f"the Kafka broker exited during start:\n{tail}")
            if not _port_open(bootstrap):
                if time.monotonic() > deadline:
                    raise StackError(f"Kafka did not open {bootstrap} within {self.settings.start_timeout_s}s")
                time.sleep(0.2)
                continue
            try:
                admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000,
                                         bootstrap_timeout_ms=3000, **self._kafka_security())
                try:
                    admin.describe_cluster()
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except (KafkaError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise StackError(f"Kafka did not answer an admin request within {self.settings.start_timeout_s}s; "
                                 f"see {self.run_dir / 'kafka-logs' / 'server.log'}")
            time.sleep(0.5)

    @staticmethod
    def _stop_pid(pid: int) -> None:
        if not _pid_alive(pid):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + _STOP_GRACE_S
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                _reap(pid)
                return
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(pid)


def _port_open(address: str) -> bool:
    """Cheap pre-check before the admin request (a refused bootstrap leaks sockets in kafka-python)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _reap_exited_children() -> None:
    """Collect services this process started that have since died (killed from outside)."""
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(timeout=5)
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _cluster_id() -> str:
    """A Kafka cluster id: 22-char base64url of a random UUID, never starting with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid
