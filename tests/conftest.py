"""Fixtures shared by every suite: one real SeaweedFS per test session (stopped by PID)."""
from __future__ import annotations

import pytest

from tests.helpers import s3_client, start_seaweed


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    weed = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield weed
    weed.stop()


@pytest.fixture(scope="session")
def s3_admin(seaweed):
    """A boto3 S3 client with the admin identity."""
    return s3_client(seaweed)
