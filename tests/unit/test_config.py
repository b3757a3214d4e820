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


PROFILES_CONF = """
[cluster]
url = http://plain.test
[client]
token = plain-token
[profile staging]
cluster_url = http://staging.test/
client_token = staging-token
cluster_timeout = 9
[profile prod]
cluster_url = https://prod.test
client_token = prod-token
"""


def test_profile_section_is_selected_by_name(tmp_path: Path) -> None:
    path = ini(tmp_path / "p.conf", PROFILES_CONF)
    conf = load_config(path, profile="staging")
    assert (conf.cluster_url, conf.client_token, conf.cluster_timeout) == (
        "http://staging.test", "staging-token", 9.0)
    plain = load_config(path)  # no profile: the plain sections, as before
    assert (plain.cluster_url, plain.client_token) == ("http://plain.test", "plain-token")


def test_profile_from_the_environment_and_in_the_default_file(
        monkeypatch: pytest.MonkeyPatch, isolated_config: Path) -> None:
    ini(isolated_config, PROFILES_CONF)
    monkeypatch.setenv("QCOMPUTE_PROFILE", "prod")
    assert load_config().client_token == "prod-token"
    assert load_config(profile="staging").client_token == "staging-token"  # argument wins
    conn = Connection(profile="staging")
    assert conn.cluster_url == "http://staging.test"
    conn.close()


def test_profile_replaces_plain_sections_and_beats_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ini(tmp_path / "p.conf", PROFILES_CONF + "[storage]\nurl = http://plain-s3.test\n")
    monkeypatch.setenv("QCOMPUTE_CLIENT_TOKEN", "env-token")
    monkeypatch.setenv("QCOMPUTE_RETRY_COUNT", "2")
    conf = load_config(path, profile="prod")
    assert conf.client_token == "prod-token"  # the profile beats the environment
    assert conf.retry_count == 2  # not in the profile: the environment fills it
    assert conf.storage_url is None  # the plain [storage] is not a fallback of a profile
    assert load_config(path, profile="prod", client_token="arg").client_token == "arg"


def test_profile_without_token_does_not_borrow_the_plain_one(tmp_path: Path) -> None:
    path = ini(tmp_path / "p.conf", PROFILES_CONF + "[profile empty]\ncluster_url = http://e.test\n")
    with pytest.raises(ConfigError, match=r"client_token in \[profile empty\]"):
        load_config(path, profile="empty")


def test_missing_profile_names_the_profiles_that_exist(tmp_path: Path) -> None:
    path = ini(tmp_path / "p.conf", PROFILES_CONF)
    with pytest.raises(ConfigError) as caught:
        load_config(path, profile="stagin")
    message = str(caught.value)
    assert "'stagin'" in message and "did you mean 'staging'" in message
    assert "its profiles: staging, prod" in message and str(path) in message


def test_missing_profile_when_no_file_exists(isolated_config: Path) -> None:
    with pytest.raises(ConfigError, match=f"no profile 'x'.*{isolated_config}"):
        load_config(profile="x")


@pytest.mark.parametrize("text, problem", [
    ("[client]\ntokn = t\n", r"unknown key 'tokn' in \[client\] \(did you mean 'token'\?\)"),
    ("[cluster]\nurl = http://x.test\ntimout = 3\n[client]\ntoken = t\n",
     r"unknown key 'timout' in \[cluster\] \(did you mean 'timeout'\?\)"),
    ("[client]\ntoken = t\n[clustre]\nurl = http://x.test\n",
     r"unknown section \[clustre\] \(did you mean 'cluster'\?\)"),
    ("[client]\ntoken = t\n[profile a]\ncluster_ulr = http://x.test\n",
     r"unknown key 'cluster_ulr' in \[profile a\] \(did you mean 'cluster_url'\?\)"),
    ("[DEFAULT]\nunsafe = true\n[client]\ntoken = t\n", r"unknown section \[DEFAULT\]"),
])
def test_unknown_sections_and_keys_are_errors_with_a_did_you_mean(
        tmp_path: Path, text: str, problem: str) -> None:
    path = ini(tmp_path / "typo.conf", text)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_a_typo_in_the_default_file_is_reported_not_ignored(isolated_config: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ini(isolated_config, "[client]\ntokn = t\n")
    monkeypatch.setenv("QCOMPUTE_CLIENT_TOKEN", "env-token")
    with pytest.raises(ConfigError, match=f"{isolated_config}: unknown key 'tokn'"):
        load_config()
