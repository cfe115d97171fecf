"""The smallest agent: one capability, join a mesh, serve.

    python examples/hello_agent.py                    # start it, greet it from a second node
    python examples/hello_agent.py --serve --port 7946 [--seed HOST:PORT]
    meshnode run --agent examples/hello_agent.py:HelloAgent --seed HOST:PORT

Without ``--serve`` the script checks itself: a second node joins through the agent,
finds ``greet`` by name, delegates to it, prints the answer and exits 0 if it is right.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from meshnode import InvalidInput, MeshNode, NodeConfig, capability

NAME_IN = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200}},
}
"""What ``greet`` takes: a caller that sends anything else is refused before the handler
runs (``invalid_input``), and that refusal never counts against this agent."""
GREETING_OUT = {
    "type": "object",
    "required": ["greeting"],
    "properties": {"greeting": {"type": "string"}},
}


class HelloAgent(MeshNode):
    @capability(
        description="Greet someone by name", input_schema=NAME_IN, output_schema=GREETING_OUT
    )
    async def greet(self, payload: dict[str, Any]) -> dict[str, Any]:
        name = payload["name"].strip()
        if not name:  # a rule the schema cannot say: the caller's input is the problem
            raise InvalidInput("name must not be blank")
        return {"greeting": f"Hello, {name}!"}


async def serve(port: int, seeds: list[str]) -> None:
    async with HelloAgent(NodeConfig(name="hello", port=port, seeds=tuple(seeds))) as node:
        print(f"hello agent {node.node_id} serving on {node.url}", flush=True)
        await asyncio.Event().wait()  # until Ctrl-C


async def check() -> int:
    from meshnode import configure_logging

    configure_logging(level="WARNING")
    # Loopback timings, any free port, and the hashing embedder: this check looks the
    # capability up by name, so loading a language model would only cost time.
    local = {"port": 0, "embedder": "hashing"}
    async with HelloAgent(NodeConfig.local(name="hello", **local)) as hello:
        seed = f"127.0.0.1:{hello.address[1]}"
        async with MeshNode(NodeConfig.local(name="caller", seeds=(seed,), **local)) as caller:
            await caller.wait_for(capability_name="greet", within=15)
            # The caller judges the answer itself: the agent's own schema is its promise,
            # not a grade.
            result = await caller.delegate(
                "greet",
                {"name": "mesh"},
                expect=GREETING_OUT,
                evaluator=lambda task_input, output: (
                    output["greeting"] == f"Hello, {task_input['name']}!"
                ),
            )
    print(result.output["greeting"])
    ok = (
        result.output == {"greeting": "Hello, mesh!"}
        and result.provider == hello.node_id
        and result.quality == 1.0
    )
    print("check:", "ok" if ok else f"unexpected answer {result.output!r}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve until Ctrl-C")
    parser.add_argument("--port", type=int, default=7946)
    parser.add_argument("--seed", action="append", default=[], metavar="HOST:PORT")
    args = parser.parse_args()
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how serving ends
            asyncio.run(serve(args.port, args.seed))
        return 0
    return asyncio.run(check())


if __name__ == "__main__":
    sys.exit(main())
