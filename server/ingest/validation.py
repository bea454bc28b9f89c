"""Validation of telemetry payloads, in the ingest thread or in a child process.

    validator = Validator(limits, in_child=True)
    wait = validator.validate_async(now_ms, [(topic_site, topic_agent, payload), ...])
    results = wait()
    validator.close()

Each result is one of
- `("ok", seq, n_readings, body, rows)`: valid; `body` is `pack_readings(rows)`, ready to be spooled;
  `rows` are the rows themselves when validated in this process, None from the child (they would
  only be pickled twice);
- `("reject", reason, detail)`: a `WireRejectReason` value and a human detail.

Why a child: parsing and validating JSON is the largest share of the
server's CPU per message, and in the server process it runs under the GIL
that paho's network thread needs to receive the next message. In a child
(`ingest.validator_process`, default true) it runs on another core; the
ingest thread hands over a whole group of payloads per request, so the
round trip costs little per message. The outcome is the same either way:
the same function runs in both places.

If the child dies or fails, the group is validated in the ingest thread
(logged once), and the next group starts a new child. A payload that kills
the child therefore cannot stop the stream: it is judged here like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from greenmine.schemas import WireError, WireLimits, WireRejectReason, parse_telemetry_rows
from greenmine.server.child import Child, ChildFailed, ChildGone
from greenmine.server.spool.spool import pack_readings

log = logging.getLogger(__name__)

Item = tuple[str, str, bytes]  # topic site, topic agent, payload


def validate_one(site: str, agent: str, payload: bytes, limits: WireLimits, now: datetime, keep_rows: bool = True) -> tuple:
    """Judge one telemetry payload published on `site`/`agent`'s topic. Never raises."""
    try:
        batch = parse_telemetry_rows(payload, limits=limits, now=now)
        if (batch.site, batch.agent) != (site, agent):
            return ("reject", WireRejectReason.TOPIC_MISMATCH.value,
                    f"topic is for {site}/{agent}, payload says {batch.site}/{batch.agent}")
        return ("ok", batch.seq, len(batch.rows), pack_readings(batch.rows), batch.rows if keep_rows else None)
    except WireError as exc:
        return ("reject", exc.reason.value, exc.detail)
    except Exception as exc:  # a bug in validation must cost one message, not the stream
        log.exception("ingest: unexpected error validating a message on %s/%s", site, agent)
        return ("reject", WireRejectReason.INVALID.value, f"internal error: {exc!r}")


def validate_many(items: Sequence[Item], limits: WireLimits, now_ms: int, keep_rows: bool = True) -> list[tuple]:
    now = datetime.fromtimestamp(now_ms / 1000, timezone.utc)
    return [validate_one(site, agent, payload, limits, now, keep_rows) for site, agent, payload in items]


class ValidatorWorker:
    """The child's side."""

    def __init__(self, limits: WireLimits) -> None:
        self.limits = limits

    def handle(self, op: str, arg):
        if op != "validate":
            raise ValueError(f"unknown request {op!r}")
        now_ms, items = arg
        return validate_many(items, self.limits, now_ms, keep_rows=False)


class Validator:
    def __init__(self, limits: WireLimits, *, in_child: bool = True) -> None:
        self.limits = limits
        self._child = Child("greenmine.server.ingest.validation:ValidatorWorker", limits, name="ingest validator") if in_child else None
        self._child_failing = False

    def start(self) -> None:
        """Start the child now (else it starts with the first group). A failure is logged; groups are then
        validated in the ingest thread until a child starts."""
        if self._child is None:
            return
        try:
            self._child.start()
        except (ChildGone, ChildFailed) as exc:
            self._child_failed(exc)

    def validate_async(self, now_ms: int, items: Sequence[Item]) -> Callable[[], list[tuple]]:
        """Start validating; returns `wait()` for the results. Call the waits in order."""
        if not items:
            return list
        if self._child is None:
            results = validate_many(items, self.limits, now_ms)
            return lambda: results
        try:
            wait = self._child.send("validate", (now_ms, list(items)))
        except (ChildGone, ChildFailed) as exc:
            results = self._fallback(exc, items, now_ms)
            return lambda: results

        def result() -> list[tuple]:
            try:
                results = wait()
            except (ChildGone, ChildFailed) as exc:
                return self._fallback(exc, items, now_ms)
            if self._child_failing:
                log.info("ingest: validator process working again")
                self._child_failing = False
            return results

        return result

    def _child_failed(self, exc: Exception) -> None:
        if not self._child_failing:
            log.warning("ingest: validator process failed (%s); validating in the ingest thread until it is back", exc)
            self._child_failing = True

    def _fallback(self, exc: Exception, items: Sequence[Item], now_ms: int) -> list[tuple]:
        self._child_failed(exc)
        return validate_many(items, self.limits, now_ms)

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def close(self) -> None:
        if self._child is not None:
            self._child.close()
