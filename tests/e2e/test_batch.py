"""Batch files against the real cluster: `qcompute validate` asks the cluster (profiles, secrets,
hardware), and `qcompute submit --wait` runs the sample DAG (samples/batch) with its failure
branch end to end."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from click.testing import CliRunner

from qcompute.cli import main
from qcompute.cli._common import ExitCode
from qcompute.states import TaskState

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "batch"


def _copy_sample(tmp_path: Path) -> Path:
    """The sample in a directory of its own, with buckets of its own (the cluster is shared)."""
    work = tmp_path / "batch"
    shutil.copytree(SAMPLE, work)
    toml = work / "pipeline.toml"
    toml.write_text(toml.read_text().replace('"batch-pipeline-', f'"b{uuid.uuid4().hex[:8]}-'))
    return work


def _run(cluster, *args: str):
    return CliRunner().invoke(main, list(args), env={"QCOMPUTE_CONFIG": str(cluster.config),
                                                     "QCOMPUTE_PROFILE": None})


def test_validate_lists_what_only_the_cluster_knows(cluster, conn, tmp_path):
    conn.secrets.create("batch-e2e/present", "x")
    batch = tmp_path / "job.toml"
    batch.write_text(
        'name = "checks"\n'                                   # 1
        '[[tasks]]\n'                                          # 2
        'name = "a"\n'                                         # 3
        'profile = "no-such-profile"\n'                        # 4
        'command = "true"\n'                                   # 5
        'secrets = ["batch-e2e/present", "batch-e2e/gone"]\n'  # 6
        'hardware = { min_cores = 100000 }\n'                  # 7
        '[[tasks]]\n'                                          # 8
        'name = "b"\n'                                         # 9
        'profile = "docker-batch"\n'                           # 10
        'command = "echo \'unbalanced"\n')                     # 11
    result = _run(cluster, "validate", str(batch))
    assert result.exit_code == ExitCode.USAGE, result.output
    lines = result.stderr.splitlines()
    assert f"{batch}:4: tasks[0].profile: unknown profile 'no-such-profile'; the cluster has: " \
           "docker-batch" in lines
    assert f"{batch}:6: tasks[0].secrets[1]: the cluster has no secret 'batch-e2e/gone'" in lines
    assert not any("batch-e2e/present" in line for line in lines)
    assert any(line.startswith(f"{batch}:7: tasks[0].hardware: no node of the cluster satisfies "
                               "MinimumCoreHardwareConstraint(coreCount=100000); it offers: ")
               for line in lines), lines
    assert any(line.startswith(f"{batch}:11: tasks[1].command: the command cannot be split")
               for line in lines), lines
    assert f"Error: {batch}: 4 problems" in lines


def test_validate_passes_a_good_file(cluster):
    result = _run(cluster, "validate", str(SAMPLE / "pipeline.toml"))
    assert result.exit_code == 0, result.output
    assert f"ok (5 tasks, checked against {cluster.url}" in result.stdout


def test_submit_wait_runs_the_sample_dag_with_its_failure_branch(cluster, conn, tmp_path):
    work = _copy_sample(tmp_path)
    result = _run(cluster, "submit", str(work / "pipeline.toml"), "--wait", "--no-progress")

    # check fails (a negative number): merge, which needs it, is cancelled; report runs.
    assert result.exit_code == ExitCode.FAILED, result.output
    assert "Error: 1 of 5 tasks failed: check (skipped, their dependencies unmet: merge)" \
        in result.stderr
    out = result.stdout
    assert "prepare | prepared 4 numbers" in out
    assert "report  | check failed: fix input/numbers.txt" in out
    assert "check   | negative numbers found" in result.stderr
    summary = dict(line.split(None, 1) for line in out.split("\n\n")[-1].splitlines()
                   if line and not line.startswith("results"))
    assert summary["prepare"] == summary["square"] == summary["report"] == "Success"
    assert summary["check"].startswith("Failure")
    assert summary["merge"].startswith("Cancelled") and "needed success" in summary["merge"]

    output = work / "output"
    assert f"results downloaded to {output}" in out
    assert (output / "prepared.txt").read_text() == "-3\n1\n4\n7\n"
    assert (output / "squares.txt").read_text() == "9\n1\n16\n49\n"
    assert (output / "report.txt").read_text() == "check failed: fix input/numbers.txt\n"
    assert not (output / "table.txt").exists()  # merge never ran

    job_uuid = out.split()[1]
    tasks = {t.name: t for t in conn.retrieve_job(job_uuid).tasks()}
    merge = conn.retrieve_task(tasks["merge"].uuid)
    assert merge.state == TaskState.CANCELLED
    assert merge.completed_instances == [] or all(
        i.state != "Success" for i in merge.completed_instances)
    assert conn.retrieve_job(job_uuid).use_dependencies is True


def test_submit_wait_without_a_failure_skips_the_failure_branch_and_exits_0(cluster, conn,
                                                                             tmp_path):
    work = _copy_sample(tmp_path)
    (work / "input" / "numbers.txt").write_text("4\n2\n")
    result = _run(cluster, "submit", str(work / "pipeline.toml"), "--wait", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "merge   | 2\t4" in result.stdout and "merge   | 4\t16" in result.stdout
    assert "every task succeeded (skipped, their dependencies unmet: report)" in result.stdout
    assert (work / "output" / "table.txt").read_text() == "2\t4\n4\t16\n"
    [merge_uuid] = [line.split()[1] for line in result.stdout.splitlines()
                    if line.startswith("  merge ")]
    # --wait read with offsets: the task's shared "fresh" cursor was left where it was
    assert conn.retrieve_task(merge_uuid).fresh_stdout() == "2\t4\n4\t16\n"


def test_submit_creates_the_pool_and_maps_every_option(cluster, conn, tmp_path):
    conn.secrets.create("batch-e2e/token", "s3cr3t")
    batch = tmp_path / "pool.toml"
    batch.write_text("""name = "in-a-pool"
tags = ["batch-e2e"]
[pool]
name = "batch-pool"
profile = "docker-batch"
constants = { GREETING = "hello" }
[[tasks]]
name = "greet"
range = "3-4"
command = "echo ${GREETING} from ${INSTANCE_ID}"
labels = { team = "batch" }
secrets = ["batch-e2e/token"]
retries = { max_total = 2 }
hardware = { min_cores = 1 }
""")
    result = _run(cluster, "submit", str(batch), "--wait")
    assert result.exit_code == 0, result.output
    assert "greet | hello from 3" in result.stdout and "greet | hello from 4" in result.stdout
    assert "every task succeeded" in result.stdout

    job = conn.retrieve_job(result.stdout.split()[1])
    assert job.tags == ["batch-e2e"] and job.use_dependencies
    task = conn.retrieve_task(job.tasks()[0].uuid)
    assert task.advanced_range == "3-4" and task.labels == {"team": "batch"}
    assert task.secrets_access_rights.by_secret == ["batch-e2e/token"]
    assert task.retry_settings.max_total_retries == 2
    assert [c.to_json() for c in task.hardware_constraints] == [
        {"discriminator": "MinimumCoreHardwareConstraint", "coreCount": 1}]
    pool = conn.retrieve_pool(task.pool_uuid)
    assert pool.name == "batch-pool"
    assert pool.state in ("Closing", "Closed")  # closed by submit --wait when the job ended
