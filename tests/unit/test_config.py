"""Settings resolution: arguments > fileconf > environment > $QCOMPUTE_CONFIG/default file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qcompute import ConfigError, Connection
from qcompute.config import DEFAULT_CLUSTER_URL, load_config


def ini(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


FILE_CONF = """
[cluster]
url = http://file.test/
timeout = 12
[client]
token = file-token
[storage]
url = http://file-s3.test
"""
DEFAULT_CONF = """
[cluster]
url = http://default.test
timeout = 44
unsafe = true
[client]
token = default-token
[storage]
url = http://default-s3.test
custom_certificate = /etc/ca.pem
"""


def test_arguments_beat_file_env_and_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  isolated_config: Path) -> None:
    ini(isolated_config, DEFAULT_CONF)
    monkeypatch.setenv("QCOMPUTE_CLUSTER_URL", "http://env.test")
    monkeypatch.setenv("QCOMPUTE_CLIENT_TOKEN", "env-token")
    conf = load_config(ini(tmp_path / "f.conf", FILE_CONF),
                       client_token="arg-token", cluster_url="http://arg.test/")
    assert conf.client_token == "arg-token"
    assert conf.cluster_url == "http://arg.test"
    assert conf.cluster_timeout == 12.0  # file
    assert conf.storage_url == "http://file-s3.test"  # file beats default file
    assert conf.cluster_unsafe is True  # only the default file sets it


def test_file_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCOMPUTE_CLIENT_TOKEN", "env-token")
    monkeypatch.setenv("QCOMPUTE_CLUSTER_TIMEOUT", "99")
    monkeypatch.setenv("QCOMPUTE_STORAGE_UNSAFE", "1")
    conf = load_config(str(ini(tmp_path / "f.conf", FILE_CONF)))
    assert conf.client_token == "file-token"
    assert conf.cluster_timeout == 12.0
    assert conf.storage_unsafe is True  # not in the file: the environment decides


def test_environment_beats_default_file(monkeypatch: pytest.MonkeyPatch,
                                        isolated_config: Path) -> None:
    ini(isolated_config, DEFAULT_CONF)
    monkeypatch.setenv("QCOMPUTE_CLIENT_TOKEN", "env-token")
    monkeypatch.setenv("QCOMPUTE_STORAGE_URL", "http://env-s3.test/")
    conf = load_config()
    assert conf.client_token == "env-token"
    assert conf.storage_url == "http://env-s3.test"
    assert conf.cluster_url == "http://default.test"
    assert conf.cluster_timeout == 44.0
    assert conf.storage_verify == "/etc/ca.pem"
    assert conf.cluster_verify is False


def test_default_file_alone(isolated_config: Path) -> None:
    ini(isolated_config, DEFAULT_CONF)
    conf = load_config()
    assert (conf.client_token, conf.cluster_url) == ("default-token", "http://default.test")


def test_qcompute_config_names_the_file_instead_of_the_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_config: Path) -> None:
    ini(isolated_config, DEFAULT_CONF)
    monkeypatch.setenv("QCOMPUTE_CONFIG", str(ini(tmp_path / "named.conf", FILE_CONF)))
    conf = load_config()
    assert conf.client_token == "file-token"
    assert conf.cluster_unsafe is False  # the default file is not read


def test_qcompute_config_pointing_nowhere_is_an_error(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCOMPUTE_CONFIG", str(tmp_path / "missing.conf"))
    with pytest.raises(ConfigError, match="missing.conf"):
        load_config(client_token="t")


def test_qarnot_names_are_accepted_and_qcompute_names_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QARNOT_CLUSTER_URL", "http://qarnot.test")
    monkeypatch.setenv("QARNOT_CLIENT_TOKEN", "qarnot-token")
    monkeypatch.setenv("QARNOT_STORAGE_URL", "http://qarnot-s3.test")
    monkeypatch.setenv("QARNOT_CLUSTER_TIMEOUT", "7")
    monkeypatch.setenv("QARNOT_CLUSTER_UNSAFE", "true")
    conf = load_config()
    assert conf.cluster_url == "http://qarnot.test"
    assert conf.client_token == "qarnot-token"
    assert conf.storage_url == "http://qarnot-s3.test"
    assert conf.cluster_timeout == 7.0
    assert conf.cluster_unsafe is True
    monkeypatch.setenv("QCOMPUTE_CLIENT_TOKEN", "qcompute-token")
    assert load_config().client_token == "qcompute-token"


def test_dict_fileconf_with_official_keys() -> None:
    conf = load_config({"cluster_url": "http://dict.test/", "client_auth": "dict-token",
                        "cluster_timeout": "15", "cluster_unsafe": True,
                        "storage_url": "http://dict-s3.test"})
    assert conf.cluster_url == "http://dict.test"
    assert conf.client_token == "dict-token"
    assert conf.cluster_timeout == 15.0
    assert conf.cluster_unsafe is True
    assert load_config({"client_token": "t2"}).client_token == "t2"


def test_dict_fileconf_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="cluster_adress"):
        load_config({"client_token": "t", "cluster_adress": "http://x"})


def test_missing_token_names_every_place_looked(tmp_path: Path, isolated_config: Path) -> None:
    path = ini(tmp_path / "no-token.conf", "[cluster]\nurl = http://x.test\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    for place in ("client_token argument", str(path), "$QCOMPUTE_CLIENT_TOKEN",
                  "$QARNOT_CLIENT_TOKEN", str(isolated_config), "[client] token"):
        assert place in message


def test_auth_is_a_deprecated_alias_of_token(tmp_path: Path) -> None:
    path = ini(tmp_path / "old.conf", "[client]\nauth = old-token\n")
    with pytest.warns(DeprecationWarning, match="auth"):
        conf = load_config(path)
    assert conf.client_token == "old-token"


def test_defaults_timeout_is_30_and_never_none() -> None:
    conf = load_config(client_token="t")
    assert conf.cluster_timeout == 30.0
    assert conf.cluster_url == DEFAULT_CLUSTER_URL
    assert (conf.retry_count, conf.retry_wait, conf.storage_url) == (5, 1.0, None)
    assert conf.cluster_verify is True


@pytest.mark.parametrize("name, value", [
    ("QCOMPUTE_CLUSTER_TIMEOUT", "0"), ("QCOMPUTE_CLUSTER_TIMEOUT", "soon"),
    ("QCOMPUTE_CLUSTER_UNSAFE", "maybe"), ("QCOMPUTE_CLUSTER_URL", "api.test"),
])
def test_invalid_values_name_their_source(monkeypatch: pytest.MonkeyPatch, name: str,
                                          value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"\\${name}"):
        load_config(client_token="t")


def test_unreadable_fileconf_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.conf"):
        load_config(tmp_path / "nope.conf", client_token="t")


def test_repr_masks_the_token() -> None:
    conf = load_config(client_token="supersecrettoken")
    assert "supersecrettoken" not in repr(conf)
    assert "client_token='sup***'" in repr(conf)


def test_connection_reads_config_and_sends_nothing(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCOMPUTE_CLIENT_TOKEN", "env-token")
    conn = Connection(cluster_url="http://api.test/", cluster_timeout=3, retry_count=0)
    assert conn.cluster_url == "http://api.test"
    assert conn.config.client_token == "env-token"
    assert conn.config.cluster_timeout == 3
    assert conn._http.timeout == 3
    assert len(api.calls) == 0
    conn.close()


def test_connection_without_token_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="no API token"):
        Connection(cluster_url="http://api.test")
