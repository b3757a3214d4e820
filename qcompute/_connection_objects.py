"""The :class:`~qcompute.Connection` methods for pools, jobs, secrets and hardware constraints."""
from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterator, Optional, cast

from ._http import join_path
from ._paging import Page, TagsArg, fetch_page, paginate, tag_filter
from .exceptions import APIError, MissingJobException, MissingPoolException
from .hardware import HardwareConstraint
from .job import Job
from .pool import Pool
from .secrets import Secrets

if TYPE_CHECKING:
    from ._http import HttpClient
    from .connection import Connection

__all__ = ["ObjectsMixin"]

HARDWARE_PAGE = 50  # constraints per GET /hardware-constraints


class ObjectsMixin:
    """Pools, jobs, secrets and hardware constraints of a connection."""

    _http: "HttpClient"

    @property
    def _me(self) -> "Connection":
        """Self, typed as the Connection this mixin is part of."""
        return cast("Connection", self)

    # -- pools -------------------------------------------------------------------------------
    def create_pool(self, name: str, profile: str, instancecount: int = 1,
                    shortname: Optional[str] = None) -> Pool:
        """A new, unsubmitted static :class:`Pool` of ``instancecount`` nodes (no request)."""
        return Pool(self._me, name, profile, instancecount, shortname)

    def create_elastic_pool(self, name: str, profile: str, minimum_total_slots: int = 0,
                            maximum_total_slots: int = 1, minimum_idle_slots: int = 0,
                            minimum_idle_time_seconds: int = 0, resize_factor: float = 1,
                            resize_period: int = 90, shortname: Optional[str] = None) -> Pool:
        """A new, unsubmitted elastic :class:`Pool` (no request); it starts with
        ``minimum_total_slots`` nodes. See :class:`~qcompute.pool.ElasticProperty`."""
        pool = Pool(self._me, name, profile, minimum_total_slots, shortname)
        return pool.setup_elastic(minimum_total_slots, maximum_total_slots, minimum_idle_slots,
                                  minimum_idle_time_seconds, resize_factor, resize_period)

    def retrieve_pool(self, uuid: str) -> Pool:
        """An existing pool: ``GET /pools/{uuid}``.

        Raises:
            MissingPoolException: no such pool.
        """
        doc = self._http.get(join_path("pools", uuid), not_found=MissingPoolException)
        return Pool._from_json(self._me, doc)

    def pools_page(self, token: Optional[str] = None, maximum: Optional[int] = None,
                   tags: TagsArg = None, tags_intersect: TagsArg = None,
                   summary: bool = False) -> Page[Pool]:
        """One page of pools: ``POST /pools/paginate`` (``/pools/summaries/paginate`` with
        ``summary``; a summary pool loads its full document when a field it lacks is read).

        Args:
            token: ``next_token`` of the previous page (``None``: the first page).
            maximum: at most this many pools (``None``: the server chooses).
            tags: pools with any of these tags.
            tags_intersect: pools with all of these tags (wins over ``tags``).
            summary: ask for summaries.
        """
        path = "/pools/summaries/paginate" if summary else "/pools/paginate"
        page = fetch_page(self._http, path, tag_filter(tags, tags_intersect), token, maximum)
        items = [Pool._from_json(self._me, doc, partial=summary)
                 for doc in page.items]
        return Page(items, page.token, page.next_token, page.is_truncated)

    def all_pools(self, tags: TagsArg = None, tags_intersect: TagsArg = None,
                  summary: bool = False) -> Iterator[Pool]:
        """Iterate over the pools, page by page (see :meth:`pools_page`)."""
        path = "/pools/summaries/paginate" if summary else "/pools/paginate"
        for doc in paginate(self._http, path, tag_filter(tags, tags_intersect)):
            yield Pool._from_json(self._me, doc, partial=summary)

    # -- jobs --------------------------------------------------------------------------------
    def create_job(self, name: str, pool: Any = None, shortname: Optional[str] = None,
                   use_dependencies: bool = False) -> Job:
        """A new, unsubmitted :class:`Job` (no request).

        Args:
            name: a display name.
            pool: a :class:`Pool` or a pool uuid the job's tasks run in.
            shortname: a unique DNS-compliant name.
            use_dependencies: honour the dependencies of the job's tasks.
        """
        return Job(self._me, name, pool, shortname, use_dependencies)

    def retrieve_job(self, uuid: str) -> Job:
        """An existing job: ``GET /jobs/{uuid}``.

        Raises:
            MissingJobException: no such job.
        """
        doc = self._http.get(join_path("jobs", uuid), not_found=MissingJobException)
        return Job._from_json(self._me, doc)

    def jobs_page(self, token: Optional[str] = None, maximum: Optional[int] = None,
                  tags: TagsArg = None, tags_intersect: TagsArg = None) -> Page[Job]:
        """One page of jobs: ``POST /jobs/paginate`` (jobs have no summaries)."""
        page = fetch_page(self._http, "/jobs/paginate", tag_filter(tags, tags_intersect),
                          token, maximum)
        items = [Job._from_json(self._me, doc) for doc in page.items]
        return Page(items, page.token, page.next_token, page.is_truncated)

    def all_jobs(self, tags: TagsArg = None, tags_intersect: TagsArg = None) -> Iterator[Job]:
        """Iterate over the jobs, page by page: ``POST /jobs/paginate``."""
        for doc in paginate(self._http, "/jobs/paginate", tag_filter(tags, tags_intersect)):
            yield Job._from_json(self._me, doc)

    # -- secrets and hardware ----------------------------------------------------------------
    @cached_property
    def secrets(self) -> Secrets:
        """The secrets client of this connection (built on first use, no request)."""
        return Secrets(self._me)

    def all_hardware_constraints(self) -> Iterator[HardwareConstraint]:
        """Every hardware constraint the cluster offers, 50 per ``GET
        /hardware-constraints?limit=50&offset=N``, until ``offset + count >= total`` (an empty
        page also ends it, so a server answering ``limit: 0`` cannot loop for ever)."""
        offset = 0
        while True:
            reply = self._http.get("/hardware-constraints",
                                   params={"limit": HARDWARE_PAGE, "offset": offset})
            if not isinstance(reply, dict) or not isinstance(reply.get("data"), list):
                raise APIError(f"GET /hardware-constraints answered without a 'data' list: "
                               f"{reply!r}")
            data = reply["data"]
            yield from (HardwareConstraint.from_json(doc) for doc in data)
            offset += len(data)
            total = reply.get("total")
            if not data or not isinstance(total, int) or offset >= total:
                return

    def search_cpu_model_constraints(self, cpu_model: str) -> list[HardwareConstraint]:
        """CPU model constraints matching ``cpu_model``, most relevant first: ``GET
        /hardware-constraints/cpu-model-constraints/search?cpuModel=...`` (URL-encoded)."""
        reply = self._http.get("/hardware-constraints/cpu-model-constraints/search",
                               params={"cpuModel": cpu_model})
        docs = reply.get("data") if isinstance(reply, dict) else reply
        return [HardwareConstraint.from_json(doc) for doc in docs or ()]
