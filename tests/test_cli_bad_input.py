"""Every subcommand against generated bad input: exit 2, one line, no traceback, nothing written.

The bad files and flag values are generated (hypothesis) and fed to ``cli.main``
in-process (a subprocess per example would cost ~0.3 s); what needs a real process
-- a closed pipe, a full disk, ``python -m`` -- is checked in subprocesses at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nri_plugin import cli
from nri_plugin import daemon as daemon_module

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = ROOT / "hack/topologies/two-node.yaml"
GOOD_CONFIG_TEXT = "topologyManagerPolicy: restricted\nreservedMemory: ['0:memory=1Gi']\n"
SEED = ROOT / "tests/scenarios/seed-150gi-two-nodes.yaml"
KUBELET_STATE = ROOT / "tests/data/kubernetes-io-memory-manager-state.json"

# Keys of every input, so that generated documents get past the first check now and then.
KEYS = [
    "topology", "config", "initialState", "steps", "nodes", "distances", "id", "cpus",
    "memory", "hugepages", "policy", "topologyManagerPolicy", "topologyManagerScope",
    "topologyManagerPolicyOptions", "reservedMemory", "kubeReserved", "systemReserved",
    "evictionHard", "memoryDriftTolerance", "numaNode", "limits", "requests", "admit",
    "start", "remove", "resize", "pod", "uid", "containers", "name", "resources",
    "policyName", "machineState", "entries", "checksum", "apiVersion", "kind",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["1Gi", "0-3", "0:memory=1Gi", "static", "-1", "9" * 5000]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children,
                        max_size=5),
    ),
    max_leaves=30,
)  # fmt: skip


def _yaml(value: object) -> bytes:
    return yaml.safe_dump(value, allow_unicode=True).encode()


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


# Bytes that no input accepts: any bytes, text, and YAML/JSON documents of any shape
# built from the inputs' own keys (random values never make a whole valid input).
file_contents = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    documents.map(_yaml),
    documents.map(_json),
)


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


def run_main(argv: list[str], cwd: Path) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
    finally:
        os.chdir(old)
    return Ran(code, out.getvalue(), err.getvalue())


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: what "nothing written" compares."""
    return {
        str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in root.rglob("*")
    }


def assert_refused(ran: Ran, argv: list[str]) -> None:
    assert ran.code == 2, (argv, ran)
    assert ran.out == "", (argv, ran)
    lines = ran.err.splitlines()
    assert len(lines) == 1, (argv, ran.err)
    assert lines[0].startswith(f"nri-memory-manager {argv[0]}: "), lines[0]
    assert "Traceback" not in ran.err
    assert len(lines[0]) < 1000, "a message never dumps the value"


@pytest.fixture(autouse=True)
def _no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    # `run` and `cri-proxy` configure process-wide logging; bad input ends them first.
    monkeypatch.setattr(daemon_module, "configure_logging", lambda *a, **k: None)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="nmm-cli-") as d:
        yield Path(d)


# Each file-taking command: argv with {file} for the bad file, {good} for a good config.
FILE_COMMANDS: dict[str, list[str]] = {
    "simulate": ["simulate", "{file}"],
    "simulate-compact": ["simulate", "--compact", "{file}"],
    "check-config-config": ["check-config", "--config", "{file}", "--topology-file", str(TOPOLOGY)],
    "check-config-topology": ["check-config", "--config", "{good}", "--topology-file", "{file}"],
    "state": ["state", "--state-file", "{file}"],
    "state-dir": ["state", "--state-dir", "{dir}"],
    "run-config": ["run", "--config", "{file}", "--topology-file", str(TOPOLOGY)],
    "run-kubelet-config": [
        "run", "--config", "{good}", "--topology-file", str(TOPOLOGY), "--kubelet-config", "{file}",
    ],
    "run-topology": ["run", "--config", "{good}", "--topology-file", "{file}"],
    "cri-proxy-config": [
        "cri-proxy", "--listen", "{dir}/cri.sock", "--runtime-endpoint", "{dir}/rt.sock",
        "--config", "{file}", "--topology-file", str(TOPOLOGY),
    ],
}  # fmt: skip


def _argv(template: list[str], work: Path, file: Path, good: Path) -> list[str]:
    # run and cri-proxy must never reach their socket or state directory
    extra = ["--state-dir", str(work / "state")] if template[0] in ("run", "cri-proxy") else []
    if template[0] == "run":
        extra += ["--socket", str(work / "nri.sock")]
    values = {"{file}": str(file), "{good}": str(good), "{dir}": str(work)}
    return [values.get(a, a).replace("{dir}", str(work)) for a in template] + extra


def alias_bomb() -> bytes:
    """9**9 strings in ~400 bytes of YAML aliases, under every input's first keys."""
    anchors = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    anchors += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = "[" + ", ".join(anchors) + "]"
    keys = ["topology", "steps", "nodes", "reservedMemory", "machineState", "policyName"]
    return ("{" + ", ".join(f"{k}: {bomb if i == 0 else '*a8'}" for i, k in enumerate(keys))
            + "}\n").encode()  # fmt: skip


@pytest.mark.parametrize("command", sorted(FILE_COMMANDS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=file_contents)
@example(content=alias_bomb())
@example(content=b"[" * 100_000)
@example(content=b'{"a":' * 100_000)
@example(content=b"nodes: [{id: " + b"9" * 100_000 + b"}]\n")
@example(content=b"topology: " + b"x" * 3_000_000 + b"\n")
@example(content=json.dumps({"steps": [1] * 1_000_000, "nodes": [{"id": "x" * 10**6}]}).encode())
@example(content=b"policy: \xff\xfe\n")
def test_a_bad_file_is_refused_in_one_line(command: str, content: bytes) -> None:
    with workdir() as work:
        bad = work / "memory_manager_state"  # the name `state --state-dir` reads
        bad.write_bytes(content)
        good = work / "good.yaml"
        good.write_text(GOOD_CONFIG_TEXT)
        argv = _argv(FILE_COMMANDS[command], work, bad, good)
        before = tree(work)
        ran = run_main(argv, work)
        assert_refused(ran, argv)
        assert tree(work) == before, "nothing is written"


# Flag values the daemons check before touching anything, and values that fail them.
BAD_FLAG_VALUES: dict[str, tuple[list[str], st.SearchStrategy[str]]] = {
    "plugin-index": (
        ["run", "--plugin-index"],
        st.text(max_size=6).filter(lambda s: not (len(s) == 2 and s.isascii() and s.isdigit())),
    ),
    "plugin-name": (
        ["run", "--plugin-name"],
        st.text(min_size=1, max_size=12).filter(
            lambda s: any(not (c.isascii() and (c.isalnum() or c in "_.+-")) for c in s)
        ),
    ),
    "metrics-address": (
        ["run", "--metrics-address"],
        st.text(min_size=1, max_size=20).filter(lambda s: ":" not in s),
    ),
    "listen": (
        ["cri-proxy", "--runtime-endpoint", "{dir}/rt.sock", "--listen"],
        st.builds(lambda scheme, rest: f"{scheme}://{rest}",
                  st.sampled_from(["tcp", "http", "npipe", "vsock"]), st.text(max_size=20)),
    ),
    "runtime-endpoint": (
        ["cri-proxy", "--listen", "{dir}/cri.sock", "--runtime-endpoint"],
        st.builds(lambda host, port: f"tcp://{host}:{port}",
                  st.sampled_from(["127.0.0.1", "localhost", "[::1]"]), st.integers(0, 65535)),
    ),
    "state-file": (["state", "--state-file"], st.text(min_size=1, max_size=30)),
    "sysfs-root": (["topology", "--sysfs-root"], st.text(min_size=1, max_size=30)),
}  # fmt: skip


@pytest.mark.parametrize("flag", sorted(BAD_FLAG_VALUES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_bad_flag_value_is_refused_in_one_line(flag: str, data: st.DataObject) -> None:
    prefix, values = BAD_FLAG_VALUES[flag]
    value = data.draw(values)
    # argparse reads a value starting with "-" as a flag: a usage error, tested below
    if value.startswith("-") or "\0" in value:
        value = "x" + value.replace("\0", "")
    with workdir() as work:
        argv = [a.replace("{dir}", str(work)) for a in prefix] + [value]
        if argv[0] in ("run", "cri-proxy"):
            argv += ["--state-dir", str(work / "state"), "--topology-file", str(TOPOLOGY)]
            argv += ["--config", str(work / "missing.yaml")]  # bad too, should a value pass
        if argv[0] == "run":
            argv += ["--socket", str(work / "nri.sock")]
        if argv[0] == "state":
            argv[-1] = str(work / "no" / value.replace("/", "_"))
        if argv[0] == "topology":
            argv[-1] = str(work / value.replace("/", "_"))
        ran = run_main(argv, work)
        assert_refused(ran, argv)
        assert tree(work) == {}, "nothing is written"


@settings(max_examples=60, deadline=None)
@given(
    command=st.sampled_from(["run", "cri-proxy", "simulate", "check-config", "topology", "state"]),
    flag=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12),
)
def test_a_usage_error_prints_the_usage_line_then_the_error(command: str, flag: str) -> None:
    with workdir() as work:
        argv = [command, f"--zz{flag}"]
        ran = run_main(argv, work)
        assert ran.code == 2 and ran.out == ""
        usage, error = ran.err.splitlines()
        assert usage.startswith(f"usage: nri-memory-manager {command} [-h]")
        assert error.startswith(f"nri-memory-manager {command}: error: ")
        assert tree(work) == {}


def test_a_huge_usage_error_stays_one_short_line() -> None:
    with workdir() as work:
        ran = run_main(["topology", "--json", "x" * 100_000 + "\n" + "y"], work)
        assert ran.code == 2
        _usage, error = ran.err.splitlines()
        assert len(error) <= 450, error


# -- --help ---------------------------------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["run", "cri-proxy", "simulate", "check-config", "topology",
                                     "state"])  # fmt: skip
def test_help_gives_every_flag_a_text_an_example_and_the_doc_to_read(command: str) -> None:
    p = subcommands()[command]
    for action in p._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
    text = p.format_help()
    assert f"example:\n  nri-memory-manager {command} " in text
    doc = text.split("\nsee ", 1)[1].split()[0]
    assert (ROOT / doc).is_file(), f"{command} --help points to {doc}, which does not exist"


def test_help_shows_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one flag a line
    run_help = " ".join(subcommands()["run"].format_help().split())
    for default in ("/var/run/nri/nri.sock", "memory-manager", "90", "/var/lib/nri-memory-manager",
                    "info"):  # fmt: skip
        assert f"(default: {default})" in run_help
    # a flag without a default says nothing of one
    assert "(default: None)" not in run_help


# -- what needs a real process ---------------------------------------------------------


def run_process(
    *args: str, stdout: int | None = subprocess.PIPE, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nri_plugin", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", str(SEED)],
        ["state", "--state-file", str(KUBELET_STATE), "--json"],
        ["topology", "--topology-file", str(TOPOLOGY), "--json"],
    ],
    ids=["simulate", "state", "topology"],
)
def test_a_closed_pipe_ends_quietly_with_141(args: list[str]) -> None:
    # `... | head -1` once head has exited: the reading end is closed before we write
    r, w = os.pipe()
    os.close(r)
    try:
        proc = run_process(*args, stdout=w)
    finally:
        os.close(w)
    assert (proc.returncode, proc.stderr) == (cli.EXIT_BROKEN_PIPE, "")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(
    "args",
    [["simulate", str(SEED)], ["state", "--state-file", str(KUBELET_STATE)]],
    ids=["simulate", "state"],
)
def test_a_full_disk_is_one_line_and_status_1(args: list[str]) -> None:
    with open("/dev/full", "w") as full:
        proc = run_process(*args, stdout=full.fileno())
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"nri-memory-manager {args[0]}: cannot write the output: No space left on device"
        " (the output is incomplete)"
    ]


def test_cri_proxy_refuses_a_tcp_endpoint_before_creating_anything(tmp_path: Path) -> None:
    proc = run_process(
        "cri-proxy", "--listen", "tcp://127.0.0.1:9000", "--runtime-endpoint",
        str(tmp_path / "rt.sock"), "--state-dir", str(tmp_path / "state"), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "nri-memory-manager cri-proxy: --listen 'tcp://127.0.0.1:9000': only unix sockets are"
        " supported (a path or unix:///path), not tcp"
    ]
    assert list(tmp_path.iterdir()) == []  # no directory named "tcp:", no state dir


def test_python_dash_m_is_the_command() -> None:
    proc = run_process("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("nri-memory-manager ")
