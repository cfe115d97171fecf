"""A mesh node living inside an existing aiohttp application.

    python examples/embed_in_aiohttp_app.py           # start app + a peer, call the app, exit
    python examples/embed_in_aiohttp_app.py --serve --seed HOST:PORT [--port 8080]

The node starts and stops with the application (``cleanup_ctx``: the code before
``yield`` runs at startup, the code after it at cleanup) and shares its event loop; it
never calls ``asyncio.run`` itself. Two routes use it:

* ``GET /discover?q=...`` — rank the mesh's capabilities for a description;
* ``POST /ask`` with ``{"description": ..., "input": ...}`` — delegate to the best match.

Without ``--serve`` the script checks itself: it starts a peer offering ``shout``, serves
the app on a free port, calls both routes over HTTP and exits 0 if the answers are right.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from meshnode import DelegationError, MeshNode, NodeConfig, candidate_json, capability

NODE: web.AppKey[MeshNode] = web.AppKey("mesh_node")
SEEDS: web.AppKey[list[str]] = web.AppKey("mesh_seeds")


async def mesh_node(app: web.Application) -> AsyncIterator[None]:
    """The node's lifecycle is the application's."""
    seeds: list[str] = app[SEEDS]
    config = NodeConfig.local(name="web-app", port=0, seeds=tuple(seeds))
    async with MeshNode(config) as node:
        app[NODE] = node
        yield


async def discover(request: web.Request) -> web.Response:
    hits = await request.app[NODE].discover(request.query["q"], top_k=3)
    return web.json_response({"candidates": [candidate_json(c) for c in hits]})


async def ask(request: web.Request) -> web.Response:
    body = await request.json()
    try:
        result = await request.app[NODE].delegate(
            None, body.get("input"), description=body["description"], deadline_s=10
        )
    except DelegationError as exc:
        return web.json_response({"error": exc.reason}, status=502)
    return web.json_response(result.to_json())


def make_app(seeds: list[str]) -> web.Application:
    app = web.Application()
    app[SEEDS] = seeds
    app.cleanup_ctx.append(mesh_node)
    app.router.add_get("/discover", discover)
    app.router.add_post("/ask", ask)
    return app


TEXT_IN = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}


class Shouter(MeshNode):
    @capability(description="Turn text into upper case letters", input_schema=TEXT_IN)
    async def shout(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"text": str(payload["text"]).upper()}


async def check() -> int:
    from meshnode import configure_logging

    configure_logging(level="WARNING")
    async with Shouter(NodeConfig.local(name="shouter", port=0)) as peer:
        runner = web.AppRunner(make_app([f"127.0.0.1:{peer.address[1]}"]))
        await runner.setup()  # runs the cleanup_ctx startup half: the node joins
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            base = f"http://127.0.0.1:{port}"
            node = runner.app[NODE]
            await node.wait_for("make text upper case", within=60)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/discover", params={"q": "make text upper case"}) as r:
                    found = (await r.json())["candidates"]
                ask_body = {"description": "make text upper case", "input": {"text": "hi mesh"}}
                async with http.post(f"{base}/ask", json=ask_body) as r:
                    answer = await r.json()
        finally:
            await runner.cleanup()  # the cleanup half: the node leaves
    print(f"/discover → {found[0]['capability']} on {found[0]['name']}")
    print(f"/ask → {answer['output']}")
    ok = (
        found[0]["capability"] == "shout"
        and answer["output"] == {"text": "HI MESH"}
        and answer["provider"] == peer.node_id
        and not node.running
    )
    print("check:", "ok" if ok else "unexpected answers")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve until Ctrl-C")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--seed", action="append", default=[], metavar="HOST:PORT")
    args = parser.parse_args()
    if args.serve:
        web.run_app(make_app(args.seed), host="127.0.0.1", port=args.port)
        return 0
    return asyncio.run(check())


if __name__ == "__main__":
    sys.exit(main())
