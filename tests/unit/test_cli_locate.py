"""How `qcompute status | down | logs` find the data dir: --data-dir, else
$QCOMPUTE_SERVER_DATA_DIR, else the client config's cluster URL (the active profile's) when
`qcompute up` started it on this host, else the default data dir."""
from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from qcompute.cli._local import locate, remember

URL = "http://127.0.0.1:18801"
DEFAULT = Path(platformdirs.user_data_dir("qcompute"))


@pytest.fixture(autouse=True)
def host(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("QCOMPUTE_CONFIG", str(tmp_path / "client.conf"))
    for name in ("QCOMPUTE_SERVER_DATA_DIR", "QCOMPUTE_PROFILE", "QCOMPUTE_URL",
                 "QCOMPUTE_CLUSTER_URL", "QCOMPUTE_TOKEN", "QARNOT_CLUSTER_URL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "client.conf").write_text(
        f"[cluster]\nurl = {URL}/\n[client]\ntoken = t\n\n"
        "[profile far]\ncluster_url = https://far.example.com\nclient_token = t\n")
    return tmp_path


def test_the_client_configs_cluster_once_up_recorded_it(host):
    remember(URL, host / "data")
    assert locate(None, None) == (host / "data", f"the client config's cluster {URL}")


def test_the_last_up_on_a_url_wins(host):
    remember(URL, host / "old")
    remember(URL + "/", host / "new")
    assert locate(None, None)[0] == host / "new"


def test_data_dir_then_the_environment_come_first(host, monkeypatch):
    remember(URL, host / "data")
    assert locate(str(host / "given"), None) == (host / "given", "--data-dir")
    monkeypatch.setenv("QCOMPUTE_SERVER_DATA_DIR", str(host / "env"))
    assert locate(None, None) == (host / "env", "$QCOMPUTE_SERVER_DATA_DIR")


def test_a_cluster_up_did_not_start_falls_back_to_the_default_and_says_why(host):
    remember(URL, host / "data")
    assert locate(None, "far") == (
        DEFAULT, "the default data dir; the client config's cluster https://far.example.com "
                 "was not started by qcompute up on this host")


def test_no_client_config_means_the_default_data_dir(host, monkeypatch):
    monkeypatch.setenv("QCOMPUTE_CONFIG", str(host / "missing.conf"))
    assert locate(None, None) == (DEFAULT, "the default data dir")
