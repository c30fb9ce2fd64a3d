"""`hashsearch index --engine ray --address` on a real Ray cluster: separate `ray start` processes.

The tests marked `distributed` start the cluster (`make test-distributed`); the others check,
without one, that a wrong address is one clear line at once.

The module's cluster is a head node and a second node, one CPU each, started as separate
processes (`ray start --head`, `ray start --address`) with token authentication (a token of
their own, never ``~/.ray``), free ports and a temporary folder of their own; each `ray start`
runs in a session of its own, and every process of those sessions (the nodes, and the workers
they start, which Ray puts in process groups of their own) is killed at the end, also when a
test or the start fails. Nothing here runs `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("onnxruntime")

from tests.conftest import cifar_archive

RAY = str(Path(sys.executable).parent / "ray")
HASHSEARCH = str(Path(sys.executable).parent / "hashsearch")
#: Seconds a node may take to start (about 5-10 s here; more on a loaded machine).
START_TIMEOUT_S = 90


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_pids(sid: int) -> list[int]:
    """Every live process of session `sid` (Linux /proc: the 6th field of /proc/PID/stat)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def _titles(sid: int) -> list[str]:
    """The command lines of session `sid`'s processes (Ray workers show their actor and method)."""
    out = []
    for pid in _session_pids(sid):
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return out


def _kill_session(sid: int, grace: float = 5.0) -> None:
    """SIGTERM every process of session `sid`, then SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = _session_pids(sid)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)


class Cluster:
    """A Ray cluster of `ray start` processes on this machine (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        token = root / "token"  # kept if there (a driver in this process may have read it already)
        if not token.exists():
            token.write_text(secrets.token_hex(32))
            token.chmod(0o600)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.port = _free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        node = subprocess.Popen(
            [RAY, "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args],
            env=self.env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its session holds its processes (see _kill_session)
        )
        self.nodes.append(node)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in (self.root / f"{name}.log").read_text(errors="replace"):
            if node.poll() is not None or time.monotonic() > deadline:
                text = (self.root / f"{name}.log").read_text(errors="replace")
                raise RuntimeError(f"ray start ({name}) did not start: {text[-2000:]}")
            time.sleep(0.5)
        return node

    def start_head(self) -> None:
        dashboard, client, agent = _free_ports(3)
        self._start(
            [
                "--head",
                "--port",
                str(self.port),
                "--temp-dir",
                str(self.root / "ray"),
                "--include-dashboard",
                "false",
                "--dashboard-port",
                str(dashboard),
                "--ray-client-server-port",
                str(client),
                "--dashboard-agent-listen-port",
                str(agent),
                "--object-store-memory",
                str(200 * 2**20),
            ],
            "head",
        )

    def add_node(self, name: str) -> subprocess.Popen:
        (agent,) = _free_ports(1)
        node = self._start(
            [
                "--address",
                self.address,
                "--dashboard-agent-listen-port",
                str(agent),
                "--object-store-memory",
                str(200 * 2**20),
            ],
            name,
        )
        self.wait_for_cpus(len([n for n in self.nodes if n.poll() is None]))
        return node

    def cpus(self) -> float:
        """The cluster's CPUs as `ray status` reports them (0 when it cannot tell)."""
        out = subprocess.run(
            [RAY, "status", "--address", self.address], env=self.env, capture_output=True, text=True, timeout=60
        ).stdout
        found = re.search(r"/([\d.]+) CPU", out)
        return float(found.group(1)) if found else 0.0

    def wait_for_cpus(self, n: float) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (cpus := self.cpus()) != n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster at {self.address} has {cpus} CPUs, not {n}")
            time.sleep(1)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            _kill_session(node.pid)
            node.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster():
    # Not pytest's tmp_path: Ray's socket paths under its temp folder must stay within the
    # 107 bytes of a Unix socket address, which a path under pytest's folder exceeds.
    root = Path(tempfile.mkdtemp(prefix="hsray-", dir="/tmp"))
    c = Cluster(root)
    try:
        c.start_head()
        c.add_node("node2")
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _index(folder: str, out: Path, cache: Path, cwd: Path, env: dict, *extra: str, size: int = 64, wait=True):
    cmd = [HASHSEARCH, "index", folder, "--out", str(out), "--cache-dir", str(cache), "-m", "itq", "--bits", "32"]
    cmd += ["--input-size", str(size), "--batch-size", "8", *extra]
    run = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return run
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]
    return stdout


def _counts(stdout: str) -> tuple[int, int, int]:
    """(images indexed, features computed, features from the cache) of `hashsearch index`'s report."""
    found = re.search(r"indexed (\d+) images \((\d+) features computed, (\d+) from the cache\)", stdout)
    assert found, stdout
    return tuple(int(g) for g in found.groups())


def _cache_rows(cache: Path) -> dict[str, bytes]:
    (db,) = (cache / "features").glob("*.sqlite")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return dict(con.execute("SELECT digest, vec FROM features"))


@pytest.mark.distributed
def test_cluster_index_equals_local_index(cluster, cifar_small, tmp_path):
    """Features (the feature cache's float32 rows and the collection's) and codes byte for byte.

    The folder is given relative to the command's working folder, which is not the folder the
    nodes were started in: the actors read the files where the driver does.
    """
    from hashsearch.collection import Collection

    cwd, folder = cifar_small.parent, cifar_small.name
    local = _index(folder, tmp_path / "local.hsx", tmp_path / "c-local", cwd, cluster.env)
    shutil.copytree(tmp_path / "c-local" / "onnx", tmp_path / "c-ray" / "onnx")  # the export, not the features
    remote = _index(
        folder,
        tmp_path / "ray.hsx",
        tmp_path / "c-ray",
        cwd,
        cluster.env,
        "--engine",
        "ray",
        "--address",
        cluster.address,
    )
    assert _counts(remote) == _counts(local) == (120, 120, 0)
    a, b = _cache_rows(tmp_path / "c-local"), _cache_rows(tmp_path / "c-ray")
    assert len(a) == 120 and a == b
    lc, rc = Collection.open(tmp_path / "local.hsx"), Collection.open(tmp_path / "ray.hsx")
    n = len(lc)
    assert len(rc) == n == 120
    assert rc.entries(range(n)) == lc.entries(range(n))
    assert rc._features.tobytes() == lc._features.tobytes()
    assert rc.index._codes[:n].tobytes() == lc.index._codes[:n].tobytes()


@pytest.fixture(scope="module")
def cifar_600(tmp_path_factory) -> Path:
    """600 CIFAR-10 test images (60 per class, the first in archive order)."""
    root = tmp_path_factory.mktemp("cifar600")
    taken: dict[str, int] = {}
    with tarfile.open(cifar_archive(), "r:gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 3 or parts[-3] != "test" or taken.get(parts[-2], 0) >= 60:
                continue
            dest = root / parts[-2] / parts[-1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(m).read())
            taken[parts[-2]] = taken.get(parts[-2], 0) + 1
            if len(taken) == 10 and all(v >= 60 for v in taken.values()):
                break
    return root


@pytest.mark.distributed
def test_node_killed_mid_job_then_rerun_resumes(cluster, cifar_600, tmp_path):
    """A node killed while its actor extracts: the job finishes (Ray retries its tasks elsewhere) or
    stops with one clear line; either way a rerun computes only the features not in the cache, and
    the features equal the local engine's.

    The victim is a third node, added for this test, so the module's cluster is the same after it.
    """
    from hashsearch.backbones import create_backbone
    from hashsearch.data.sources import FolderSource
    from hashsearch.pipeline.local import extract_features

    victim = cluster.add_node("victim")
    out, cache = tmp_path / "ray.hsx", tmp_path / "cache"
    args = ("--engine", "ray", "--address", cluster.address)
    # 224 px: enough work that the victim's actor is still extracting when it is killed.
    job = _index(str(cifar_600), out, cache, tmp_path, cluster.env, *args, size=224, wait=False)
    try:
        deadline = time.monotonic() + 300
        while not any("MapWorker" in t and ".submit" in t for t in _titles(victim.pid)):
            assert job.poll() is None, "the job finished before the victim node's actor extracted anything"
            assert time.monotonic() < deadline, "the victim node's actor never started extracting"
            time.sleep(0.2)
        _kill_session(victim.pid, grace=0)  # SIGKILL: its raylet, its actors, everything of it
        stdout, stderr = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    if job.returncode == 0:
        assert _counts(stdout) == (600, 600, 0)  # finished: the lost tasks ran again elsewhere
    else:
        errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "the Ray job stopped" in errors[0] and "feature cache" in errors[0], stderr
        assert "Traceback" not in stderr
    cached = len(_cache_rows(cache))
    outcome = "finished" if job.returncode == 0 else "stopped"
    print(f"node killed mid-job: the job {outcome}; {cached} features in the cache")  # shown by pytest -rP
    again = _index(str(cifar_600), out, cache, tmp_path, cluster.env, *args, "--overwrite", size=224)
    assert _counts(again) == (600, 600 - cached, cached)
    # The features equal the local engine's, byte for byte (a sample: 224 px extraction is costly).
    source = FolderSource(cifar_600)
    sample = source.records()[::50]
    shutil.copytree(cache / "onnx", tmp_path / "local" / "onnx")  # the export, not the features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = extract_features(
            source,
            create_backbone("efficientnet-lite0", input_size=224),
            sample,
            cache_dir=tmp_path / "local",
            progress=False,
            workers=0,
        )
    rows = _cache_rows(cache)
    assert len(local.digests) == len(sample) == 12
    assert b"".join(rows[d] for d in local.digests) == local.features.tobytes()


@pytest.mark.parametrize(
    ("address", "says"),
    [
        (None, "cannot reach the Ray cluster at 127.0.0.1:"),  # a free port: nothing listens
        ("localhost", "is not a Ray cluster address: give HOST:PORT"),
    ],
)
def test_wrong_address_is_one_line_before_any_work(address, says, cifar_small, tmp_path):
    """Ray retries an address that refuses for minutes; hashsearch says so at once, before the scan."""
    address = address or f"127.0.0.1:{_free_ports(1)[0]}"
    cmd = [HASHSEARCH, "index", str(cifar_small / "test"), "--out", str(tmp_path / "c.hsx"), "-m", "itq"]
    cmd += ["--cache-dir", str(tmp_path / "cache"), "--engine", "ray", "--address", address]
    t = time.monotonic()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and time.monotonic() - t < 120, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], run.stderr
    assert not (tmp_path / "cache" / "features").exists()  # nothing scanned, nothing exported
