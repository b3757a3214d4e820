"""The :class:`Connection`: configuration, the REST client, the S3 client, and list/create helpers."""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

from ._http import HttpClient, join_path
from ._connection_objects import ObjectsMixin
from ._paging import Page, TagsArg, fetch_page, paginate, tag_filter, uuid_filter
from ._storage import Storage
from .bucket import Bucket
from .config import Config, FileConf, load_config
from .exceptions import (
    APIError,
    MissingBucketException,
    MissingProfileException,
    MissingTaskException,
    ResourceStateError,
    StorageError,
)
from . import _resource
from . import task as _task
from .states import TaskState
from .task import Task

__all__ = ["Connection", "UserInfo", "Profile", "ALL", "ANY"]

ALL = "ALL"  #: ``wait_tasks(..., return_when=ALL)``: until every task is final
ANY = "ANY"  #: ``wait_tasks(..., return_when=ANY)``: until one task is final

logger = logging.getLogger(__name__)

_STATES = {s.value for s in TaskState}

_USER_INFO_FIELDS = (
    ("email", "email"), ("max_bucket", "maxBucket"), ("bucket_count", "bucketCount"),
    ("quota_bytes_bucket", "quotaBytesBucket"), ("used_quota_bytes_bucket", "usedQuotaBytesBucket"),
    ("task_count", "taskCount"), ("max_task", "maxTask"), ("running_task_count", "runningTaskCount"),
    ("max_running_task", "maxRunningTask"), ("pool_count", "poolCount"), ("max_pool", "maxPool"),
    ("running_pool_count", "runningPoolCount"), ("max_running_pool", "maxRunningPool"),
    ("max_instances", "maxInstances"), ("max_cores", "maxCores"),
    ("running_instance_count", "runningInstanceCount"), ("running_core_count", "runningCoreCount"),
)


@dataclass(frozen=True)
class UserInfo:
    """The account as ``GET /info`` describes it. ``info["anyWireKey"]`` reads the raw document."""

    email: Optional[str] = None
    max_bucket: Optional[int] = None
    bucket_count: Optional[int] = None
    quota_bytes_bucket: Optional[int] = None
    used_quota_bytes_bucket: Optional[int] = None
    task_count: Optional[int] = None
    max_task: Optional[int] = None
    running_task_count: Optional[int] = None
    max_running_task: Optional[int] = None
    pool_count: Optional[int] = None
    max_pool: Optional[int] = None
    running_pool_count: Optional[int] = None
    max_running_pool: Optional[int] = None
    max_instances: Optional[int] = None
    max_cores: Optional[int] = None
    running_instance_count: Optional[int] = None
    running_core_count: Optional[int] = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "UserInfo":
        values = {attr: doc.get(wire) for attr, wire in _USER_INFO_FIELDS}
        if values["max_cores"] is None:  # legacy name
            values["max_cores"] = doc.get("maxFlexCores")
        return cls(**values, raw=dict(doc))

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]


@dataclass(frozen=True)
class Profile:
    """A profile (``GET /profiles/{name}``): a name and its default constants."""

    name: str
    constants: Mapping[str, Optional[str]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Profile":
        constants = {c.get("name", c.get("key")): c.get("value") for c in doc.get("constants") or ()}
        return cls(name=doc["name"], constants=constants)


class Connection(ObjectsMixin):
    """A session with a qcompute (or Qarnot) cluster and its S3 storage.

    Building one reads the configuration (see :mod:`qcompute.config`) and sends nothing. The
    storage URL (``GET /settings``, when not configured) and the S3 access key (the email of
    ``GET /info``) are fetched on first S3 use and cached.

    Args:
        fileconf: an INI file path or a dict of settings.
        client_token: the API token.
        cluster_url: the API URL.
        cluster_timeout: seconds per request (default 30).
        cluster_connect_timeout: seconds to open a connection to the API (default 5): an
            unreachable cluster fails after this, not after ``cluster_timeout`` and the retries.
        storage_url: the S3 URL (default: asked from the server).
        retry_count: retries of a failed request (default 5).
        retry_wait: backoff factor in seconds (default 1).
        cluster_unsafe: do not verify the API's TLS certificate (False = not set here).
        storage_unsafe: do not verify the storage's TLS certificate (False = not set here).
        cluster_custom_certificate: CA bundle for the API.
        storage_custom_certificate: CA bundle for the storage.
        profile: the ``[profile NAME]`` section of the client config to use (default:
            ``$QCOMPUTE_PROFILE``, else the plain sections); not a compute profile.

    Raises:
        ConfigError: no token anywhere, an invalid setting, an unknown INI section or key, or
            a profile the config file does not have.
    """

    def __init__(
        self,
        fileconf: FileConf = None,
        client_token: Optional[str] = None,
        cluster_url: Optional[str] = None,
        cluster_timeout: Optional[float] = None,
        storage_url: Optional[str] = None,
        retry_count: Optional[int] = None,
        retry_wait: Optional[float] = None,
        cluster_unsafe: Optional[bool] = None,
        storage_unsafe: Optional[bool] = None,
        cluster_custom_certificate: Optional[str] = None,
        storage_custom_certificate: Optional[str] = None,
        *,
        profile: Optional[str] = None,
        cluster_connect_timeout: Optional[float] = None,
    ) -> None:
        self.config: Config = load_config(
            fileconf,
            profile=profile,
            client_token=client_token,
            cluster_url=cluster_url,
            cluster_timeout=cluster_timeout,
            cluster_connect_timeout=cluster_connect_timeout,
            storage_url=storage_url,
            retry_count=retry_count,
            retry_wait=retry_wait,
            cluster_unsafe=cluster_unsafe or None,
            storage_unsafe=storage_unsafe or None,
            cluster_custom_certificate=cluster_custom_certificate,
            storage_custom_certificate=storage_custom_certificate,
        )
        cfg = self.config
        self._http = HttpClient(
            cfg.cluster_url, cfg.client_token, timeout=cfg.cluster_timeout,
            connect_timeout=cfg.cluster_connect_timeout,
            retry_count=cfg.retry_count, retry_wait=cfg.retry_wait, verify=cfg.cluster_verify,
        )
        self._storage_url = cfg.storage_url
        self._settings_doc: Optional[dict[str, Any]] = None
        self._email: Optional[str] = None
        self._bucket_prefix: Optional[str] = None  # bucketPrefix of GET /info, once read
        self._storage_client: Optional[Storage] = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Connection cluster_url={self.cluster_url!r}>"

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session and the S3 client's connections."""
        self._http.close()
        if self._storage_client is not None:
            self._storage_client.close()

    # -- account -------------------------------------------------------------------------
    @property
    def cluster_url(self) -> str:
        return self.config.cluster_url

    @property
    def storage_url(self) -> str:
        """The S3 URL: configured, or read once from ``GET /settings``.

        Raises:
            StorageError: the server advertises no storage.
        """
        if self._storage_url is None:
            url = self._server_settings().get("storage")
            if not url:
                raise StorageError("the cluster advertises no storage (GET /settings has no "
                                   "'storage' URL); set storage_url")
            self._storage_url = str(url).rstrip("/")
        return self._storage_url

    def _server_settings(self) -> dict[str, Any]:
        """``GET /settings``, read once: the storage URL and the features the server offers."""
        if self._settings_doc is None:
            doc = self._http.get("/settings")
            self._settings_doc = doc if isinstance(doc, dict) else {}
        return self._settings_doc

    def _long_poll_seconds(self) -> float:
        """How long the server may hold a task wait (0: it has no long poll; poll instead)."""
        try:
            return max(0.0, float(self._server_settings().get("taskWaitMaxSeconds") or 0))
        except (TypeError, ValueError):
            return 0.0

    @property
    def user_info(self) -> UserInfo:
        """The account, fresh from ``GET /info`` on every read (the email is cached for S3)."""
        info = UserInfo.from_json(self._http.get("/info") or {})
        if info.email:
            self._email = info.email
        if isinstance(info.raw.get("bucketPrefix"), str):
            self._bucket_prefix = info.raw["bucketPrefix"]
        return info

    def _user_bucket_prefix(self) -> Optional[str]:
        """The prefix this user's bucket names must have (``bucketPrefix`` of ``GET /info``,
        read with the email and cached; ``""``: any name; ``None``: the server does not say).
        Used to explain an S3 AccessDenied."""
        if self._bucket_prefix is None:
            self.user_info  # noqa: B018 - reads and caches it
        return self._bucket_prefix

    def _s3_keys(self) -> tuple[str, str]:
        """The S3 key pair: ``storageKeys`` of ``GET /info`` where the server gives one (an
        external store's keys), else the email and the API token (the Qarnot convention)."""
        info = self.user_info
        given = info.raw.get("storageKeys")
        if isinstance(given, dict) and given.get("accessKey") and given.get("secretKey"):
            return str(given["accessKey"]), str(given["secretKey"])
        if not self._email:
            raise StorageError("GET /info gave no email: cannot build the S3 credentials")
        return self._email, self.config.client_token

    # -- profiles ------------------------------------------------------------------------
    def profiles_names(self) -> list[str]:
        """The profile names: ``GET /profiles``."""
        return list(self._http.get("/profiles") or [])

    def retrieve_profile(self, name: str) -> Profile:
        """One profile: ``GET /profiles/{name}``.

        Raises:
            MissingProfileException: no such profile.
        """
        return Profile.from_json(
            self._http.get(join_path("profiles", name), not_found=MissingProfileException)
        )

    def profiles(self) -> list[Profile]:
        """Every profile: ``GET /profiles``, then ``GET /profiles/{name}`` for each."""
        return [self.retrieve_profile(name) for name in self.profiles_names()]

    # -- tasks -----------------------------------------------------------------------------
    def create_task(self, name: str, profile_or_pool: Any = None,
                    instancecount_or_range: Union[int, str] = 1,
                    shortname: Optional[str] = None, job: Any = None, *,
                    pool: Any = None) -> Task:
        """A new, unsubmitted :class:`Task` (no request). An int sets ``instanceCount``, a
        string sets ``advancedRanges``.

        Args:
            name: a display name.
            profile_or_pool: a profile name, or a :class:`~qcompute.Pool` to run in.
            instancecount_or_range: an instance count, or a range such as ``"0-9,12"``.
            shortname: a unique DNS-compliant name.
            job: a :class:`~qcompute.Job` or a job uuid.
            pool: a :class:`~qcompute.Pool` or a pool uuid (then no profile).
        """
        return Task(self, name, profile_or_pool, instancecount_or_range, shortname, job,
                    pool=pool)

    def retrieve_task(self, uuid: str) -> Task:
        """An existing task: ``GET /tasks/{uuid}``.

        Raises:
            MissingTaskException: no such task.
        """
        doc = self._http.get(join_path("tasks", uuid), not_found=MissingTaskException)
        return Task._from_json(self, doc)

    def _paginate(self, path: str, filter_: Optional[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        return paginate(self._http, path, filter_)

    def tasks_page(self, token: Optional[str] = None, maximum: Optional[int] = None,
                   tags: TagsArg = None, tags_intersect: TagsArg = None,
                   summary: bool = False) -> Page[Task]:
        """One page of tasks: ``POST /tasks/paginate`` (``/tasks/summaries/paginate`` with
        ``summary``).

        Args:
            token: ``next_token`` of the previous page (``None``: the first page).
            maximum: at most this many tasks (``None``: the server chooses).
            tags: tasks with any of these tags.
            tags_intersect: tasks with all of these tags (wins over ``tags``).
            summary: ask for summaries; a summary task loads its full document when a field it
                lacks is read.
        """
        path = "/tasks/summaries/paginate" if summary else "/tasks/paginate"
        page = fetch_page(self._http, path, tag_filter(tags, tags_intersect), token, maximum)
        items = [Task._from_json(self, doc, partial=summary) for doc in page.items]
        return Page(items, page.token, page.next_token, page.is_truncated)

    def all_tasks(self, tags: TagsArg = None, tags_intersect: TagsArg = None) -> Iterator[Task]:
        """Iterate over the tasks, page by page: ``POST /tasks/paginate``.

        Args:
            tags: tasks with any of these tags.
            tags_intersect: tasks with all of these tags (wins over ``tags``).
        """
        for doc in self._paginate("/tasks/paginate", tag_filter(tags, tags_intersect)):
            yield Task._from_json(self, doc)

    def tasks(self, tags: TagsArg = None, tags_intersect: TagsArg = None,
              summary: bool = False) -> list[Task]:
        """The tasks, as a list: ``POST /tasks/paginate`` (``/tasks/summaries/paginate`` with
        ``summary``; a summary task loads its full document when a missing field is read)."""
        if not summary:
            return list(self.all_tasks(tags, tags_intersect))
        docs = self._paginate("/tasks/summaries/paginate", tag_filter(tags, tags_intersect))
        return [Task._from_json(self, doc, partial=True) for doc in docs]

    def wait_tasks(self, tasks: Iterable[Task], timeout: Optional[float] = None,
                   return_when: str = ALL) -> bool:
        """Wait until all (``ALL``) or any (``ANY``) of the submitted tasks are final.

        With the server's long poll this is ``POST /tasks/wait``, held by the server until the
        condition holds; otherwise the tasks are polled with a short growing interval. Each
        task object is refreshed at the end (one ``POST /tasks/paginate`` for all).

        Args:
            tasks: submitted tasks.
            timeout: seconds to wait at most; ``None`` waits for ever.
            return_when: ``ALL`` or ``ANY``.

        Returns:
            True when the condition holds, False on timeout.
        """
        tasks = list(tasks)
        if return_when not in (ALL, ANY):
            raise ValueError(f"return_when must be ALL or ANY, not {return_when!r}")
        for task in tasks:
            task._require_submitted("wait for it")
        if not tasks:
            return True
        uuids = list(dict.fromkeys(t.uuid for t in tasks))
        deadline = None if timeout is None else _resource._clock() + timeout
        hold = self._long_poll_seconds()
        interval = _task.POLL_START
        while True:
            left = float("inf") if deadline is None else deadline - _resource._clock()
            if hold:
                wait = max(0.0, min(hold, left))
                done = self._http.post("/tasks/wait", hold=wait, json={
                    "uuids": uuids, "returnWhen": return_when, "timeout": wait})["done"]
            else:
                states = self._task_states(uuids)
                final = [TaskState(s).is_final() for s in states.values() if s in _STATES]
                done = all(final) and len(final) == len(uuids) if return_when == ALL else any(final)
            if done or left <= 0:
                break
            if not hold:
                _task._sleep(min(interval, left))
                interval = min(interval * _task.POLL_FACTOR, _task.POLL_MAX)
        docs = {doc["uuid"]: doc for doc in self._paginate("/tasks/paginate", uuid_filter(uuids))}
        for task in tasks:
            if task.uuid in docs:
                task._load(docs[task.uuid], now=_resource._clock())
        return bool(done)

    def _task_states(self, uuids: list[str]) -> dict[str, str]:
        summaries = self._paginate("/tasks/summaries/paginate", uuid_filter(uuids))
        return {doc["uuid"]: doc.get("state") for doc in summaries}

    def submit_tasks(self, tasks: Iterable[Task]) -> None:
        """Submit many tasks with ``POST /tasks`` and an array: one request per
        :data:`_BULK_TASKS` tasks or :data:`_BULK_BYTES` of JSON (well under the server's body
        limit), each all-or-nothing on the server and retried safely with its own
        Idempotency-Key.

        The reply lists ``{"statusCode", "uuid", "message"}`` in order. Accepted tasks get their
        uuid and keep the document sent, with no further request: the first read of a server
        field (``state``, ``status``, ...) fetches the task.

        Raises:
            ResourceStateError: a task was already submitted (nothing is sent).
            APIError: some tasks were refused; ``details`` lists them (the others are submitted).
        """
        tasks = list(tasks)
        for task in tasks:
            if task._is_submitted():
                raise ResourceStateError(f"task {task.uuid} is already submitted")
        failures = []
        for chunk in _bulk_chunks([(t, t._submit_document()) for t in tasks]):
            replies = self._http.post("/tasks", json=[sent for _, sent in chunk],
                                      not_found=MissingBucketException)
            if not isinstance(replies, list) or len(replies) != len(chunk):
                raise APIError(f"POST /tasks with {len(chunk)} tasks got a reply of another "
                               f"shape: {replies!r}")
            for (task, sent), reply in zip(chunk, replies, strict=True):
                status = reply.get("statusCode")
                if isinstance(status, int) and 200 <= status < 300 and reply.get("uuid"):
                    task._accepted(reply["uuid"], sent)
                else:
                    failures.append({"name": task.name, "statusCode": status,
                                     "message": reply.get("message")})
        if failures:
            listed = "; ".join(f"{f['name']!r} ({f['statusCode']}): {f['message']}"
                               for f in failures)
            raise APIError(f"{len(failures)} of {len(tasks)} tasks were not submitted: {listed}",
                           status_code=failures[0]["statusCode"], code="BulkSubmitFailed",
                           details=failures)

    def submit_file(self, path: Any, *, progress: Any = True, check: bool = True) -> Any:
        """Run a batch file (see :mod:`qcompute.batch`): check it offline and against this
        cluster, upload its local directories, create its pool, then submit its job and tasks.

        Args:
            path: the batch file.
            progress: upload progress: ``True`` for tqdm bars, a callable, or None.
            check: also run the cluster checks (profiles, hardware, secrets, bucket prefix);
                the offline checks always run.

        Returns:
            A :class:`~qcompute.BatchRun`: ``job``, ``tasks`` (by name), ``pool``, and
            ``wait()``, ``failed``, ``download_results()``.

        Raises:
            BatchError: the file has problems (every one listed); nothing was sent.
        """
        from .batch import _submit_file

        return _submit_file(self, path, progress=progress, check=check)

    # -- storage ---------------------------------------------------------------------------
    @property
    def _storage(self) -> Storage:
        """The S3 adapter, built on first use (may call ``GET /settings`` and ``GET /info``)."""
        with self._lock:
            if self._storage_client is None:
                self._storage_client = Storage(
                    self.storage_url, *self._s3_keys(),
                    verify=self.config.storage_verify, retry_count=self.config.retry_count,
                    bucket_prefix=self._user_bucket_prefix,
                    create_url=self._create_bucket_url,
                )
            return self._storage_client

    def _create_bucket_url(self) -> Optional[str]:
        """Where CreateBucket goes: the cluster's S3 front (``qcomputeCreateBucketUrl`` of ``GET
        /settings``, which also creates names such as ``meshroomIn``) when the storage in use
        is the one the cluster advertises; else None (the storage itself)."""
        doc = self._server_settings()
        url, advertised = doc.get("qcomputeCreateBucketUrl"), doc.get("storage")
        if url and str(advertised or "").rstrip("/") == self.storage_url:
            return str(url).rstrip("/")
        return None

    @property
    def s3client(self) -> Any:
        """The boto3 S3 client (built on first use)."""
        return self._storage.client

    @property
    def s3resource(self) -> Any:
        """The boto3 S3 resource (built on first use)."""
        return self._storage.resource

    def create_bucket(self, name: str) -> Bucket:
        """Create a bucket (CreateBucket; one this user owns already is fine)."""
        return Bucket(self, name, create=True)

    def retrieve_bucket(self, name: str) -> Bucket:
        """An existing bucket (HeadBucket).

        Raises:
            MissingBucketException: no such bucket.
        """
        self._storage.head_bucket(name)
        return Bucket(self, name, create=False)

    def retrieve_or_create_bucket(self, name: str) -> Bucket:
        """The bucket ``name``, created if needed (CreateBucket)."""
        return self.create_bucket(name)

    def buckets(self) -> list[Bucket]:
        """Every bucket of this user (ListBuckets)."""
        return [Bucket(self, name, create=False) for name in self._storage.list_buckets()]


_BULK_TASKS = 1000  # tasks per bulk POST /tasks
_BULK_BYTES = 4 << 20  # JSON bytes per bulk POST /tasks (the server takes 16 MiB by default)


def _bulk_chunks(items: list[tuple[Task, dict]]) -> Iterator[list[tuple[Task, dict]]]:
    """``(task, document)`` pairs in runs that fit one bulk request each."""
    chunk: list[tuple[Task, dict]] = []
    size = 0
    for item in items:
        length = len(json.dumps(item[1]))
        if chunk and (len(chunk) == _BULK_TASKS or size + length > _BULK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += length + 1
    if chunk:
        yield chunk
