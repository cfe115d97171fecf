"""Plots: rumor dissemination against the epidemic, and the economy's routing over rounds.

Theory of operation
-------------------
The rumor scenario records, for every node, when it first heard of the new manifest
version (it asked for the manifest) and when it applied it. The plot draws both empirical
curves as steps — the fraction of the other nodes informed at each virtual instant — over
the mean-field push-gossip curve of :mod:`simulations.epidemic` for the same ``n`` and
fanout, and marks the analytic round count ``log_{f+1} n + ln n / f`` and the goal (1.25×
the bound, 1.5× that with loss). The bound and the goal are counted in gossip rounds, so
the x axis is too: a virtual time ``t`` after publication is ``t / gossip_interval``
rounds, and the axis label states the round length.
matplotlib runs with the Agg backend (no display needed) and is imported only when a plot
is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["dissemination_figure", "plot_dissemination", "plot_economy"]


def plot_dissemination(curve: dict[str, Any], path: str | Path) -> None:
    """Write the dissemination figure for ``curve`` (from the rumor scenario) to ``path``."""
    import matplotlib.pyplot as plt

    fig = dissemination_figure(curve)
    fig.savefig(str(path))
    plt.close(fig)


def dissemination_figure(curve: dict[str, Any]) -> Any:
    """The dissemination figure (a matplotlib ``Figure``; the caller closes it), its x axis
    in gossip rounds after publication."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int(curve["n"])
    others = max(1, n - 1)
    interval = float(curve["gossip_interval"])
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for key, label, style in (
        ("heard", "heard the rumor (simulated)", "-"),
        ("applied", "applied the manifest (simulated)", "--"),
    ):
        times = [0.0, *(t / interval for t in curve[key])]
        fractions = [0.0, *((i + 1) / others for i in range(len(curve[key])))]
        ax.step(times, fractions, where="post", linestyle=style, label=label)
    mean_field = curve["mean_field"]
    ax.plot(
        list(range(len(mean_field))),
        mean_field,
        marker="o",
        markersize=3,
        color="grey",
        label=f"push-gossip mean field (fanout {curve['fanout']})",
    )
    bound = float(curve["bound_rounds"])
    ax.axvline(bound, color="grey", linestyle=":", label=r"$\log_{f+1} n + \ln n / f$ rounds")
    factor = float(curve.get("goal_factor", 1.25))
    ax.axvline(factor * bound, color="red", linestyle=":", label=f"{factor:g} × bound (goal)")
    ax.set_xlabel(f"gossip rounds after publication (1 round = gossip_interval {interval:g} s)")
    ax.set_ylabel("fraction of nodes informed")
    ax.set_ylim(0.0, 1.02)
    last = [t / interval for t in (*curve["applied"][-1:], *curve["heard"][-1:])]
    right = max([1.2 * factor * bound, *last])
    ax.set_xlim(0.0, right * 1.05)
    ax.set_title(str(curve.get("title", "rumor dissemination")))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_economy(curve: dict[str, Any], path: str | Path) -> None:
    """Write the economy figure to ``path``: per round (one delegation per requester), the
    share of requests sent to bad providers (all bad kinds, and the always-bad ones), with
    the share of judged requesters whose ranking puts honest providers first, and the rounds
    at which trust converged and routing settled (if they did)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A point at round k covers the requests sent between rounds k - 1 and k; the last
    # point (the requests of the drain after the last round) is drawn with the last round.
    series: list[dict[str, Any]] = []
    for point in curve["series"]:
        if series and point["round"] == series[-1]["round"]:
            continue
        if point["requests"]:
            series.append(point)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    if series:
        starts = [s["round"] - 1 for s in series] + [series[-1]["round"]]
        for key, label, style in (
            ("share_bad", "to bad providers", "-"),
            ("share_always_bad", "to always-bad providers (slow, lying, silent, Sybil)", "--"),
        ):
            values = [s[key] for s in series]
            ax.step(starts, [*values, values[-1]], where="post", linestyle=style, label=label)
    judged = curve["series"]
    ax.plot(
        [s["round"] for s in judged],
        [s["ranking_converged_share"] for s in judged],
        color="grey",
        marker="o",
        markersize=3,
        label="requesters ranking honest first",
    )
    converged = curve.get("convergence_round")
    if converged is not None:
        ax.axvline(
            converged, color="green", linestyle=":", label=f"trust converged (round {converged})"
        )
    routing = curve.get("routing_round")
    if routing is not None:
        ax.axvline(
            routing, color="purple", linestyle=":", label=f"routing settled (round {routing})"
        )
    ax.set_xlabel("round (one delegation per requester)")
    ax.set_ylabel("share")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(str(curve.get("title", "economy")))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)
