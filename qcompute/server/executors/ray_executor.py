"""RayExecutor: instances run on the nodes of a Ray cluster (the ``[ray]`` extra).

Each instance is one Ray task, ``max_retries=0`` (retries are the scheduler's: it tells an
infrastructure failure from the command's), that asks for one slot: a bundle of
``cpus_per_slot`` CPUs. Ray picks the node. There the task runs the same runner as the local
workers (:func:`qcompute.server.runner.run_instance`), in the same sandbox, which each Ray worker
process starts once and keeps. The task is a streaming generator: it yields :class:`Placed`
(the node), then the runner's events, Finished last, in batches (Placed with the runner's
first events, if they come within 0.2 s; then whatever is queued at each yield). One asyncio
loop here (a thread) follows every instance's stream, each a coroutine awaiting its next batch
(no polling, and no thread to start per instance).

Hardware constraints: each live node is a node kind (cores and memory from Ray, CPU model, SSD
and labels from what ``qcompute node join`` labelled it with). A ``SpecificHardwareConstraint``
naming a node label ``key=value`` becomes a Ray label selector, one naming a custom resource
asks for a sliver of it; the other constraints pin the instance to the nodes that meet them
(``ray.io/node-id`` selector), unless every node does.

Pools: the slots a pool takes in one scheduler round are one placement group, one bundle per
slot; its instances run in its groups. An instance handed over but not yet on a node (a full
node it is pinned to, a pool's group Ray cannot place) says what it waits for
(:meth:`RayExecutor.waiting`, for ``GET /tasks/{uuid}/explain``).

Controls reach a running instance through a mailbox actor on this node (an async actor), in
one box per Ray worker process: a listener thread that the worker starts once (per executor)
and keeps waits on it, and hands each message to the instance it names. The task's first event
names its worker's box; a message sent before it is held here until then. An instance that gets
no control message thus costs the mailbox nothing. The messages: cancel (the runner's own path:
SIGTERM to the command's group, SIGKILL after ``kill_grace_seconds``), snapshot, periodic
snapshot, refresh. An instance not finished ``kill_grace_seconds + 5`` s after its cancel gets
``ray.cancel(force=True)``; one not yet on a node is taken out of Ray's queue at once. A node or
worker that dies ends its instances with an infrastructure failure (``error`` set): the
scheduler re-queues them within ``max_infra_retries`` and Ray places them again. A node cut off
from the network is declared dead by Ray's health checks, but the streams of the instances it
ran do not end (their calls to it just hang): a watcher reads the node list every couple of
seconds and ends the instances of a node Ray lists as dead itself.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import logging
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Optional

import ray
from ray.util import placement_group_table
from ray.util.scheduling_strategies import (NodeAffinitySchedulingStrategy,
                                            PlacementGroupSchedulingStrategy)

from qcompute.server.hardware import NodeCapabilities, detect, slugify_cpu_model
from qcompute.server.sandbox import SandboxConfig

from .base import (ControlMessages, Executor, ExecutorEvent, Finished, InstanceKey, InstanceSpec,
                   Placed, PoolSlots)
from .ray_placement import PoolGroup, on_nodes, remove_group, selects

__all__ = ["RayExecutor", "NODE_ENV", "node_labels", "start_ray", "use_token"]

log = logging.getLogger(__name__)

NODE_ENV = "QCOMPUTE_NODE"  # in each instance's environment: "<hostname>/<Ray node id>"
LABEL_PREFIX = "qcompute-"  # labels `qcompute node join` sets: qcompute-cpu, -ssd, -clock
STANDARD_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
_BACKSTOP_EXTRA_SECONDS = 5.0
_UNPLACED_CANCEL_SECONDS = 1.5  # a started instance says where it runs well within this
_FIRST_EVENTS_WAIT_SECONDS = 0.2  # Placed waits this long for the runner's first events
_NODES_TTL_SECONDS = 2.0  # the cluster's node list is read again after this long
_RESOURCE_SLIVER = 0.001  # what an instance asks of a custom resource a constraint names


def node_labels(capabilities: NodeCapabilities) -> dict[str, str]:
    """The Ray labels ``qcompute node join`` gives a node: what Ray does not see of it."""
    labels = {f"{LABEL_PREFIX}cpu": slugify_cpu_model(capabilities.cpu_model)[:63],
              f"{LABEL_PREFIX}ssd": str(capabilities.ssd).lower()}
    if capabilities.clock_ghz:
        labels[f"{LABEL_PREFIX}clock"] = str(capabilities.clock_ghz)
    return labels


@dataclass(frozen=True)
class _Node:
    """One live Ray node, as qcompute sees it."""

    id: str
    hostname: str
    address: str
    capabilities: NodeCapabilities
    labels: dict[str, str]  # the user's labels (not Ray's nor qcompute's own)
    resources: dict[str, float]  # custom resources
    slots: int

    def to_json(self, busy: int, held: int = 0) -> dict[str, Any]:
        """``busy``: instances running outside pools; ``held``: slots pools reserve here."""
        return {"id": self.id, "hostname": self.hostname, "address": self.address,
                "cores": self.capabilities.cores, "memoryMB": self.capabilities.memory_mb,
                "cpuModel": self.capabilities.cpu_model, "gpu": self.capabilities.gpu,
                "labels": self.labels, "resources": self.resources, "slots": self.slots,
                "freeSlots": max(0, self.slots - held - busy), "heldSlots": held}


def _read_node(info: dict[str, Any], cpus_per_slot: float) -> _Node:
    resources = info.get("Resources") or {}
    labels = dict(info.get("Labels") or {})
    own = {k[len(LABEL_PREFIX):]: labels.pop(k) for k in list(labels) if k.startswith(LABEL_PREFIX)}
    labels = {k: v for k, v in labels.items() if not k.startswith("ray.io/")}
    custom = {k: v for k, v in resources.items()
              if k not in STANDARD_RESOURCES and not k.startswith(("node:", "accelerator_type:",
                                                                   "bundle_group"))}
    cores = int(resources.get("CPU", 0))
    capabilities = NodeCapabilities(
        cores=max(1, cores), memory_mb=max(1, int(resources.get("memory", 0) // 2**20)),
        cpu_model=own.get("cpu", "unknown"), gpu=resources.get("GPU", 0) > 0,
        clock_ghz=float(own["clock"]) if own.get("clock") else None,
        ssd=own.get("ssd") == "true",
        labels=[f"{k}={v}" for k, v in labels.items()] + sorted(custom))
    return _Node(id=info["NodeID"], hostname=info.get("NodeManagerHostname", ""),
                 address=info.get("NodeManagerAddress", ""), capabilities=capabilities,
                 labels=labels, resources=custom,
                 slots=int(math.floor(resources.get("CPU", 0) / cpus_per_slot + 1e-9)))


# -- the node side ----------------------------------------------------------------------------

class _Mailbox:
    """Control messages for running instances (an async actor): one queue per Ray worker
    process, whose listener takes ``(instance, message)`` pairs from it one by one."""

    def __init__(self) -> None:
        self._boxes: dict[str, asyncio.Queue] = {}

    def _box(self, worker: str) -> asyncio.Queue:
        return self._boxes.setdefault(worker, asyncio.Queue())

    async def post(self, worker: str, instance: str, message: dict) -> None:
        self._box(worker).put_nowait((instance, message))

    async def take(self, worker: str) -> tuple[str, dict]:
        return await self._box(worker).get()


_SANDBOXES: dict[str, Any] = {}  # a Ray worker process's sandbox, started once


def _worker_sandbox(config_json: str):
    from qcompute.server.sandbox import Sandbox

    config = SandboxConfig.from_json(config_json)
    if not config.enabled:
        return None
    if config_json not in _SANDBOXES:
        _SANDBOXES[config_json] = Sandbox(config).start()
        atexit.register(_SANDBOXES[config_json].close)
    return _SANDBOXES[config_json]


@dataclass(frozen=True)
class _Started:
    """The task's first event: Placed, and the mailbox box of the Ray worker running it."""

    placed: Placed
    box: str


class _Listener:
    """A Ray worker process's end of one executor's mailbox: one thread, started with the
    first instance the worker runs for that executor and kept, hands the control messages of
    its box to the instance they name (the one running, or none: then they are dropped).
    An instance thus costs the mailbox no call, unless it is sent a control message."""

    _all: dict[str, "_Listener"] = {}  # by executor (its mailbox)
    _all_lock = threading.Lock()

    def __init__(self, mailbox, executor: str) -> None:
        self.mailbox, self.executor = mailbox, executor
        self.box = ray.get_runtime_context().get_worker_id()
        self.running: dict[str, tuple[threading.Event, Any]] = {}  # instance: (cancel, control)
        threading.Thread(target=self._listen, daemon=True, name="qcompute-controls").start()

    @classmethod
    def of(cls, mailbox, executor: str) -> "_Listener":
        with cls._all_lock:
            if executor not in cls._all:
                cls._all[executor] = cls(mailbox, executor)
            return cls._all[executor]

    def _listen(self) -> None:
        while True:
            try:
                instance, message = ray.get(self.mailbox.take.remote(self.box))
            except Exception:  # the mailbox is gone: its executor shut down
                with self._all_lock:
                    self._all.pop(self.executor, None)
                return
            target = self.running.get(instance)
            if target is None:
                continue  # it ended meanwhile
            cancel, control = target
            if message.get("control") == "cancel":
                cancel.set()
                continue
            try:
                control.apply(message)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("bad control message %r: %s", message, exc)


def _run_on_node(spec_json: str, sandbox_json: str, mailbox,
                 executor: str) -> Iterator[list[Any]]:
    """The Ray task: _Started (Placed), then the runner's events, Finished last, in batches
    (each yield is all the events queued by then: a yield costs more than a list)."""
    from qcompute.server.runner import run_instance
    from qcompute.server.runner_control import InstanceControl
    from qcompute.server.runner_telemetry import InstanceCgroup
    from qcompute.server.sandbox import SandboxError

    taken_at = time.time()
    context = ray.get_runtime_context()
    node_id, hostname = context.get_node_id(), socket.gethostname()
    spec = InstanceSpec.from_json(spec_json)
    spec = replace(spec, env={**spec.env, NODE_ENV: f"{hostname}/{node_id}"})
    cancel, control = threading.Event(), InstanceControl()
    listener, name = _Listener.of(mailbox, executor), _instance_name(spec.key)
    listener.running[name] = (cancel, control)  # before the executor can post to it
    try:
        placed = Placed(spec.key, node_id=node_id, hostname=hostname,
                        placement_group=context.get_placement_group_id())
        started = _Started(placed, listener.box)
        try:
            sandbox = _worker_sandbox(sandbox_json)  # in this thread, which outlives it
        except (SandboxError, OSError) as exc:
            yield [started, Finished(spec.key, exit_code=None, error=(
                f"cannot set up the instances' sandbox on {hostname}: {exc}"))]
            return
        if sandbox is not None:
            InstanceCgroup.prepare(sandbox.config.memory_mb, sandbox.config.max_pids)
        events: queue.SimpleQueue = queue.SimpleQueue()

        def run() -> None:
            try:
                run_instance(spec, events.put, cancel, control, sandbox, taken_at)
            except BaseException as exc:  # never leave the stream without its Finished
                events.put(Finished(spec.key, exit_code=None, error=f"runner failure: {exc!r}"))

        threading.Thread(target=run, daemon=True, name="qcompute-runner").start()
        batch: list[Any] = [started]  # Placed goes with the runner's first events
        wait: Optional[float] = _FIRST_EVENTS_WAIT_SECONDS
        while True:
            try:
                batch.append(events.get(timeout=wait))
            except queue.Empty:
                pass
            except KeyboardInterrupt:  # ray.cancel: the runner stops the command, and ends
                cancel.set()
            while not events.empty():
                batch.append(events.get())
            yield batch
            if isinstance(batch[-1], Finished):
                break
            batch, wait = [], None
    finally:
        listener.running.pop(name, None)


def _instance_name(key: InstanceKey) -> str:
    return f"{key.task_uuid}/{key.instance_id}/{key.attempt}"


# -- the server side --------------------------------------------------------------------------

class _Run:
    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec
        self.stream: Any = None  # the ObjectRefGenerator
        self.options: dict[str, Any] = {}  # what it asked Ray for
        self.group: Optional[PoolGroup] = None  # its pool's placement group
        self.node_id: Optional[str] = None
        self.box: Optional[str] = None  # its Ray worker's mailbox box, once it started
        self.unsent: list[dict[str, Any]] = []  # control messages sent before that
        self.cancel_requested = False
        self.backstop: Optional[threading.Timer] = None
        self.ended = False  # its Finished is delivered: later events of its stream are dropped


class RayExecutor(ControlMessages, Executor):
    """Runs instances as Ray tasks on the cluster this process is connected to (``ray.init``
    is the caller's), each in ``sandbox`` (none by default), one slot of ``cpus_per_slot``
    CPUs each."""

    def __init__(self, on_event: Callable[[ExecutorEvent], None], *, cpus_per_slot: float = 1.0,
                 sandbox: Optional[SandboxConfig] = None, isolation: Optional[str] = None) -> None:
        super().__init__(on_event)
        if not ray.is_initialized():
            raise RuntimeError("RayExecutor needs a Ray connection: call ray.init first")
        self._cpus = cpus_per_slot
        self.sandboxed = bool(sandbox and sandbox.enabled)
        self.isolation = (isolation or ("bubblewrap sandbox" if self.sandboxed
                                        else "unsandboxed")) + " on Ray nodes"
        self._sandbox_json = (sandbox or SandboxConfig()).to_json()
        self._lock = threading.Lock()
        self._runs: dict[InstanceKey, _Run] = {}
        self._accepting = True
        self._nodes: list[_Node] = []
        self._nodes_read = -math.inf
        self._groups: dict[str, list[PoolGroup]] = {}  # by pool uuid
        here = ray.get_runtime_context().get_node_id()
        self._mailbox = ray.remote(_Mailbox).options(
            num_cpus=0, max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                here, soft=False)).remote()
        self._mailbox_id = uuid.uuid4().hex  # names it in the workers (_Listener.of)
        self._task = ray.remote(_run_on_node)
        self._options = {"num_returns": "streaming", "max_retries": 0, "num_cpus": cpus_per_slot}
        self._stop = threading.Event()
        threading.Thread(target=self._watch_nodes, daemon=True, name="ray-nodes").start()
        self._streams = asyncio.new_event_loop()  # follows every instance's stream
        threading.Thread(target=self._streams.run_forever, daemon=True,
                         name="ray-streams").start()

    # -- nodes ----------------------------------------------------------------------------------

    def nodes(self) -> list[_Node]:
        """The live nodes (read again every couple of seconds)."""
        with self._lock:
            if time.monotonic() - self._nodes_read < _NODES_TTL_SECONDS:
                return self._nodes
        self._read_nodes()
        return self._nodes

    def _read_nodes(self) -> set[str]:
        """Read the node list again; returns the ids of the nodes Ray lists as dead."""
        try:
            listed = ray.nodes()
            found = [_read_node(n, self._cpus) for n in listed if n.get("Alive")]
        except Exception as exc:  # the GCS is unreachable: keep what we knew
            log.warning("cannot list the Ray nodes: %s", exc)
            return set()
        with self._lock:
            self._nodes, self._nodes_read = found, time.monotonic()
        return {n["NodeID"] for n in listed if not n.get("Alive")}

    def _watch_nodes(self) -> None:
        """End the instances of the nodes Ray declared dead (their streams may never end)."""
        while not self._stop.wait(_NODES_TTL_SECONDS):
            with self._lock:
                placed = [run for run in self._runs.values() if run.node_id]
            if not placed:
                continue
            dead = self._read_nodes()
            for run in placed:
                if run.node_id in dead:
                    self._end(run, Finished(run.spec.key, exit_code=None,
                                            cancelled=run.cancel_requested, error=(
                        f"the Ray task ended on node {run.node_id}: Ray declared the node dead "
                        "(it stopped answering its health checks)")))
                    try:
                        ray.cancel(run.stream, force=True)
                    except Exception:
                        pass

    def node_kinds(self) -> list[NodeCapabilities]:
        return [node.capabilities for node in self.nodes()]

    def describe_nodes(self) -> list[dict[str, Any]]:
        """Each live node with its cores, memory, labels, and its slots: free ones, and those
        pools hold (the bundles of their placement groups placed there, busy or idle)."""
        with self._lock:
            busy = Counter(run.node_id for run in self._runs.values()
                           if run.node_id and (run.group is None or run.group.retired))
            groups = {group.pg.id.hex() for held in self._groups.values() for group in held}
        held: Counter[str] = Counter()
        if groups:
            try:
                table = placement_group_table()
            except Exception as exc:  # the GCS is unreachable: count what we know
                log.warning("cannot read the placement groups: %s", exc)
                table = {}
            for group in groups:
                info = table.get(group) or {}
                if info.get("state") == "CREATED":
                    held.update((info.get("bundles_to_node_id") or {}).values())
        return [node.to_json(busy[node.id], held[node.id]) for node in self.nodes()]

    @property
    def capacity(self) -> int:
        return sum(node.slots for node in self.nodes())

    def problem(self) -> Optional[str]:
        if not self._accepting:
            return "shut down"
        nodes = self.nodes()
        if not nodes:
            return "no Ray node is alive"
        if not any(node.slots for node in nodes):
            return f"no Ray node has {self._cpus:g} CPUs for a slot"
        return None

    def placement(self, constraints: Optional[list[dict[str, Any]]]) -> dict[str, Any]:
        """The Ray options that send an instance with these hardware constraints to a node
        that meets them."""
        from qcompute.server.services.hardware import unmet_constraints

        if not constraints:
            return {}
        selector: dict[str, str] = {}
        resources: dict[str, float] = {}
        rest = []
        nodes = self.nodes()
        custom = {name for node in nodes for name in node.resources}
        for constraint in constraints:
            key = constraint.get("specificationKey") \
                if constraint.get("discriminator") == "SpecificHardwareConstraint" else None
            if isinstance(key, str) and "=" in key:
                name, value = key.split("=", 1)
                selector[name] = value
            elif isinstance(key, str) and key in custom:
                resources[key] = _RESOURCE_SLIVER
            else:
                rest.append(constraint)
        if rest:
            meeting = [n.id for n in nodes if unmet_constraints([n.capabilities], rest) is None]
            if len(meeting) < len(nodes):
                selector["ray.io/node-id"] = f"in({','.join(meeting) or 'none'})"
        options: dict[str, Any] = {}
        if selector:
            options["label_selector"] = selector
        if resources:
            options["resources"] = resources
        return options

    # -- pools ----------------------------------------------------------------------------------

    def hold_pool_slots(self, pools: dict[str, PoolSlots]) -> None:
        """Each pool's slots as placement groups: the slots a pool takes in one round are one
        group of one bundle each (``cpus_per_slot`` CPUs and the custom resources its
        constraints name, on nodes its label constraints select). Ray cannot shrink a group:
        one is removed once all its slots are given back (or its pool ended)."""
        with self._lock:
            ended = [group for pool in list(self._groups) if pool not in pools
                     for group in self._groups.pop(pool)]
            known = {pool: [g for g in self._groups.get(pool, ())] for pool in pools}
        created: dict[str, PoolGroup] = {}
        for pool, held in pools.items():
            new = held.slots - {n for group in known[pool] for n in group.slots}
            if new:
                options = self.placement(held.hardware_constraints)
                created[pool] = PoolGroup(pool, frozenset(new),
                                          {"CPU": self._cpus, **options.get("resources", {})},
                                          options.get("label_selector", {}))
        with self._lock:
            for pool, held in pools.items():
                groups = self._groups.setdefault(pool, [])
                if pool in created:
                    groups.append(created[pool])
                for group in list(groups):
                    group.released = set(group.slots - held.slots)
                    if group.released == group.slots:  # removed once nothing runs in it
                        groups.remove(group)
                        group.retired = True
                        if not group.runs:
                            ended.append(group)
        for group in ended:  # a pool that ended: what still runs in it is being cancelled
            remove_group(group)

    def _group_for(self, pool_uuid: Optional[str]) -> Optional[PoolGroup]:
        """The pool's placement group with the most free bundles (the caller holds the lock)."""
        groups = self._groups.get(pool_uuid or "")
        return max(groups, key=lambda group: group.free) if groups else None

    def waiting(self, key: InstanceKey) -> Optional[dict[str, Any]]:
        with self._lock:
            run = self._runs.get(key)
            if run is None or run.node_id is not None or run.ended or not run.options:
                return None
            options, group = dict(run.options), run.group
        asks = {"CPU": options["num_cpus"], **options.get("resources", {})}
        wants = ", ".join(f"{name} {amount:g}" for name, amount in asks.items())
        if group is not None:
            pg = group.state()
            if pg["state"] == "CREATED":
                message = f"Ray is starting it in its pool's placement group {pg['id']}"
            else:
                message = (f"its pool's placement group {pg['id']} ({pg['bundles']} bundles of "
                           f"{wants}{on_nodes(group.selector)}) is not placed: Ray says "
                           f"{pg['state']}, {pg['schedulingState'] or 'no reason given'}")
            return {"message": message, "resources": asks, "placementGroup": pg}
        selector = options.get("label_selector") or {}
        nodes = [node for node in self.describe_nodes() if selects(node, selector, asks)]
        where = on_nodes(selector)
        if not nodes:
            found = "no live node qualifies"
        else:
            found = ", ".join(f"{n['hostname']} ({n['id'][:12]}) {n['freeSlots']} of "
                              f"{n['slots']} slots free" for n in nodes)
        return {"message": f"Ray has not given it a node yet: it asks for {wants}{where}; "
                           f"{found}", "resources": asks, "labelSelector": selector,
                "nodes": [{"id": n["id"], "hostname": n["hostname"], "slots": n["slots"],
                           "freeSlots": n["freeSlots"]} for n in nodes]}

    # -- instances ------------------------------------------------------------------------------

    def running(self) -> set[InstanceKey]:
        with self._lock:
            return set(self._runs)

    def submit(self, spec: InstanceSpec) -> None:
        run = _Run(spec)
        with self._lock:
            if not self._accepting:
                raise RuntimeError("the executor is shut down")
            if spec.key in self._runs:
                raise ValueError(f"instance {spec.key} is already running")
            self._runs[spec.key] = run
        try:
            options = {**self._options, **self.placement(spec.hardware_constraints)}
            with self._lock:
                run.group = self._group_for(spec.pool_uuid)
                if run.group is not None:  # its bundle's labels chose the node already
                    run.group.runs.add(spec.key)
                    options.pop("label_selector", None)
                    options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                        run.group.pg, placement_group_bundle_index=-1)
            run.options = options
            run.stream = self._task.options(**options).remote(
                spec.to_json(), self._sandbox_json, self._mailbox, self._mailbox_id)
        except Exception:
            with self._lock:
                self._runs.pop(spec.key, None)
                if run.group is not None:
                    run.group.runs.discard(spec.key)
            raise
        asyncio.run_coroutine_threadsafe(self._follow(run), self._streams)

    def cancel(self, key: InstanceKey) -> None:
        with self._lock:
            run = self._runs.get(key)
            if run is None or run.cancel_requested:
                return
            run.cancel_requested = True
            run.backstop = threading.Timer(run.spec.kill_grace_seconds + _BACKSTOP_EXTRA_SECONDS,
                                           self._force_cancel, (run,))
            run.backstop.daemon = True
            run.backstop.start()
            unplaced = run.node_id is None
        self._post(run, {"control": "cancel"})
        if unplaced:
            timer = threading.Timer(_UNPLACED_CANCEL_SECONDS, self._cancel_unplaced, (run,))
            timer.daemon = True
            timer.start()

    def _cancel_unplaced(self, run: _Run) -> None:
        """A cancelled instance still without a node is taken out of Ray's queue. Not at once:
        Ray interrupts a task it has just started (KeyboardInterrupt), where the held cancel
        message stops it as the runner does, with its own Finished."""
        with self._lock:
            if run.node_id is not None or run.ended:
                return
        try:
            ray.cancel(run.stream)
        except Exception as exc:
            log.warning("ray.cancel of %s failed: %s", run.spec.key, exc)

    def _control(self, key: InstanceKey, message: dict[str, Any]) -> None:
        with self._lock:
            run = self._runs.get(key)
            if run is None or run.cancel_requested:
                raise KeyError(f"instance {key} is not running here")
        self._post(run, message)

    def _post(self, run: _Run, message: dict[str, Any]) -> None:
        """Send a control message to the worker running ``run`` (once it started)."""
        message = json.loads(json.dumps(message))
        with self._lock:
            if run.box is None:
                run.unsent.append(message)
                return
        self._mailbox.post.remote(run.box, _instance_name(run.spec.key), message)

    def _started(self, run: _Run, started: _Started) -> None:
        with self._lock:
            run.node_id, run.box = started.placed.node_id, started.box
            unsent, run.unsent = run.unsent, []
        for message in unsent:
            self._mailbox.post.remote(run.box, _instance_name(run.spec.key), message)

    def _force_cancel(self, run: _Run) -> None:
        """The backstop: the cancelled instance did not end in time (or never started)."""
        with self._lock:
            if self._runs.get(run.spec.key) is not run:
                return
        log.warning("%s did not stop in time: force-cancelling its Ray task", run.spec.key)
        try:
            ray.cancel(run.stream, force=True)
        except Exception as exc:
            log.warning("ray.cancel of %s failed: %s", run.spec.key, exc)

    async def _follow(self, run: _Run) -> None:
        """One instance's stream, until its Finished (or the error that replaces it)."""
        key, end = run.spec.key, None
        try:
            async for ref in run.stream:
                for event in await ref:
                    if isinstance(event, _Started):
                        self._started(run, event)
                        event = event.placed
                    if isinstance(event, Finished):
                        end = event
                        break
                    if not run.ended:
                        self._deliver(event)
                if end is not None:
                    break
        except ray.exceptions.TaskCancelledError:
            end = Finished(key, exit_code=None, cancelled=True)
        except Exception as exc:  # the node, its raylet or the worker died: not the command
            where = f" on node {run.node_id}" if run.node_id else ""
            end = Finished(key, exit_code=None, cancelled=run.cancel_requested,
                           error=f"the Ray task ended{where}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}")
        if end is None:
            end = Finished(key, exit_code=None, error="the Ray task ended without reporting")
        self._end(run, end)

    def _end(self, run: _Run, end: Finished) -> None:
        """Deliver the run's Finished, once (its stream, or the node watcher)."""
        with self._lock:
            if run.ended:
                return
            run.ended = True
            if run.backstop is not None:
                run.backstop.cancel()
            group = run.group
            if group is not None:
                group.runs.discard(run.spec.key)
                if not (group.retired and not group.runs):
                    group = None
        if group is not None:  # its last run ended in a group its pool gave back
            remove_group(group)
        try:
            self._deliver(end)
        finally:
            with self._lock:
                if self._runs.get(run.spec.key) is run:
                    del self._runs[run.spec.key]

    def shutdown(self) -> None:
        with self._lock:
            self._accepting = False
            runs = list(self._runs.values())
        for run in runs:
            self.cancel(run.spec.key)
        grace = max((run.spec.kill_grace_seconds + _BACKSTOP_EXTRA_SECONDS for run in runs),
                    default=0.0)
        deadline = time.monotonic() + grace + 2.0
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._silenced = True
        self._stop.set()
        self.hold_pool_slots({})
        self._streams.call_soon_threadsafe(self._streams.stop)
        try:
            ray.kill(self._mailbox)
        except Exception:
            pass


def start_ray(settings) -> None:
    """Connect this process to the settings' Ray cluster, or start a head in it; token
    authentication on, with the token of ``settings.resolved_ray_token_file``."""
    token = settings.resolved_ray_token_file
    if not token.exists():
        if settings.ray_address:
            raise RuntimeError(f"no Ray token at {token}: copy the head's token file there "
                               "(docs/ray.rst)")
        import secrets

        token.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    use_token(token)
    if ray.is_initialized():
        return
    # Joining, this process is a driver on a node of this machine: Ray finds the raylets in the
    # process table (which network namespaces share) and prefers the head's: name ours.
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=False,
                 _node_ip_address=settings.resolved_ray_node_ip)
        return
    here = detect(settings.data_dir, settings.node)
    ray.init(num_cpus=settings.max_concurrent_instances * settings.ray_cpus_per_slot,
             include_dashboard=False, log_to_driver=False, labels=node_labels(here),
             _node_ip_address=settings.resolved_ray_node_ip)
    address = ray.get_runtime_context().gcs_address
    (settings.data_dir / "ray-address").write_text(address + "\n")
    log.info("started a Ray head at %s; add nodes with: qcompute node join %s", address, address)


def use_token(path) -> None:
    """Token authentication with the token in ``path``, for this process and its children.
    Ray reads the mode when it is imported: refresh what it cached."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
