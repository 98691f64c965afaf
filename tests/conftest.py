"""Shared test plumbing.

Under trio >= 0.25 a failing trio test raises a one-leaf ExceptionGroup (the
test's nursery wraps it); unwrap it so pytest shows the real assertion.
"""

from __future__ import annotations

import itertools
import os
import re

import pytest
import structlog
from hypothesis import HealthCheck, settings

from tests.support import ACCESS_KEY, REGION, SECRET_KEY, ServerProcess, client_env


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    outcome = yield
    exc = outcome.excinfo[1] if outcome.excinfo else None
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if exc is not None and exc is not outcome.excinfo[1]:
        outcome.force_exception(exc)


@pytest.fixture(autouse=True)
def _structlog_defaults():
    """A test that configures logging (a CLI's main() run in-process) must not filter the next one's events."""
    yield
    structlog.reset_defaults()


# Timing is not what property tests check: a busy 2-core CI machine must not fail them.
settings.register_profile("tailbucket", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tailbucket")

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The real server, one process for the session (tests use their own buckets)."""
    proc = ServerProcess(tmp_path_factory.mktemp("server-data")).start()
    yield proc
    proc.stop()


@pytest.fixture
def make_server(tmp_path):
    """A factory for private servers (crash and restart tests); all stopped at the end."""
    started: list[ServerProcess] = []

    def make(*args: str, data_dir=None, env=None) -> ServerProcess:
        proc = ServerProcess(data_dir or tmp_path / f"data{len(started)}", list(args), env or {})
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def s3(server):
    """A boto3 S3 client with its default settings (checksums, 100-continue)."""
    import boto3

    session = boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION)
    return session.client("s3", endpoint_url=server.url)


@pytest.fixture
def bucket(s3, request):
    """A fresh, empty bucket for this test."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"t{next(_bucket_numbers)}-{request.node.name.lower()}")[:40].strip("-")
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def aws_env():
    return client_env()


@pytest.fixture
def http(server):
    """A signed httpx client for raw requests (headers exactly as the test writes them)."""
    import httpx

    from sink.sigv4 import SigV4Auth

    with httpx.Client(base_url=server.url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION), timeout=30) as client:
        yield client
