"""An external A2A 1.0 agent for the import tests, written with the official a2a-sdk.

``python a2a_agent_server.py --port PORT [--mode ok|fail|input] [--sign-key PEM]
[--tamper] [--skills-file JSON]``

It serves its agent card at ``/.well-known/agent-card.json`` and JSON-RPC at ``/`` with
Starlette under uvicorn on 127.0.0.1, and runs a real ``AgentExecutor``:

* ``ok``: a task that completes with one artifact holding the input text reversed and
  upper-cased, plus a data part counting its words;
* ``fail``: a task that ends FAILED with a reason;
* ``input``: a task that asks for more input (INPUT_REQUIRED);
* ``hang``: a task that never ends.

``--sign-key`` signs the card with an EC P-256 private key (ES256, ``kid`` "test-key");
``--tamper`` changes the description after signing, so the signature no longer matches.
``--name`` sets the agent's name. ``--skills-file`` names a JSON file holding the skills
(re-read on every card request, so a test can change them while the agent runs). It
prints ``{"event": "listening"}`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import uvicorn
from a2a.client.card_resolver import parse_agent_card
from a2a.helpers.proto_helpers import new_data_part, new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCard
from a2a.utils.signing import create_agent_card_signer
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

DEFAULT_SKILLS = [
    {
        "id": "shout",
        "name": "Shout text backwards",
        "description": "Reverses a sentence and shouts it back in capital letters",
        "tags": ["text", "reverse"],
        "examples": ["shout hello world"],
        "inputModes": ["text/plain"],
        "outputModes": ["text/plain", "application/json"],
    }
]


class Executor(AgentExecutor):
    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None
        task = context.current_task or new_task_from_user_message(context.message)
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        text = context.get_user_input()
        if self.mode == "fail":
            await updater.failed(updater.new_agent_message([new_text_part("the model is down")]))
            return
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "input":
            await updater.requires_input(
                updater.new_agent_message([new_text_part("which language do you mean?")])
            )
            return
        await updater.add_artifact(
            [new_text_part(text[::-1].upper()), new_data_part({"words": len(text.split())})],
            name="shouted",
        )
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        return None


def build_card(port: int, skills: list[dict[str, Any]], name: str = "Shouter Agent") -> AgentCard:
    return parse_agent_card(
        {
            "name": name,
            "description": "An external agent that shouts text backwards",
            "version": "1.0.0",
            "supportedInterfaces": [
                {
                    "url": f"http://127.0.0.1:{port}/",
                    "protocolBinding": "JSONRPC",
                    "protocolVersion": "1.0",
                }
            ],
            "capabilities": {"streaming": False},
            "defaultInputModes": ["text/plain"],
            "defaultOutputModes": ["text/plain"],
            "skills": skills,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("ok", "fail", "input", "hang"), default="ok")
    parser.add_argument("--sign-key", type=Path)
    parser.add_argument("--tamper", action="store_true")
    parser.add_argument("--skills-file", type=Path)
    parser.add_argument("--name", default="Shouter Agent")
    args = parser.parse_args()

    def skills() -> list[dict[str, Any]]:
        if args.skills_file is not None:
            loaded: list[dict[str, Any]] = json.loads(args.skills_file.read_text())
            return loaded
        return DEFAULT_SKILLS

    def card_json() -> dict[str, Any]:
        card = build_card(args.port, skills(), args.name)
        if args.sign_key is not None:
            sign = create_agent_card_signer(
                args.sign_key.read_bytes(),
                {"kid": "test-key", "alg": "ES256", "jku": None, "typ": "JOSE"},
            )
            card = sign(card)
        out: dict[str, Any] = MessageToDict(card)
        if args.tamper:
            out["description"] = "A trustworthy agent, honestly"
        return out

    handler = DefaultRequestHandler(
        agent_executor=Executor(args.mode),
        task_store=InMemoryTaskStore(),
        agent_card=build_card(args.port, DEFAULT_SKILLS),
    )

    async def card_route(request: Request) -> JSONResponse:
        return JSONResponse(card_json())

    app = Starlette(
        routes=[
            Route("/.well-known/agent-card.json", card_route, methods=["GET"]),
            *create_jsonrpc_routes(handler, "/"),
        ]
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning")
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
                return
            await asyncio.sleep(0.05)
        print(json.dumps({"event": "listening", "port": args.port}), flush=True)
        await task

    asyncio.run(serve())
    sys.exit(0)


if __name__ == "__main__":
    main()
