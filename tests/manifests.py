"""deploy/ and hack/kind as a cluster gets them, with the real tools.

`kubectl apply -k` renders with kubectl's embedded kustomize, so that is what `render` runs;
the standalone `kustomize build` must agree with it. `validate` checks the rendered objects
against Kubernetes' own JSON schemas (generated from its OpenAPI spec, shipped by the
kubernetes-validate package) in strict mode: unknown fields and wrong types are errors.
All three tools are installed privately by hack/e2e-setup.sh (`E2EPaths`); nothing here
installs anything or talks to a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
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
