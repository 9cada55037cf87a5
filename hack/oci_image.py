"""Write a one-layer busybox OCI image-layout tar for the e2e tests (stdlib only).

No container registry is reachable from the test machines, so the image that containerd uses
as both sandbox (pause) and workload image is built locally from a static busybox binary and
imported with `ctr images import`. The output is deterministic: same busybox, same bytes.

usage: oci_image.py --busybox PATH --output TAR
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

IMAGE_NAMES = ("localhost/e2e/pause:1", "localhost/e2e/busybox:1")

# Applets the tests may call; each is a symlink to busybox, which dispatches on argv[0].
APPLETS = (
    "cat", "cp", "date", "echo", "env", "false", "grep", "head", "id", "kill", "ls", "mkdir",
    "mv", "ps", "rm", "sed", "sh", "sleep", "stat", "tail", "test", "touch", "true", "wc",
)  # fmt: skip
DIRS = ("bin", "dev", "etc", "proc", "run", "sys", "tmp")

# Sleeping forever doubles as the pause process: containerd stops sandboxes with SIGKILL.
ENTRYPOINT = ("/bin/sleep",)
CMD = ("2147483647",)

_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob of the image layout."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


def go_arch(machine: str | None = None) -> str:
    """The OCI architecture name of this machine (Go's GOARCH spelling)."""
    name = machine or platform.machine()
    try:
        return _GOARCH[name]
    except KeyError:
        raise SystemExit(f"oci_image: machine {name!r} has no known OCI architecture") from None


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _add(tar: tarfile.TarFile, info: tarfile.TarInfo, data: bytes | None = None) -> None:
    info.mtime = 0  # fixed so that the same busybox gives the same digests
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def layer_tar(busybox: bytes) -> bytes:
    """The single uncompressed layer: directories, bin/busybox and its applet symlinks."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in DIRS:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if name == "tmp" else 0o755
            _add(tar, info)
        info = tarfile.TarInfo("bin/busybox")
        info.mode = 0o755
        info.size = len(busybox)
        _add(tar, info, busybox)
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            info.mode = 0o777
            _add(tar, info)
    return out.getvalue()


def image_layout(busybox: bytes, arch: str) -> dict[str, bytes]:
    """Every file of the OCI image layout, by path inside the outer tar."""
    layer = Blob("application/vnd.oci.image.layer.v1.tar", layer_tar(busybox))
    config = Blob(
        "application/vnd.oci.image.config.v1+json",
        _json(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Env": ["PATH=/bin"], "Entrypoint": list(ENTRYPOINT), "Cmd": list(CMD)},
                "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            }
        ),
    )
    manifest = Blob(
        "application/vnd.oci.image.manifest.v1+json",
        _json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }
        ),
    )
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                **manifest.descriptor(),
                "platform": {"architecture": arch, "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                },
            }
            for name in IMAGE_NAMES
        ],
    }
    files = {f"blobs/sha256/{b.digest.removeprefix('sha256:')}": b.data for b in (layer, config)}
    files[f"blobs/sha256/{manifest.digest.removeprefix('sha256:')}"] = manifest.data
    files["oci-layout"] = _json({"imageLayoutVersion": "1.0.0"})
    files["index.json"] = _json(index)
    return files


def write_image(busybox: Path, output: Path, arch: str | None = None) -> None:
    files = image_layout(busybox.read_bytes(), arch or go_arch())
    with tarfile.open(output, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dirname)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            _add(tar, info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            info.size = len(data)
            _add(tar, info, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the e2e busybox OCI image tar.")
    parser.add_argument("--busybox", type=Path, required=True, help="static busybox binary")
    parser.add_argument("--output", type=Path, required=True, help="image tar to write")
    args = parser.parse_args(argv)
    if not args.busybox.is_file():
        print(f"oci_image: busybox {args.busybox} is not a file", file=sys.stderr)
        return 2
    write_image(args.busybox, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
