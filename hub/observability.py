"""Structured logs (structlog, JSON by default) and Prometheus metrics (one registry per app).

A registry per app, not the global default, keeps several apps in one process (tests) apart and
lets every later subsystem register its metrics on the app's :class:`Metrics`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO, cast

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from hub.config import ServerSettings

if TYPE_CHECKING:
    from hub.bookkeeping import BackgroundWriter
    from hub.replica_view import CapacityView
    from inference.registry import WorkerRegistry


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of the write (it may be swapped later,
    as test runners and the CLI runner do), never to a stream captured at configuration."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _json_line(event: Any, **options: Any) -> str:
    """One log event as JSON text, by orjson: the standard encoder was 2 % of the hub's CPU
    under load (an access line per request). ``options["default"]`` is structlog's fallback
    for values JSON cannot hold (their ``repr``); UUIDs and datetimes are written as text."""
    fallback = options.get("default")
    return orjson.dumps(event, default=fallback, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(settings: ServerSettings) -> None:
    """Route structlog and stdlib logging to stderr as JSON (or console) lines."""
    level = getattr(logging, settings.log_level.upper())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")


class _BookkeepingLosses(Collector):
    """Lost and dropped background writes by kind, read from the writer at scrape time.

    The writer keeps its own tallies (it knows nothing of Prometheus); they only grow, as a
    counter must.
    """

    def __init__(self) -> None:
        self.writer: BackgroundWriter | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        lost = CounterMetricFamily(
            "iamine_bookkeeping_lost",
            "Background writes that failed even when retried alone, by kind.",
            labels=["kind"],
        )
        dropped = CounterMetricFamily(
            "iamine_bookkeeping_dropped",
            "Background writes refused because the queue was full, by kind.",
            labels=["kind"],
        )
        if self.writer is not None:
            for kind, count in sorted(self.writer.lost.items()):
                lost.add_metric([kind], count)
            for kind, count in sorted(self.writer.dropped.items()):
                dropped.add_metric([kind], count)
        yield lost
        yield dropped


class _ReplicaSnapshots(Collector):
    """Other replicas' capacity snapshots applied and refused, read from the view at scrape time.

    A refused snapshot (a value out of range, a forged replica id) is logged as
    ``replica_capacity_unreadable``; a rising count is a replica sending garbage.
    """

    def __init__(self) -> None:
        self.view: CapacityView | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        if self.view is None:
            return
        yield CounterMetricFamily(
            "iamine_replica_snapshots_applied",
            "Capacity snapshots of other hub replicas applied to this replica's view.",
            value=self.view.updates,
        )
        yield CounterMetricFamily(
            "iamine_replica_snapshots_refused",
            "Capacity snapshots of other hub replicas refused as malformed (logged).",
            value=self.view.refused,
        )


class Metrics:
    """The hub's Prometheus collectors, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._workers: WorkerRegistry | None = None
        self.http_requests = Counter(
            "iamine_http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "iamine_http_request_duration_seconds",
            "Time to the response's first byte, by method and route template.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.http_in_flight = Gauge(
            "iamine_http_requests_in_flight", "HTTP requests being served.", registry=self.registry
        )
        self.workers_connected = Gauge(
            "iamine_workers_connected", "Workers connected to this hub.", registry=self.registry
        )
        self.worker_slots_free = Gauge(
            "iamine_worker_slots_free", "Free job slots across workers.", registry=self.registry
        )
        self.bookkeeping_pending = Gauge(
            "iamine_bookkeeping_pending",
            "Background writes not yet applied.",
            registry=self.registry,
        )
        self.bookkeeping_capacity = Gauge(
            "iamine_bookkeeping_capacity",
            "Most background writes the queue holds before it drops new ones.",
            registry=self.registry,
        )
        self._bookkeeping_losses = _BookkeepingLosses()
        self.registry.register(self._bookkeeping_losses)
        self._replica_snapshots = _ReplicaSnapshots()
        self.registry.register(self._replica_snapshots)
        self.exclusions = Counter(
            "iamine_worker_exclusions_total",
            "Workers excluded, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.routes = Counter(
            "iamine_routes_total",
            "Chat jobs by model and route taken (direct, queued, fallback, forwarded, degraded).",
            ["route"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "iamine_queue_wait_seconds",
            "Time jobs waited for a worker.",
            registry=self.registry,
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.queue_depth = Gauge(
            "iamine_queue_depth", "Jobs waiting for a worker.", registry=self.registry
        )
        self.worker_in_flight = Gauge(
            "iamine_worker_in_flight",
            "Jobs running on each worker.",
            ["worker"],
            registry=self.registry,
        )
        self.worker_speed = Gauge(
            "iamine_worker_tokens_per_second",
            "Measured generation speed of each worker.",
            ["worker"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "iamine_auth_failures_total",
            "Rejected bearer tokens by reason code.",
            ["code"],
            registry=self.registry,
        )
        self.ledger_pending = Gauge(
            "iamine_ledger_pending",
            "Ledger operations of chats (hold, post, void) queued and not yet applied.",
            registry=self.registry,
        )
        self.ledger_retries = Counter(
            "iamine_ledger_retries_total",
            "Ledger operations retried after a transient database error, by operation.",
            ["op"],
            registry=self.registry,
        )
        self.ledger_group_size = Histogram(
            "iamine_ledger_group_size",
            "Chats whose hold and ending were committed together in one ledger transaction.",
            buckets=(2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.ledger_failures = Counter(
            "iamine_ledger_failures_total",
            "Ledger operations that failed for good (logged with the job id), by operation.",
            ["op"],
            registry=self.registry,
        )

    def watch(self, registry: WorkerRegistry, writer: BackgroundWriter) -> None:
        """Read live gauges from the worker registry and the background writer at scrape time."""
        self.workers_connected.set_function(lambda: len(registry.workers))
        self.worker_slots_free.set_function(
            lambda: sum(max(w.free_slots, 0) for w in registry.workers.values())
        )
        self.bookkeeping_pending.set_function(lambda: writer.pending)
        self.bookkeeping_capacity.set_function(lambda: writer.capacity)
        self._bookkeeping_losses.writer = writer
        self.queue_depth.set_function(lambda: len(registry.queue))
        self._workers = registry

    def watch_replicas(self, view: CapacityView) -> None:
        """Export the counts of the replica capacity view (only a hub on the bus has one)."""
        self._replica_snapshots.view = view

    def collect_workers(self) -> None:
        """Refresh the per-worker gauges (called before each scrape)."""
        registry = self._workers
        if registry is None:
            return
        self.worker_in_flight.clear()
        self.worker_speed.clear()
        for link in registry.workers.values():
            self.worker_in_flight.labels(link.name).set(len(link.jobs))
            speed = registry.router.speed(link.id)
            if speed is not None:
                self.worker_speed.labels(link.name).set(speed)
