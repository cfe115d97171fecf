"""Two agents, each finding the other by description: a two-step pipeline.

    python examples/two_agent_pipeline.py     # run the pipeline once, check it, exit

* ``counter`` offers ``word_stats``: counts the words of a text and lists the most common.
* ``reporter`` offers ``text_report``: it asks *its own* index for "count the words in a
  text", delegates that step to whoever ranks best (the counter), and turns the numbers
  into one line of Markdown.

The script asks the counter to delegate a report: counter → reporter → counter. The
inner delegation inherits what is left of the outer one's deadline. Nothing here is
specific to a demo: two nodes, one seed address, ``discover`` and ``delegate``.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections import Counter
from typing import Any

from meshnode import MeshNode, NodeConfig, capability

STOP = {"a", "an", "and", "the", "of", "to", "is", "in", "it", "by", "its", "on", "no"}


def word_stats(text: str, top: int = 3) -> dict[str, Any]:
    words = [w for w in re.findall(r"[a-z']+", text.lower()) if w not in STOP]
    common = Counter(words).most_common()
    common.sort(key=lambda kv: (-kv[1], kv[0]))
    return {"words": len(words), "top": [[w, n] for w, n in common[:top]]}


TEXT_IN = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string"}, "top": {"type": "integer", "minimum": 1}},
}
"""Both capabilities take a text (``top`` only matters to ``word_stats``)."""
STATS_OUT = {
    "type": "object",
    "required": ["words", "top"],
    "properties": {"words": {"type": "integer", "minimum": 0}, "top": {"type": "array"}},
}
"""What the reporter expects back from whoever counts its words."""


class WordCounter(MeshNode):
    @capability(
        name="word_stats",
        description="Count the words in a text and list the most common ones",
        input_schema=TEXT_IN,
    )
    async def word_stats(self, payload: dict[str, Any]) -> dict[str, Any]:
        return word_stats(payload["text"], int(payload.get("top", 3)))


class Reporter(MeshNode):
    @capability(
        name="text_report", description="Write a one-line report on a text", input_schema=TEXT_IN
    )
    async def text_report(self, payload: dict[str, Any]) -> dict[str, Any]:
        step = await self.delegate(
            None,
            {"text": payload["text"], "top": 3},
            description="count the words in a text",
            expect=STATS_OUT,  # the reporter judges the count by what it needs
        )
        top = ", ".join(f"**{w}** ×{n}" for w, n in step.output["top"])
        return {
            "markdown": f"{step.output['words']} words; most common: {top}",
            "counted_by": step.provider,
        }


TEXT = (
    "Gossip spreads the membership. Gossip spreads manifests and opinions too, so every "
    "node learns the mesh from its peers and no node is a registry of the mesh."
)


async def main() -> int:
    from meshnode import configure_logging

    configure_logging(level="WARNING")
    async with WordCounter(NodeConfig.local(name="counter", port=0)) as counter:
        seed = f"127.0.0.1:{counter.address[1]}"
        async with Reporter(NodeConfig.local(name="reporter", port=0, seeds=(seed,))) as reporter:
            await counter.wait_for("write a report on a text", within=60)
            await reporter.wait_for("count the words in a text", within=60)
            result = await counter.delegate(
                None, {"text": TEXT}, description="write a report on a text", deadline_s=20
            )
    print(result.output["markdown"])
    stats = word_stats(TEXT)
    expected = f"{stats['words']} words; most common: " + ", ".join(
        f"**{w}** ×{n}" for w, n in stats["top"]
    )
    ok = (
        result.provider == reporter.node_id
        and result.output["counted_by"] == counter.node_id
        and result.output["markdown"] == expected
    )
    print("check:", "ok" if ok else f"expected {expected!r}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
