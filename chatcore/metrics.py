"""Prometheus metrics of the chat traffic an adapter sees: messages, replies and errors by code,
time to first token, decode speed, replies in flight and open connections; and what the reply
pipeline's steps found and did.

Each ``Metrics`` has its own registry (no global state: several apps may share a process);
adapters feed it by passing every reply event of a message through a ``ReplyTracker``; the
pipeline counts each finding with ``step_action``.
"""

from __future__ import annotations

import time
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from chatcore.events import Reply, ReplyChunk, ReplyError, ReplyEvent

FIRST_TOKEN_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKENS_PER_SECOND_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


class Metrics:
    """The chatcore_* metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.messages = Counter(
            "chatcore_messages", "Messages received from users.", ["adapter"], registry=registry
        )
        self.replies = Counter(
            "chatcore_replies", "Replies delivered in full.", ["adapter"], registry=registry
        )
        self.errors = Counter(
            "chatcore_errors",
            "Errors sent to clients, by code (engine codes and the adapter's own).",
            ["adapter", "code"],
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "chatcore_time_to_first_token_seconds",
            "Seconds from a message's arrival to the first streamed piece of its reply.",
            ["adapter"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.tokens_per_second = Histogram(
            "chatcore_tokens_per_second",
            "Decode speed of a streamed reply: tokens after the first, per second.",
            ["adapter"],
            buckets=TOKENS_PER_SECOND_BUCKETS,
            registry=registry,
        )
        self.replies_in_flight = Gauge(
            "chatcore_replies_in_flight",
            "Messages accepted whose reply has not ended yet.",
            ["adapter"],
            registry=registry,
        )
        self.connections = Gauge(
            "chatcore_connections", "Open client connections.", ["adapter"], registry=registry
        )
        self.step_actions = Counter(
            "chatcore_pipeline_actions",
            "What pipeline steps did, by step, stage (input, output), category and action "
            "(blocked, redacted, warned, changed).",
            ["step", "stage", "category", "action"],
            registry=registry,
        )

    def error(self, adapter: str, code: str) -> None:
        """Count one error sent to a client."""
        self.errors.labels(adapter, code).inc()

    def step_action(self, step: str, stage: str, category: str, action: str) -> None:
        """Count one thing a pipeline step did (safe to call from a worker thread)."""
        self.step_actions.labels(step, stage, category, action).inc()

    def track(self, adapter: str) -> ReplyTracker:
        """``with metrics.track(adapter) as tracker: tracker.observe(event)`` for one message."""
        return ReplyTracker(self, adapter)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """Every metric, and its media type: the format the ``Accept`` header of a scrape asks
        for (OpenMetrics when Prometheus prefers it), else the Prometheus text format 0.0.4."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class ReplyTracker:
    """Watches the events of one message: counts it, times its first chunk and its decode
    speed, and counts how it ended. A reply left before its end counts as ``cancelled``."""

    def __init__(self, metrics: Metrics, adapter: str) -> None:
        self._metrics = metrics
        self._adapter = adapter
        self._started = 0.0
        self._first_chunk: float | None = None
        self.ended = False

    def __enter__(self) -> ReplyTracker:
        self._started = time.monotonic()
        self._metrics.messages.labels(self._adapter).inc()
        self._metrics.replies_in_flight.labels(self._adapter).inc()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.ended:
            self.observe_error("cancelled")

    def observe(self, event: ReplyEvent) -> None:
        """Account for one event of the reply, in the order they stream. The reply ends (is no
        longer in flight) at its ``Reply`` or ``ReplyError``; a ``Notice`` after it counts for
        nothing."""
        now = time.monotonic()
        if isinstance(event, ReplyChunk):
            if self._first_chunk is None:
                self._first_chunk = now
                self._metrics.time_to_first_token.labels(self._adapter).observe(now - self._started)
        elif isinstance(event, Reply):
            self._end()
            self._metrics.replies.labels(self._adapter).inc()
            tokens = event.usage.completion_tokens
            if self._first_chunk is not None and tokens > 1 and now > self._first_chunk:
                rate = (tokens - 1) / (now - self._first_chunk)
                self._metrics.tokens_per_second.labels(self._adapter).observe(rate)
        elif isinstance(event, ReplyError):
            self.observe_error(event.code)

    def observe_error(self, code: str) -> None:
        """The reply ended with an error of ``code``."""
        if not self.ended:
            self._end()
            self._metrics.error(self._adapter, code)

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self._metrics.replies_in_flight.labels(self._adapter).dec()
