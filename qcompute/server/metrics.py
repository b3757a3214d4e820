"""Prometheus metrics (prometheus-client), served to the owner at ``GET /metrics``
(api/metrics.py; docs/metrics.rst lists them).

Two kinds, each collected where it is cheap:

* gauges read from SQL at scrape time, by :class:`_Cluster`: tasks, pools and jobs by state,
  the instances of unfinished tasks by state (the sum of the tasks' kept per-state counts, so
  the cost follows the unfinished tasks, not the instance table), each part's health (database,
  storage, executor, scheduler: services/health.py), and on the replica that runs the
  scheduler its executor's slots and running instances;
* histograms and counters updated where their events happen: each request's duration (the
  :class:`RequestTimer` middleware), each dispatch's wait (the scheduler's dispatch) and each
  attempt's outcome with its failure class (the scheduler's record of an instance's end).

Every app has a registry of its own, so that several apps in one process never collide.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select

from qcompute.states import InstanceState as I
from qcompute.states import JobState as J
from qcompute.states import PoolState as P
from qcompute.states import TaskState as T

from .db.models import Job, Pool, Task, utcnow
from .services.health import OK, check_parts
from .services.lifecycle import failure_class

if TYPE_CHECKING:
    from .api.deps import AppContext

__all__ = ["Metrics", "RequestTimer"]

_OUTCOMES = {I.SUCCEEDED: "succeeded", I.FAILED: "failed", I.CANCELLED: "cancelled",
             I.QUEUED: "requeued"}
_FINAL_TASK_STATES = [s.value for s in T if s.is_final()]


class Metrics:
    """This app's registry, and the metrics updated where their events happen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.api_latency = Histogram(
            "qcompute_api_request_duration_seconds",
            "Time from a request's arrival to its response's end (long polls included), by "
            "route template, method and status", ["route", "method", "status"],
            buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry)
        self.dispatch_latency = Histogram(
            "qcompute_dispatch_latency_seconds",
            "Time from an instance's submit (a retry: its previous attempt's end) to its "
            "dispatch; dependencies and full pools count as waiting",
            buckets=(.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=self.registry)
        self.instance_outcomes = Counter(
            "qcompute_instance_outcomes",
            "Instance attempts ended, by what followed (succeeded, failed, cancelled, requeued) "
            "and failure class (none, cancelled, infrastructure, application, results)",
            ["outcome", "failure_class"], registry=self.registry)
        self._cluster: Optional[_Cluster] = None

    def watch(self, ctx: "AppContext") -> None:
        """Read the gauges of this running app at each scrape (until :meth:`unwatch`)."""
        self.unwatch()
        self._cluster = _Cluster(ctx)
        self.registry.register(self._cluster)

    def unwatch(self) -> None:
        if self._cluster is not None:
            self.registry.unregister(self._cluster)
            self._cluster = None

    def dispatched(self, queued_since) -> None:
        """An instance was dispatched; ``queued_since``: its naive UTC submit or re-queue."""
        self.dispatch_latency.observe(max(0.0, (utcnow() - queued_since).total_seconds()))

    def ended(self, state: I, exit_code: Optional[int]) -> None:
        """An attempt ended, and its instance went to ``state`` (Queued: it runs again)."""
        self.instance_outcomes.labels(_OUTCOMES[state],
                                      failure_class(state, exit_code) or "none").inc()


class _Cluster:
    """The gauges, read at each scrape."""

    def __init__(self, ctx: "AppContext") -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        with ctx.sessions() as session:
            for name, model, states in (("tasks", Task, T), ("pools", Pool, P),
                                        ("jobs", Job, J)):
                by_state = {s.value: 0 for s in states if s.name != "UNSUBMITTED"}
                by_state.update(tuple(row) for row in session.execute(
                    select(model.state, func.count()).group_by(model.state)))
                gauge = GaugeMetricFamily(f"qcompute_{name}", f"{name.title()} by state",
                                          labels=["state"])
                for state, count in by_state.items():
                    gauge.add_metric([state], count)
                yield gauge
            counts = dict.fromkeys((s.value for s in I), 0)
            for row in session.scalars(select(Task.instance_counts)
                                       .where(Task.state.not_in(_FINAL_TASK_STATES))):
                for state, count in (row or {}).items():
                    counts[state] = counts.get(state, 0) + count
        instances = GaugeMetricFamily(
            "qcompute_instances", "Instances of unfinished tasks by state (Queued: the queue)",
            labels=["state"])
        for state, count in counts.items():
            instances.add_metric([state], count)
        yield instances
        parts = check_parts(sessions=ctx.sessions, storage=ctx.storage, scheduler=ctx.scheduler)
        up = GaugeMetricFamily("qcompute_part_up", "1 if the part is healthy (as /health)",
                               labels=["part"])
        for part, state in parts.items():
            up.add_metric([part], 1 if state == OK else 0)
        yield up
        leader = ctx.scheduler.started
        yield GaugeMetricFamily("qcompute_scheduler_leader",
                                "1 on the replica that runs the scheduler", value=int(leader))
        if leader:
            executor = ctx.scheduler.executor
            yield GaugeMetricFamily("qcompute_executor_slots", "Instances the executor can run "
                                    "at once", value=executor.capacity)
            yield GaugeMetricFamily("qcompute_executor_running", "Instances the executor runs "
                                    "now", value=len(executor.running()))


class RequestTimer:
    """ASGI middleware: each HTTP request's duration, by route template (``/tasks/{uuid}``;
    ``unmatched`` for a path no route serves), method and status."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def recorded(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recorded)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.api_latency.labels(route, scope["method"], str(status)).observe(
                time.perf_counter() - started)
