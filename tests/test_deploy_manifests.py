"""The image and the manifests, checked statically: what a cluster would trip over.

No cluster here, so: every YAML parses; the kustomizations render with the
real tools (kubectl's embedded kustomize, which `kubectl apply -k` uses, and the
standalone kustomize, which must agree) and the rendered objects pass
Kubernetes' own schemas in strict mode (tests/manifests.py); every path flag of
the plugin points into a mounted volume of the right kind; the probes hit
/healthz on the metrics port; the configs pass our own validation against
kubelet's reservations; the pods of hack/kind/pods.yaml expect the outcomes
`simulate` computes; the Dockerfile is multi-stage with nothing installable in the final stage;
and the wheel builds from the Docker context. The image itself is built and run
with these manifests' settings by tests/e2e/test_image.py.

The rendering tools come from hack/e2e-setup.sh: without them these tests skip,
saying so, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from nri_plugin.cli import build_parser
from nri_plugin.frontends.simulate import simulate_text
from nri_plugin.inputs.config import parse_config, validate_for_machine
from nri_plugin.inputs.kubeletconfig import align_with_kubelet
from nri_plugin.inputs.topology import topology_from_mapping
from nri_plugin.quantity import parse_bytes
from tests.e2e.harness import E2EPaths
from tests.manifests import (
    KIND_KUBELET_DEFAULTS,
    kind_kubelet_config,
    load_kind_verify,
    missing_tools,
    render,
    render_text,
    validate,
    yaml_documents,
)

verify = load_kind_verify()

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KIND = ROOT / "hack" / "kind"
E2E_SCRIPT = KIND / "e2e.sh"
DOCKERFILE = ROOT / "Dockerfile"
DOCS = (ROOT / "docs" / "deploy.md", ROOT / "docs" / "kubelet-alignment.md")

PLUGIN = "nri-memory-manager"
NRI_SECTION = "io.containerd.nri.v1.nri"


def manifest_files() -> list[Path]:
    return sorted([*DEPLOY.glob("*.yaml"), *KIND.glob("*.yaml")])


# -- rendered with the real tools -----------------------------------------------


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


@dataclass(frozen=True)
class Rendering:
    name: str
    docs: list[dict[str, Any]]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [
            d for d in self.docs if d["kind"] == kind and name in (None, d["metadata"]["name"])
        ]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    @property
    def daemonset(self) -> dict[str, Any]:
        return self.one("DaemonSet", PLUGIN)

    @property
    def pod(self) -> dict[str, Any]:
        return pod_spec(self.daemonset)

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.pod["containers"]
        assert container["name"] == PLUGIN
        return dict(container)

    @property
    def flags(self) -> dict[str, str]:
        return flag_values(self.container["args"])

    def volume(self, name: str) -> dict[str, Any]:
        (volume,) = [v for v in self.pod["volumes"] if v["name"] == name]
        return dict(volume)

    def config_maps_of(self, volume: dict[str, Any]) -> list[dict[str, Any]]:
        if "configMap" in volume:
            names = [volume["configMap"]["name"]]
        else:
            names = [s["configMap"]["name"] for s in volume["projected"]["sources"]]
        return [self.one("ConfigMap", n) for n in names]


RENDERINGS = {"deploy": DEPLOY, "kind": KIND}


@pytest.fixture(scope="module")
def tools() -> E2EPaths:
    """kubectl, kustomize and the schema validator, installed by hack/e2e-setup.sh."""
    paths = E2EPaths.from_env()
    if missing := missing_tools(paths):
        reason = (
            f"{missing[0]} missing: hack/e2e-setup.sh installs kubectl, kustomize and"
            " kubernetes-validate"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run it before the tests")
        pytest.skip(reason)
    return paths


@pytest.fixture(scope="module")
def renderings(tools: E2EPaths) -> dict[str, Rendering]:
    """Each kustomization as `kubectl apply -k` would apply it."""
    return {name: Rendering(name, render(tools, path)) for name, path in RENDERINGS.items()}


@pytest.fixture(params=sorted(RENDERINGS))
def rendering(request: pytest.FixtureRequest, renderings: dict[str, Rendering]) -> Rendering:
    return renderings[request.param]


def flag_values(args: list[str]) -> dict[str, str]:
    """--flag=value and --flag value pairs of a container's args."""
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        assert arg.startswith("--"), f"unexpected positional argument {arg!r}"
        if "=" in arg:
            flag, _, value = arg.partition("=")
        else:
            flag, value = arg, args[i + 1]
            i += 1
        assert flag not in values, f"{flag} given twice"
        values[flag] = value
        i += 1
    return values


def mount_for(rendering: Rendering, path: str) -> dict[str, Any]:
    """The volume mount holding ``path`` (the deepest one)."""
    candidates = [
        m
        for m in rendering.container["volumeMounts"]
        if PurePosixPath(path) == PurePosixPath(m["mountPath"])
        or PurePosixPath(m["mountPath"]) in PurePosixPath(path).parents
    ]
    assert candidates, f"{rendering.name}: {path} is not inside any mounted volume"
    return max(candidates, key=lambda m: len(m["mountPath"]))


# -- every YAML ---------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_manifest_parses_with_api_version_and_kind(path: Path) -> None:
    docs = yaml_documents(path)
    assert docs
    for doc in docs:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: document without kind"
        if doc["kind"] not in ("Kustomization", "Cluster", "KubeletConfiguration"):
            assert doc["metadata"]["name"]


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_kubectl_and_the_standalone_kustomize_render_the_same(tools: E2EPaths, name: str) -> None:
    by_kubectl, by_kustomize = (
        list(yaml.safe_load_all(render_text(tools, RENDERINGS[name], tool)))
        for tool in ("kubectl", "kustomize")
    )
    assert by_kubectl
    assert by_kubectl == by_kustomize


def test_rendered_objects_pass_kubernetes_schemas(tools: E2EPaths, rendering: Rendering) -> None:
    report = validate(tools, rendering.docs)
    assert len(report) == 2, report  # the oldest and the newest Kubernetes with schemas
    assert report == {version: [] for version in report}


def test_schema_validation_rejects_unknown_fields_and_wrong_types(
    tools: E2EPaths, renderings: dict[str, Rendering]
) -> None:
    """The check above can fail: a misspelt field and a quoted port are reported."""
    daemonset = copy.deepcopy(renderings["deploy"].daemonset)
    (container,) = pod_spec(daemonset)["containers"]
    security = container["securityContext"]
    security["readOnlyRootFileSystem"] = security.pop("readOnlyRootFilesystem")
    ((_, errors),) = validate(tools, [daemonset], ["1.30.0"]).items()
    assert len(errors) == 1 and "'readOnlyRootFileSystem' was unexpected" in errors[0], errors
    security["readOnlyRootFilesystem"] = security.pop("readOnlyRootFileSystem")
    container["ports"][0]["containerPort"] = str(container["ports"][0]["containerPort"])
    ((_, errors),) = validate(tools, [daemonset], ["1.30.0"]).items()
    assert len(errors) == 1 and "is not of type 'integer'" in errors[0], errors


def test_every_deploy_manifest_is_in_the_kustomization() -> None:
    (kustomization,) = yaml_documents(DEPLOY / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}


def test_no_rbac_and_no_api_access(renderings: dict[str, Rendering]) -> None:
    kinds = {d["kind"] for d in renderings["deploy"].docs}
    assert kinds == {"ConfigMap", "DaemonSet"}
    spec = renderings["deploy"].pod
    assert spec["automountServiceAccountToken"] is False


# -- the DaemonSet --------------------------------------------------------------


def test_daemonset_runs_everywhere_as_node_critical(rendering: Rendering) -> None:
    ds = rendering.daemonset
    assert ds["metadata"]["namespace"] == "kube-system"
    assert rendering.pod["priorityClassName"] == "system-node-critical"
    assert rendering.pod["tolerations"] == [{"operator": "Exists"}]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not rendering.pod.get("hostNetwork") and not rendering.pod.get("hostPID")


def test_every_flag_is_accepted_by_run(rendering: Rendering) -> None:
    # no `command`: the image's ENTRYPOINT (nri-memory-manager run) gets the args
    assert "command" not in rendering.container
    entrypoint = dockerfile_entrypoint()
    args = build_parser().parse_args([*entrypoint[1:], *rendering.container["args"]])
    assert args.command == "run"
    for flag, value in rendering.flags.items():
        assert str(getattr(args, flag[2:].replace("-", "_"))) == value


def test_every_path_flag_points_inside_a_fitting_mount(rendering: Rendering) -> None:
    flags = rendering.flags
    path_flags = {f: v for f, v in flags.items() if v.startswith("/")}
    assert set(path_flags) >= {"--socket", "--config", "--state-dir", "--kubelet-config"}
    for flag, path in path_flags.items():
        mount = mount_for(rendering, path)
        volume = rendering.volume(mount["name"])
        if "hostPath" in volume:
            host = volume["hostPath"]
            if host.get("type") == "File":
                assert path == mount["mountPath"], f"{flag}: the file is mounted itself"
        else:
            # a file from ConfigMaps: its name must be a key of one of them
            relative = PurePosixPath(path).relative_to(mount["mountPath"])
            keys = {k for cm in rendering.config_maps_of(volume) for k in cm["data"]}
            assert str(relative) in keys, f"{flag} {path}: no ConfigMap key {relative}"

    socket_volume = rendering.volume(mount_for(rendering, flags["--socket"])["name"])
    assert socket_volume["hostPath"] == {"path": "/var/run/nri", "type": "Directory"}
    assert PurePosixPath(flags["--socket"]).parent == PurePosixPath("/var/run/nri")

    state_volume = rendering.volume(mount_for(rendering, flags["--state-dir"])["name"])
    assert state_volume["hostPath"] == {
        "path": "/var/lib/nri-memory-manager",
        "type": "DirectoryOrCreate",
    }
    assert mount_for(rendering, flags["--state-dir"])["mountPath"] == flags["--state-dir"]

    kubelet_volume = rendering.volume(mount_for(rendering, flags["--kubelet-config"])["name"])
    assert kubelet_volume["hostPath"] == {"path": "/var/lib/kubelet/config.yaml", "type": "File"}

    if "--pod-resources-socket" in flags:
        mount = mount_for(rendering, flags["--pod-resources-socket"])
        assert mount["readOnly"] is True
        path = rendering.volume(mount["name"])["hostPath"]["path"]
        assert path == "/var/lib/kubelet/pod-resources"
        assert PurePosixPath(flags["--pod-resources-socket"]).parent == PurePosixPath(path)

    if "--serve-pod-resources" in flags:
        mount = mount_for(rendering, flags["--serve-pod-resources"])
        assert not mount.get("readOnly")
        assert rendering.volume(mount["name"])["hostPath"]["type"] == "DirectoryOrCreate"

    if "--sysfs-root" in flags:
        mount = mount_for(rendering, flags["--sysfs-root"])
        assert mount["mountPath"] == flags["--sysfs-root"]
        assert rendering.volume(mount["name"])["hostPath"]["path"] == "/sys"


def test_mounts_match_volumes_and_only_state_and_socket_are_writable(
    rendering: Rendering,
) -> None:
    mounts = rendering.container["volumeMounts"]
    volumes = {v["name"]: v for v in rendering.pod["volumes"]}
    assert {m["name"] for m in mounts} == set(volumes), "a volume without mount or vice versa"
    host_paths = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    assert host_paths == {
        "/var/run/nri",
        "/var/lib/nri-memory-manager",
        "/sys",
        "/var/lib/kubelet/config.yaml",
        "/var/lib/kubelet/pod-resources",
        "/run/nri-memory-manager",
    }
    writable = {
        volumes[m["name"]].get("hostPath", {}).get("path") for m in mounts if not m.get("readOnly")
    }
    # kubelet's pod-resources socket is reached through a read-only mount (connecting to a
    # unix socket needs no write access to the file system: tests/e2e/test_pod_resources.py)
    assert writable == {"/var/run/nri", "/var/lib/nri-memory-manager", "/run/nri-memory-manager"}
    (sys_mount,) = [
        m for m in mounts if volumes[m["name"]].get("hostPath", {}).get("path") == "/sys"
    ]
    assert sys_mount["readOnly"] is True
    config_mount = mount_for(rendering, "/etc/nri-memory-manager/config.yaml")
    assert config_mount["readOnly"] is True


def test_probes_hit_healthz_on_the_metrics_port(rendering: Rendering) -> None:
    host, _, port = rendering.flags["--metrics-address"].rpartition(":")
    # kubelet probes the pod IP: a loopback listener would fail every probe
    assert host not in ("127.0.0.1", "localhost", "[::1]")
    ports = {p["name"]: p["containerPort"] for p in rendering.container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = rendering.container[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert get.get("scheme", "HTTP") == "HTTP"
        probe_port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        assert probe_port == int(port), probe
    annotations = rendering.daemonset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_security_context_is_locked_down(rendering: Rendering) -> None:
    security = rendering.container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert not security.get("privileged")
    # root, for the root-owned 0700 NRI socket directory
    assert security["runAsUser"] == 0


def test_resources_are_bounded(rendering: Rendering) -> None:
    resources = rendering.container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert parse_bytes(resources["limits"]["memory"]) >= parse_bytes(
        resources["requests"]["memory"]
    )


# -- the configs against kubelet's reservations --------------------------------


def config_text(rendering: Rendering) -> str:
    text: str = rendering.one("ConfigMap", f"{PLUGIN}-config")["data"]["config.yaml"]
    return text


class _QuietLogger:
    def info(self, event: str, **fields: Any) -> None:
        pass

    def warning(self, event: str, **fields: Any) -> None:
        raise AssertionError(f"unexpected warning: {event}")


def kind_topology_mapping(kind: Rendering) -> Any:
    cm = kind.one("ConfigMap", f"{PLUGIN}-topology")
    return yaml.safe_load(cm["data"]["topology.yaml"])


def aligned_and_validated(
    rendering: Rendering, kubelet: dict[str, Any], topology_data: Any, tmp_path: Path
) -> Any:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_text(rendering))
    kubelet_file = tmp_path / "kubelet.yaml"
    kubelet_file.write_text(yaml.safe_dump(kubelet))
    config = parse_config(yaml.safe_load(config_file.read_text()))
    aligned = align_with_kubelet(
        config, str(kubelet_file), _QuietLogger(), config_source=str(config_file)
    )
    validate_for_machine(aligned, topology_from_mapping(topology_data), source="config.yaml")
    return aligned


def test_deploy_config_fits_a_kubeadm_kubelet_that_reserves_nothing(
    renderings: dict[str, Rendering], tmp_path: Path
) -> None:
    rendering = renderings["deploy"]
    kubeadm_kubelet = {k: KIND_KUBELET_DEFAULTS[k] for k in ("apiVersion", "kind")}
    two_nodes = {
        "nodes": [
            {"id": 0, "cpus": "0-7", "memory": "64Gi"},
            {"id": 1, "cpus": "8-15", "memory": "64Gi"},
        ]
    }
    aligned = aligned_and_validated(rendering, kubeadm_kubelet, two_nodes, tmp_path)
    assert aligned.eviction_hard == {"memory.available": "100Mi"}


def test_kind_config_fits_kinds_kubelet_and_topology(
    renderings: dict[str, Rendering], tmp_path: Path
) -> None:
    rendering = renderings["kind"]
    aligned = aligned_and_validated(
        rendering, kind_kubelet_config(), kind_topology_mapping(rendering), tmp_path
    )
    assert aligned.topology_manager_policy == "restricted"
    assert aligned.system_reserved == {"memory": 412 << 20}


def test_kind_topology_is_a_valid_multi_numa_machine(renderings: dict[str, Rendering]) -> None:
    topology = topology_from_mapping(kind_topology_mapping(renderings["kind"]))
    assert len(topology.nodes) >= 2


def kind_pods() -> list[dict[str, Any]]:
    return yaml_documents(KIND / "pods.yaml")


def kind_scenario(rendering: Rendering) -> dict[str, Any]:
    """The kind config, kubelet and topology with hack/kind/pods.yaml's pods, in order."""
    kubelet = kind_kubelet_config()
    config = yaml.safe_load(config_text(rendering))
    config["systemReserved"] = kubelet["systemReserved"]
    config["evictionHard"] = kubelet["evictionHard"]
    steps = []
    for pod in kind_pods():
        containers = []
        for c in pod["spec"]["containers"]:
            resources = c.get("resources", {})
            limits = resources.get("limits", {})
            # API defaulting: requests default to limits
            requests = {**limits, **resources.get("requests", {})}
            containers.append(
                {"name": c["name"], "resources": {"requests": requests, "limits": limits}}
            )
        name = pod["metadata"]["name"]
        steps.append(
            {
                "admit": {
                    "pod": {"uid": name, "name": name, "namespace": "nmm-e2e"},
                    "containers": containers,
                }
            }
        )
    return {"topology": kind_topology_mapping(rendering), "config": config, "steps": steps}


def test_kind_pods_expect_what_simulate_decides(renderings: dict[str, Rendering]) -> None:
    """Each pod's e2e-expect annotation (what e2e.sh and test_kind_overlay.py check) is the
    outcome `simulate` computes for the kind config, kubelet and topology."""
    report: dict[str, Any] = simulate_text(json.dumps(kind_scenario(renderings["kind"])))
    outcomes = {}
    for step in report["steps"]:
        if not step["admitted"]:
            outcomes[step["pod"]] = (
                verify.Expectation("refused") if step["reason"] == "TopologyAffinityError" else None
            )
            continue
        (container,) = step["containers"]
        mems = container.get("cpusetMems") or ""
        outcomes[step["pod"]] = (
            verify.Expectation("numa-nodes", mems) if mems else verify.Expectation("unpinned")
        )
    expected = {p["metadata"]["name"]: verify.expectation(p) for p in kind_pods()}
    assert outcomes == expected
    kinds = {e.kind for e in expected.values()}
    assert kinds == {"numa-nodes", "unpinned", "refused"}
    pinned = [e.numa_nodes for e in expected.values() if e.kind == "numa-nodes"]
    assert any("," in nodes for nodes in pinned), "no pod spans a group of nodes"
    covered = {int(n) for nodes in pinned for n in nodes.split(",")}
    assert covered == {n["id"] for n in kind_topology_mapping(renderings["kind"])["nodes"]}


def test_verify_checks_fail_when_the_node_disagrees() -> None:
    want = verify.Expectation("numa-nodes", "2")
    good = verify.Observed(
        running=True,
        numa_nodes_annotation="2",
        spec_mems="0",
        process_mems="0",
        host_nodes="0",
    )
    assert all(ok for ok, *_ in verify.check("p", want, good))
    for bad in (
        verify.Observed(**{**good.__dict__, "numa_nodes_annotation": "1"}),
        verify.Observed(**{**good.__dict__, "process_mems": "0-1"}),
        verify.Observed(**{**good.__dict__, "spec_mems": "3", "process_mems": "3"}),
        verify.Observed(**{**good.__dict__, "running": False}),
        verify.Observed(refused="TopologyAffinityError: ...", host_nodes="0"),
    ):
        assert not all(ok for ok, *_ in verify.check("p", want, bad)), bad
    unpinned = verify.Observed(running=True, host_nodes="0")
    assert all(ok for ok, *_ in verify.check("p", verify.Expectation("unpinned"), unpinned))
    assert not all(ok for ok, *_ in verify.check("p", verify.Expectation("unpinned"), good))
    refused = verify.Observed(refused="TopologyAffinityError: no NUMA node", host_nodes="0")
    assert all(ok for ok, *_ in verify.check("p", verify.Expectation("refused"), refused))
    assert not all(ok for ok, *_ in verify.check("p", verify.Expectation("refused"), good))


# -- kind ----------------------------------------------------------------------


def test_kind_cluster_enables_nri_on_the_socket_the_daemonset_mounts(
    renderings: dict[str, Rendering],
) -> None:
    (cluster,) = yaml_documents(KIND / "cluster.yaml")
    assert cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    sections = [tomllib.loads(patch) for patch in cluster["containerdConfigPatches"]]
    nri = [s["plugins"][NRI_SECTION] for s in sections if NRI_SECTION in s.get("plugins", {})]
    assert len(nri) == 1
    assert nri[0]["disable"] is False
    socket = renderings["kind"].flags["--socket"]
    assert nri[0]["socket_path"] == socket


def test_kind_image_is_the_one_e2e_sh_builds_and_loads(renderings: dict[str, Rendering]) -> None:
    match = re.search(r'^IMAGE="([^"]+)"$', E2E_SCRIPT.read_text(), re.M)
    assert match
    (container,) = renderings["kind"].pod["containers"]
    assert container["image"] == match[1]
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_e2e_script_is_executable_bash_and_uses_existing_files() -> None:
    assert E2E_SCRIPT.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(E2E_SCRIPT)], check=True)
    text = E2E_SCRIPT.read_text()
    for path in re.findall(r"(?<![\w/])(hack/kind(?:/[\w.-]+)?)", text):
        assert (ROOT / path).exists(), path


# -- the Dockerfile ------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    rest: str


def dockerfile_stages() -> list[list[Instruction]]:
    """Instructions per stage (continuations joined, comments dropped); [0] = before FROM."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not pending):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    stages: list[list[Instruction]] = [[]]
    for line in logical:
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append(Instruction(keyword.upper(), rest.strip()))
    return stages


def dockerfile_args() -> dict[str, str]:
    args = {}
    for ins in dockerfile_stages()[0]:
        if ins.keyword == "ARG" and "=" in ins.rest:
            name, _, value = ins.rest.partition("=")
            args[name] = value
    return args


def dockerfile_entrypoint() -> list[str]:
    final = dockerfile_stages()[-1]
    (entry,) = [i for i in final if i.keyword == "ENTRYPOINT"]
    value = json.loads(entry.rest)  # exec form: no shell in between
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_dockerfile_is_multi_stage_on_a_slim_python() -> None:
    stages = dockerfile_stages()[1:]
    assert len(stages) >= 2
    base = dockerfile_args().get("PYTHON_IMAGE", "")
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base
    for stage in stages:
        assert stage[0].rest.split()[0] == "${PYTHON_IMAGE}"
    build = stages[0]
    assert any(i.keyword == "RUN" and "pip wheel" in i.rest for i in build)


def test_final_stage_installs_nothing_and_keeps_no_pip() -> None:
    final = dockerfile_stages()[-1]
    runs = " && ".join(i.rest for i in final if i.keyword == "RUN")
    assert "pip install" not in runs and "pip wheel" not in runs
    assert not re.search(r"\b(apt-get|apt|apk|dnf|yum)\b", runs)
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|make)\b", runs)
    assert re.search(r"pip uninstall (--yes|-y) pip\b", runs)
    copies = [i.rest for i in final if i.keyword == "COPY"]
    assert copies and all(c.startswith("--from=build ") for c in copies)


def test_entrypoint_is_nri_memory_manager_run_from_the_copied_venv() -> None:
    entry = dockerfile_entrypoint()
    assert entry[1:] == ["run"]
    assert PurePosixPath(entry[0]).name == PLUGIN
    final = dockerfile_stages()[-1]
    (copy_from,) = [i.rest.split() for i in final if i.keyword == "COPY"]
    assert entry[0].startswith(copy_from[-1] + "/")


def test_final_stage_never_writes_bytecode() -> None:
    final = dockerfile_stages()[-1]
    env = " ".join(i.rest for i in final if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def build_stage_sources() -> list[str]:
    sources: list[str] = []
    for ins in dockerfile_stages()[1]:
        if ins.keyword == "COPY":
            parts = [p for p in ins.rest.split() if not p.startswith("--")]
            *srcs, dest = parts
            for src in srcs:
                # each lands under its own name in WORKDIR, as in the repository
                assert dest in ("./", ".") or dest.rstrip("/") == src.rstrip("/"), ins.rest
                sources.append(src.rstrip("/"))
    return sources


def dockerignore_admits(path: str) -> bool:
    """Docker's rules: the last matching pattern wins; a pattern matching a parent counts."""
    included = True
    candidates = [path, *(str(p) for p in PurePosixPath(path).parents if str(p) != ".")]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _glob_regex(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            included = negate
    return included


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def test_dockerignore_sends_what_is_copied_and_nothing_else() -> None:
    for source in build_stage_sources():
        assert dockerignore_admits(source), source
    assert dockerignore_admits("nri_plugin/nri/gen/nri_pb2.py")
    for left_out in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_cli.py",
        "nri_plugin/__pycache__/cli.cpython-312.pyc",
        "hack/kind/e2e.sh",
    ):
        assert not dockerignore_admits(left_out), left_out


def package_modules() -> set[str]:
    return {
        str(p.relative_to(ROOT))
        for p in (ROOT / "nri_plugin").rglob("*.py")
        if "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel, built from exactly what the Dockerfile's build stage copies."""
    work = tmp_path_factory.mktemp("wheel")
    context = work / "src"
    context.mkdir()
    for source in build_stage_sources():
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, context / source)
    # our interpreter's setuptools when it has one: no network needed
    isolation = ["--no-build-isolation", "--no-index"] if find_spec("setuptools") else []
    out = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(out), "."],
        cwd=context,
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("*.whl")
    with zipfile.ZipFile(built) as zf:
        yield zf


def test_wheel_holds_every_module_and_the_command(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert package_modules() <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert re.search(r"^nri-memory-manager\s*=\s*nri_plugin\.cli:main$", text, re.M)


def test_wheel_declares_the_runtime_dependencies(wheel: zipfile.ZipFile) -> None:
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = {
        re.split(r"[<>=!~ ;\[]", line.split(":", 1)[1].strip())[0].lower()
        for line in wheel.read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }
    assert requires == {
        "pyyaml",
        "protobuf",
        "structlog",
        "prometheus-client",
        "grpcio",
        "fnv-hash-fast",
    }


def test_wheel_carries_the_readme_the_build_stage_copies(wheel: zipfile.ZipFile) -> None:
    # pyproject names README.md; setuptools only warns when it is missing
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    first_line = (ROOT / "README.md").read_text().splitlines()[0]
    assert first_line in wheel.read(metadata).decode()


# -- documented flags ----------------------------------------------------------


def run_help() -> str:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    text: str = sub.choices["run"].format_help()
    return text


def documented_run_flags() -> set[str]:
    """Flags in the docs' tables (rows starting with | `--flag)."""
    flags: set[str] = set()
    for doc in DOCS:
        flags.update(re.findall(r"^\|\s*`(--[a-z][a-z-]*)", doc.read_text(), re.M))
    return flags


def test_run_help_lists_every_flag_used_or_documented(renderings: dict[str, Rendering]) -> None:
    text = run_help()
    used: set[str] = set()
    for rendering in renderings.values():
        used.update(rendering.flags)
    documented = documented_run_flags()
    assert "--kubelet-config" in documented
    for flag in used | documented:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), flag
