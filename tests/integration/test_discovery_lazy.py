"""A node with the hashing embedder sets up its index only when it has something to index.

Invariant: two hashing nodes that advertise no capabilities join, gossip and serve HTTP
without ever importing numpy or hnswlib (a membership-only node stays small); the first
query sets the index up and answers; a manifest with capabilities is indexed on arrival.
Run in a fresh interpreter, since the test process has numpy loaded already.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import asyncio, json, sys
from meshnode import MeshNode, NodeConfig
from meshnode.runtime.node import wait_for

async def translate(payload):
    return payload

async def main():
    a = MeshNode(NodeConfig.local(port=0, name="a", embedder="hashing"))
    await a.start()
    b = MeshNode(NodeConfig.local(port=0, name="b", embedder="hashing",
                                  seeds=(f"127.0.0.1:{a.address[1]}",)))
    await b.start()
    await wait_for(lambda: a.core.manifests.get(b.node_id) is not None, 10)
    await a.discovery.settled()
    out = {"idle_numpy": "numpy" in sys.modules, "idle_hnswlib": "hnswlib" in sys.modules,
           "idle_index": a.discovery.index is not None}
    out["empty_query"] = len(await a.discover("translate text"))
    out["after_query_index"] = a.discovery.index is not None
    b.add_capability(translate, name="translate_text",
                     description="translate text between languages")
    index = a.discovery.index
    await wait_for(lambda: bool(index.by_name("translate_text")), 10)
    found = await a.discover("translate text")
    out["found"] = [c.capability.name for c in found]
    await b.aclose()
    await a.aclose()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_hashing_node_imports_numpy_only_when_needed() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {
        "idle_numpy": False,
        "idle_hnswlib": False,
        "idle_index": False,
        "empty_query": 0,
        "after_query_index": True,
        "found": ["translate_text"],
    }
