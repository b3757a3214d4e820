"""The key that seals secrets and tokens, and the data dir's privacy: what a start creates,
keeps and refuses."""
from __future__ import annotations

import sqlite3

import pytest
from cryptography.fernet import Fernet

from qcompute.server.crypto import KeyFileError, SealError, Sealer

from .conftest import serving


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_sealing_round_trips_and_a_wrong_key_opens_nothing():
    sealer = Sealer(Fernet.generate_key())
    sealed = sealer.seal("caf\u00e9 s3cr3t")
    assert "s3cr3t" not in sealed and sealer.open(sealed) == "caf\u00e9 s3cr3t"
    assert sealer.seal("same") != sealer.seal("same")  # a fresh IV each time
    with pytest.raises(SealError):
        Sealer(Fernet.generate_key()).open(sealed)
    with pytest.raises(SealError):
        sealer.open("not sealed \u00e9")


def test_a_start_makes_the_data_dir_private_and_keeps_its_key(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    db = data / "qcompute.db"
    sqlite3.connect(db).close()
    db.chmod(0o644)  # as a server before this change left it
    with serving(data) as cluster:
        assert cluster.put("/secrets-manager/data/k", json={"Value": "kept"}).status_code == 201
        key = (data / "secrets.key").read_bytes()
        assert mode(data) == 0o700 and mode(db) == 0o600 and mode(data / "secrets.key") == 0o600
        assert mode(data / "qcompute.db-wal") == 0o600  # SQLite gives it the database's mode
    with serving(data) as cluster:  # the same key opens what the first start sealed
        assert cluster.get("/secrets-manager/data/k").json() == {"value": "kept"}
    assert (data / "secrets.key").read_bytes() == key


def test_a_new_database_file_is_private_from_the_start(tmp_path):
    with serving(tmp_path / "fresh"):
        assert mode(tmp_path / "fresh" / "qcompute.db") == 0o600


def test_a_named_key_file_is_used_and_the_data_dir_gets_none(tmp_path):
    named = tmp_path / "qcompute.key"
    named.write_bytes(Fernet.generate_key() + b"\n")
    with serving(tmp_path / "data", secrets_key_file=named) as cluster:
        assert cluster.put("/secrets-manager/data/k", json={"Value": "v"}).status_code == 201
    assert not (tmp_path / "data" / "secrets.key").exists()
    with serving(tmp_path / "data", secrets_key_file=str(named)) as cluster:
        assert cluster.get("/secrets-manager/data/k").json() == {"value": "v"}


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("directory", "cannot read the secrets key file"),
    ("not a key", "does not hold a Fernet key"),
    ("\u00e9" * 44, "does not hold a Fernet key"),
])
def test_a_bad_named_key_file_stops_the_start(tmp_path, content, message):
    named = tmp_path / "bad.key"
    if content == "directory":
        named.mkdir()
    elif content is not None:
        named.write_text(content, encoding="utf-8")
    with pytest.raises(KeyFileError, match=message) as caught:
        with serving(tmp_path / "data", secrets_key_file=named):
            pass
    assert str(named) in str(caught.value)


def test_a_key_that_does_not_open_the_database_stops_the_start(tmp_path, database_url):
    data = tmp_path / "data"
    with serving(data) as cluster:
        assert cluster.put("/secrets-manager/data/k", json={"Value": "v"}).status_code == 201
    (data / "secrets.key").write_bytes(Fernet.generate_key())  # lost and replaced
    with pytest.raises(KeyFileError, match="does not open the secrets and tokens sealed"):
        with serving(data):
            pass
