"""The engine runs events in (time, sequence) order and derives independent seeds."""

from __future__ import annotations

import math

from simulations.engine import Engine, derive_rng, derive_seed


def test_events_run_in_time_then_scheduling_order() -> None:
    """Same-time events run in the order they were scheduled; the clock follows them."""
    engine = Engine()
    seen: list[tuple[float, str]] = []

    def record(label: str) -> None:
        seen.append((engine.now, label))

    engine.at(2.0, record, "c")
    engine.at(1.0, record, "a")
    engine.at(1.0, record, "b")
    engine.at(3.0, record, "late")
    assert engine.run_until(2.5) is False
    assert seen == [(1.0, "a"), (1.0, "b"), (2.0, "c")]
    assert engine.now == 2.5
    assert engine.events == 3
    assert engine.next_time() == 3.0


def test_events_scheduled_in_the_past_run_now() -> None:
    engine = Engine(start=5.0)
    times: list[float] = []
    engine.at(1.0, lambda: times.append(engine.now))
    engine.run_until(10.0)
    assert times == [5.0]


def test_stop_predicate_halts_at_the_event() -> None:
    engine = Engine()
    count = [0]

    def bump() -> None:
        count[0] += 1
        engine.after(1.0, bump)

    engine.at(0.0, bump)
    assert engine.run_until(math.inf, stop=lambda: count[0] == 4) is True
    assert engine.now == 3.0


def test_derived_seeds_are_stable_and_distinct() -> None:
    """The same labels give the same stream in every process; different labels differ."""
    assert derive_seed(1, "node", 3) == derive_seed(1, "node", 3)
    seeds = {derive_seed(s, *labels) for s in (1, 2) for labels in (("a",), ("b",), ("a", 1))}
    assert len(seeds) == 6
    assert derive_rng(7, "x").random() == derive_rng(7, "x").random()
    # Pinned value: derivation must not depend on hashing or the platform.
    assert derive_seed(42, "network") == int.from_bytes(
        __import__("hashlib").blake2b(b"42/network", digest_size=8).digest(), "big"
    )
