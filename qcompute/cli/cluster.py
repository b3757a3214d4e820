"""``qcompute up | down | status | logs | server``: run the embedded cluster."""
from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path
from typing import Optional

import click

from qcompute.config import CONFIG_ENV, default_config_path

from ._common import State
from ._local import (SERVER_LOG_NAME, instance_id, locate, pid_file, recorded_url, remember,
                     running_pid)


def client_config_default() -> str:
    """Where the client config goes: ``$QCOMPUTE_CONFIG``, else the SDK's default path."""
    return os.environ.get(CONFIG_ENV) or str(default_config_path())


def _data_dir(value: Optional[str]) -> Path:
    """``--data-dir``, else ``$QCOMPUTE_SERVER_DATA_DIR``, else the platformdirs data dir."""
    if value:
        return Path(value).expanduser().resolve()
    from qcompute.server.settings import default_data_dir

    return default_data_dir()


def _settings(data_dir: Optional[str], port: Optional[int], s3_port: Optional[int],
              workers: Optional[int], executor: Optional[str] = None,
              ray_address: Optional[str] = None):
    try:
        from pydantic import ValidationError

        from qcompute.server.settings import ServerSettings
    except ImportError as exc:
        raise click.ClickException(
            f"the server needs the [server] extra: pip install 'qcompute[server]' ({exc})"
        ) from None
    overrides = {"data_dir": _data_dir(data_dir), "port": port, "s3_port": s3_port,
                 "max_concurrent_instances": workers, "executor": executor,
                 "ray_address": ray_address}
    try:
        return ServerSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:  # a bad QCOMPUTE_SERVER_* variable or option
        raise click.ClickException(str(exc)) from None


_PARTS = ("database", "storage", "executor", "scheduler")


def _health(url: str, timeout: float = 3.0) -> Optional[dict]:
    """``GET /health``'s body: healthy (200) or degraded (503); None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read()) if exc.code == 503 else None
        except (OSError, ValueError):
            return None
    except (OSError, ValueError):
        return None


def _healthy(url: str, timeout: float = 3.0) -> bool:
    health = _health(url, timeout)
    return health is not None and health.get("status") == "ok"


def _ours(health: Optional[dict], data_dir: Path) -> bool:
    """Whether a /health answer comes from the cluster of ``data_dir`` (its instance id)."""
    return health is not None and health.get("instance") == instance_id(data_dir) is not None


def _check_ports(settings) -> None:
    """Before any set-up: every port the cluster binds is free, else one error naming each
    taken port, its holder when known, and a free one to use."""
    from qcompute.server.ports import taken_ports

    taken = taken_ports(settings)
    if taken:
        raise click.ClickException("; ".join(taken))


_options = [
    click.option("--data-dir", help="Where the cluster keeps its state [platformdirs data dir]."),
    click.option("--port", type=int, help="API port on 127.0.0.1 [8801]."),
    click.option("--s3-port", type=int, help="Embedded S3 port on 127.0.0.1, or on the server's "
                 "host when that is not loopback [18333]."),
    click.option("--workers", type=int, help="Instances run at once [CPU count]."),
    click.option("--executor", type=click.Choice(["local", "ray"]),
                 help="Where instances run: this host, or the nodes of a Ray cluster [local]."),
    click.option("--ray-address", metavar="HOST:PORT",
                 help="With --executor ray: join this Ray cluster [start a head here]."),
]


def _with_options(func):
    for option in reversed(_options):
        func = option(func)
    return func


@click.command()
@_with_options
def server(data_dir, port, s3_port, workers, executor, ray_address) -> None:
    """Run the cluster in the foreground (for services and debugging)."""
    import uvicorn

    from qcompute.server.app import create_app

    settings = _settings(data_dir, port, s3_port, workers, executor, ray_address)
    _check_ports(settings)
    os.umask(0o077)  # what the server (and SeaweedFS, the runners) create is private
    log_config = uvicorn.config.LOGGING_CONFIG
    if settings.log_format == "json":  # uvicorn's own lines, first and last, through the root's
        from qcompute.server.logs import json_formatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(json_formatter())
        log_config = None
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                timeout_keep_alive=settings.keep_alive_seconds, log_level="info",
                timeout_graceful_shutdown=10, log_config=log_config)


@click.command()
@_with_options
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for health.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              default=client_config_default, show_default="$QCOMPUTE_CONFIG or the SDK default",
              help="Where to write the client config.")
@click.option("--open", "open_console", is_flag=True,
              help="Open the web console (<API URL>/console) in a browser once up.")
def up(data_dir, port, s3_port, workers, executor, ray_address, timeout, config_path,
       open_console) -> None:
    """Start the cluster in the background and write the client config.

    Every port is checked before anything is set up; on any failure (a taken port, a server
    that dies while starting, Ctrl-C) no server and no pid file is left behind.

    With ``--executor ray`` instances run on the nodes of a Ray cluster: the server starts a
    Ray head (or joins the one at ``--ray-address``); add machines with ``qcompute node join``.
    """
    settings = _settings(data_dir, port, s3_port, workers, executor, ray_address)
    data = settings.data_dir
    pid = running_pid(data)
    if pid is not None:
        url = recorded_url(data) or settings.api_url
        health = _health(url)
        if _ours(health, data) and health.get("status") == "ok":
            click.echo(f"qcompute is already up at {url} (pid {pid})")
            _open(url, open_console)
            return
        raise click.ClickException(f"a server (pid {pid}) runs but is not healthy at {url}; "
                                   "see qcompute status, or qcompute down")
    _check_ports(settings)
    data.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "qcompute", "server", "--data-dir", str(data),
               "--port", str(settings.port), "--s3-port", str(settings.s3_port),
               "--workers", str(settings.max_concurrent_instances),
               "--executor", settings.executor]
    if settings.ray_address:
        command += ["--ray-address", settings.ray_address]
    with (data / SERVER_LOG_NAME).open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
    try:
        pid_file(data).write_text(f"{process.pid} {settings.api_url}\n")
        _wait_up(process, settings.api_url, data, timeout)
        target = Path(config_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / "qcompute.conf", target)
        target.chmod(0o600)
        remember(settings.api_url, data)
    except BaseException:  # a taken port, a crash, Ctrl-C: nothing stays behind
        _stop_group(process)
        pid_file(data).unlink(missing_ok=True)
        raise
    click.echo(f"qcompute is up at {settings.api_url} (pid {process.pid}); "
               f"client config written to {target}")
    _open(settings.api_url, open_console)


def _wait_up(process: subprocess.Popen, url: str, data: Path, timeout: float) -> None:
    """Until ``url`` answers healthy with this data dir's instance id (another cluster's
    /health never counts), the server exits, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        health = _health(url, timeout=3.0)
        if _ours(health, data) and health.get("status") == "ok":
            return
        if process.poll() is not None or time.monotonic() > deadline:
            why = (f"exited with code {process.returncode}" if process.poll() is not None
                   else f"was not healthy within {timeout:g} s")
            if health is not None and not _ours(health, data):
                why += f"; another cluster (instance {health.get('instance')}) answers at {url}"
            log = data / SERVER_LOG_NAME
            raise click.ClickException(f"the server {why}; last lines of {log}:\n{_tail(log)}")
        time.sleep(0.1)


def _stop_group(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the server's session (it stops SeaweedFS and its runners), SIGKILL to what
    is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(grace)
            if sig == signal.SIGTERM:
                os.killpg(process.pid, signal.SIGKILL)  # a straggler of the session, if any
            break
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
    process.poll()


def _open(api_url: str, wanted: bool) -> None:
    if not wanted:
        return
    url = f"{api_url}/console"
    if webbrowser.open(url):
        click.echo(f"opened {url}")
    else:
        click.echo(f"no browser found: open {url}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_find_option = click.option(
    "--data-dir", help="The cluster's data dir [$QCOMPUTE_SERVER_DATA_DIR, else the one of the "
                       "cluster URL in the client config (--profile), else the default].")


def _find(data_dir: Optional[str]) -> tuple[Path, str]:
    """The data dir to act on (see :func:`._local.locate`), for the global ``--profile``."""
    state = click.get_current_context().find_object(State)
    return locate(data_dir, state.profile if state else None)


@click.command()
@_find_option
@click.option("--timeout", default=30.0, show_default=True,
              help="Seconds to wait before killing the server.")
def down(data_dir, timeout) -> None:
    """Stop the background cluster (server and storage); leaves no process behind."""
    data, how = _find(data_dir)
    pid = running_pid(data)
    if pid is None:
        pid_file(data).unlink(missing_ok=True)
        click.echo(f"qcompute is not running (data dir {data}, from {how})")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_pid(data) == pid and time.monotonic() < deadline:
        time.sleep(0.1)
    if running_pid(data) == pid:
        os.killpg(pid, signal.SIGKILL)  # the server's session: SeaweedFS and runners with it
        click.echo(f"the server did not stop within {timeout:.0f} s: killed")
    pid_file(data).unlink(missing_ok=True)
    click.echo(f"qcompute stopped (pid {pid}, data dir {data})")


@click.command()
@_find_option
def status(data_dir) -> None:
    """Report each part's state and what runs where; exit code 1 unless every part is ok."""
    data, how = _find(data_dir)
    pid = running_pid(data)
    if pid is None:
        click.echo(f"qcompute is down (data dir {data}, from {how})")
        raise SystemExit(1)
    url = recorded_url(data) or "?"
    health = _health(url) if url != "?" else None
    if health is not None and not _ours(health, data):
        click.echo(f"server:    pid {pid}, API {url} (answered by another cluster, instance "
                   f"{health.get('instance')})")
        click.echo(f"data dir:  {data} (from {how})")
        raise SystemExit(1)
    healthy = health is not None and health.get("status") == "ok"
    state = "not answering" if health is None else "healthy" if healthy else "DEGRADED"
    click.echo(f"server:    pid {pid}, API {url} ({state})")
    if health:
        parts = health.get("parts", {})
        details = {"storage": health.get("storageProcess", health.get("storage")),
                   "executor": f"{health.get('executor')}, {health.get('running')} of "
                               f"{health.get('capacity')} slots busy"}
        for part in _PARTS:
            line = parts.get(part, "?")
            if part in details:
                line += f"; {details[part]}"
            click.echo(f"{part + ':':<10} {line}")
        for node in health.get("nodes") or ():
            click.echo(_node_line(node))
        isolation = health.get("isolation", "?")
        click.echo(f"instances: {isolation}" if health.get("sandboxed") else
                   f"instances: WARNING {isolation}: keep this cluster to one trusted user")
    click.echo(f"data dir:  {data} (from {how})")
    if not healthy:
        raise SystemExit(1)


@click.command()
@_find_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing lines as the server writes "
                                                   "them, until Ctrl-C.")
@click.option("-n", "--lines", type=click.IntRange(min=0), metavar="N",
              help="Print only the last N lines [all].")
@click.option("--access", is_flag=True,
              help="The access log (one line per HTTP request) instead of the server's.")
def logs(data_dir, follow, lines, access) -> None:
    """Print the server's log (``<data dir>/server.log``: its start, and one line per task,
    pool and job transition), or with ``--access`` its access log (``access.log``)."""
    from qcompute.server.logs import ACCESS_LOG_FILE

    data, how = _find(data_dir)
    path = data / (ACCESS_LOG_FILE if access else SERVER_LOG_NAME)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        what = "access log" if access else "server log"
        raise click.ClickException(f"no {what} at {path} (data dir from {how})") from None
    out = click.get_binary_stream("stdout")
    with handle:
        if lines is not None:  # reads the file through once, keeping its last lines
            out.write(b"".join(collections.deque(handle, maxlen=lines)))
        try:
            while True:
                chunk = handle.read(64 * 1024)
                if chunk:
                    out.write(chunk)
                    out.flush()
                elif not follow:
                    return
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:  # the way out of --follow
            return


def _node_line(node: dict) -> str:
    """``node:      vm (3f2a…) 2 cores, 23 GiB, labels zone=b; 1 of 2 slots free, 1 held by
    pools``."""
    name = node.get("hostname") or node.get("specificationKey", "?")
    if node.get("id"):
        name += f" ({node['id'][:12]})"
    labels = [f"{k}={v}" for k, v in (node.get("labels") or {}).items()] \
        if isinstance(node.get("labels"), dict) else list(node.get("labels") or ())
    labels += list(node.get("resources") or ())
    return (f"node:      {name} {node.get('cores')} cores, "
            f"{round((node.get('memoryMB') or 0) / 1024)} GiB"
            + (f", labels {', '.join(labels)}" if labels else "")
            + f"; {node.get('freeSlots', '?')} of {node.get('slots', '?')} slots free"
            + (f", {node['heldSlots']} held by pools" if node.get("heldSlots") else ""))
