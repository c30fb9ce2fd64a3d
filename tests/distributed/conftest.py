"""Fixtures that start real servers (tests marked `distributed`; `make test-distributed` runs them).

`milvus_server`: a Milvus standalone server (the PyPI package `milvus`, 2.3.x: a real
``milvus run standalone`` binary with embedded etcd and local storage), started once per test
session on free ports with a temporary data folder, with authorization on (so every client needs
a token), and stopped at the end of the session, also when a test or the start fails. The
server's unpacked binaries (246 MB, 4 s to unpack) are kept in the hashsearch cache folder and
shared by later sessions; its data never is.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The superuser a fresh Milvus server creates (user root, password Milvus), as a pymilvus token.
MILVUS_ROOT_TOKEN = "root:Milvus"
#: How long a server may take to answer its health check (it takes about 7-12 s here).
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class MilvusServerInfo:
    """A running Milvus server: its gRPC URI, the token it accepts, its version, its folders."""

    uri: str
    token: str
    version: str
    data_dir: Path
    log_dir: Path


def _free_ports(n: int) -> list[int]:
    """`n` distinct ports the kernel reports free on 127.0.0.1 (held open together, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _unpack_binaries(milvus) -> Path:
    """The server's binaries, unpacked once into the cache folder (under a lock: two sessions at once
    must not run a half-written binary)."""
    from hashsearch.paths import cache_dir

    base = cache_dir() / f"milvus-server-{milvus.__version__}"
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        milvus._initialize_data_files(str(base))  # checks an md5 per file; unpacks only what changed
    return base / "bin"


def _log_tail(log_dir: Path, lines: int = 15) -> str:
    out = []
    for name in ("milvus-stderr.log", "milvus-stdout.log"):
        path = log_dir / name
        if path.exists():
            out += path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(out) or "(no log)"


def _wait_healthy(server, log_dir: Path) -> None:
    """Wait for /healthz to say OK; fail with the log's tail if the process exits or time runs out."""
    url = f"http://127.0.0.1:{server.webservice_port}/healthz"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.server_proc.poll() is not None:
            raise RuntimeError(
                f"the Milvus server exited with code {server.server_proc.returncode} while starting:\n"
                + _log_tail(log_dir)
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if b"OK" in resp.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the Milvus server did not answer {url} within {START_TIMEOUT_S} s:\n" + _log_tail(log_dir))


def _embedded_etcd_on(config, data_dir: Path, client_port: int, peer_port: int) -> None:
    """Move the embedded etcd off its fixed ports (2379, 2380), so that two servers can run at once.

    The package's template sets only the port its clients dial; etcd's own listeners come from an
    embedded-etcd config file, named by ``etcd.config.path``, which the template lacks.
    """
    etcd_yaml = data_dir / "embed-etcd.yaml"
    peer = f"http://127.0.0.1:{peer_port}"
    etcd_yaml.write_text(
        f"name: default\nlisten-client-urls: http://127.0.0.1:{client_port}\n"
        f"advertise-client-urls: http://127.0.0.1:{client_port}\nlisten-peer-urls: {peer}\n"
        f"initial-advertise-peer-urls: {peer}\ninitial-cluster: default={peer}\n"
    )
    head = "etcd:\n  endpoints:"
    if head not in config.template_text:
        raise RuntimeError("the milvus package's config template changed: no 'etcd: endpoints:' to extend")
    config.template_text = config.template_text.replace(
        head, f"etcd:\n  config:\n    path: {etcd_yaml}\n  endpoints:", 1
    )


@contextlib.contextmanager
def run_milvus_server(data_dir: Path, authorization: bool = True):
    """Start a Milvus standalone server in `data_dir` on free ports; yield its MilvusServerInfo; stop it."""
    import milvus

    bin_dir = _unpack_binaries(milvus)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "bin").symlink_to(bin_dir, target_is_directory=True)
    config = milvus.MilvusServerConfig(data_dir=str(data_dir))
    port_keys = sorted(k for k in config.configurable_items if k.endswith("_port"))
    ports = dict(zip([*port_keys, "webservice", "etcd_peer"], _free_ports(len(port_keys) + 2)))
    config.update(**{k: ports[k] for k in port_keys})
    config.set("authorization_enabled", authorization)
    _embedded_etcd_on(config, data_dir, ports["etcd_port"], ports["etcd_peer"])
    server = milvus.MilvusServer(config, wait_for_started=False)
    server.webservice_port = ports["webservice"]  # its health and metrics port (searched upwards from here)
    log_dir = data_dir / "logs"
    try:
        server.start()
        _wait_healthy(server, log_dir)
        from pymilvus import MilvusClient

        uri = f"http://127.0.0.1:{server.listen_port}"
        token = MILVUS_ROOT_TOKEN if authorization else ""
        client = MilvusClient(uri=uri, token=token)
        version = client.get_server_version()
        client.close()
        yield MilvusServerInfo(uri, token, version, data_dir, log_dir)
    finally:
        proc = server.server_proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # a clean shutdown first (the package's own stop() waits only 1 s)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        server.stop()  # kills it if still running; closes the log files


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> MilvusServerInfo:
    """A Milvus standalone server for the session, authorization on (token: MILVUS_ROOT_TOKEN)."""
    for module, what in (("milvus", "the Milvus standalone server"), ("pymilvus", "the Milvus client")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the {module!r} package ({what}) is not installed: run `make setup` (extra 'distributed')")
    with run_milvus_server(tmp_path_factory.mktemp("milvus-server")) as info:
        yield info
