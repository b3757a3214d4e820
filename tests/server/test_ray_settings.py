"""Which addresses a server advertises: the one the Ray head it starts is reached at
(``ray_node_ip``; the head itself is started on a real address in tests/netns), and the API URL
clients and instances are told (``public_url``)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from qcompute.server.sandbox import SandboxConfig
from qcompute.server.settings import ServerSettings, sandbox_config


@pytest.mark.parametrize("host,node_ip,resolved", [
    ("127.0.0.1", "", None),  # loopback: other nodes cannot reach it, so Ray picks
    ("0.0.0.0", "", None),  # every address: Ray picks one
    ("localhost", "", None),  # a name: Ray wants an address
    ("10.213.0.1", "", "10.213.0.1"),  # the API's address
    ("10.213.0.1", "192.0.2.7", "192.0.2.7"),  # said outright
])
def test_the_head_is_reached_at_the_node_ip_or_the_api_address(tmp_path, host, node_ip, resolved):
    settings = ServerSettings(data_dir=tmp_path, host=host, ray_node_ip=node_ip)
    assert settings.resolved_ray_node_ip == resolved


def test_a_node_ip_that_is_no_address_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="ray_node_ip"):
        ServerSettings(data_dir=tmp_path, ray_node_ip="head.example")


@pytest.mark.parametrize("url", ["ftp://qcompute.example.org", "qcompute.example.org:8801",
                                 "http://"])
def test_a_public_url_that_is_no_http_url_is_refused(tmp_path, url):
    with pytest.raises(ValidationError, match="public_url"):
        ServerSettings(data_dir=tmp_path, public_url=url)


@pytest.mark.parametrize("host, own", [("127.0.0.1", False), ("localhost", False),
                                       ("10.213.0.1", True), ("0.0.0.0", True)])
def test_instances_get_an_address_of_their_own_only_beyond_loopback(tmp_path, host, own):
    """On a loopback-only server the instances' namespace keeps pasta's copy of the host's
    addresses, so nothing the host serves on them is reachable (docs/isolation.rst)."""
    config = sandbox_config(ServerSettings(data_dir=tmp_path, host=host), (8801,))
    assert config.own_address is own
    assert SandboxConfig.from_json(config.to_json()).own_address is own  # as workers read it
