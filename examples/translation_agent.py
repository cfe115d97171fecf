"""A translation agent, found by what it does rather than by name.

    python examples/translation_agent.py      # start it and a client, translate, check, exit
    meshnode run --agent examples/translation_agent.py:Translator --seed HOST:PORT

The translator is a word-by-word glossary (a stand-in for a real model: swap the body of
``translate_text`` for a call to one). The client never hears the capability's name: it
asks its own index for "translate text to spanish" within a price limit, and delegates to
the best match. Discovery by description uses MiniLM when it is installed (the
``semantic`` extra); the first run loads it, which takes a few seconds.
"""

from __future__ import annotations

import asyncio
import re
import sys
from typing import Any

from meshnode import MeshNode, NodeConfig, capability

GLOSSARY: dict[str, dict[str, str]] = {
    "es": {
        "good morning": "buenos días",
        "thank you": "gracias",
        "hello": "hola",
        "friend": "amigo",
        "the mesh": "la malla",
        "is working": "funciona",
        "world": "mundo",
    },
    "fr": {
        "good morning": "bonjour",
        "thank you": "merci",
        "hello": "bonjour",
        "friend": "ami",
        "the mesh": "le maillage",
        "is working": "fonctionne",
        "world": "monde",
    },
}

TEXT_IN = {
    "type": "object",
    "required": ["text", "target_lang"],
    "properties": {
        "text": {"type": "string", "maxLength": 10_000},
        "target_lang": {"enum": sorted(GLOSSARY)},
    },
}
TEXT_OUT = {
    "type": "object",
    "required": ["text", "unknown_words"],
    "properties": {"text": {"type": "string"}, "unknown_words": {"type": "array"}},
}


def translate(text: str, lang: str) -> tuple[str, list[str]]:
    """Longest phrases first; a capital stays a capital. Words the glossary lacks are kept
    as they are and reported."""
    table = GLOSSARY[lang]
    phrases = sorted(table, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(p) for p in phrases) + r")\b", re.I)

    def swap(match: re.Match[str]) -> str:
        word = table[match.group(0).lower()]
        return word[:1].upper() + word[1:] if match.group(0)[:1].isupper() else word

    out = pattern.sub(swap, text)
    known = {w for v in table.values() for w in v.split()}
    unknown = [w for w in re.findall(r"\w+", out) if w.lower() not in known]
    return out, unknown


class Translator(MeshNode):
    @capability(
        name="translate_text",
        description="Translate text between languages",
        input_schema=TEXT_IN,
        output_schema=TEXT_OUT,
        cost_per_call_usd=0.001,
        avg_latency_ms=5,
        tags=["nlp"],
    )
    async def translate_text(self, payload: dict[str, Any]) -> dict[str, Any]:
        text, unknown = translate(payload["text"], payload["target_lang"])
        return {"text": text, "target_lang": payload["target_lang"], "unknown_words": unknown}


async def main() -> int:
    from meshnode import configure_logging

    configure_logging(level="WARNING")
    async with Translator(NodeConfig.local(name="translator", port=0)) as translator:
        seed = f"127.0.0.1:{translator.address[1]}"
        async with MeshNode(NodeConfig.local(name="client", port=0, seeds=(seed,))) as client:
            query = "translate text to spanish"
            hits = await client.wait_for(query, max_cost_usd=0.005, top_k=3, within=60)
            best = hits[0]
            print(f"found {best.capability.name} on {best.node_name} (score {best.total:.2f})")
            result = await client.delegate(
                best.capability.name,
                {"text": "Hello friend, good morning! The mesh is working.", "target_lang": "es"},
                max_cost_usd=0.005,
                expect=TEXT_OUT,  # the client's own check, not the translator's word
                evaluator=lambda task_input, output: not output["unknown_words"],
            )
    print(result.output["text"])
    expected = "Hola amigo, buenos días! La malla funciona."
    ok = (
        best.node_id == translator.node_id
        and result.output["text"] == expected
        and result.output["unknown_words"] == []
        and result.quality == 1.0
    )
    print("check:", "ok" if ok else f"unexpected: {result.output!r}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
