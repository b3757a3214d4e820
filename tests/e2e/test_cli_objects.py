"""The object commands (task, bucket, pool, job), login and completion, through click's CliRunner
against the real embedded cluster, with the exit codes scripts rely on."""
from __future__ import annotations

import json
import os
import stat
import uuid

import pytest
from click.testing import CliRunner

from qcompute.cli import main
from qcompute.cli._common import ExitCode
from qcompute.config import load_config

from .conftest import free_port


@pytest.fixture
def cli(cluster, monkeypatch):
    """``cli(*args)`` runs ``qcompute args`` as the cluster's owner; returns the click Result."""
    for name in list(os.environ):
        if name.startswith(("QCOMPUTE_CLIENT", "QCOMPUTE_CLUSTER", "QCOMPUTE_STORAGE",
                            "QCOMPUTE_PROFILE")):
            monkeypatch.delenv(name)
    runner = CliRunner()

    def run(*args: str, env: dict | None = None):
        return runner.invoke(main, list(args), env={"QCOMPUTE_CONFIG": str(cluster.config),
                                                    **(env or {})}, catch_exceptions=False)
    return run


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _submit(conn, name: str, command: str, count: int = 1, tags=()):
    task = conn.create_task(name, "docker-batch", count)
    task.constants["DOCKER_CMD"] = command
    task.tags = list(tags)
    return task.submit()


def test_task_list_show_logs_wait_delete(cli, conn):
    tag = f"cli-{uuid.uuid4().hex[:8]}"
    task = _submit(conn, "cli ok", "sh -c 'echo out ${INSTANCE_ID}; echo err >&2'", 2, [tag])
    waited = cli("task", "wait", task.uuid, "--timeout", "120")
    assert waited.exit_code == ExitCode.OK, waited.output
    assert waited.stdout == f"{task.uuid} Success\n"

    listed = _json(cli("task", "list", "--tag", tag, "-o", "json"))
    assert [(d["uuid"], d["state"]) for d in listed] == [(task.uuid, "Success")]
    assert _json(cli("task", "list", "--tag", tag, "--state", "failure", "-o", "json")) == []
    table = cli("task", "list", "--tag", tag)
    assert table.stdout.split("\n")[0].split() == ["UUID", "STATE", "CREATED", "NAME"]
    assert task.uuid in table.stdout and "cli ok" in table.stdout

    shown = _json(cli("task", "show", task.uuid, "-o", "json"))
    assert shown["uuid"] == task.uuid and shown["state"] == "Success"
    assert sorted(c["instanceId"] for c in shown["completedInstances"]) == [0, 1]
    human = cli("task", "show", task.uuid).stdout
    assert "state:     Success" in human and "succeeded: 0-1" in human
    assert "INSTANCE  STATE" in human and human.count("Success") >= 3

    logs = cli("task", "logs", task.uuid)
    assert sorted(logs.stdout.splitlines()) == ["out 0", "out 1"]
    assert cli("task", "logs", task.uuid, "--instance", "1").stdout == "out 1\n"
    errors = cli("task", "logs", task.uuid, "--stderr", "--instance", "0")
    assert (errors.stdout, errors.stderr) == ("", "err\n")

    deleted = cli("task", "delete", task.uuid)
    assert deleted.exit_code == 0 and f"{task.uuid} deleted" in deleted.stdout
    gone = cli("task", "show", task.uuid)
    assert gone.exit_code == ExitCode.NOT_FOUND and "Error:" in gone.stderr


def test_task_wait_exit_codes_failure_timeout_and_abort(cli, conn):
    failed = _submit(conn, "cli fails", "sh -c 'exit 3'")
    result = cli("task", "wait", failed.uuid, "--timeout", "120")
    assert result.exit_code == ExitCode.FAILED, result.output
    assert f"task {failed.uuid} ended in Failure" in result.stderr

    slow = _submit(conn, "cli slow", "sleep 60")
    timed_out = cli("task", "wait", slow.uuid, "--timeout", "0.5")
    assert timed_out.exit_code == ExitCode.TIMEOUT
    assert "after 0.5 s" in timed_out.stderr
    aborted = cli("task", "abort", slow.uuid)
    assert aborted.exit_code == 0 and aborted.stdout.startswith(slow.uuid)
    cancelled = cli("task", "wait", slow.uuid, "--timeout", "60", "-o", "json")
    assert cancelled.exit_code == ExitCode.FAILED
    assert json.loads(cancelled.stdout)["state"] == "Cancelled"


def test_not_found_is_exit_code_3_for_every_object(cli):
    missing = str(uuid.uuid4())
    for args in (("task", "show", missing), ("task", "wait", missing), ("pool", "show", missing),
                 ("job", "show", missing), ("bucket", "ls", f"no-such-{missing[:8]}")):
        result = cli(*args)
        assert result.exit_code == ExitCode.NOT_FOUND, (args, result.output)
        assert result.stderr.startswith("Error: "), result.stderr


def test_bucket_put_ls_get_sync_rm_round_trip(cli, tmp_path):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.txt").write_text("beta\n")
    one = tmp_path / "one.bin"
    one.write_bytes(os.urandom(3000))

    assert cli("bucket", "put", str(one), f"{name}/single/").exit_code == 0
    put = cli("bucket", "put", str(src), f"{name}/tree", "--progress")
    assert put.exit_code == 0 and "uploaded 2 file(s)" in put.stdout
    assert "100%" in put.stderr  # the tqdm bar of the transfer

    assert {"name": name} in _json(cli("bucket", "ls", "-o", "json"))
    objects = _json(cli("bucket", "ls", name, "-o", "json"))
    assert sorted(o["key"] for o in objects) == ["single/one.bin", "tree/a.txt", "tree/sub/b.txt"]
    assert {o["key"]: o["size"] for o in objects}["single/one.bin"] == 3000
    assert [o["key"] for o in _json(cli("bucket", "ls", name, "tree/sub", "-o", "json"))] == [
        "tree/sub/b.txt"]
    assert "tree/a.txt" in cli("bucket", "ls", name).stdout

    got = tmp_path / "got"
    assert cli("bucket", "get", f"{name}/single/one.bin", str(got / "x.bin")).exit_code == 0
    assert (got / "x.bin").read_bytes() == one.read_bytes()
    assert cli("bucket", "get", f"{name}/tree/", str(got / "tree")).exit_code == 0
    assert (got / "tree" / "sub" / "b.txt").read_text() == "beta\n"
    assert cli("bucket", "get", name, str(got / "all")).exit_code == 0
    assert (got / "all" / "tree" / "a.txt").read_text() == "alpha\n"

    # sync: uploads what changed; without --delete it keeps objects that have no local file
    (src / "a.txt").write_text("alpha 2\n")
    (src / "sub" / "b.txt").unlink()
    assert cli("bucket", "sync", str(src), f"{name}/tree").exit_code == 0
    keys = {o["key"]: o["size"] for o in _json(cli("bucket", "ls", name, "tree", "-o", "json"))}
    assert keys == {"tree/a.txt": 8, "tree/sub/b.txt": 5}
    mirrored = cli("bucket", "sync", str(src), f"{name}/tree", "--delete")
    assert mirrored.exit_code == 0 and "(mirrored)" in mirrored.stdout
    assert [o["key"] for o in _json(cli("bucket", "ls", name, "tree", "-o", "json"))] == [
        "tree/a.txt"]

    bad_name = cli("bucket", "put", str(one), "a_")
    assert bad_name.exit_code == ExitCode.USAGE and "not a valid bucket name" in bad_name.stderr
    refused = cli("bucket", "rm", f"{name}/tree/")
    assert refused.exit_code == ExitCode.USAGE and "add -r" in refused.stderr
    assert cli("bucket", "rm", f"{name}/single/one.bin").exit_code == 0
    assert cli("bucket", "rm", "-r", f"{name}/tree/").exit_code == 0
    assert _json(cli("bucket", "ls", name, "-o", "json")) == []
    assert cli("bucket", "rm", "-r", name).exit_code == 0
    assert cli("bucket", "ls", name).exit_code == ExitCode.NOT_FOUND


def test_pool_and_job_commands(cli, conn):
    tag = f"cli-{uuid.uuid4().hex[:8]}"
    pool = conn.create_pool("cli pool", "docker-batch", 1)
    pool.tags = [tag]
    pool.submit()
    listed = _json(cli("pool", "list", "--tag", tag, "-o", "json"))
    assert [d["uuid"] for d in listed] == [pool.uuid]
    assert _json(cli("pool", "show", pool.uuid, "-o", "json"))["name"] == "cli pool"
    assert "profile: docker-batch" in cli("pool", "show", pool.uuid).stdout
    closed = cli("pool", "close", pool.uuid)
    assert closed.exit_code == 0 and closed.stdout.startswith(pool.uuid)

    job = conn.create_job("cli job")
    job.tags = [tag]
    job.submit()
    member = conn.create_task("cli member", "docker-batch", job=job)
    member.constants["DOCKER_CMD"] = "sleep 60"
    member.submit()
    assert [d["uuid"] for d in _json(cli("job", "list", "--tag", tag, "-o", "json"))] == [job.uuid]
    shown = _json(cli("job", "show", job.uuid, "-o", "json"))
    assert shown["state"] == "Active" and [t["uuid"] for t in shown["tasks"]] == [member.uuid]
    assert member.uuid in cli("job", "show", job.uuid).stdout
    terminated = cli("job", "terminate", job.uuid)
    assert terminated.exit_code == 0, terminated.output
    assert member.wait(timeout=60) and member.state == "Cancelled"
    assert cli("job", "delete", job.uuid, "--force").exit_code == 0
    assert cli("pool", "delete", pool.uuid).exit_code == 0


def test_login_writes_a_profile_used_by_profile_then_refuses_bad_tokens(cli, cluster, tmp_path):
    owner = load_config(str(cluster.config))
    config = tmp_path / "client.conf"
    config.write_text("; my settings\n[profile other]\ncluster_url = http://other.test\n"
                      "client_token = other-token\n")
    done = cli("login", cluster.url, "--token", owner.client_token, "--profile", "e2e",
               "--config", str(config))
    assert done.exit_code == 0, done.output
    assert "as owner@" in done.stdout and "[profile e2e]" in done.stdout
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    text = config.read_text()
    assert "; my settings" in text and "other-token" in text  # the rest of the file is kept
    assert load_config(str(config), profile="e2e", environ={}).cluster_url == cluster.url

    env = {"QCOMPUTE_CONFIG": str(config)}
    listed = cli("--profile", "e2e", "bucket", "ls", "-o", "json", env=env)
    assert listed.exit_code == 0 and isinstance(json.loads(listed.stdout), list)
    by_env = cli("task", "list", "-o", "json", env={**env, "QCOMPUTE_PROFILE": "e2e"})
    assert by_env.exit_code == 0, by_env.output
    missing = cli("--profile", "e2f", "task", "list", env=env)
    assert missing.exit_code == ExitCode.USAGE
    assert "did you mean 'e2e'" in missing.stderr and "other, e2e" in missing.stderr

    before = config.read_text()
    refused = cli("login", cluster.url, "--token", "not-a-token", "--profile", "bad",
                  "--config", str(config))
    assert refused.exit_code == ExitCode.UNAUTHORIZED and "refused this token" in refused.stderr
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = cli("login", nowhere, "--token", "t", "--config", str(config))
    assert unreachable.exit_code == ExitCode.UNREACHABLE
    assert f"cannot reach {nowhere}" in unreachable.stderr
    assert config.read_text() == before  # neither wrote anything


def test_login_prompts_for_the_token_and_writes_the_plain_sections(cli, cluster, tmp_path):
    token = load_config(str(cluster.config)).client_token
    config = tmp_path / "fresh" / "client.conf"
    runner = CliRunner()
    done = runner.invoke(main, ["login", cluster.url, "--config", str(config)],
                         input=token + "\n", env={"QCOMPUTE_CONFIG": str(config)})
    assert done.exit_code == 0, done.output
    assert token not in done.output  # hidden input
    conf = load_config(str(config), environ={})
    assert (conf.cluster_url, conf.client_token) == (cluster.url, token)


def test_completion_scripts_and_uuid_completion(cli, conn, cluster):
    for shell, marker in (("bash", "complete -o nosort -F"), ("zsh", "#compdef qcompute"),
                          ("fish", "complete --no-files --command qcompute")):
        script = cli("completion", shell)
        assert script.exit_code == 0 and marker in script.stdout, script.stdout[:200]
        assert "_QCOMPUTE_COMPLETE" in script.stdout
    task = _submit(conn, "cli complete", "true")
    runner = CliRunner()
    env = {"QCOMPUTE_CONFIG": str(cluster.config), "_QCOMPUTE_COMPLETE": "bash_complete",
           "COMP_WORDS": f"qcompute task show {task.uuid[:6]}", "COMP_CWORD": "3"}
    done = runner.invoke(main, [], env=env, prog_name="qcompute")
    assert f"plain,{task.uuid}" in done.stdout.splitlines()
    env["QCOMPUTE_CONFIG"] = "/nonexistent/qcompute.conf"  # no cluster: quietly nothing
    quiet = runner.invoke(main, [], env=env, prog_name="qcompute")
    assert quiet.stdout.strip() == "" and quiet.exit_code == 0


def test_task_explain_names_the_pending_parent_and_rerun_failed_reruns_the_failures(cli, conn):
    job = conn.create_job("cli explain", use_dependencies=True).submit()
    parent = conn.create_task("cli parent", "docker-batch", 1, job=job)
    parent.constants["DOCKER_CMD"] = "sleep 60"
    parent.submit()
    child = conn.create_task("cli child", "docker-batch", 1, job=job)
    child.constants["DOCKER_CMD"] = "true"
    child.set_task_dependencies_from_tasks([parent])
    child.submit()
    explained = _json(cli("task", "explain", child.uuid, "-o", "json"))
    assert explained["uuid"] == child.uuid and explained["state"] == "Submitted"
    [waiting] = [r for r in explained["reasons"] if r["code"] == "dependency"]
    assert [p["uuid"] for p in waiting["parents"]] == [parent.uuid]
    human = cli("task", "explain", child.uuid)
    assert human.exit_code == 0 and human.stdout.startswith(f"task {child.uuid} is ")
    assert parent.uuid in human.stdout or "cli parent" in human.stdout
    job.terminate()

    odd_fails = _submit(conn, "cli odd", "sh -c 'exit $((${INSTANCE_ID} % 2))'", 4)
    assert cli("task", "wait", odd_fails.uuid, "--timeout", "120").exit_code == ExitCode.FAILED
    rerun = _json(cli("task", "rerun-failed", odd_fails.uuid, "-o", "json"))
    assert rerun["advancedRanges"] == "1,3" and rerun["uuid"] != odd_fails.uuid
    assert cli("task", "wait", rerun["uuid"], "--timeout", "120").exit_code == ExitCode.FAILED
    ok = _submit(conn, "cli ok", "true")
    assert cli("task", "wait", ok.uuid, "--timeout", "120").exit_code == ExitCode.OK
    refused = cli("task", "rerun-failed", ok.uuid)
    assert refused.exit_code == ExitCode.FAILED and "Error:" in refused.stderr


def test_task_logs_follow_prints_every_line_until_the_task_ends(cli, conn):
    task = _submit(conn, "cli follow", "sh -c 'echo first; sleep 1; echo second; echo bad >&2'")
    followed = cli("task", "logs", "-f", task.uuid)
    assert followed.exit_code == 0, followed.output
    assert followed.stdout == "first\nsecond\n"
    task.update(flushcache=True)
    assert str(task.state.value) == "Success"
    errors = cli("task", "logs", "--follow", "--stderr", task.uuid)
    assert (errors.stdout, errors.stderr) == ("", "bad\n")
