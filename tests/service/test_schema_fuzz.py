"""Every route fuzzed from the OpenAPI schema (schemathesis), against the real server on loopback.

Requests generated from the schema, valid and invalid (ids beyond int64, negative, huge or not
numbers, odd query values, bodies of random bytes, with and without the API key) must never get
a 5xx, and no answer may name a path of the server's file system (issue 18, items 13 and 14).
A bounded number of examples per route keeps the whole file well under a minute.
"""

from __future__ import annotations

import shutil

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from hashsearch.service import api_schema, create_app

from .conftest import API_KEY, Server


@pytest.fixture(scope="module")
def fuzzed(served_collection, tmp_path_factory):
    """A server over a private copy (the fuzzer's deletes and adds change it)."""
    root = tmp_path_factory.mktemp("fuzzapi")
    path = root / "c.hsx"
    shutil.copytree(served_collection, path)
    with Server(create_app(path, api_key=API_KEY, cache_dir=root / "cache")) as s:
        s.secrets = {str(root), str(served_collection.parent)}
        yield s


# The schema is the app's own, built without a collection, so pytest can make one test per route.
schema = schemathesis.openapi.from_dict(api_schema())


def test_the_fuzzed_schema_is_the_served_one(fuzzed):
    import json

    import httpx

    served = httpx.get(f"{fuzzed.url}/openapi.json").json()
    assert served == json.loads(json.dumps(api_schema()))
    operations = {(m.upper(), p) for p, ops in served["paths"].items() for m in ops}
    assert (
        len(operations) == 13 and ("DELETE", "/images/{image_id}") in operations and ("GET", "/entries") in operations
    )


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_5xx_or_a_server_path(case, fuzzed):
    # Half the requests carry the key, so the mutating routes' parsing and validation run too.
    headers = {"X-API-Key": API_KEY} if hash(repr(case.path_parameters)) % 2 == 0 else None
    response = case.call(base_url=fuzzed.url, headers=headers, timeout=30)
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
    for secret in fuzzed.secrets:
        assert secret.encode() not in response.content, (case.method, case.formatted_path, response.content[:300])
