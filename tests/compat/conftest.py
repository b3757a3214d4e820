"""The official ``qarnot`` SDK (PyPI, pinned in the ``test`` extra) drives the session's embedded
cluster (``tests/conftest.py``, shared with ``tests/e2e``).

The SDK talks as an ordinary user (not the owner), through an INI file in Qarnot's format, as its
users do: ``[cluster] url``, ``[client] token``, and ``[storage] url`` = the S3 URL ``GET
/settings`` hands to that SDK (the S3 front of ``qcompute/server/storage/s3front.py``). The
owner's own config file, which has no storage URL, is covered by ``test_connection.py``.
"""
from __future__ import annotations

import configparser
import uuid
from pathlib import Path
from typing import Callable

import pytest
import qarnot
import requests

from .helpers import OFFICIAL_AGENT

COMPAT_EMAIL = "compat@qcompute.test"


def owner_token(cluster) -> str:
    parser = configparser.ConfigParser()
    parser.read(cluster.config)
    return parser.get("client", "token")


@pytest.fixture(scope="session")
def compat_user(cluster) -> dict:
    """An ordinary user of the cluster: e-mail, token, bucket prefix."""
    reply = requests.post(f"{cluster.url}/admin/users", json={"email": COMPAT_EMAIL},
                          headers={"Authorization": owner_token(cluster)}, timeout=30)
    assert reply.status_code == 201, reply.text
    return reply.json()


@pytest.fixture(scope="session")
def qarnot_conf(cluster, compat_user, tmp_path_factory) -> Path:
    """The user's INI file for the official SDK."""
    settings = requests.get(f"{cluster.url}/settings", headers={"User-Agent": OFFICIAL_AGENT},
                            timeout=10).json()
    parser = configparser.ConfigParser()
    # a trailing slash, as in Qarnot's sample config: the SDK then asks for //tasks, //settings
    parser["cluster"] = {"url": cluster.url + "/"}
    parser["client"] = {"token": compat_user["token"]}
    parser["storage"] = {"url": settings["storage"]}
    path = tmp_path_factory.mktemp("qarnot") / "qarnot.conf"
    with path.open("w") as handle:
        parser.write(handle)
    return path


@pytest.fixture(scope="session")
def qconn(qarnot_conf) -> qarnot.Connection:
    """One official-SDK connection for the session (each one sends GET /settings and GET /info,
    and adds log handlers to the "stdout"/"stderr" loggers)."""
    return qarnot.Connection(fileconf=str(qarnot_conf))


@pytest.fixture
def bucket_name(compat_user) -> Callable[[str], str]:
    """A fresh bucket name in the user's bucket namespace."""
    return lambda label: f"{compat_user['bucketPrefix']}{label}-{uuid.uuid4().hex[:8]}"
