"""Batch files offline (the models and every local check, with lines and key paths), the cluster
checks with HTTP mocked, the published JSON Schema, and the mapping onto the SDK's objects."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import qcompute
from qcompute import BatchError, MinimumCoreHardware, NoGpuHardware
from qcompute.batch import check_file
from qcompute.batch.checks import find_cycles
from qcompute.batch.locate import Locator
from qcompute.batch.models import schema
from qcompute.batch.submit import _dependencies, levels
from qcompute.cli import main
from qcompute.cli._common import ExitCode

from .helpers import API

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "batch" / "pipeline.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(BatchError) as caught:
        qcompute.load_batch(path)
    assert caught.value.path == str(path)
    return [p.render() for p in caught.value.problems]


# -- valid files -----------------------------------------------------------------------------

def test_the_sample_loads_and_maps_onto_the_sdk():
    batch = qcompute.load_batch(SAMPLE)
    assert batch.name == "pipeline" and [t.name for t in batch.tasks] == [
        "prepare", "square", "check", "merge", "report"]
    assert batch.base_dir == SAMPLE.parent
    assert batch.resources["input"].prefix == "input/"
    assert batch.tasks[0].all_constants["DOCKER_CMD"].startswith("sh -c 'sort -n")
    assert [[t.name for t in level] for level in levels(batch)] == [
        ["prepare"], ["square", "check"], ["merge", "report"]]
    report = batch.tasks[4]
    assert _dependencies(report, {"check": "u-check"}).to_json() == {"advancedDependsOn": [
        {"taskUuid": "u-check", "taskFinalStateCondition": ["failure"]}]}
    merge = batch.tasks[3]
    assert _dependencies(merge, {"square": "u1", "check": "u2"}).to_json() == {
        "dependsOn": ["u1", "u2"]}


def test_every_option_of_a_task(tmp_path):
    (tmp_path / "in").mkdir()
    path = write(tmp_path, """
name = "all"
tags = ["t"]
max_wall_time = "1.02:00:00"
[pool]
name = "p"
profile = "docker-batch"
instances = 2
[resources.data]
bucket = "bucket-in"
path = "in"
[results]
bucket = "bucket-out"
download_to = "out"
[[tasks]]
name = "a"
range = "0-3,7"
command = "echo ${INSTANCE_ID}"
constants = { X = "1" }
labels = { team = "x" }
resources = ["data"]
secrets = ["db/pwd"]
secret_prefixes = ["shared/"]
retries = { max_total = 3, max_per_instance = 1 }
hardware = { min_cores = 2, gpu = false }
results_whitelist = ".*\\\\.txt"
max_time_queue_seconds = 60
[[tasks]]
name = "b"
depends_on = ["a", { task = "a", when = ["any"] }]
""")
    batch = qcompute.load_batch(path)
    a, b = batch.tasks
    assert a.profile is None and batch.pool.instances == 2 and a.range == "0-3,7"
    assert a.all_constants == {"X": "1", "DOCKER_CMD": "echo ${INSTANCE_ID}"}
    assert a.retries.max_total == 3 and a.results_whitelist == ".*\\.txt"
    from qcompute.batch.checks import hardware_constraints

    assert hardware_constraints(a.hardware) == [MinimumCoreHardware(2), NoGpuHardware()]
    assert [d.when for d in b.depends_on] == [["success"], ["any"]]


# -- every class of invalid file -------------------------------------------------------------

def test_toml_syntax_error_has_its_line(tmp_path):
    path = write(tmp_path, 'name = "x"\n[[tasks]\nname = "a"\n')
    [problem] = problems_of(path)
    assert problem.startswith("2: not valid TOML")


def test_unknown_keys_wrong_types_and_missing_keys_are_all_listed(tmp_path):
    path = write(tmp_path, """name = "x"
[[tasks]]
name = "a"
profile = "docker-batch"
comand = "echo typo"
instances = 0
[[tasks]]
profile = "docker-batch"
depends_on = [{ task = "a", when = ["maybe"] }]
""")
    assert problems_of(path) == [
        "5: tasks[0].comand: unknown key (a typo?); see the schema: qcompute validate --schema",
        "6: tasks[0].instances: Input should be greater than or equal to 1",
        "7: tasks[1].name: required, missing",
        "9: tasks[1].depends_on[0].when[0]: Input should be 'success', 'failure', "
        "'cancelled' or 'any'",
    ]


def test_local_checks_are_all_listed_at_once_with_lines(tmp_path):
    path = write(tmp_path, """name = "x"
[resources.data]
bucket = "ab"
path = "missing-dir"
[results]
bucket = "Bad_Name!"
[[tasks]]
name = "a"
profile = "docker-batch"
depends_on = ["c"]
resources = ["data", "nope"]
[[tasks]]
name = "b"
profile = "docker-batch"
command = "echo 'unbalanced"
depends_on = ["a", "ghost"]
[[tasks]]
name = "c"
profile = "docker-batch"
depends_on = ["b"]
[[tasks]]
name = "a"
command = "true"
""")
    found = problems_of(path)
    assert [p.split(":")[0] for p in found] == ["3", "4", "6", "10", "11", "15", "16", "21",
                                                "22"]
    assert found[5].startswith("15: tasks[1].command: the command cannot be split into words "
                               "(No closing quotation)")
    assert found[:5] + found[6:] == [
        "3: resources.data.bucket: 'ab' is not a valid bucket name: it has 2 characters, a "
        "bucket name has 3 to 63",
        f"4: resources.data.path: the local directory {str(tmp_path / 'missing-dir')!r} "
        "does not exist",
        "6: results.bucket: 'Bad_Name!' is not a valid bucket name: '!' is not allowed: use "
        "letters, digits, '.', '-' and '_'",
        "10: tasks[0].depends_on: dependency cycle: a -> c -> b -> a",
        "11: tasks[0].resources[1]: no [resources.nope] table (defined: data)",
        "16: tasks[1].depends_on[1]: no task is named 'ghost'",
        "21: tasks[3].profile: no profile: name one, or define [pool] for the task to run in",
        "22: tasks[3].name: duplicate task name 'a' (also tasks[0])",
    ]


def test_self_dependency_is_a_cycle_and_both_counts_are_refused(tmp_path):
    path = write(tmp_path, """name = "x"
[[tasks]]
name = "a"
profile = "p"
instances = 2
range = "0-1"
[[tasks]]
name = "b"
profile = "p"
depends_on = ["b"]
command = "x"
constants = { DOCKER_CMD = "y" }
""")
    assert problems_of(path) == [
        "2: tasks[0]: give instances or range, not both",
        "7: tasks[1]: give command or constants.DOCKER_CMD, not both",
    ]
    path.write_text(path.read_text().replace('range = "0-1"\n', "").replace(
        'command = "x"\n', ""))
    assert problems_of(path) == ["9: tasks[1].depends_on: dependency cycle: b -> b"]


def test_results_bucket_mirrored_without_prefix_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    path = write(tmp_path, """name = "x"
[resources.in]
bucket = "shared-bucket"
path = "in"
[results]
bucket = "shared-bucket"
[[tasks]]
name = "a"
profile = "p"
""")
    assert problems_of(path) == [
        "2: resources.in.prefix: this directory is mirrored into the results bucket: give it "
        "a prefix, or the upload would delete the results"]


def test_find_cycles_names_each_cycle_once():
    assert find_cycles({"a": ["b"], "b": ["a"], "c": ["c"], "d": ["a"]}) == [
        ["a", "b", "a"], ["c", "c"]]
    assert find_cycles({"a": [], "b": ["a"]}) == []


def test_locator_follows_arrays_of_tables_and_skips_multiline_strings():
    locator = Locator('name = "x"\n[[tasks]]\ncommand = """\nfake = 1\n"""\n[tasks.retries]\n'
                      "max_total = 1\n[[tasks]]\nname = 'b'\n")
    assert locator.line(("tasks", 0, "retries", "max_total")) == 7
    assert locator.line(("tasks", 1, "name")) == 9
    assert locator.line(("tasks", 0, "fake")) == 2  # inside the string: its table's line
    assert locator.line(("nowhere",)) is None


# -- against the cluster (HTTP mocked) -------------------------------------------------------

CLUSTER_FILE = """name = "x"
[resources.data]
bucket = "alice-1-in"
[results]
bucket = "someone-else"
[[tasks]]
name = "a"
profile = "docker-batch"
secrets = ["db/pwd", "db/gone", "top"]
hardware = { min_cores = 2, max_ram_mb = 100, gpu = true }
[[tasks]]
name = "b"
profile = "mystery"
hardware = { specific = "2C-8G-AMD-EPYC", min_ram_gb_per_core = 4 }
"""
OFFERED = [
    {"discriminator": "SpecificHardwareConstraint", "specificationKey": "2c-8g-amd-epyc"},
    {"discriminator": "CpuModelHardwareConstraint", "cpuModel": "AMD EPYC"},
    {"discriminator": "MinimumCoreHardwareConstraint", "coreCount": 2},
    {"discriminator": "MinimumRamHardwareConstraint", "minimumMemoryMB": 8192},
    {"discriminator": "MinimumRamCoreRatioHardwareConstraint", "minimumMemoryGBCoreRatio": 4.0},
    {"discriminator": "NoGpuHardwareConstraint"},
    {"discriminator": "NoSSDHardwareConstraint"},
]


def test_cluster_checks(conn, api, tmp_path):
    path = write(tmp_path, CLUSTER_FILE)
    api.get(f"{API}/profiles", json=["docker-batch"])
    api.get(f"{API}/hardware-constraints", json={"data": OFFERED, "offset": 0, "limit": 50,
                                                 "total": len(OFFERED)})
    api.get(f"{API}/secrets-manager/search/db/", json={"keys": ["pwd", "sub/"]})
    api.get(f"{API}/secrets-manager/search/", json={"keys": ["db/"]})
    api.get(f"{API}/info", json={"email": "alice@x", "bucketPrefix": "alice-1-"})
    batch, found = check_file(path, conn)
    assert batch is not None
    assert [p.render() for p in found] == [
        "5: results.bucket: bucket 'someone-else' is outside your bucket prefix 'alice-1-' "
        "(GET /info): name it 'alice-1-someone-else', for example",
        "9: tasks[0].secrets[1]: the cluster has no secret 'db/gone'",
        "9: tasks[0].secrets[2]: the cluster has no secret 'top'",
        "10: tasks[0].hardware: no node of the cluster satisfies "
        "MaximumRamHardwareConstraint(maximumMemoryMB=100.0), GpuHardwareConstraint; it "
        "offers: 2c-8g-amd-epyc",
        "13: tasks[1].profile: unknown profile 'mystery'; the cluster has: docker-batch",
    ]


def test_an_unreachable_cluster_is_said_so(tmp_path, monkeypatch):
    config = tmp_path / "client.conf"
    config.write_text("[cluster]\nurl = http://127.0.0.1:9\n[client]\ntoken = t\n"
                      "retry_count = 0\n")
    result = CliRunner().invoke(main, ["validate", str(SAMPLE)],
                                env={"QCOMPUTE_CONFIG": str(config)})
    assert result.exit_code == ExitCode.UNREACHABLE, result.output
    assert "the cluster checks did not run" in result.stderr
    assert "the cluster could not be reached" in result.stderr
    offline = CliRunner().invoke(main, ["validate", "--offline", str(SAMPLE)])
    assert offline.exit_code == 0 and "ok (5 tasks, checked offline)" in offline.stdout


def test_validate_lists_every_problem_and_exits_usage(tmp_path):
    path = write(tmp_path, 'name = "x"\n[[tasks]]\nname = "a"\n[[tasks]]\nname = "a"\n')
    result = CliRunner().invoke(main, ["validate", "--offline", str(path)])
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.splitlines() == [
        f"{path}:2: tasks[0].profile: no profile: name one, or define [pool] for the task to "
        "run in",
        f"{path}:4: tasks[1].profile: no profile: name one, or define [pool] for the task to "
        "run in",
        f"{path}:5: tasks[1].name: duplicate task name 'a' (also tasks[0])",
        f"Error: {path}: 3 problems",
    ]


# -- the published schema --------------------------------------------------------------------

def test_the_committed_schema_is_the_models_schema():
    committed = json.loads((REPO / "docs" / "_static" / "batch.schema.json").read_text())
    assert committed == schema(), ("docs/_static/batch.schema.json is stale: regenerate it "
                                   "with `qcompute validate --schema > "
                                   "docs/_static/batch.schema.json`")


def test_validate_prints_the_schema():
    result = CliRunner().invoke(main, ["validate", "--schema"])
    assert result.exit_code == 0 and json.loads(result.stdout) == schema()
    assert schema()["properties"]["tasks"]["minItems"] == 1
    assert schema()["$defs"]["TaskSpec"]["additionalProperties"] is False


def test_validate_without_a_file_is_a_usage_error():
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == ExitCode.USAGE and "give a batch FILE" in result.stderr

