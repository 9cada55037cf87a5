"""hack/kind as CI can run it: the image under containerd (2.x and 1.7) with hack/kind's rendering.

hack/kind/e2e.sh needs a Docker engine and a kind cluster, which CI lacks. This
test runs what it can of the same thing on a plain containerd: hack/kind
rendered by kubectl's kustomize (through an overlay that sets the CI image, as
test_image.py does for deploy/), the DaemonSet's pod run as kubelet would run it
(test_image.py's translation) with kind's kubelet configuration (cluster.yaml's
patch over kind's defaults), then hack/kind/pods.yaml's pods created one by
one as kubelet would create them, each checked by hack/kind/verify.py, the
checks e2e.sh applies on kind. What differs: the workload image is the e2e
busybox (`sleep`), not pause; the pods share the host's network.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.manifests import kind_kubelet_config, load_kind_verify

from .conftest import FLAVOR_IDS
from .harness import FLAVOR_TAG, FLAVORS, REPO, CRIClient, CRIError, E2EPaths
from .test_image import (
    Deployed,
    cpu_millis,
    daemonset_running,
    image_name,
    memory_bytes,
    qos_class,
    render_with_image,
)

verify = load_kind_verify()
KIND = REPO / "hack" / "kind"


@pytest.fixture(scope="module", params=FLAVORS, ids=FLAVOR_IDS)
def kind_deployed(
    request: pytest.FixtureRequest,
    e2e_paths: E2EPaths,
    plugin_image: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    flavor = request.param
    work = tmp_path_factory.mktemp(f"kind-{FLAVOR_TAG[flavor]}")
    deployment = render_with_image(e2e_paths, image_name(plugin_image), work, base=KIND)
    kubelet = yaml.safe_dump(kind_kubelet_config())
    with daemonset_running(
        e2e_paths, flavor, plugin_image, deployment, work, kubelet, f"kind{FLAVOR_TAG[flavor]}"
    ) as running:
        yield running


def create(cri: CRIClient, pod: dict[str, Any]) -> Any:
    """RunPodSandbox, CreateContainer and StartContainer for a one-container pod spec, as
    kubelet sends them; the CRIError of a refused creation is returned, not raised."""
    (container,) = pod["spec"]["containers"]
    resources = container.get("resources", {})
    limits = resources.get("limits", {})
    requests = {**limits, **resources.get("requests", {})}
    qos = qos_class(container)
    sandbox = cri.run_pod(str(uuid.uuid4()), pod["metadata"]["name"], qos)
    try:
        cid = cri.create_container(
            sandbox,
            container["name"],
            cpu_millis=cpu_millis(requests.get("cpu", 0)),
            cpu_limit_millis=cpu_millis(limits["cpu"]) if "cpu" in limits else 0,
            memory_limit=memory_bytes(limits["memory"]) if "memory" in limits else 0,
        )
    except CRIError as e:
        return e
    cri.start_container(cid)
    return cid


def test_kind_pods_get_what_e2e_sh_checks(kind_deployed: Deployed) -> None:
    cri = kind_deployed.cri
    host_nodes = Path("/sys/devices/system/node/online").read_text().strip()
    pods = [d for d in yaml.safe_load_all((KIND / "pods.yaml").read_text()) if d]
    results = []
    for pod in pods:
        name = pod["metadata"]["name"]
        created = create(cri, pod)
        if isinstance(created, CRIError):
            got = verify.Observed(refused=str(created), host_nodes=host_nodes)
        else:
            cri.running_pid(created)  # as e2e.sh waits for a running process
            got = verify.observe(
                cri.info(created), lambda pid: Path(f"/proc/{pid}/status").read_text(), host_nodes
            )
        results += verify.check(name, verify.expectation(pod), got)
    failed = [r for r in results if not r[0]]
    assert not failed, "\n".join(f"{what}: got {g}, want {w}" for _, what, g, w in failed)
    # every pod was checked
    assert {what.split(":")[0] for _, what, _, _ in results} == {
        p["metadata"]["name"] for p in pods
    }
