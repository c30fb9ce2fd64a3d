"""A small real collection (the 120 CIFAR-10 JPEGs of `cifar_small`, DLBHC 32 bits) served on loopback."""

from __future__ import annotations

import socket
import threading
import time
import warnings

import httpx
import pytest

from hashsearch.backbones import create_backbone
from hashsearch.data.sources import FolderSource
from hashsearch.hashing import create_hasher
from hashsearch.pipeline.build import build_collection

API_KEY = "test-key-123"


@pytest.fixture(scope="session")
def served_collection(cifar_small, tmp_path_factory):
    """The saved collection path (built once; CI computes the 120 features in a few seconds)."""
    out = tmp_path_factory.mktemp("svc") / "small.hsx"
    bb = create_backbone("efficientnet-lite0", input_size=128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coll, _ = build_collection(
            FolderSource(cifar_small),
            bb,
            create_hasher("dlbhc", n_bits=32, seed=0, epochs=60),
            cache_dir=tmp_path_factory.mktemp("feat"),
            progress=False,
            batch_size=32,
        )
    coll.save(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counting_h11():
    """uvicorn's h11 protocol, counting the bytes it reads from its sockets (`.read[0]`): what a
    client made the server take in, whatever reached the app."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class CountingH11(H11Protocol):
        read = [0]

        def data_received(self, data: bytes) -> None:
            CountingH11.read[0] += len(data)
            super().data_received(data)

    return CountingH11


class Server:
    """uvicorn in a thread on a free loopback port (`http`: a protocol class, e.g. `counting_h11()`)."""

    def __init__(self, app, http="h11") -> None:
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", http=http)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(served_collection, tmp_path_factory):
    """The app with an API key, over a private copy of the collection (mutations write to it)."""
    import shutil

    from hashsearch.service import create_app

    path = tmp_path_factory.mktemp("copy") / "c.hsx"
    shutil.copytree(served_collection, path)
    app = create_app(
        path, api_key=API_KEY, cache_dir=tmp_path_factory.mktemp("cache"), eval_json=_eval_json(tmp_path_factory)
    )
    with Server(app) as s:
        yield s


def _eval_json(tmp_path_factory):
    """The committed core benchmark JSON if present, else a tiny one in the same format."""
    import json
    from pathlib import Path

    p = Path(__file__).resolve().parents[2] / "benchmarks/results/cifar10-1k-core.json"
    if p.is_file():
        return p
    q = tmp_path_factory.mktemp("eval") / "e.json"
    pr = {"radii": [0, 1, 2], "precision": [0.5, 0.4, 0.3], "recall": [0.1, 0.5, 1.0]}
    q.write_text(
        json.dumps(
            {
                "title": "t",
                "rows": [
                    {"method": "itq", "bits": b, "metrics": {"map": 0.2 + b / 1000, "pr_curve": pr}} for b in (16, 32)
                ],
            }
        )
    )
    return q


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture
def server_class():
    """`Server`, for tests that start their own app."""
    return Server


def fresh_jpegs(cifar_small, n: int, salt: int) -> list[tuple[str, bytes]]:
    """`n` real JPEGs that no collection built from `cifar_small` holds: its test images mirrored,
    a 4x4 corner painted a colour from `salt` (so each salt gives new content), re-encoded. [(name, bytes)]."""
    import io
    from pathlib import Path

    from PIL import Image

    out = []
    for p in sorted((Path(cifar_small) / "test").rglob("*.jpg"))[:n]:
        im = Image.open(p).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        im.paste(((salt * 53) % 256, (salt * 97 + 40) % 256, (salt * 31 + 90) % 256), (0, 0, 4, 4))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=92)
        out.append((f"new-{salt}-{p.parent.name}-{p.name}", buf.getvalue()))
    return out
