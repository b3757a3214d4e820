"""The ports a cluster binds are checked before anything is set up: each taken one is named, with
the process that holds it and a free port to use instead; ``qcompute server`` refuses to start
on one and leaves no data dir behind."""
from __future__ import annotations

import os
import socket

import pytest
import uvicorn
from click.testing import CliRunner

from qcompute.cli.cluster import server
from qcompute.server.ports import bindable, taken_ports
from qcompute.server.settings import ServerSettings
from qcompute.server.storage.seaweed import GRPC_OFFSET
from qcompute.server.testing import free_port


@pytest.fixture
def held():
    """A port this process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _suggested(problem: str) -> int:
    return int(problem.rsplit(" ", 1)[1].rsplit("=", 1)[-1])


def test_free_ports_raise_nothing(tmp_path):
    assert taken_ports(ServerSettings(data_dir=tmp_path, port=free_port(),
                                      s3_port=free_port())) == []


def test_a_taken_api_port_names_its_holder_and_a_free_port(tmp_path, held):
    s3_port = free_port()
    (problem,) = taken_ports(ServerSettings(data_dir=tmp_path, port=held, s3_port=s3_port))
    assert problem.startswith(f"the API port {held} is taken (by pid {os.getpid()}, ")
    spare = _suggested(problem)
    assert f"; use --port {spare}" in problem
    assert spare not in (held, s3_port) and bindable("127.0.0.1", spare)


def test_a_taken_s3_port_or_its_grpc_twin_is_named_with_a_free_pair(tmp_path, held):
    (problem,) = taken_ports(ServerSettings(data_dir=tmp_path, port=free_port(),
                                            s3_port=held))
    assert problem.startswith(f"the S3 port {held} (or its gRPC port {held + GRPC_OFFSET}) "
                              f"is taken (by pid {os.getpid()}")
    spare = _suggested(problem)
    assert bindable("127.0.0.1", spare) and bindable("127.0.0.1", spare + GRPC_OFFSET)
    if held > GRPC_OFFSET:
        (twin,) = taken_ports(ServerSettings(data_dir=tmp_path, port=free_port(),
                                             s3_port=held - GRPC_OFFSET))
        assert twin.startswith(f"the S3 port {held - GRPC_OFFSET} (or its gRPC port {held})")


def test_every_taken_port_is_named_and_the_suggestions_do_not_clash(tmp_path, held):
    problems = taken_ports(ServerSettings(data_dir=tmp_path, port=held, s3_port=held,
                                          s3_front_port=held))
    assert [p.split(" is taken")[0] for p in problems] == [
        f"the API port {held}", f"the S3 port {held} (or its gRPC port {held + GRPC_OFFSET})",
        f"the S3 front port {held}"]
    assert problems[2].endswith(f"; use QCOMPUTE_SERVER_S3_FRONT_PORT={_suggested(problems[2])}")
    assert len({_suggested(p) for p in problems}) == 3


def test_beyond_loopback_the_s3_port_is_the_relays_on_the_host(tmp_path, held):
    """The relay takes s3_port on `host` (here 0.0.0.0, which a loopback holder blocks); SeaweedFS
    takes a loopback pair of its own, so no gRPC twin is named."""
    (problem,) = taken_ports(ServerSettings(data_dir=tmp_path, host="0.0.0.0", port=free_port(),
                                            s3_port=held))
    assert problem.startswith(f"the S3 port {held} is taken (by pid {os.getpid()}")
    assert bindable("0.0.0.0", _suggested(problem))


def test_external_storage_binds_no_s3_port(tmp_path, held):
    assert taken_ports(ServerSettings(data_dir=tmp_path, port=free_port(), s3_port=held,
                                      storage="external", s3_url="http://127.0.0.1:1")) == []


def test_qcompute_server_refuses_a_taken_port_before_any_set_up(tmp_path, held, monkeypatch):
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(kw))
    data = tmp_path / "data"
    result = CliRunner().invoke(server, ["--data-dir", str(data), "--port", str(held),
                                         "--s3-port", str(free_port())])
    assert result.exit_code == 1 and not served
    assert f"the API port {held} is taken" in result.output and "use --port" in result.output
    assert not data.exists()
