"""What this host keeps of the clusters ``qcompute up`` starts: the pid file and instance id in
each data dir, and a list of the clusters by API URL, by which ``status``, ``down`` and ``logs``
find the cluster the client config names."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import platformdirs

from qcompute.config import ConfigError, load_config

INSTANCE_ID_NAME = "instance-id"  # written by the server: qcompute.server.bootstrap
SERVER_LOG_NAME = "server.log"


def pid_file(data_dir: Path) -> Path:
    return data_dir / "server.pid"


def running_pid(data_dir: Path) -> Optional[int]:
    """The pid in the pid file, if that process lives and is a qcompute server (not another
    process that got the pid of a server that died)."""
    try:
        pid = int(pid_file(data_dir).read_text().split()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"server" in argv and any(b"qcompute" in arg for arg in argv) else None


def recorded_url(data_dir: Path) -> Optional[str]:
    try:
        parts = pid_file(data_dir).read_text().split()
    except OSError:
        return None
    return parts[1] if len(parts) > 1 else None


def instance_id(data_dir: Path) -> Optional[str]:
    try:
        return (data_dir / INSTANCE_ID_NAME).read_text().strip() or None
    except OSError:
        return None


def _registry() -> Path:
    return Path(platformdirs.user_state_dir("qcompute")) / "clusters.json"


def _known() -> dict[str, str]:
    try:
        known = json.loads(_registry().read_text())
        return known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        return {}


def remember(url: str, data_dir: Path) -> None:
    """Record that the cluster at ``url`` keeps its state in ``data_dir`` (the last ``up`` on
    a URL wins)."""
    known = {**_known(), url.rstrip("/"): str(data_dir)}
    path = _registry()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    os.replace(tmp, path)


def locate(data_dir: Optional[str], profile: Optional[str]) -> tuple[Path, str]:
    """The data dir of the cluster to act on, and how it was found: ``--data-dir``, else
    ``$QCOMPUTE_SERVER_DATA_DIR``, else the cluster URL of the client config (the active
    profile's) when ``qcompute up`` started it on this host, else the default data dir."""
    if data_dir:
        return Path(data_dir).expanduser().resolve(), "--data-dir"
    if os.environ.get("QCOMPUTE_SERVER_DATA_DIR"):
        return Path(os.environ["QCOMPUTE_SERVER_DATA_DIR"]).expanduser().resolve(), \
            "$QCOMPUTE_SERVER_DATA_DIR"
    try:
        url: Optional[str] = load_config(profile=profile).cluster_url.rstrip("/")
    except ConfigError:
        url = None
    if url and url in _known():
        return Path(_known()[url]), f"the client config's cluster {url}"
    return Path(platformdirs.user_data_dir("qcompute")), (
        "the default data dir" + (f"; the client config's cluster {url} was not started by "
                                  "qcompute up on this host" if url else ""))
