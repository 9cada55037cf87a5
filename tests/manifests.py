"""deploy/ and hack/kind as a cluster gets them, with the real tools.

`kubectl apply -k` renders with kubectl's embedded kustomize, so that is what `render` runs;
the standalone `kustomize build` must agree with it. `validate` checks the rendered objects
against Kubernetes' own JSON schemas (generated from its OpenAPI spec, shipped by the
kubernetes-validate package) in strict mode: unknown fields and wrong types are errors.
All three tools are installed privately by hack/e2e-setup.sh (`E2EPaths`); nothing here
installs anything or talks to a cluster.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.e2e.harness import E2EPaths

ROOT = Path(__file__).resolve().parents[1]
# No kubeconfig is read, no cache written: kubectl has no cluster to talk to here.
_KUBECTL_ENV = {"KUBECONFIG": os.devnull, "KUBECACHEDIR": os.devnull}


class ToolError(RuntimeError):
    """A tool failed; the text carries its own message."""


def _run(argv: Sequence[str | Path], stdin: str | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **_KUBECTL_ENV},
        timeout=120,
    )
    if proc.returncode != 0:
        raise ToolError(f"{Path(argv[0]).name} {argv[1]} failed: {proc.stderr.strip()}")
    return proc.stdout


def missing_tools(paths: E2EPaths) -> list[Path]:
    return [p for p in paths.manifest_tools if not p.exists()]


def render_text(paths: E2EPaths, directory: Path, tool: str = "kubectl") -> str:
    """The kustomization in `directory` rendered by `kubectl kustomize` or `kustomize build`."""
    if tool == "kubectl":
        return _run([paths.kubectl, "kustomize", directory])
    if tool == "kustomize":
        return _run([paths.kustomize, "build", directory])
    raise ValueError(f"unknown tool {tool!r}")


def render(paths: E2EPaths, directory: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render_text(paths, directory)) if d is not None]


_VALIDATE = """
import json, sys
from kubernetes_validate import utils
request = json.load(sys.stdin)
shipped = utils.all_versions()  # sorted
versions = request["versions"] or [shipped[0], shipped[-1]]
report = {}
for version in versions:
    errors = []
    for doc in request["docs"]:
        name = f'{doc["kind"]}/{doc["metadata"]["name"]}'
        try:
            utils.validate(doc, version, strict=True)
        except utils.ValidationError as e:
            errors.append(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
        except utils.SchemaNotFoundError as e:
            errors.append(f"{name}: {e.message}")
    report[version] = errors
json.dump(report, sys.stdout)
"""


def validate(
    paths: E2EPaths, docs: Sequence[dict[str, Any]], versions: Sequence[str] = ()
) -> dict[str, list[str]]:
    """Schema errors per Kubernetes version (none: valid); by default the oldest and the
    newest version the validator ships schemas for."""
    out = _run(
        [paths.schema_validator, "-c", _VALIDATE],
        stdin=json.dumps({"docs": list(docs), "versions": list(versions)}),
    )
    report: dict[str, list[str]] = json.loads(out)
    return report


def load_kind_verify() -> ModuleType:
    """hack/kind/verify.py (a script, stdlib only, that e2e.sh runs) as a module."""
    name = "kind_verify"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "hack" / "kind" / "verify.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# What kind's own kubeadm template puts into every node's KubeletConfiguration
# before the cluster config's kubeadmConfigPatches apply.
KIND_KUBELET_DEFAULTS: dict[str, Any] = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "cgroupDriver": "systemd",
    "cgroupRoot": "/kubelet",
    "failSwapOn": False,
    "imageGCHighThresholdPercent": 100,
    "evictionHard": {
        "nodefs.available": "0%",
        "nodefs.inodesFree": "0%",
        "imagefs.available": "0%",
    },
}


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def merge_patch(base: Any, patch: Any) -> Any:
    """A JSON merge patch (RFC 7386): how kind applies kubeadmConfigPatches to the
    KubeletConfiguration, whose fields our patches touch are maps and scalars only."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def kind_kubelet_config() -> dict[str, Any]:
    (cluster,) = yaml_documents(ROOT / "hack" / "kind" / "cluster.yaml")
    kubelet = copy.deepcopy(KIND_KUBELET_DEFAULTS)
    patches = [yaml.safe_load(p) for p in cluster.get("kubeadmConfigPatches", [])]
    for patch in patches:
        if patch.get("kind") == "KubeletConfiguration":
            kubelet = merge_patch(kubelet, patch)
    return kubelet
