"""Several API replicas on one PostgreSQL database.

Every replica serves every request; exactly one runs the scheduler (and so the executor's
work): the one holding a session-level advisory lock on a connection of its own. The others
are standbys: they retry the lock every ``leader_retry_seconds``; when the holder dies its
connection closes, PostgreSQL releases the lock, a standby takes it and starts its scheduler,
which reconciles from the database as at any start (instances the dead holder ran are infra
failures, re-queued within ``max_infra_retries``).

The replicas talk through LISTEN/NOTIFY on the same database:

* ``qcompute_events``: what a standby's routes would have put on its own scheduler's queue (a
  submit, an abort, a snapshot ...), for the holder's scheduler;
* ``qcompute_changes`` and ``qcompute_output``: the task uuids whose state or output changed,
  so that long polls on every replica wake (the :class:`~qcompute.server.changes.TaskChanges`
  feeds mirror their local publications here);
* ``qcompute_telemetry``: the holder's latest telemetry sample of each running instance (and
  the instances that ended), so that every replica's task and pool documents carry it. The
  sender keeps the latest sample of an instance per batch: about one notification a second per
  40 running instances.

A holder that loses its lock connection cannot know whether another replica took the lock:
it stops its process (SIGTERM), and its runners with it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import signal
import threading
import uuid
from typing import TYPE_CHECKING, Any, Iterable, Optional

import psycopg
from sqlalchemy.engine import make_url

from .executors.base import InstanceKey, Telemetry

if TYPE_CHECKING:
    from .scheduler import Scheduler
    from .services.output import OutputStore

log = logging.getLogger(__name__)

__all__ = ["Replica", "LOCK_KEY"]

LOCK_KEY = int.from_bytes(b"qcompute", "big")  # the scheduler's advisory lock (a bigint)
EVENTS, CHANGES, OUTPUT = "qcompute_events", "qcompute_changes", "qcompute_output"
TELEMETRY = "qcompute_telemetry"
CHANNELS = (EVENTS, CHANGES, OUTPUT, TELEMETRY)
_PAYLOAD_BYTES = 7000  # NOTIFY's payload must stay under 8000 bytes


def conninfo(database_url: str) -> str:
    """The libpq URL of an SQLAlchemy ``postgresql+psycopg://`` URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(
        hide_password=False)


def encode_event(event: Any) -> dict:
    fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    if "keys" in fields:
        fields["keys"] = [dataclasses.astuple(k) for k in fields["keys"]]
    return {"type": type(event).__name__, "fields": fields}


def decode_event(data: dict, kinds: dict[str, type]) -> Any:
    fields = data["fields"]
    if "keys" in fields:
        fields["keys"] = tuple(InstanceKey(*k) for k in fields["keys"])
    for name in ("task_ids", "task_uuids"):
        if name in fields:
            fields[name] = tuple(fields[name])
    return kinds[data["type"]](**fields)


def encode_telemetry(item: "Telemetry | InstanceKey") -> list:
    """``[key]`` for an instance that ended, ``[key, *values]`` for a sample."""
    if isinstance(item, InstanceKey):
        return [dataclasses.astuple(item)]
    values = [getattr(item, f.name) for f in dataclasses.fields(item)
              if f.init and f.name != "key"]
    return [dataclasses.astuple(item.key), *values]


def apply_telemetry(store, items: list) -> None:
    for key, *values in items:
        key = InstanceKey(*key)
        if values:
            store.update(Telemetry(key, *values), mirror=False)
        else:
            store.forget(key, mirror=False)


def _latest_per_instance(items: list) -> list:
    return list({tuple(item[0]): item for item in items}.values())


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Replica:
    """One replica's side: the lock, the listener, and the sender of notifications."""

    def __init__(self, database_url: str, scheduler: "Scheduler", outputs: "OutputStore", *,
                 retry_seconds: float) -> None:
        self.conninfo = conninfo(database_url)
        self.scheduler, self.outputs = scheduler, outputs
        self.retry_seconds = retry_seconds
        self.id = uuid.uuid4().hex  # our own notifications come back: we skip them
        self.leading = False
        self._stopped = threading.Event()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._listen = self._connect()
        for channel in CHANNELS:
            self._listen.execute(f"LISTEN {channel}")
        self._listener = threading.Thread(target=self._run, name="qcompute-replica",
                                          daemon=True)
        self._sender = threading.Thread(target=self._send_all, name="qcompute-notify",
                                        daemon=True)

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=True)

    def start(self) -> None:
        """Take the lock if it is free (then the scheduler starts before the first request),
        else stand by; mirror the change feeds."""
        scheduler = self.scheduler
        scheduler.changes.mirror = lambda uuids: self._outbox.put((CHANGES, uuids))
        self.outputs.changes.mirror = lambda uuids: self._outbox.put((OUTPUT, uuids))
        scheduler.telemetry.mirror = \
            lambda item: self._outbox.put((TELEMETRY, [encode_telemetry(item)]))
        self._sender.start()
        if not self._try_lock():
            scheduler.relay = lambda event: self._outbox.put((EVENTS, [encode_event(event)]))
            log.info("standby replica: another replica holds the scheduler; retrying the lock "
                     "every %s s", self.retry_seconds)
        self._listener.start()

    def stop(self) -> None:
        """Stop the scheduler (if this replica runs it), then release the lock."""
        self._stopped.set()
        self.scheduler.stop()
        self._outbox.put(None)
        self._sender.join(timeout=10)
        self._listen.close()  # releases the lock, and ends the listener's wait
        self._listener.join(timeout=10)

    def _try_lock(self) -> bool:
        if self._stopped.is_set():
            return False
        row = self._listen.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if not row[0]:
            return False
        log.info("this replica holds the scheduler lock: starting the scheduler")
        self.leading = True
        self.scheduler.relay = None
        try:
            self.scheduler.start()
        except Exception:
            if not self._listener.is_alive():
                raise  # at start: the server does not start
            log.critical("the scheduler could not take over; stopping this server, which "
                         "releases the lock for another replica", exc_info=True)
            os.kill(os.getpid(), signal.SIGTERM)
        return True

    def _run(self) -> None:
        kinds = self.scheduler.event_kinds()
        while not self._stopped.is_set():
            try:
                for note in self._listen.notifies(timeout=self.retry_seconds):
                    self._receive(note.channel, json.loads(note.payload), kinds)
                if not self.leading:
                    self._try_lock()
                else:
                    self._listen.execute("SELECT 1")  # the lock lives as long as this does
            except psycopg.Error:
                if self._stopped.is_set():
                    return
                if self.leading:
                    log.critical("the connection holding the scheduler lock is lost: another "
                                 "replica may take it; stopping this server")
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                log.exception("the replica's connection failed; reconnecting")
                self._stopped.wait(self.retry_seconds)
                try:
                    self._listen = self._connect()
                    for channel in CHANNELS:
                        self._listen.execute(f"LISTEN {channel}")
                except psycopg.Error:
                    continue

    def _receive(self, channel: str, message: dict, kinds: dict[str, type]) -> None:
        if message["from"] == self.id:
            return
        if channel == EVENTS:
            if self.leading:  # a standby drops them: its scheduler reconciles at takeover
                for item in message["items"]:
                    self.scheduler.post(decode_event(item, kinds))
        elif channel == CHANGES:
            self.scheduler.changes.publish(message["items"], mirror=False)
        elif channel == OUTPUT:
            self.outputs.changes.publish(message["items"], mirror=False)
        elif channel == TELEMETRY:
            apply_telemetry(self.scheduler.telemetry, message["items"])

    def _send_all(self) -> None:
        """One thread sends every notification: what queued up meanwhile goes in one batch."""
        connection: Optional[psycopg.Connection] = None
        while True:
            batch = [self._outbox.get()]
            while True:
                try:
                    batch.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                if connection is not None:
                    connection.close()
                return
            merged: dict[str, list] = {}
            for channel, items in batch:
                merged.setdefault(channel, []).extend(items)
            try:
                connection = connection if connection and not connection.closed \
                    else self._connect()
                for channel, items in merged.items():
                    if channel == TELEMETRY:
                        items = _latest_per_instance(items)
                    elif channel != EVENTS:
                        items = sorted(set(items))
                    size = {EVENTS: 100, TELEMETRY: 40}.get(channel, 150)
                    for part in _chunks(items, size):
                        payload = json.dumps({"from": self.id, "items": part})
                        if len(payload) > _PAYLOAD_BYTES:  # large events: one by one
                            for item in part:
                                self._notify(connection, channel, [item])
                        else:
                            connection.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            except psycopg.Error:
                log.exception("notifications to the other replicas were lost")
                connection = None

    def _notify(self, connection: psycopg.Connection, channel: str, items: list) -> None:
        connection.execute("SELECT pg_notify(%s, %s)",
                           (channel, json.dumps({"from": self.id, "items": items})))
