"""A SeaweedFS cluster started as separate ``weed`` processes (master, volume, filer, s3 with
its embedded IAM API), standing in for an S3 store run by someone else (docs/external-s3.rst).

Loopback (or ``ip``) only, free ports (each gRPC port is its HTTP port + 10000), one static admin identity
(a store without identities lets anyone in), IAM writes on; stopped by PID, SIGTERM then
SIGKILL (the filer ignores SIGTERM for good: weed 4.48)."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from qcompute.server.storage.seaweed import _find_weed, pick_free_port

__all__ = ["SeaweedCluster"]


class SeaweedCluster:
    """``start()`` runs the four processes under ``root``; ``url``, ``admin_key``,
    ``admin_secret`` describe the store; ``stop()`` ends them."""

    def __init__(self, root: Path, ip: str = "127.0.0.1") -> None:
        self.root = Path(root)
        self.ip = ip
        self.admin_key = "storeadmin" + secrets.token_hex(4)
        self.admin_secret = secrets.token_urlsafe(24)
        self.ports: dict[str, int] = {}
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.ports['s3']}"

    def start(self, timeout: float = 60) -> None:
        weed = _find_weed()
        for name in ("master", "volume", "filer", "s3"):
            self.ports[name] = pick_free_port(exclude=set(self.ports.values()))
        p, root = self.ports, self.root
        for name in ("master", "volume", "filer", "s3"):
            (root / name).mkdir(parents=True, exist_ok=True)
        config = root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "storeadmin",
            "credentials": [{"accessKey": self.admin_key, "secretKey": self.admin_secret}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        ip = [f"-ip={self.ip}", f"-ip.bind={self.ip}"]
        master = f"{self.ip}:{p['master']}"
        commands = {
            "master": ["master", *ip, f"-port={p['master']}", f"-mdir={root / 'master'}",
                       "-volumeSizeLimitMB=64", "-telemetry=false"],
            "volume": ["volume", *ip, f"-port={p['volume']}", f"-dir={root / 'volume'}",
                       f"-master={master}", "-max=200", "-preStopSeconds=0"],
            "filer": ["filer", *ip, f"-port={p['filer']}", f"-master={master}",
                      f"-defaultStoreDir={root / 'filer'}"],
            "s3": ["s3", f"-ip.bind={self.ip}", f"-port={p['s3']}",
                   f"-filer={self.ip}:{p['filer']}", f"-config={config}",
                   "-iam.readOnly=false", "-port.iceberg=0", "-port.lance=0"],
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["GOMEMLIMIT"] = "256MiB"
        for name, argv in commands.items():
            with open(root / f"{name}.log", "ab") as log:
                self.procs.append(subprocess.Popen(
                    [weed, f"-logdir={root / name}", *argv], cwd=root / name, env=env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True))
        try:
            self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise

    def client(self, service: str = "s3", key: Optional[str] = None,
               secret: Optional[str] = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            service, endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=key or self.admin_key,
            aws_secret_access_key=secret or self.admin_secret,
            config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 1}))

    def _wait_ready(self, deadline: float) -> None:
        """A put + get with the admin keys (volumes are assigned once all four are up)."""
        client, last = self.client(), None
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"weed exited while starting: {self.log_tail()}")
            try:
                try:
                    client.create_bucket(Bucket="ready-probe")
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                client.put_object(Bucket="ready-probe", Key="k", Body=b"x")
                client.get_object(Bucket="ready-probe", Key="k")["Body"].read()
                client.delete_object(Bucket="ready-probe", Key="k")
                client.delete_bucket(Bucket="ready-probe")
                return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"the SeaweedFS cluster did not become ready ({last}): "
                           f"{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(f"--- {name}:\n" + (self.root / f"{name}.log").read_text(
            errors="replace")[-1500:] for name in ("master", "volume", "filer", "s3")
            if (self.root / f"{name}.log").exists())

    def stop(self, timeout: float = 3) -> None:
        """SIGTERM to each (s3 first), then SIGKILL what is left after ``timeout`` s, by PID.
        The filer's graceful stop waits for the master's metadata stream: measured here, it
        never ends by itself, so a short timeout (the data is thrown away)."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
