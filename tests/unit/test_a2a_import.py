"""The A2A importer's rules, without a network: URL checks, card caps, signatures, skill →
capability mapping, the interface's origin, and task outcomes (tables of cases)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("a2a")
pytest.importorskip("jwt")

from a2a.client.card_resolver import parse_agent_card
from a2a.types import Artifact, Message, Part, Task, TaskState, TaskStatus
from a2a.utils.signing import _canonicalize_agent_card, create_agent_card_signer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshnode.errors import InvalidInput
from meshnode.runtime.a2a_import import (
    MAX_CARD_BYTES,
    MAX_INPUT_TEXT_CHARS,
    PROXY_TAG,
    AgentTaskFailed,
    CardRefused,
    card_location,
    check_agent_url,
    load_verification_keys,
    parse_card_body,
    rpc_interface,
    sanitize_capability_name,
    skill_capability,
    task_outcome,
    verify_card_signature,
)
from protocol import Capability
from protocol.manifest import MAX_EXAMPLE_CHARS, MAX_EXAMPLES

# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Shouter_Agent.shout", "Shouter_Agent.shout"),
        ("My Agent.say hello", "My_Agent.say_hello"),
        ("a/b\\c?d", "a_b_c_d"),
        ("émoji 🚀 tool", "moji_tool"),
        ("...", "tool"),
        ("", "tool"),
        ("ns:tool-1", "ns:tool-1"),
    ],
)
def test_sanitize_capability_name(raw: str, expected: str) -> None:
    name = sanitize_capability_name(raw)
    assert name == expected
    Capability(name=name, description="")  # a valid capability name


def test_long_names_keep_a_hash_so_they_stay_apart() -> None:
    a = sanitize_capability_name("x" * 200 + "a")
    b = sanitize_capability_name("x" * 200 + "b")
    assert len(a) == len(b) == 128 and a != b
    Capability(name=a, description="")


# ---------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8000", None),
        ("https://agents.example.org/shouter/", None),
        ("ftp://example.org", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://", "no host"),
        ("http://user:pw@example.org", "user name or password"),
        ("http://example.org:99999", "not a URL"),
        ("http://example.org/" + "a" * 3000, "longer than"),
        ("", "non-empty string"),
        (None, "non-empty string"),
    ],
)
def test_check_agent_url(url: Any, problem: str | None) -> None:
    if problem is None:
        assert check_agent_url(url) == url
    else:
        with pytest.raises(CardRefused, match=problem):
            check_agent_url(url)


@pytest.mark.parametrize(
    ("url", "card"),
    [
        ("http://h:1", "http://h:1/.well-known/agent-card.json"),
        ("http://h:1/", "http://h:1/.well-known/agent-card.json"),
        ("http://h/agents/x/", "http://h/agents/x/.well-known/agent-card.json"),
        ("http://h/cards/x.json", "http://h/cards/x.json"),
    ],
)
def test_card_location(url: str, card: str) -> None:
    assert card_location(url) == card


# ---------------------------------------------------------------------------- card caps


def _nested(depth: int) -> bytes:
    return ('{"a":' + "[" * depth + "1" + "]" * depth + "}").encode()


@pytest.mark.parametrize(
    ("body", "content_type", "problem"),
    [
        (b'{"name": "x"}', "application/json", None),
        (b'{"name": "x"}', "application/json; charset=utf-8", None),
        (b'{"name": "x"}', "application/vnd.a2a+json", None),
        (b'{"name": "x"}', "text/html", "content type 'text/html'"),
        (b'{"name": "x"}', "", "content type 'none'"),
        (b"[1, 2]", "application/json", "must be a JSON object"),
        (b"{nope", "application/json", "not JSON"),
        (b'{"a": "' + b"x" * MAX_CARD_BYTES + b'"}', "application/json", "larger than"),
        (_nested(40), "application/json", "nested deeper"),
    ],
)
def test_parse_card_body_caps(body: bytes, content_type: str, problem: str | None) -> None:
    if problem is None:
        assert parse_card_body(body, content_type) == {"name": "x"}
    else:
        with pytest.raises(CardRefused, match=problem):
            parse_card_body(body, content_type)


# ---------------------------------------------------------------------------- signatures


def _card(**extra: Any) -> Any:
    return parse_agent_card(
        {
            "name": "Signer",
            "description": "signs its card",
            "version": "1",
            "supportedInterfaces": [
                {"url": "http://h:1/", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
            ],
            "skills": [{"id": "s", "name": "S", "description": "does s", "tags": ["t"]}],
            **extra,
        }
    )


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path, Path]:
    """(private PEM, public PEM file, JWKS file with kid "k1")."""
    import jwt

    base = tmp_path_factory.mktemp("keys")
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (base / "pub.pem").write_bytes(pub)
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": "k1", "alg": "ES256", "use": "sig"})
    (base / "keys.jwks").write_text(json.dumps({"keys": [jwk]}))
    return pem, base / "pub.pem", base / "keys.jwks"


def _signed(pem: bytes, kid: str = "k1") -> Any:
    sign = create_agent_card_signer(pem, {"kid": kid, "alg": "ES256", "jku": None, "typ": "JOSE"})
    return sign(_card())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_signature_rules(keypair: tuple[bytes, Path, Path]) -> None:
    pem, pub_file, jwks_file = keypair
    pem_keys = load_verification_keys(pub_file)
    jwks_keys = load_verification_keys(jwks_file)

    assert verify_card_signature(_signed(pem), pem_keys, require_signed=False) is True
    assert verify_card_signature(_signed(pem), jwks_keys, require_signed=True) is True
    assert verify_card_signature(_card(), pem_keys, require_signed=False) is False

    tampered = _signed(pem)
    tampered.description = "a different promise"
    with pytest.raises(CardRefused, match="signature is not valid"):
        verify_card_signature(tampered, pem_keys, require_signed=False)
    with pytest.raises(CardRefused, match="signature is not valid"):
        verify_card_signature(_signed(pem, kid="other"), jwks_keys, require_signed=False)
    with pytest.raises(CardRefused, match="no verification key"):
        verify_card_signature(_signed(pem), None, require_signed=False)
    with pytest.raises(CardRefused, match="not signed"):
        verify_card_signature(_card(), pem_keys, require_signed=True)


def test_hmac_with_the_public_key_is_refused(keypair: tuple[bytes, Path, Path]) -> None:
    """Algorithm confusion: a card 'signed' with HS256 keyed by the public PEM (which
    anyone has) must not pass."""
    _, pub_file, _ = keypair
    card = _card()
    header = _b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    payload = _b64(_canonicalize_agent_card(card).encode())
    mac = hmac.new(pub_file.read_bytes(), f"{header}.{payload}".encode(), hashlib.sha256)
    card.signatures.add(protected=header, signature=_b64(mac.digest()))
    with pytest.raises(CardRefused, match="signature is not valid"):
        verify_card_signature(card, load_verification_keys(pub_file), require_signed=False)


def test_key_file_must_be_pem_or_jwks(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("not a key")
    with pytest.raises(CardRefused, match="neither a PEM public key nor a JWKS"):
        load_verification_keys(junk)
    with pytest.raises(CardRefused, match="cannot read"):
        load_verification_keys(tmp_path / "missing")


# ---------------------------------------------------------------------------- skills

URL = "http://127.0.0.1:8123"


def test_skill_maps_to_a_proxy_capability() -> None:
    cap = skill_capability(
        "Shouter_Agent",
        {
            "id": "shout",
            "name": "Backwards",
            "description": "Reverses a sentence and shouts it",
            "tags": ["text", "reverse", "text"],
            "examples": ["shout hello", "shout good night"],
            "inputModes": ["text/plain", "application/json"],
        },
        URL,
    )
    assert cap.name == "Shouter_Agent.shout"
    assert cap.description == "Backwards: Reverses a sentence and shouts it"
    assert cap.examples == ("shout hello", "shout good night")
    assert cap.tags == ("text", "reverse", PROXY_TAG, "a2a:http://127.0.0.1:8123")
    assert cap.input_schema == {
        "type": "object",
        "properties": {
            "text": {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_TEXT_CHARS},
            "data": {"type": "object"},
        },
        "additionalProperties": False,
    }
    Capability(
        name=cap.name,
        description=cap.description,
        input_schema=cap.input_schema,
        output_schema=cap.output_schema,
        tags=cap.tags,
        examples=cap.examples,
    )


def test_skill_examples_are_bounded() -> None:
    """A skill's examples go to the capability's examples field: blank ones and
    non-strings skipped, whitespace collapsed, the first MAX_EXAMPLES kept, each clipped
    to MAX_EXAMPLE_CHARS, so a card with many or huge examples still maps."""
    skill = {
        "id": "shout",
        "description": "Shouts",
        "examples": ["  ", 7, "say\n  hi", "x" * 5_000, *[f"ex {i}" for i in range(20)]],
    }
    cap = skill_capability("A", skill, URL)
    assert len(cap.examples) == MAX_EXAMPLES
    assert cap.examples[0] == "say hi"
    assert len(cap.examples[1]) == MAX_EXAMPLE_CHARS
    assert cap.examples[2:] == ("ex 0", "ex 1", "ex 2")
    Capability(name=cap.name, description=cap.description, examples=cap.examples)
    assert skill_capability("A", {"id": "s", "examples": "not a list"}, URL).examples == ()


@pytest.mark.parametrize(
    ("skill", "defaults", "properties", "problem"),
    [
        ({"id": "a"}, [], {"text"}, None),
        ({"id": "a"}, ["application/json"], {"data"}, None),
        ({"id": "a", "inputModes": ["text/plain"]}, ["application/json"], {"text"}, None),
        ({"id": "a", "inputModes": ["*/*"]}, [], {"text", "data"}, None),
        ({"id": "a", "inputModes": ["image/png"]}, [], set(), "neither text/plain"),
        ({"name": "no id"}, [], set(), "no id"),
        ({"id": "  "}, [], set(), "no id"),
    ],
)
def test_input_modes_decide_the_schema(
    skill: dict[str, Any], defaults: list[str], properties: set[str], problem: str | None
) -> None:
    if problem is not None:
        with pytest.raises(CardRefused, match=problem):
            skill_capability("A", skill, URL, default_input_modes=defaults)
        return
    cap = skill_capability("A", skill, URL, default_input_modes=defaults)
    assert set(cap.input_schema["properties"]) == properties


def test_tags_and_description_are_capped() -> None:
    cap = skill_capability(
        "A",
        {"id": "a", "description": "d" * 5000, "tags": [f"tag{i}" for i in range(40)] + ["x" * 99]},
        "http://" + "h" * 80 + ":1",
    )
    assert len(cap.tags) == 16 and cap.tags[-2] == PROXY_TAG
    assert all(len(t) <= 64 for t in cap.tags)
    assert cap.tags[-1].startswith("a2a:" + "h" * 51 + "#")  # host, then the URL's hash
    assert len(cap.description) == 1024
    Capability(name=cap.name, description=cap.description, tags=cap.tags)


# ---------------------------------------------------------------------------- interface


@pytest.mark.parametrize(
    ("interfaces", "expected"),
    [
        ([{"url": f"{URL}/rpc", "protocolBinding": "JSONRPC"}], f"{URL}/rpc"),
        ([{"url": "/rpc", "protocolBinding": "JSONRPC"}], f"{URL}/rpc"),
        (
            [
                {"url": "http://10.0.0.5/rpc", "protocolBinding": "JSONRPC"},
                {"url": f"{URL}/", "protocolBinding": "JSONRPC"},
            ],
            f"{URL}/",
        ),
        ([{"url": "http://169.254.169.254/", "protocolBinding": "JSONRPC"}], "another origin"),
        ([{"url": "https://127.0.0.1:8123/", "protocolBinding": "JSONRPC"}], "another origin"),
        ([{"url": f"{URL}/", "protocolBinding": "GRPC"}], "no JSON-RPC interface"),
        ([], "no JSON-RPC interface"),
    ],
)
def test_the_rpc_interface_must_share_the_origin(
    interfaces: list[dict[str, Any]], expected: str
) -> None:
    card = {"supportedInterfaces": interfaces}
    if expected.startswith("http"):
        assert rpc_interface(card, URL) == expected
    else:
        with pytest.raises(CardRefused, match=expected):
            rpc_interface(card, URL)


# ---------------------------------------------------------------------------- outcomes


def _task(state: int, *, artifacts: list[Artifact] = (), why: str = "") -> Task:  # type: ignore[assignment]
    status = TaskStatus(state=state)
    if why:
        status.message.CopyFrom(Message(parts=[Part(text=why)]))
    return Task(id="t", status=status, artifacts=list(artifacts))


def test_task_outcomes() -> None:
    data = Part()
    data.data.struct_value.update({"n": 2})
    done = _task(
        TaskState.TASK_STATE_COMPLETED,
        artifacts=[Artifact(parts=[Part(text="HELLO"), data]), Artifact(parts=[Part(text="!")])],
    )
    assert task_outcome(done) == {"state": "completed", "text": "HELLO\n!", "data": [{"n": 2}]}
    assert task_outcome(_task(TaskState.TASK_STATE_WORKING)) is None
    assert task_outcome(_task(TaskState.TASK_STATE_SUBMITTED)) is None
    for state, label in [
        (TaskState.TASK_STATE_FAILED, "failed"),
        (TaskState.TASK_STATE_REJECTED, "rejected"),
        (TaskState.TASK_STATE_CANCELED, "canceled"),
        (TaskState.TASK_STATE_AUTH_REQUIRED, "auth_required"),
    ]:
        with pytest.raises(AgentTaskFailed, match=f"ended the task {label}: broke"):
            task_outcome(_task(state, why="broke"))
    with pytest.raises(InvalidInput, match="needs more input: which one"):
        task_outcome(_task(TaskState.TASK_STATE_INPUT_REQUIRED, why="which one?"))
