"""Runs the registered pipeline steps: input detectors over a message, rewriters and output
detectors over a reply as it streams, with each step's policy from ``[pipeline.steps.<name>]``.

Step code runs bounded (``plugins.hook_timeout``) in worker threads: all input detectors in one
call per message, all output steps in one call per streamed piece. A detector that raises or
runs out of time fails closed (``Blocked``, category ``step_failed``); a rewriter that does is
left out for the rest of the reply, its input passing through. Every finding is counted
(``Metrics.step_action``) and logged by step, category and action, never with the text.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from chatcore.bounded import Raised, TimedOut, Worker, run_bounded
from chatcore.config import Settings, step_settings
from chatcore.events import FinishReason, Message
from chatcore.metrics import Metrics
from chatcore.pipeline.steps import (
    Action,
    Blocked,
    Detector,
    DetectorSettings,
    DetectorSpec,
    Finding,
    Policy,
    Rewriter,
    RewriterSettings,
    RewriterSpec,
    Stage,
    StepContext,
    TextFilter,
)
from chatcore.plugins import PluginError
from chatcore.services import Services

log = logging.getLogger(__name__)

STEP_FAILED = "step_failed"
"""The category of a detector that raised or ran out of time: it blocks."""
FAILED_REASON = "a safety check could not finish"
GENERIC_REASON = "it was flagged by a safety check"
_ACTION: dict[Policy, Action] = {"block": "blocked", "redact": "redacted", "warn": "warned"}
_RANK: dict[Policy, int] = {"off": 0, "warn": 1, "redact": 2, "block": 3}


@dataclass(frozen=True, slots=True)
class BuiltStep:
    """A registered step with its validated settings and its instance, made once at start."""

    name: str
    owner: str
    settings: DetectorSettings | RewriterSettings
    detector: Detector | None = None
    rewriter: Rewriter | None = None

    @property
    def order(self) -> int:
        return self.settings.order


Reports = deque[tuple[str, str, Action]]
"""What steps did, as ``(step, category, action)``, gathered in a worker thread and counted
and logged on the event loop."""


class Steps:
    """The pipeline's steps in their configured order: the input detectors, and the output
    steps (rewriters and output detectors, mixed, by ``order``; ties by name)."""

    def __init__(
        self, steps: Sequence[BuiltStep], *, seconds: float, metrics: Metrics | None = None
    ) -> None:
        ordered = sorted(steps, key=lambda s: (s.order, s.name))
        self.inputs = [
            s
            for s in ordered
            if isinstance(s.settings, DetectorSettings) and s.settings.input != "off"
        ]
        self.outputs = [
            s
            for s in ordered
            if (isinstance(s.settings, DetectorSettings) and s.settings.output != "off")
            or (isinstance(s.settings, RewriterSettings) and s.settings.enabled)
        ]
        self.seconds = seconds
        self.metrics = metrics
        self.worker = Worker("chatcore-pipeline")
        """Runs step code: sync steps are expected (``find``, ``feed``), async ones are not."""

    def close(self) -> None:
        self.worker.stop()

    def report(
        self, message: Message, step: str, stage: Stage, category: str, action: Action
    ) -> None:
        """Count and log one finding or change: its step, stage, category and action only."""
        if self.metrics is not None:
            self.metrics.step_action(step, stage, category, action)
        level = logging.WARNING if action == "blocked" else logging.INFO
        log.log(level, "message %s: %s %s %s (%s)", message.id, step, action, category, stage)

    async def check_input(self, message: Message) -> Message:
        """``message`` with the input detectors' redactions applied; raises ``Blocked`` when a
        finding's policy is ``block`` or a detector fails (both already counted and logged)."""
        if not self.inputs:
            return message
        reports: Reports = deque()
        position = _Position()
        kwargs = {"steps": self.inputs, "text": message.text, "into": reports, "at": position}
        try:
            text: str = await run_bounded(_check_all, kwargs, self.seconds, self.worker)
        except TimedOut:
            self.publish(message, "input", reports)
            raise self.fail_closed(message, "input", position.step, _LATE) from None
        except Raised as raised:
            self.publish(message, "input", reports)
            if isinstance(raised.error, Blocked):
                raise raised.error from None
            raise self.fail_closed(message, "input", position.step, _what(raised.error)) from None
        self.publish(message, "input", reports)
        if text == message.text:
            return message
        return dataclasses.replace(message, text=text)

    async def open_output(
        self,
        message: Message,
        services: Services,
        tokens_left: Callable[[], int | None] = lambda: None,
    ) -> OutputChain | None:
        """The output steps for one reply, or None when there are none (no cost per piece).
        Each rewriter opens its filter in a bounded call of its own; one that raises or runs
        out of time is left out of this reply."""
        if not self.outputs:
            return None
        chain = OutputChain(self, message)
        for step in self.outputs:
            if step.detector is not None:
                chain.filters.append(_DetectorFilter(step, chain.reports))
                continue
            assert step.rewriter is not None
            context = StepContext(message, services, chain.reporter(step.name), tokens_left)
            opened: TextFilter | None = None
            try:
                opening = partial(step.rewriter.open, context)
                opened = await run_bounded(opening, {}, self.seconds, self.worker)
            except TimedOut:
                log.error("rewriter %s %s opening a reply; left out", step.name, _LATE)
            except Raised as raised:
                problem = _what(raised.error)
                log.error("rewriter %s %s opening a reply; left out", step.name, problem)
            chain.filters.append(_RewriterFilter(step, opened))
        return chain

    def publish(self, message: Message, stage: Stage, reports: Reports) -> None:
        """Count and log, on the event loop, what the steps reported (emptying ``reports``)."""
        while reports:
            step, category, action = reports.popleft()
            self.report(message, step, stage, category, action)

    def fail_closed(self, message: Message, stage: Stage, step: str, problem: str) -> Blocked:
        """A detector that raised or ran out of time: it blocks (fails closed)."""
        log.error("message %s: step %s %s on %s; blocked", message.id, step, problem, stage)
        self.report(message, step, stage, STEP_FAILED, "blocked")
        return Blocked(step, STEP_FAILED, FAILED_REASON)


_LATE = "did not finish in time (plugins.hook_timeout)"
_WAITING = "pipeline"
"""The step a bounded call names before it ran any: no worker thread was free in time."""


@dataclass
class _Position:
    """Where a bounded call is: the step it runs, the index of that step and the text it got,
    and the token of the run the event loop still waits for (an abandoned run stops)."""

    step: str = _WAITING
    index: int = -1
    text: str = ""
    token: object = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _check_all(steps: Sequence[BuiltStep], text: str, into: Reports, at: _Position) -> str:
    """Run every input detector over ``text`` in order, each on the text the previous left
    (after its redactions); raise ``Blocked`` at the first block. Runs in a worker thread."""
    for step in steps:
        at.step = step.name
        text = _apply(step, "input", text, _findings(step, text), into)
    return text


def _hold(step: BuiltStep, text: str, span: int) -> int:
    """How many trailing characters of ``text`` the detector must still hold back on a stream:
    its ``hold(text)`` when it has one (bounded by ``max_span``), else ``max_span``."""
    hold = getattr(step.detector, "hold", None)
    if hold is None:
        return span
    try:
        wanted = int(hold(text))
    except Exception as error:
        raise _StepFailed(step.name, _what(error)) from None
    return max(0, min(span, wanted))


def _findings(step: BuiltStep, text: str) -> list[Finding]:
    """What ``step`` finds in ``text``, checked: a detector that raises or returns nonsense
    fails closed."""
    assert step.detector is not None
    try:
        found = list(step.detector.find(text))
    except Exception as error:
        raise _StepFailed(step.name, _what(error)) from None
    for finding in found:
        if not (
            isinstance(finding, Finding)
            and isinstance(finding.category, str)
            and finding.category
            and 0 <= finding.start <= finding.end <= len(text)
        ):
            raise _StepFailed(step.name, "returned a finding outside the text")
    return found


def _apply(
    step: BuiltStep,
    stage: Stage,
    text: str,
    findings: Sequence[Finding],
    into: Reports,
) -> str:
    """Apply the step's policy to each finding: ``block`` (any) raises ``Blocked``; ``redact``
    replaces the finding by ``[<category> removed]``; ``warn`` only reports it."""
    settings = step.settings
    assert isinstance(settings, DetectorSettings)
    judged = [(f, _policy(settings, stage, f.category)) for f in findings]
    judged = [(f, p) for f, p in judged if p != "off"]
    if not judged:
        return text
    strongest = max(judged, key=lambda fp: _RANK[fp[1]])
    if strongest[1] == "block":
        category = strongest[0].category
        into.append((step.name, category, "blocked"))
        assert step.detector is not None
        reason = step.detector.reasons.get(category, GENERIC_REASON)
        raise Blocked(step.name, category, reason)
    for finding, policy in judged:
        into.append((step.name, finding.category, _ACTION[policy]))
    return _redact(text, [f for f, p in judged if p == "redact"])


def _policy(settings: DetectorSettings, stage: Stage, category: str) -> Policy:
    policy_for = getattr(settings, "policy_for", None)
    if policy_for is not None:  # a detector with per-category policies narrows the stage's
        chosen: Policy = policy_for(stage, category)
        return chosen
    return settings.input if stage == "input" else settings.output


def _redact(text: str, findings: Sequence[Finding]) -> str:
    """``text`` with each finding replaced by ``[<category> removed]``; overlapping findings
    become one, named by the first."""
    out, position = [], 0
    for finding in sorted(findings, key=lambda f: (f.start, -f.end)):
        if finding.start < position:  # overlaps the one just removed: remove it all
            position = max(position, finding.end)
            continue
        out.append(text[position : finding.start])
        out.append(f"[{finding.category} removed]")
        position = finding.end
    out.append(text[position:])
    return "".join(out)


class _StepFailed(Exception):
    """A step raised or misbehaved; ``problem`` never holds the text it saw."""

    def __init__(self, step: str, problem: str) -> None:
        super().__init__(f"{step}: {problem}")
        self.step = step
        self.problem = problem


def _what(error: BaseException) -> str:
    """An exception described without its message (which may quote the text): its type and
    where it was raised."""
    if isinstance(error, _StepFailed):
        return error.problem
    where = ""
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    if trace is not None:
        code = trace.tb_frame.f_code
        where = f" at {code.co_filename.rsplit('/', 1)[-1]}:{trace.tb_lineno} in {code.co_name}"
    return f"raised {type(error).__name__}{where}"


# -- output -------------------------------------------------------------------------------------


class _DetectorFilter:
    """A detector on the stream. It scans the held text and each new piece, with up to
    ``max_span`` characters of what was already released before them as read-only context
    (a finding may need the words before it: "password is ..."), and releases all but what
    the detector's ``hold`` (else ``max_span``) says may still become a finding; a finding
    that crosses that line is held whole. Findings that end in the context were decided when
    that text was released."""

    def __init__(self, step: BuiltStep, into: Reports) -> None:
        assert step.detector is not None
        self.step = step
        self.span = max(0, int(step.detector.max_span))
        self.into = into
        self.held = ""
        self.context = ""

    def feed(self, text: str) -> str:
        return self._scan(self.held + text, final=False)

    def flush(self, finish_reason: FinishReason) -> str:
        return self._scan(self.held, final=True)

    def _scan(self, buffer: str, *, final: bool) -> str:
        if not buffer:
            return ""
        offset = len(self.context)
        findings = []
        for found in _findings(self.step, self.context + buffer):
            if found.end > offset:  # in what is not released yet (a start in the context
                start = max(found.start, offset) - offset  # was shown: the rest is not)
                findings.append(Finding(found.category, start, found.end - offset))
        cut = len(buffer) if final else max(0, len(buffer) - _hold(self.step, buffer, self.span))
        moved = True
        while moved:
            moved = False
            for finding in findings:
                if finding.start < cut < finding.end:
                    cut, moved = finding.start, True
        # What stays held is scanned again with the next piece: decided only once released.
        ready = [f for f in findings if f.start < cut and f.end <= cut]
        released = _apply(self.step, "output", buffer[:cut], ready, self.into)
        self.held = buffer[cut:]
        self.context = (self.context + buffer[:cut])[-self.span :] if self.span else ""
        return released


class _RewriterFilter:
    """A rewriter's filter; once it raised it is left out and its input passes through (what
    it still held is lost: it is not a safety step, and a rewriter's state cannot be read)."""

    def __init__(self, step: BuiltStep, text_filter: TextFilter | None) -> None:
        self.step = step
        self.filter = text_filter
        self.failed = text_filter is None

    def feed(self, text: str) -> str:
        if self.failed or self.filter is None:
            return text
        try:
            out = self.filter.feed(text)
        except Exception as error:
            self.fail(_what(error))
            return text
        return self._checked(out, text)

    def flush(self, finish_reason: FinishReason) -> str:
        if self.failed or self.filter is None:
            return ""
        try:
            out = self.filter.flush(finish_reason)
        except Exception as error:
            self.fail(_what(error))
            return ""
        return self._checked(out, "")

    def _checked(self, out: object, fallback: str) -> str:
        if isinstance(out, str):
            return out
        self.fail(f"returned {type(out).__name__}, not text")
        return fallback

    def fail(self, problem: str) -> None:
        self.failed = True
        log.error("rewriter %s %s; left out for the rest of this reply", self.step.name, problem)


StageFilter = _DetectorFilter | _RewriterFilter


class OutputChain:
    """One reply's output steps, in order. ``feed`` and ``flush`` run one piece through every
    step in one bounded call; they raise ``Blocked`` when an output detector blocks or fails
    (counted and logged)."""

    def __init__(self, steps: Steps, message: Message) -> None:
        self.steps = steps
        self.message = message
        self.reports: Reports = deque()
        self.filters: list[StageFilter] = []
        self._at = _Position()

    def reporter(self, step: str) -> Callable[[str, Action], None]:
        """The ``StepContext.report`` of one rewriter: counts its changes."""

        def report(category: str, action: Action) -> None:
            self.reports.append((step, category, action))

        return report

    @property
    def done(self) -> bool:
        """A rewriter will show nothing more of this reply (its ``done``): stop generating."""
        for stage in self.filters:
            if isinstance(stage, _RewriterFilter) and not stage.failed:
                try:
                    if getattr(stage.filter, "done", False) is True:
                        return True
                except Exception as error:  # a plugin's property: its failure stops nothing
                    log.warning("rewriter %s: reading done failed: %s", stage.step.name, error)
        return False

    async def feed(self, text: str) -> str:
        """Run a streamed piece through the steps; return what can be shown now."""
        return await self._bounded(0, text, None)

    async def flush(self, finish_reason: FinishReason) -> str:
        """The stream ended: release what every step still holds, through the later steps."""
        return await self._bounded(0, "", finish_reason)

    async def _bounded(self, start: int, text: str, finish: FinishReason | None) -> str:
        steps = self.steps
        while True:
            token = object()
            with self._at.lock:
                self._at.token, self._at.step, self._at.index = token, _WAITING, -1
            kwargs = {"start": start, "text": text, "finish": finish, "token": token}
            try:
                out: str = await run_bounded(self._run, kwargs, steps.seconds, steps.worker)
            except TimedOut:
                with self._at.lock:  # the abandoned run stops before its next step
                    self._at.token = None
                    step, index, carry = self._at.step, self._at.index, self._at.text
                steps.publish(self.message, "output", self.reports)
                stuck = self.filters[index] if index >= 0 else None
                if not isinstance(stuck, _RewriterFilter):
                    raise steps.fail_closed(self.message, "output", step, _LATE) from None
                stuck.fail(_LATE)
                start, text = index + 1, carry  # the later steps get what it was given
                continue
            except Raised as raised:
                steps.publish(self.message, "output", self.reports)
                error = raised.error
                if isinstance(error, Blocked):
                    raise error from None
                step = error.step if isinstance(error, _StepFailed) else self._at.step
                raise steps.fail_closed(self.message, "output", step, _what(error)) from None
            steps.publish(self.message, "output", self.reports)
            return out

    def _run(self, start: int, text: str, finish: FinishReason | None, token: object) -> str:
        """Pass ``text`` through the steps from ``start`` (and flush each, when ``finish``).
        Runs in a worker thread; stops when the event loop gave up on this run."""
        for index in range(start, len(self.filters)):
            stage = self.filters[index]
            with self._at.lock:
                if self._at.token is not token:
                    return ""
                self._at.step, self._at.index, self._at.text = stage.step.name, index, text
            out = stage.feed(text) if text else ""
            if finish is not None:
                out += stage.flush(finish)
            text = out
        return text


# -- building -------------------------------------------------------------------------------------


def build_steps(
    settings: Settings,
    specs: Sequence[tuple[str, str, DetectorSpec | RewriterSpec]],
    *,
    metrics: Metrics | None = None,
) -> Steps:
    """Validate each registered step's section and make its instance. ``specs`` holds
    ``(name, owner plugin, spec)``. A detector whose factory fails stops the start (a safety
    step that was asked for must not silently vanish); a rewriter's is logged and left out.
    Steps with every policy off, or not enabled, are not made at all."""
    built: list[BuiltStep] = []
    for name, owner, spec in specs:
        if isinstance(spec, DetectorSpec):
            dsettings = step_settings(settings, name, spec.settings)
            if dsettings.input == "off" and dsettings.output == "off":
                continue
            try:
                detector = spec.factory(dsettings)
            except Exception as error:
                raise PluginError(
                    f"step {name!r} (plugin {owner!r}) failed to start: "
                    f"{type(error).__name__}: {error}"
                ) from error
            built.append(BuiltStep(name, owner, dsettings, detector=detector))
        elif isinstance(spec, RewriterSpec):
            rsettings = step_settings(settings, name, spec.settings)
            if not rsettings.enabled:
                continue
            try:
                rewriter = spec.factory(rsettings)
            except Exception as error:
                log.error(
                    "rewriter %s (plugin %r) failed to start, left out: %s: %s",
                    name,
                    owner,
                    type(error).__name__,
                    error,
                )
                continue
            built.append(BuiltStep(name, owner, rsettings, rewriter=rewriter))
    return Steps(built, seconds=settings.plugins.hook_timeout, metrics=metrics)
