"""Fault injection: queued errors and delays per service, taken in order."""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devstack.emulator.common import SERVICES
from devstack.emulator.state import TenantState


@dataclass
class _Fault:
    service: str
    status: int | None
    retry_after: float | None
    remaining: int
    delay: float
    code: str | None
    message: str | None
    accept: bool = False  # graph.sendMail only: accept the message first, then delay and answer the fault
    stopping: threading.Event | None = None

    def wait(self) -> None:
        """Sleep the fault's delay (an accept fault sleeps after accepting), waking early when the emulator stops."""
        if self.delay > 0 and self.stopping is not None:
            self.stopping.wait(self.delay)


class Faults(TenantState):
    """Fault injection: queued errors and delays per service, taken in order.

    A part of `Emulator`; the queue is `TenantState._faults`. Each service module answers a fault it takes
    in that service's own error shape.
    """

    _stopping: threading.Event  # set by Emulator.stop(): wakes handlers sleeping on a delay fault

    def add_fault(
        self,
        service: str = "graph.sendMail",
        status: int | None = 429,
        retry_after: float | None = 2,
        count: int = 1,
        delay: float = 0.0,
        code: str | None = None,
        message: str | None = None,
        accept: bool = False,
    ) -> None:
        """Answer the next ``count`` calls to ``service`` with ``status``.

        ``accept=True`` (graph.sendMail only): the message is validated and accepted first (it enters the
        outbox and Sent Items), then the delay passes and ``status`` is answered; with ``status=None`` the 202
        comes after the delay, too late for a client whose timeout is shorter.

        ``delay`` > 0 sleeps before answering (to provoke client timeouts). ``status=None`` only
        delays, then the call is served normally. ``code``/``message`` override the error body's
        defaults. Faults apply after authentication, as a real service throttles an
        authenticated caller; queued faults for one service are used in order.
        """
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        if status is not None and not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599) or None")
        if accept and service != "graph.sendMail":
            raise ValueError("accept applies to graph.sendMail only: nothing else accepts a message")
        fault = _Fault(service, status, retry_after, int(count), float(delay), code, message, bool(accept))
        with self._lock:
            self._faults.append(fault)

    @property
    def faults(self) -> list[dict[str, Any]]:
        """The queued faults, in the order they will be used (admin API `GET faults`)."""
        with self._lock:
            return [
                {
                    "service": f.service,
                    "status": f.status,
                    "retryAfter": f.retry_after,
                    "remaining": f.remaining,
                    "delay": f.delay,
                    "code": f.code,
                    "message": f.message,
                    "accept": f.accept,
                }
                for f in self._faults
            ]

    def clear_faults(self) -> None:
        """Drop every queued fault (admin API `POST faults-clear`)."""
        with self._lock:
            self._faults.clear()

    def _apply_fault(self, entry: Mapping[str, Any]) -> None:
        self.add_fault(
            service=str(entry.get("service", "graph.sendMail")),
            status=entry.get("status", 429),
            retry_after=entry.get("retryAfter", 2),
            count=int(entry.get("count", 1)),
            delay=float(entry.get("delay", 0.0)),
            code=entry.get("code"),
            message=entry.get("message"),
            accept=bool(entry.get("accept", False)),
        )

    def _next_fault(self, service: str) -> _Fault | None:
        """Take the next queued fault for ``service``, sleeping its delay. None: serve normally."""
        with self._lock:
            fault = next((f for f in self._faults if f.service == service), None)
            if fault is None:
                return None
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            taken = copy.copy(fault)
        taken.stopping = self._stopping
        if taken.accept:
            return taken  # its delay comes after the message is accepted (graph.py)
        taken.wait()
        return taken if taken.status is not None else None
