"""docs/interop.md, "Calling the mesh over A2A": the Python block that resolves a node's
card with the official a2a-sdk client and checks its signature runs as written against a
real ``meshnode run`` process with an API token."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration import doc_snippets

pytestmark = pytest.mark.slow

TOKEN = "docs-token-0123456789"


def _run_in_main(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` (a documented snippet, with ``await``) as the body of an ``async def
    main()`` in a fresh interpreter, with this checkout on the path."""
    script = tmp_path / "card.py"
    script.write_text(
        "import asyncio\n\n\nasync def main() -> None:\n"
        + textwrap.indent(body, "    ")
        + "\n\nasyncio.run(main())\n"
    )
    return subprocess.run(
        [sys.executable, str(script)],
        env=doc_snippets.env(),
        cwd=str(doc_snippets.ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_card_snippet_resolves_and_verifies_a_live_card(tmp_path: Path) -> None:
    code = doc_snippets.snippet("a2a-card-python")
    assert "http://127.0.0.1:7946" in code and "Bearer <token>" in code
    argv = [
        "meshnode", "run", "--port", "0", "--name", "docs-node", "--profile", "local",
        "--embedder", "hashing", "--api-token", TOKEN, "--data-dir", str(tmp_path / "node"),
    ]  # fmt: skip
    with doc_snippets.running(argv, tmp_path, tmp_path / "node.log") as address:
        body = code.replace("http://127.0.0.1:7946", f"http://{address}").replace(
            "Bearer <token>", f"Bearer {TOKEN}"
        )
        tail = "print(card.name, [s.id for s in card.skills], len(card.signatures))\n"
        proc = _run_in_main(tmp_path, body + tail + "await client.close()\n")
    assert proc.returncode == 0, proc.stderr
    name, _, rest = proc.stdout.strip().partition(" ")
    assert name == "docs-node", proc.stdout
    assert "meshnode.gateway" in rest and rest.endswith(" 1"), proc.stdout


def test_the_card_snippet_refuses_a_wrong_token(tmp_path: Path) -> None:
    """The same block with the placeholder token gets nothing: the card is a READ route,
    and a node that does not trust loopback callers (``--no-trust-loopback``) asks every
    caller for its token."""
    code = doc_snippets.snippet("a2a-card-python")
    argv = [
        "meshnode", "run", "--port", "0", "--name", "docs-node", "--profile", "local",
        "--embedder", "hashing", "--api-token", TOKEN, "--no-trust-loopback",
        "--data-dir", str(tmp_path / "node"),
    ]  # fmt: skip
    with doc_snippets.running(argv, tmp_path, tmp_path / "node.log") as address:
        body = code.replace("http://127.0.0.1:7946", f"http://{address}")
        proc = _run_in_main(tmp_path, body)
    assert proc.returncode != 0
    assert "401" in proc.stderr, proc.stderr[-2000:]
