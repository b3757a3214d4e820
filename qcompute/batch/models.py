"""The batch file's structure, as pydantic models: a typo in a key is an error (``extra="forbid"``),
and :func:`schema` is the JSON Schema published in ``docs/_static/batch.schema.json``.

Each model maps onto the SDK's objects (:mod:`qcompute.batch.submit` does the mapping): a
``[[tasks]]`` entry onto a :class:`~qcompute.Task`, ``[pool]`` onto a :class:`~qcompute.Pool`,
``hardware`` onto :mod:`qcompute.hardware`, ``retries`` onto :class:`~qcompute.RetrySettings`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

__all__ = ["Batch", "TaskSpec", "PoolSpec", "ResourceSpec", "ResultsSpec", "Dependency",
           "Hardware", "Retries", "schema", "COMMAND_CONSTANT"]

COMMAND_CONSTANT = "DOCKER_CMD"  #: the constant ``command`` sets (the docker-batch profile's)

Name = Annotated[str, Field(min_length=1, max_length=200)]
Condition = Literal["success", "failure", "cancelled", "any"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hardware(_Model):
    """What a node must offer (``hardwareConstraints``); every constraint given must hold."""

    min_cores: Optional[int] = Field(None, ge=1, description="MinimumCoreHardwareConstraint")
    max_cores: Optional[int] = Field(None, ge=1, description="MaximumCoreHardwareConstraint")
    min_ram_mb: Optional[float] = Field(None, ge=0, description="MinimumRamHardwareConstraint")
    max_ram_mb: Optional[float] = Field(None, ge=0, description="MaximumRamHardwareConstraint")
    min_ram_gb_per_core: Optional[float] = Field(
        None, ge=0, description="MinimumRamCoreRatioHardwareConstraint")
    max_ram_gb_per_core: Optional[float] = Field(
        None, ge=0, description="MaximumRamCoreRatioHardwareConstraint")
    specific: Optional[str] = Field(None, min_length=1,
                                    description="SpecificHardwareConstraint: a specification key")
    cpu_model: Optional[str] = Field(None, min_length=1,
                                     description="CpuModelHardwareConstraint")
    gpu: Optional[bool] = Field(None, description="true: GpuHardwareConstraint; false: "
                                                  "NoGpuHardwareConstraint")
    ssd: Optional[bool] = Field(None, description="true: SSDHardwareConstraint; false: "
                                                  "NoSSDHardwareConstraint")


class Retries(_Model):
    """How often failed instances run again (``retrySettings``; the stricter one applies).
    Infrastructure failures are re-run by the cluster without using these."""

    max_total: Optional[int] = Field(None, ge=0, description="maxTotalRetries")
    max_per_instance: Optional[int] = Field(None, ge=0, description="maxPerInstanceRetries")


class Dependency(_Model):
    """Wait for the task ``task`` (by name) to end in one of ``when``."""

    task: Name
    when: list[Condition] = Field(["success"], min_length=1,
                                  description="accepted final states; 'any' accepts every one")


# A task name, or a {task, when} table (the tag keeps errors to the form written).
DependsOn = Annotated[
    Union[Annotated[Name, Tag("name")], Annotated[Dependency, Tag("table")]],
    Discriminator(lambda v: "name" if isinstance(v, str) else "table")]
DEPENDS_ON_TAGS = ("name", "table")


class ResourceSpec(_Model):
    """A bucket given to tasks as input; with ``path``, a local directory mirrored into it (under
    ``prefix``) before the job is submitted. Tasks see the files without the prefix."""

    bucket: str = Field(min_length=1)
    path: Optional[str] = Field(None, min_length=1,
                                description="a local directory, relative to the batch file")
    prefix: Optional[str] = Field(None, min_length=1,
                                  description="the folder of the bucket holding these files")


class ResultsSpec(_Model):
    """Where every task's results go, and where they are downloaded when the job ends."""

    bucket: str = Field(min_length=1)
    download_to: Optional[str] = Field(None, min_length=1,
                                       description="a local directory, relative to the file")


class PoolSpec(_Model):
    """A pool created before the job; tasks without a ``profile`` run in it."""

    name: Name
    profile: str = Field(min_length=1)
    instances: int = Field(1, ge=1, description="nodes (slots) of the pool")
    constants: dict[str, str] = {}
    tags: list[str] = []
    hardware: Optional[Hardware] = None
    retries: Optional[Retries] = Field(None, description="default retries of its tasks")


class TaskSpec(_Model):
    """One task of the job."""

    name: Name
    profile: Optional[str] = Field(None, min_length=1,
                                   description="absent: the task runs in the file's [pool]")
    instances: Optional[int] = Field(None, ge=1, description="instance count (default 1)")
    range: Optional[str] = Field(None, min_length=1, pattern=r"^\s*\d+(\s*-\s*\d+)?"
                                 r"(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$",
                                 description="instance ids instead of a count, e.g. '0-9,12'")
    command: Optional[str] = Field(None, description=f"sets the {COMMAND_CONSTANT} constant")
    constants: dict[str, str] = {}
    tags: list[str] = []
    labels: dict[str, str] = {}
    resources: list[str] = Field([], description="names of [resources.NAME] tables")
    depends_on: list[DependsOn] = Field(
        [], description="task names (they must succeed), or {task, when} tables")
    retries: Optional[Retries] = None
    secrets: list[str] = Field([], description="secret keys the task may read")
    secret_prefixes: list[str] = Field([], description="secret folders the task may read")
    hardware: Optional[Hardware] = None
    results_whitelist: Optional[str] = Field(None, description="regex of result files to keep")
    results_blacklist: Optional[str] = Field(None, description="regex of result files to drop")
    max_time_queue_seconds: Optional[int] = Field(None, ge=1)

    @field_validator("depends_on")
    @classmethod
    def _names_as_tables(cls, value: list[Any]) -> list[Dependency]:
        return [Dependency(task=v) if isinstance(v, str) else v for v in value]

    @model_validator(mode="after")
    def _one_command(self) -> "TaskSpec":
        if self.instances is not None and self.range is not None:
            raise ValueError("give instances or range, not both")
        if self.command is not None and COMMAND_CONSTANT in self.constants:
            raise ValueError(f"give command or constants.{COMMAND_CONSTANT}, not both")
        return self

    @property
    def all_constants(self) -> dict[str, str]:
        """The constants sent, ``command`` included."""
        extra = {} if self.command is None else {COMMAND_CONSTANT: self.command}
        return {**self.constants, **extra}


class Batch(_Model):
    """A batch file: one job, its tasks, and what they need."""

    name: str = Field(min_length=1, max_length=200, description="the job's name")
    tags: list[str] = []
    max_wall_time: Optional[str] = Field(None, pattern=r"^(\d+\.)?\d{1,2}:\d{2}:\d{2}$",
                                         description="the job's time limit, 'd.hh:mm:ss'")
    pool: Optional[PoolSpec] = None
    resources: dict[str, ResourceSpec] = {}
    results: Optional[ResultsSpec] = None
    tasks: list[TaskSpec] = Field(min_length=1)
    _source: Optional[Path] = PrivateAttr(None)  # the file, set by load_batch

    @property
    def base_dir(self) -> Path:
        """Where the file's relative paths start: its directory (the current one if unknown)."""
        return self._source.parent if self._source is not None else Path(".")


def schema() -> dict[str, Any]:
    """The JSON Schema of a batch file (what ``qcompute validate --schema`` prints)."""
    doc = Batch.model_json_schema()
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "qcompute batch file"
    return doc

