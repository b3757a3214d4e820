"""conn.secrets: the /secrets-manager endpoints, key paths, error mapping, recursive listing."""
from __future__ import annotations

import pytest
import responses

from qcompute import (
    ConflictError,
    Connection,
    NotFoundError,
    QComputeError,
    SecretConflictException,
    SecretNotFoundException,
    Secrets,
)

from .helpers import API, body

DATA = f"{API}/secrets-manager/data"
SEARCH = f"{API}/secrets-manager/search"


def test_the_client_is_made_once_per_connection(api: responses.RequestsMock,
                                                conn: Connection) -> None:
    assert isinstance(conn.secrets, Secrets) and conn.secrets is conn.secrets
    assert len(api.calls) == 0


def test_get_strips_slashes_and_keeps_folders_in_the_path(api: responses.RequestsMock,
                                                          conn: Connection) -> None:
    api.add("GET", f"{DATA}/db/password", json={"value": "s3cr3t"})
    api.add("GET", f"{DATA}/my%20key%3F", json={"value": "v"})
    assert conn.secrets.get("/db/password/") == "s3cr3t"
    assert conn.secrets.get("my key?") == "v"
    assert api.calls[1].request.url == f"{DATA}/my%20key%3F"


def test_create_update_delete(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("PUT", f"{DATA}/app/token", status=201)
    api.add("PATCH", f"{DATA}/app/token")
    api.add("DELETE", f"{DATA}/app/token")
    assert conn.secrets.create("app/token", "one") == "app/token"
    conn.secrets.update("app/token", "two")
    conn.secrets.delete("app/token")
    assert [c.request.method for c in api.calls] == ["PUT", "PATCH", "DELETE"]
    assert body(api.calls[0]) == {"Value": "one"}  # capital V, as the dialect has it
    assert body(api.calls[1]) == {"Value": "two"}


def test_conflict_and_not_found_are_mapped(api: responses.RequestsMock,
                                           conn: Connection) -> None:
    api.add("PUT", f"{DATA}/k", status=409, json={"message": "secret k exists", "code": "exists"})
    api.add("GET", f"{DATA}/gone", status=404, json={"message": "no secret gone"})
    api.add("PATCH", f"{DATA}/gone", status=404, json={"message": "no secret gone"})
    api.add("DELETE", f"{DATA}/gone", status=404, json={"message": "no secret gone"})
    with pytest.raises(SecretConflictException) as conflict:
        conn.secrets.create("k", "v")
    assert isinstance(conflict.value, ConflictError) and isinstance(conflict.value, QComputeError)
    assert (conflict.value.status_code, conflict.value.code) == (409, "exists")
    for call in (lambda: conn.secrets.get("gone"), lambda: conn.secrets.update("gone", "v"),
                 lambda: conn.secrets.delete("gone")):
        with pytest.raises(SecretNotFoundException, match="no secret gone") as missing:
            call()
        assert isinstance(missing.value, NotFoundError)


@pytest.mark.parametrize("key", ["", "/", None])
def test_bad_keys_are_refused_without_a_request(conn: Connection, key: object) -> None:
    with pytest.raises(ValueError, match="secret key"):
        conn.secrets.get(key)  # type: ignore[arg-type]


def test_bad_value_is_refused(conn: Connection) -> None:
    with pytest.raises(ValueError, match="secret value"):
        conn.secrets.create("k", 42)  # type: ignore[arg-type]


def test_list_gives_full_keys_and_folders(api: responses.RequestsMock,
                                          conn: Connection) -> None:
    api.add("GET", f"{SEARCH}/", json={"keys": ["top", "db/"]})
    api.add("GET", f"{SEARCH}/db/", json={"keys": ["password", "replica/"]})
    assert conn.secrets.list() == ["top", "db/"]
    assert conn.secrets.list("/db") == ["db/password", "db/replica/"]
    assert [c.request.url for c in api.calls] == [f"{SEARCH}/", f"{SEARCH}/db/"]


def test_recursive_list_walks_the_folders(api: responses.RequestsMock,
                                          conn: Connection) -> None:
    api.add("GET", f"{SEARCH}/", json={"keys": ["top", "db/"]})
    api.add("GET", f"{SEARCH}/db/", json={"keys": ["password", "replica/"]})
    api.add("GET", f"{SEARCH}/db/replica/", json={"keys": ["url"]})
    assert conn.secrets.list(recursive=True) == ["top", "db/password", "db/replica/url"]
    assert len(api.calls) == 3


def test_missing_folder_is_empty(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("GET", f"{SEARCH}/nothing/", status=404, json={"message": "no such folder"})
    assert conn.secrets.list("nothing") == []
