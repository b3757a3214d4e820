"""``qcompute server`` hands its settings to uvicorn: checked on uvicorn's own ``Config``, built
from the arguments the command passes, with no server started."""
from __future__ import annotations

import uvicorn
from click.testing import CliRunner

from qcompute.cli.cluster import server


def _serve(monkeypatch, tmp_path, **env: str):
    """Run ``qcompute server``; returns the CLI result and the uvicorn Config it would serve."""
    built: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: built.append(uvicorn.Config(app, **kw)))
    result = CliRunner().invoke(server, ["--data-dir", str(tmp_path), "--port", "8899"], env=env)
    return result, (built[0] if built else None)


def test_the_keep_alive_outlasts_a_clients_poll_interval(monkeypatch, tmp_path):
    result, config = _serve(monkeypatch, tmp_path)
    assert result.exit_code == 0, result.output
    assert config.port == 8899 and config.timeout_keep_alive == 75  # uvicorn's own default: 5


def test_the_keep_alive_is_a_server_setting(monkeypatch, tmp_path):
    result, config = _serve(monkeypatch, tmp_path, QCOMPUTE_SERVER_KEEP_ALIVE_SECONDS="120")
    assert result.exit_code == 0, result.output
    assert config.timeout_keep_alive == 120


def test_a_bad_setting_is_refused_with_its_name(monkeypatch, tmp_path):
    result, config = _serve(monkeypatch, tmp_path, QCOMPUTE_SERVER_KEEP_ALIVE_SECONDS="0")
    assert result.exit_code == 1 and config is None
    assert "keep_alive_seconds" in result.output and "greater than or equal to 1" in result.output
