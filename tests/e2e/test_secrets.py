"""Secrets on the real cluster: a granted secret reaches the command, and its output shows the
mask, never the value; exported credentials work from inside the payload."""
from __future__ import annotations

import secrets
import shlex
import sys

from qcompute import TaskState
from qcompute.options import SecretsAccessRights

from tests.helpers import sh


def test_a_granted_secret_is_usable_but_masked_in_output(conn):
    value = f"e2e-s3cr3t-{secrets.token_hex(8)}"
    # raw HTTP: the SDK's secrets client is not there yet
    conn._http.request("PUT", "/secrets-manager/data/e2e/password", json={"Value": value})
    try:
        task = conn.create_task("secret", "docker-batch")
        task.secrets_access_rights = SecretsAccessRights().add_secret_by_key("e2e/password")
        task.constants["DOCKER_CMD"] = sh(
            'S=$QARNOT_SECRET__E2E_PASSWORD; echo "whole: $S"; echo "length: ${#S}"; '
            # the value split across two output chunks, half a second apart
            "printf 'split: %.6s' \"$S\"; sleep 0.5; printf '%s\\n' \"${S#??????}\"; "
            'echo "err: $S" >&2')
        task.run()
        assert task.state == TaskState.SUCCESS, task.errors
        assert task.stdout() == f"whole: ***\nlength: {len(value)}\nsplit: ***\n"
        assert task.stderr() == "err: ***\n"
    finally:
        conn._http.request("DELETE", "/secrets-manager/data/e2e/password")


def test_exported_credentials_reach_the_api_and_the_token_is_masked(conn):
    task = conn.create_task("credentials", "docker-batch")
    task.allow_credentials_to_be_exported_to_task_environment()
    info = ("import json, os, urllib.request as r; print(json.load(r.urlopen(r.Request("
            "os.environ['QCOMPUTE_CLUSTER_URL'] + '/info', headers={'Authorization': "
            "os.environ['QARNOT_CLIENT_TOKEN']})))['email'])")
    task.constants["DOCKER_CMD"] = sh(f"echo token $QCOMPUTE_CLIENT_TOKEN; "
                                      f"{shlex.quote(sys.executable)} -c {shlex.quote(info)}")
    task.run()
    assert task.state == TaskState.SUCCESS, (task.errors, task.stderr())
    email = conn._http.get("/info")["email"]
    assert task.stdout() == f"token ***\n{email}\n"
