"""NRI messages shaped like containerd's for a kubelet pod (labels, annotations, mounts, env)."""

from __future__ import annotations

from nri_plugin.nri.gen import nri_pb2 as api

GI = 1 << 30


def pod_sandbox(uid: str, *, qos_parent: str = "") -> api.PodSandbox:
    """A Guaranteed pod's sandbox (cgroup parent directly under kubepods)."""
    p = api.PodSandbox(
        id=f"sandbox-{uid}", uid=uid, name=f"pod-{uid[:8]}", namespace="bench", pid=4242
    )
    p.linux.cgroup_parent = qos_parent or f"/kubepods/pod{uid}"
    p.labels.update(
        {
            "io.kubernetes.pod.name": p.name,
            "io.kubernetes.pod.namespace": p.namespace,
            "io.kubernetes.pod.uid": uid,
            "app": "bench",
        }
    )
    p.annotations.update(
        {
            "kubernetes.io/config.seen": "2025-01-01T00:00:00.000000000Z",
            "kubernetes.io/config.source": "api",
            "io.kubernetes.cri.sandbox-id": p.id,
        }
    )
    return p


def container(
    pod: api.PodSandbox,
    name: str,
    cid: str,
    memory: int,
    *,
    cpus: str = "",
    mems: str = "",
    hugepages_1g: int = 0,
    state: api.ContainerState = api.CONTAINER_CREATED,
    created_at: int = 0,
) -> api.Container:
    """A container of ``pod`` as containerd shows it to plugins (CreateContainer, Synchronize)."""
    c = api.Container(id=cid, pod_sandbox_id=pod.id, name=name, state=state, created_at=created_at)
    c.labels.update(
        {
            "io.kubernetes.container.name": name,
            "io.kubernetes.pod.name": pod.name,
            "io.kubernetes.pod.namespace": pod.namespace,
            "io.kubernetes.pod.uid": pod.uid,
        }
    )
    c.annotations.update(
        {
            "io.kubernetes.container.hash": "5a1b2c3d",
            "io.kubernetes.container.restartCount": "0",
            "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
            "io.kubernetes.container.terminationMessagePolicy": "File",
            "io.kubernetes.pod.terminationGracePeriod": "30",
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": pod.id,
            "io.kubernetes.cri.image-name": "registry.example/bench/app:1.0",
        }
    )
    c.args.extend(["/bin/app", "--config", "/etc/app/config.yaml", "--port", "8080"])
    c.env.extend(
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME=" + pod.name,
            "KUBERNETES_SERVICE_HOST=10.96.0.1",
            "KUBERNETES_SERVICE_PORT=443",
            "KUBERNETES_PORT=tcp://10.96.0.1:443",
            "KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443",
            "KUBERNETES_PORT_443_TCP_PROTO=tcp",
            "KUBERNETES_PORT_443_TCP_PORT=443",
            "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1",
            "APP_MODE=bench",
        ]
    )
    base = f"/var/lib/kubelet/pods/{pod.uid}"
    for destination, source, mount_type, options in (
        ("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        ("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        ("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance", "gid=5"]),
        ("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        ("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        ("/etc/hosts", f"{base}/etc-hosts", "bind", ["rbind", "rprivate", "rw"]),
        ("/dev/termination-log", f"{base}/containers/{name}/0", "bind", ["rbind", "rw"]),
        ("/etc/hostname", f"/run/containerd/sandboxes/{pod.id}/hostname", "bind", ["rbind"]),
        ("/etc/resolv.conf", f"/run/containerd/sandboxes/{pod.id}/resolv.conf", "bind", ["rbind"]),
        ("/dev/shm", f"/run/containerd/sandboxes/{pod.id}/shm", "bind", ["rbind", "rw"]),
        (
            "/var/run/secrets/kubernetes.io/serviceaccount",
            f"{base}/volumes/kubernetes.io~projected/kube-api-access-abcde",
            "bind",
            ["rbind", "rprivate", "ro"],
        ),
    ):
        c.mounts.add(destination=destination, source=source, type=mount_type, options=options)
    c.linux.cgroups_path = f"{pod.linux.cgroup_parent}/{cid}"
    c.linux.oom_score_adj.value = -997
    res = c.linux.resources
    res.memory.limit.value = memory
    res.cpu.shares.value = 1024
    res.cpu.period.value = 100000
    res.cpu.quota.value = 100000
    res.cpu.cpus = cpus
    res.cpu.mems = mems
    for size, limit in (("2MB", 0), ("1GB", hugepages_1g)):
        res.hugepage_limits.add(page_size=size, limit=limit)
    for ns in ("pid", "ipc", "uts", "mount", "network"):
        c.linux.namespaces.add(type=ns, path="" if ns == "mount" else f"/proc/4242/ns/{ns}")
    return c
