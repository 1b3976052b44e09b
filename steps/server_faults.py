"""Fault injection for the embedded model server (reliability tests only)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

BUSY = "server busy, please try again.  maximum pending requests exceeded"  # Ollama's 503 text
CRASH = "llama runner process has terminated: signal: killed"  # a 500 Ollama gives when a runner dies


@dataclass
class Faults:
    """What to inject; each request draws once from a seeded generator."""

    latency: float = 0.0  # seconds each generation holds its slot
    error_rate: float = 0.0  # answered 503 (busy) or 500 (runner crash), alternating
    drop_rate: float = 0.0  # connection closed with no response
    slow_rate: float = 0.0  # requests that take `slow_seconds` more
    slow_seconds: float = 0.0
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False, compare=False)
    _errors: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("latency", "slow_seconds"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"fault {name}={value} must be a finite number of seconds >= 0")
        rates = ("error_rate", "drop_rate", "slow_rate")
        for name in rates:
            value = getattr(self, name)
            if not math.isfinite(value) or not 0 <= value <= 1:
                raise ValueError(f"fault {name}={value} must be a probability between 0 and 1")
        if sum(getattr(self, n) for n in rates) > 1:
            raise ValueError("fault error_rate + drop_rate + slow_rate must not exceed 1")
        self._rng = random.Random(self.seed)

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """`latency=0.05,error_rate=0.1,...` (the CLI's --faults)."""
        known = {"latency", "error_rate", "drop_rate", "slow_rate", "slow_seconds", "seed"}
        values: dict[str, Any] = {}
        for item in filter(None, spec.split(",")):
            key, _, raw = item.partition("=")
            if key not in known:
                raise ValueError(f"unknown fault {key!r}; known: {sorted(known)}")
            try:
                values[key] = int(raw) if key == "seed" else float(raw)
            except ValueError:
                raise ValueError(f"fault {key}={raw!r} is not a number") from None
        return cls(**values)

    def draw(self) -> str | None:
        """None, or the fault for this request: drop, busy, crash or slow."""
        roll = self._rng.random()
        if roll < self.drop_rate:
            return "drop"
        if roll < self.drop_rate + self.error_rate:
            self._errors += 1
            return "busy" if self._errors % 2 else "crash"
        if roll < self.drop_rate + self.error_rate + self.slow_rate:
            return "slow"
        return None
