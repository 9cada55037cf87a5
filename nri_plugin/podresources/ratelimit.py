"""The token bucket kubelet limits the pod-resources API with, on explicit time.

kubelet wraps its pod-resources server in a ``golang.org/x/time/rate``
limiter (``pkg/kubelet/apis/podresources/grpc/ratelimit.go``: 100 QPS, burst
10; past that, ``ResourceExhausted`` "rejected by rate limit"). The same
bucket serves the client (``reserve``: wait for a token rather than be
refused) and the served socket (``allow``: refuse as kubelet does). Pure: the
caller passes the time.
"""

from __future__ import annotations

# kubelet's DefaultQPS and DefaultBurstTokens
KUBELET_QPS = 100.0
KUBELET_BURST = 10


class TokenBucket:
    """``qps`` tokens a second, at most ``burst`` saved; full at the start."""

    def __init__(self, qps: float, burst: int, now: float) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs qps > 0 and burst >= 1, not {qps}, {burst}")
        self.qps = qps
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def _advance(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
            self._last = now

    def allow(self, now: float) -> bool:
        """Take a token if there is one now (``rate.Limiter.Allow``)."""
        self._advance(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def delay(self, now: float) -> float:
        """The seconds until a token is free, taking none."""
        self._advance(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.qps

    def reserve(self, now: float) -> float:
        """Take the next token, now or later: the seconds to wait before using it.

        Reservations queue in order (``rate.Limiter.Reserve``): n callers at
        once are spaced 1/qps apart once the burst is spent.
        """
        self._advance(now)
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps
