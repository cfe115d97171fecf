"""Trust from opinions: EigenTrust power iteration, and the local ELO rule.

Theory of operation
-------------------
The ledger is a directed, weighted opinion graph: observer ``i`` rates subject ``j`` at
``s_ij`` in [0, 1]. Global trust is the stationary vector of a random walk that follows
opinions and restarts at the *pre-trusted* set ``P`` (EigenTrust, Kamvar et al. 2003, in its
personalised form)::

    w_ij    = max(s_ij − ½, 0)                   (only opinions above the prior count)
    C[i, j] = w_ij / Σ_k w_ik                    (each observer's weights sum to 1)
    p       = uniform over P
    t₀      = p
    t_{k+1} = (1 − α) · (Cᵀ t_k + d_k · p) + α · p

``s_ij`` is an :func:`elo_update` score that starts at the prior ``½``
(:data:`INITIAL_TRUST`) and falls with failures, so only its distance above the prior is a
vote of confidence (EigenTrust's ``max(sat − unsat, 0)``): an observer whose one
delegation to a peer failed holds 0.45 of it, and that must not lend the peer trust.
``d_k`` is the trust held by *dangling* nodes — nodes with no live opinion above the prior
of anyone — which is handed back to ``p`` instead of leaking away. Iteration stops when the
L1 change is below :data:`TRUST_TOLERANCE` or after :data:`TRUST_MAX_ITERATIONS` rounds. The
vector is a probability distribution: it sums to 1 (up to rounding).

Why this resists Sybils: trust enters the graph only at ``P`` (the caller's own node and the
peers it has direct experience with) and flows only along opinions. A ring of fresh
identities that rate each other 1.0 but that no trusted node rates receives nothing from
``Cᵀ t`` and nothing from ``p``, so its members hold exactly 0.0, however large the ring —
the reason ``P`` must never be the uniform vector over every known id.

Equivocators (observers with signed proof of two different records under one sequence
number) are cut out of the graph: their opinions carry no weight (their rows are zeroed and
their mass goes to ``p``), opinions *of* them are dropped, and they are removed from ``P``.
They end with trust exactly 0.

Determinism: node ids are sorted, edges arrive sorted by (observer, subject), and the
arithmetic is a fixed sequence of numpy float64 operations (``bincount`` sums in array order),
so the same ledger state, instant and pre-trusted set give bit-identical results on every
replica. The graph is made once per ledger state (:class:`OpinionGraph`): built afresh, or
patched from the previous state's graph with the edges that changed
(:meth:`OpinionGraph.patch`, which gives the very arrays a fresh build gives, in the same
order, so the results stay bit-identical); each :func:`eigentrust` call only masks expired
edges and iterates: three vectorised passes over the edge arrays per round (gather,
multiply, ``bincount``).

Routing wants a bounded score, not a probability. :func:`relative_scores` maps a trust
value ``t`` to ``r / (1 + r)`` with ``r = t · N₊``, ``N₊`` the number of nodes holding any
trust: a node with exactly the average trust scores 0.5 (:data:`INITIAL_TRUST`, the score of
a peer nobody has an opinion about yet), twice the average ≈ 0.67, a tenth ≈ 0.09, and a node
with no inbound trust 0. The scale does not depend on how many untrusted (Sybil) ids exist.

:func:`elo_update` is the observer's own local rule for turning task outcomes into the score
it signs; it is order-dependent and therefore never used to merge replicas.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported when trust is first computed, not with the ledger
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]
    IndexArray = npt.NDArray[np.intp]
    BoolArray = npt.NDArray[np.bool_]

INITIAL_TRUST = 0.5
"""Score of a peer with no history: the starting point of :func:`elo_update`, and the
:func:`relative_scores` value of a node with exactly average global trust."""

ELO_RATE = 0.1
"""Default learning rate of :func:`elo_update`: each outcome moves the score 10 % of the way
toward its quality, so about 22 outcomes cover 90 % of a change in behaviour."""

TRUST_ALPHA = 0.15
"""Damping toward the pre-trusted set, in [0, 1]. Higher = more weight on the caller's own
pre-trusted peers and faster convergence (the error shrinks at least by ``1 − α`` per
round); lower = more weight on second-hand opinions. 0.15 is the usual PageRank value."""

TRUST_TOLERANCE = 1e-9
"""Stop when the L1 change of the trust vector in one round falls below this."""

TRUST_MAX_ITERATIONS = 150
"""Upper bound on power-iteration rounds. Worst case the error after ``k`` rounds is at most
``2 · (1 − α)^k``: 150 rounds at α = 0.15 is below 3e-11. Random opinion graphs converge in
10–30 rounds because their second eigenvalue is small."""


def elo_update(old: float, quality: float, rate: float = ELO_RATE) -> float:
    """``old + rate · (quality − old)``, bounded to [0, 1].

    ``old`` and ``quality`` outside [0, 1] are clamped first; a non-finite argument or a
    ``rate`` outside [0, 1] raises ``ValueError``.
    """
    for name, value in (("old", old), ("quality", quality), ("rate", rate)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    old = min(1.0, max(0.0, float(old)))
    quality = min(1.0, max(0.0, float(quality)))
    return min(1.0, max(0.0, old + rate * (quality - old)))


@dataclass(frozen=True, slots=True, eq=False)
class _Prepared:
    """The normalised live edges of a graph, valid for every ``now`` in ``[lo, hi)``."""

    lo: float
    hi: float
    src: IndexArray
    dst: IndexArray
    coefficient: FloatArray
    dangling: IndexArray
    touched: BoolArray
    rated: BoolArray


@dataclass(frozen=True, slots=True, eq=False)
class OpinionGraph:
    """The opinion graph of one ledger state, as index arrays (built once, read many times).

    ``ids`` is sorted; ``observer[e] → subject[e]`` is edge ``e`` with ``score[e]`` and
    ``expires_at[e]``; edges are sorted by (observer id, subject id). ``excluded[i]`` marks
    node ``i`` as an equivocator. The normalised live edges are cached until an edge expires.
    """

    ids: tuple[str, ...]
    index: dict[str, int]
    observer: IndexArray
    subject: IndexArray
    score: FloatArray
    expires_at: FloatArray
    excluded: BoolArray
    _prepared: list[_Prepared] = field(default_factory=list, repr=False)

    @classmethod
    def build(
        cls,
        edges: Sequence[tuple[str, str, float, float]],
        excluded: Iterable[str] = (),
    ) -> OpinionGraph:
        """Build from ``(observer, subject, score, expires_at)`` edges in a fixed order.

        The caller passes edges sorted by (observer, subject) so that every replica builds
        identical arrays; ids in ``excluded`` that have no edge are added as nodes.
        """
        import numpy as np

        excluded_set = set(excluded)
        observers = [e[0] for e in edges]
        subjects = [e[1] for e in edges]
        ids = tuple(sorted(set(observers) | set(subjects) | excluded_set))
        index = {node: i for i, node in enumerate(ids)}
        count = len(edges)
        observer = np.fromiter((index[o] for o in observers), dtype=np.intp, count=count)
        subject = np.fromiter((index[s] for s in subjects), dtype=np.intp, count=count)
        score = np.fromiter((e[2] for e in edges), dtype=np.float64, count=count)
        expires_at = np.fromiter((e[3] for e in edges), dtype=np.float64, count=count)
        mask = np.zeros(len(ids), dtype=np.bool_)
        for node in excluded_set:
            mask[index[node]] = True
        return cls(ids, index, observer, subject, score, expires_at, mask)

    def __len__(self) -> int:
        return len(self.observer)

    def patch(
        self,
        changed: Mapping[tuple[str, str], tuple[float, float] | None],
        excluded: Iterable[str] = (),
    ) -> OpinionGraph:
        """This graph with the edges of ``changed`` replaced or removed, as a new graph.

        ``changed`` maps ``(observer, subject)`` to the edge's ``(score, expires_at)`` now,
        or to None if the edge is gone (a key the graph never held is ignored then);
        ``excluded`` is the whole set of equivocators now. The result holds exactly the
        arrays :meth:`build` gives for the resulting edges, in the same (sorted) order, so
        every computation on it is bit-identical to one on a graph built afresh. Cost:
        ``O(len(changed) log len(changed))`` Python steps plus a few vectorised passes over
        the edges (``O(ids)`` Python steps more when ids come or go), instead of
        :meth:`build`'s ``O(edges log edges)`` Python steps.
        """
        import numpy as np

        excluded_set = set(excluded)
        ids = self.ids
        index = self.index
        observer = self.observer
        subject = self.subject
        names = set(excluded_set)
        for (source, target), value in changed.items():
            if value is not None:
                names.add(source)
                names.add(target)
        added = sorted(name for name in names if name not in index)
        if added:
            ids = tuple(sorted((*ids, *added)))
            index = {node: i for i, node in enumerate(ids)}
            remap = np.fromiter(
                (index[node] for node in self.ids), dtype=np.intp, count=len(self.ids)
            )
            observer = remap[observer]
            subject = remap[subject]
        m = len(ids)
        keys = observer.astype(np.int64) * m + subject
        score = self.score
        expires_at = self.expires_at
        count = len(changed)
        if count:
            values = list(changed.values())
            row = np.fromiter((index.get(k[0], -1) for k in changed), np.int64, count)
            column = np.fromiter((index.get(k[1], -1) for k in changed), np.int64, count)
            present = np.fromiter((v is not None for v in values), np.bool_, count)
            new_score = np.fromiter((v[0] if v else 0.0 for v in values), np.float64, count)
            new_expiry = np.fromiter((v[1] if v else 0.0 for v in values), np.float64, count)
            # A key with an unknown id was held neither before nor now.
            known = (row >= 0) & (column >= 0)
            wanted = row * m + column
            at: IndexArray = np.searchsorted(keys, wanted)
            held = known & (at < len(keys))
            held[held] = keys[at[held]] == wanted[held]
            update = held & present
            if update.any():
                score = score.copy()
                expires_at = expires_at.copy()
                score[at[update]] = new_score[update]
                expires_at[at[update]] = new_expiry[update]
            gone = at[held & ~present]
            if gone.size:
                observer = np.delete(observer, gone)
                subject = np.delete(subject, gone)
                score = np.delete(score, gone)
                expires_at = np.delete(expires_at, gone)
                keys = np.delete(keys, gone)
            fresh = known & ~held & present
            if fresh.any():
                order = np.argsort(wanted[fresh], kind="stable")
                new_keys = wanted[fresh][order]
                positions: IndexArray = np.searchsorted(keys, new_keys)
                observer = np.insert(observer, positions, (new_keys // m).astype(np.intp))
                subject = np.insert(subject, positions, (new_keys % m).astype(np.intp))
                score = np.insert(score, positions, new_score[fresh][order])
                expires_at = np.insert(expires_at, positions, new_expiry[fresh][order])
        used = np.zeros(m, dtype=np.bool_)
        used[observer] = True
        used[subject] = True
        for node in excluded_set:
            used[index[node]] = True
        if not bool(used.all()):
            keep = np.flatnonzero(used)
            shift = np.cumsum(used) - 1
            observer = shift[observer].astype(np.intp)
            subject = shift[subject].astype(np.intp)
            ids = tuple(ids[i] for i in keep.tolist())
            index = {node: i for i, node in enumerate(ids)}
        mask = np.zeros(len(ids), dtype=np.bool_)
        for node in excluded_set:
            mask[index[node]] = True
        return OpinionGraph(ids, index, observer, subject, score, expires_at, mask)

    def prepared(self, now: float) -> _Prepared:
        """Live edges at ``now`` with each observer's weights normalised to sum 1.

        An edge weighs its score's distance above :data:`INITIAL_TRUST` (the prior): an
        opinion at or below the prior — a peer that failed us, or one we only tried — passes
        no trust on. Equivocators' edges (both ways) carry no weight; ``dangling`` lists
        the nodes left with no outgoing weight; ``touched`` marks nodes with a live record;
        ``rated`` the subjects of a live record from an observer that is not an equivocator.
        """
        import numpy as np

        if self._prepared and self._prepared[0].lo <= now < self._prepared[0].hi:
            return self._prepared[0]
        n = len(self.ids)
        live = self.expires_at > now
        later = self.expires_at[live]
        earlier = self.expires_at[~live]
        hi = float(later.min()) if later.size else math.inf
        lo = float(earlier.max()) if earlier.size else -math.inf
        touched = np.zeros(n, dtype=np.bool_)
        touched[self.observer[live]] = True
        touched[self.subject[live]] = True
        weight_of = np.maximum(self.score - INITIAL_TRUST, 0.0)
        weighted = live & (weight_of > 0.0)
        honest = live
        if self.excluded.any():
            weighted &= ~self.excluded[self.observer] & ~self.excluded[self.subject]
            honest = live & ~self.excluded[self.observer]
        rated = np.zeros(n, dtype=np.bool_)
        rated[self.subject[honest]] = True
        src = self.observer[weighted]
        dst = self.subject[weighted]
        weight = weight_of[weighted]
        row_sum = np.bincount(src, weights=weight, minlength=n)
        prepared = _Prepared(
            lo=lo,
            hi=hi,
            src=src,
            dst=dst,
            coefficient=weight / row_sum[src],
            dangling=np.flatnonzero(row_sum == 0.0),
            touched=touched,
            rated=rated,
        )
        self._prepared[:] = [prepared]
        return prepared


@dataclass(frozen=True, slots=True, eq=False)
class TrustVector:
    """The result of :func:`eigentrust`: ``values[i]`` is the trust of ``ids[i]``.

    ``ids`` (sorted) are every node with a live record as observer or subject, plus the
    pre-trusted ids. ``iterations`` rounds were run; ``delta`` is the last L1 change (0 when
    no round ran because no pre-trusted id was usable).
    """

    ids: tuple[str, ...]
    values: FloatArray
    iterations: int
    delta: float
    tolerance: float = TRUST_TOLERANCE

    @property
    def converged(self) -> bool:
        """True if the last round changed the vector by less than ``tolerance`` (L1)."""
        return self.delta < self.tolerance

    def as_dict(self) -> dict[str, float]:
        """``{node_id: trust}`` in sorted id order; the values sum to 1 (or are all 0)."""
        return dict(zip(self.ids, self.values.tolist(), strict=True))

    def scores(self) -> dict[str, float]:
        """``{node_id: score in [0, 1]}`` on the :func:`relative_scores` scale."""
        return dict(zip(self.ids, relative_scores(self.values).tolist(), strict=True))


def relative_scores(values: FloatArray) -> FloatArray:
    """Map trust values (a distribution) to [0, 1]: ``r / (1 + r)``, ``r = t · N₊``.

    ``N₊`` counts the values above zero, so the average trusted node scores
    :data:`INITIAL_TRUST` (0.5) and nodes with no trust score 0.
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    positive = int(np.count_nonzero(values > 0.0))
    if positive == 0:
        return np.zeros_like(values)
    relative = np.clip(values, 0.0, None) * positive
    out: FloatArray = relative / (1.0 + relative)
    return out


def eigentrust(
    graph: OpinionGraph,
    now: float,
    pretrusted: Iterable[str],
    *,
    alpha: float = TRUST_ALPHA,
    tolerance: float = TRUST_TOLERANCE,
    max_iterations: int = TRUST_MAX_ITERATIONS,
) -> TrustVector:
    """Global trust at ``now``, personalised to ``pretrusted`` (see the module docstring).

    Edges with ``expires_at <= now`` are ignored. ``pretrusted`` must name at least one id
    (``ValueError`` otherwise); ids unknown to the graph are included. If every pre-trusted id
    is an equivocator there is no basis for trust and every value is 0.
    """
    import numpy as np

    if not 0.0 < alpha <= 1.0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    if not tolerance > 0.0:
        raise ValueError(f"tolerance must be positive, got {tolerance!r}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations!r}")
    pre = sorted(set(pretrusted))
    if not pre:
        raise ValueError("trust needs at least one pre-trusted id (the caller's own node)")

    base = len(graph.ids)
    extra = [node for node in pre if node not in graph.index]
    n = base + len(extra)
    prepared = graph.prepared(now)
    src, dst, coefficient = prepared.src, prepared.dst, prepared.coefficient
    dangling = prepared.dangling
    touched = prepared.touched
    if extra:
        dangling = np.concatenate([dangling, np.arange(base, n, dtype=np.intp)])
        touched = np.concatenate([touched, np.ones(len(extra), dtype=np.bool_)])

    pre_index = [
        graph.index[node] if node in graph.index else base + extra.index(node) for node in pre
    ]
    seeds = [i for i in pre_index if i >= base or not graph.excluded[i]]
    p = np.zeros(n, dtype=np.float64)
    values = np.zeros(n, dtype=np.float64)
    iterations = 0
    delta = 0.0
    if seeds:
        p[seeds] = 1.0 / len(seeds)
        values = p.copy()
        keep = 1.0 - alpha
        delta = math.inf
        while iterations < max_iterations and delta >= tolerance:
            flow = np.bincount(dst, weights=coefficient * values[src], minlength=n)
            restart = keep * float(values[dangling].sum()) + alpha
            updated = keep * flow + restart * p
            delta = float(np.abs(updated - values).sum())
            values = updated
            iterations += 1

    if not extra and bool(touched.all()):
        return TrustVector(graph.ids, values, iterations, delta, tolerance)
    touched = touched.copy()
    touched[pre_index] = True
    if extra:
        order = sorted(np.flatnonzero(touched).tolist(), key=lambda i: _name(graph, extra, i))
        out_index = np.asarray(order, dtype=np.intp)
    else:
        out_index = np.flatnonzero(touched)
    ids = tuple(_name(graph, extra, int(i)) for i in out_index)
    return TrustVector(ids, values[out_index], iterations, delta, tolerance)


def _name(graph: OpinionGraph, extra: list[str], i: int) -> str:
    base = len(graph.ids)
    return graph.ids[i] if i < base else extra[i - base]
