"""The Prometheus export of a real (started) node: every family is declared with its
labels, and no label takes more values than its documented bound, even after a flood of
distinct drop reasons."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from meshnode import MeshNode, NodeConfig
from meshnode.core.metrics import LABEL_BOUNDS
from meshnode.runtime.metrics import METRIC_NAMES, render


async def test_exported_families_and_labels_are_declared_and_bounded() -> None:
    node = MeshNode(NodeConfig.local(name="m", port=0, embedder="hashing"))
    await node.start()
    try:
        for i in range(2_000):  # reasons are named by code; this is the worst case
            node.drops[f"reason_{i}"] += 1
        assert node.obs is not None and node.obs.registry is not None
        text = render(node.obs.registry).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        exported = {
            name.removesuffix("_total") if name.endswith("_total") else name
            for name in METRIC_NAMES
        }
        assert set(families) == exported
        for name, labels in METRIC_NAMES.items():
            family = families[name.removesuffix("_total")]
            values: dict[str, set[str]] = {label: set() for label in labels}
            for sample in family.samples:
                own = {k: v for k, v in sample.labels.items() if k not in ("le",)}
                assert set(own) == set(labels), (name, sample)
                for label, value in own.items():
                    values[label].add(value)
            for label, seen in values.items():
                assert len(seen) <= LABEL_BOUNDS[label], (name, label, len(seen))
        drops = families["meshnode_dropped_packets"]
        assert len(drops.samples) == LABEL_BOUNDS["drop"]
        assert sum(s.value for s in drops.samples) >= 2_000
    finally:
        await node.aclose()
