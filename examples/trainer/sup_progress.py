"""Progress reports from a training rank to its sup agent (standard library only).

The agent listens on the address it passes in ``SUP_PROGRESS_ADDR`` (``host:port``)
and reads one JSON object per line::

    {"rank": 0, "generation": 3, "step": 120, "tokens": 7680, "loss": 0.41,
     "step_time_s": 0.25, "phase": "train"}

``phase`` is one of ``train``, ``checkpoint_save``, ``checkpoint_load``, ``eval``.
``step`` is the number of completed steps; ``tokens`` the job's cumulative tokens (the
same on every rank: the agent keeps the newest line's values, whichever rank sent it);
``loss`` the global batch's. Only ``rank`` is required by the agent; extra keys are ignored.
Optional ``compute_time_s``: the step's time outside collectives (pass it as a keyword). In a
synchronous job every rank's ``step_time_s`` is the slowest rank's, so sup's straggler
detector compares nodes by ``compute_time_s`` when ranks send it.

Usage::

    from sup_progress import Reporter
    progress = Reporter.from_env()          # no-op when SUP_PROGRESS_ADDR is unset
    progress.report(step=step, tokens=tokens, loss=loss, step_time_s=dt, phase="train")

Reporting is best effort by design: a supervisor that is down, slow or restarting must
never slow down or stop training. So ``report`` never raises, connects lazily with a
short timeout, drops the line when the agent is unreachable, and waits a little
before trying to connect again instead of paying a connect timeout on every step.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Any, Optional, Tuple

__all__ = ["Reporter", "parse_addr"]

PHASES = ("train", "checkpoint_save", "checkpoint_load", "eval")


def parse_addr(addr: str) -> Optional[Tuple[str, int]]:
    """``host:port`` or ``[v6addr]:port`` -> (host, port); None when malformed."""
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port_num = int(port)
    if not 0 < port_num < 65536:
        return None
    return host, port_num


def _env_int(name: str) -> Optional[int]:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def _finite_or_none(value: Any) -> Any:
    # json.dumps writes NaN/Infinity, which is not JSON; a diverged loss is still
    # worth reporting as a line the agent can parse.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Reporter:
    """Sends progress lines over one lazily opened TCP connection."""

    def __init__(
        self,
        addr: Optional[str],
        rank: Optional[int] = None,
        generation: Optional[int] = None,
        connect_timeout_s: float = 1.0,
        send_timeout_s: float = 1.0,
        retry_after_s: float = 2.0,
    ) -> None:
        self._target = parse_addr(addr) if addr else None
        self.rank = rank
        self.generation = generation
        self._connect_timeout_s = connect_timeout_s
        self._send_timeout_s = send_timeout_s
        self._retry_after_s = retry_after_s
        self._sock: Optional[socket.socket] = None
        self._next_attempt = 0.0
        self.sent = 0
        self.dropped = 0

    @classmethod
    def from_env(cls, **kwargs: Any) -> "Reporter":
        """Reporter for ``SUP_PROGRESS_ADDR``, tagging lines with ``RANK`` and
        ``SUP_GENERATION``; a no-op reporter when the address is unset."""
        return cls(
            os.environ.get("SUP_PROGRESS_ADDR") or None,
            rank=_env_int("RANK") or 0,  # the agent requires a rank; a lone script is rank 0
            generation=_env_int("SUP_GENERATION"),
            **kwargs,
        )

    @property
    def enabled(self) -> bool:
        return self._target is not None

    def report(
        self,
        step: int,
        tokens: Optional[int] = None,
        loss: Optional[float] = None,
        step_time_s: Optional[float] = None,
        phase: str = "train",
        **extra: Any,
    ) -> bool:
        """Sends one line; True when it was handed to the kernel. Never raises."""
        if self._target is None:
            return False
        try:
            record: dict = {}
            if self.rank is not None:
                record["rank"] = self.rank
            if self.generation is not None:
                record["generation"] = self.generation
            record.update(step=step, tokens=tokens, loss=loss, step_time_s=step_time_s, phase=phase)
            record.update(extra)
            line = json.dumps({k: _finite_or_none(v) for k, v in record.items()}, separators=(",", ":"))
            return self._send((line + "\n").encode())
        except Exception:  # never let reporting break training
            self.dropped += 1
            return False

    def _send(self, data: bytes) -> bool:
        for _ in range(2):  # the kept connection may have died: reconnect once
            sock = self._connect()
            if sock is None:
                break
            try:
                sock.sendall(data)
                self.sent += 1
                return True
            except OSError:
                self.close()
        self.dropped += 1
        return False

    def _connect(self) -> Optional[socket.socket]:
        if self._sock is not None:
            return self._sock
        now = time.monotonic()
        if now < self._next_attempt:
            return None
        assert self._target is not None
        try:
            sock = socket.create_connection(self._target, timeout=self._connect_timeout_s)
            sock.settimeout(self._send_timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            self._next_attempt = now + self._retry_after_s
            return None
        self._sock = sock
        return sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
