"""Markers of the index tests."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "milvus: runs against an embedded Milvus Lite (pymilvus + milvus-lite, a few seconds in all)"
    )
