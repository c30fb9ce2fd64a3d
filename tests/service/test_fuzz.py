"""Fuzzing (hypothesis) of what the service feeds untrusted bytes to: the image decoder and the
collection loader. Random or mutated bytes must give the documented error, never another
exception, a crash or a hang (each example has a deadline)."""

from __future__ import annotations

import io
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hashsearch.collection import Collection, CollectionError
from hashsearch.data.decode import DecodeError, decode_image
from hashsearch.service.limits import Limits
from hashsearch.service.state import BadRequest, ServiceState

FUZZ = settings(
    max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def _seeds():
    im = Image.new("RGB", (24, 16), (200, 30, 60))
    out = []
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"):
        buf = io.BytesIO()
        im.save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seeds()


@st.composite
def mutated(draw):
    """A valid small image with bytes flipped, cut, or inserted (header fields included)."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "set32"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "set32" and len(data) >= pos + 4:
            data[pos : pos + 4] = draw(
                st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x01\x00\x00"])
            )
    return bytes(data)


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutated()))
def test_decoder_gives_decode_error_or_an_rgb_image(data):
    try:
        im = decode_image(data, "fuzz", max_pixels=4_000_000)
    except DecodeError as e:
        assert str(e)
    else:
        assert im.mode == "RGB" and im.width * im.height <= 4_000_000


@pytest.fixture(scope="module")
def state(served_collection, tmp_path_factory):
    return ServiceState(
        served_collection,
        cache_dir=tmp_path_factory.mktemp("fz"),
        limits=Limits(max_pixels=4_000_000, max_query_pixels=4_000_000),
    )


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=2048), mutated()),
    ctype=st.sampled_from(["image/jpeg", "image/png", None, "text/plain"]),
)
def test_upload_path_gives_4xx_or_decodes(state, data, ctype):
    try:
        state.check_upload(data, "fuzz", ctype)
        state.decode(data, "fuzz", query=True)
    except BadRequest as e:
        assert 400 <= e.status < 500 and str(e)


FILES = ["manifest.json", "hasher.npz", "entries.sqlite", "features.npy", "feature_ids.npy", "CURRENT"]


@pytest.fixture(scope="module")
def pristine(served_collection):
    return served_collection


@settings(
    max_examples=60,
    deadline=5000,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    which=st.sampled_from(FILES + ["index"]),
    pos=st.floats(0, 1),
    op=st.sampled_from(["flip", "cut", "garbage"]),
    verify=st.booleans(),
)
def test_loader_gives_collection_error(pristine, tmp_path_factory, which, pos, op, verify):
    """Collection.open on a damaged file: a CollectionError, never another exception.

    With verify=True (the default, and what the service uses) a damaged data file never opens;
    verify=False skips the checksums, so a damaged file may open, but one that cannot be read
    is still a CollectionError."""
    root = tmp_path_factory.mktemp("load") / "c.hsx"
    shutil.copytree(pristine, root)
    gen = root / (root / "CURRENT").read_text().strip()
    if which == "CURRENT":
        target = root / "CURRENT"
    elif which == "index":
        target = sorted(p for p in (gen / "index").rglob("*") if p.is_file())[0]
    else:
        target = gen / which
    data = bytearray(target.read_bytes())
    i = int(pos * (len(data) - 1))
    if op == "flip":
        data[i] ^= 0x5A
    elif op == "cut":
        del data[i:]
    else:
        data[i : i + 8] = b"\xde\xad\xbe\xef" * 2
    target.write_bytes(bytes(data))
    try:
        coll = Collection.open(root, verify=verify)
    except CollectionError as e:
        assert str(e)
    else:
        if not verify:
            return
        # manifest.json is not itself checksummed: a change to a descriptive field (saved_at,
        # stats, ...) may open, but the data files it lists are still verified, so the
        # collection must be whole. Any other file must have been refused.
        same_current = which == "CURRENT" and bytes(data).strip() == (pristine / "CURRENT").read_bytes().strip()
        assert same_current or which == "manifest.json", which
        assert len(coll) == 120 and len(coll.entries(range(120))) == 120


@pytest.mark.parametrize(
    "old,new", [('"files"', '"filez"'), ('"backbone"', '"backbonf"'), ('"index"', '"indey"'), ("{", "[")]
)
def test_manifest_with_missing_fields_is_a_collection_error(pristine, tmp_path, old, new):
    root = tmp_path / "c.hsx"
    shutil.copytree(pristine, root)
    m = root / (root / "CURRENT").read_text().strip() / "manifest.json"
    m.write_text(m.read_text().replace(old, new, 1))
    with pytest.raises(CollectionError, match="manifest.json"):
        Collection.open(root)
