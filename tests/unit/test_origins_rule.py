"""The API's browser rules as tables: :func:`origin_problem`, :func:`host_allowed`,
:func:`authorize` and the configuration that feeds them.

Invariants: a foreign ``Origin`` (or ``null``, or garbage) is refused, the node's own
origin passes only with a ``Host`` that names the node, a listed origin passes;
``Sec-Fetch-Site: cross-site`` without an origin is refused except a GET of the static
dashboard page; a ``Host`` naming another domain is refused for token-less access and
passes with the token; configuration normalises names and origins and refuses junk.
"""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from meshnode.core import NodeConfig
from meshnode.errors import ConfigError
from meshnode.runtime.api import Access, HostRefused, authorize, host_allowed, origin_problem

TOKEN = "a-token-of-sixteen-plus"
CONFIG = NodeConfig.local(
    api_allowed_hosts=("Mesh.Example.",),
    api_allowed_origins=("https://console.example",),
    api_token=TOKEN,
)


class LoopbackTransport:
    """The one thing a request asks its socket here: the peer's address (127.0.0.1)."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40_000) if name == "peername" else default


def request(method: str, path: str, headers: dict[str, str]) -> web.Request:
    return make_mocked_request(method, path, headers=headers, transport=LoopbackTransport())


@pytest.mark.parametrize(
    ("method", "path", "headers", "allowed"),
    [
        ("POST", "/v1/delegate", {"Host": "127.0.0.1:7946"}, True),  # a tool
        (
            "POST",
            "/v1/delegate",
            {"Host": "127.0.0.1:7946", "Origin": "http://evil.example"},
            False,
        ),
        ("POST", "/v1/delegate", {"Host": "127.0.0.1:7946", "Origin": "null"}, False),
        ("POST", "/v1/delegate", {"Host": "127.0.0.1:7946", "Origin": "garbage"}, False),
        # another port of the same host is another origin
        (
            "POST",
            "/v1/delegate",
            {"Host": "127.0.0.1:7946", "Origin": "http://127.0.0.1:8080"},
            False,
        ),
        (
            "POST",
            "/v1/delegate",
            {"Host": "127.0.0.1:7946", "Origin": "http://127.0.0.1:7946"},
            True,
        ),
        (
            "POST",
            "/v1/events/ticket",
            {"Host": "localhost:7946", "Origin": "http://LOCALHOST:7946"},
            True,
        ),
        ("POST", "/v1/delegate", {"Host": "[::1]:7946", "Origin": "http://[::1]:7946"}, True),
        (
            "POST",
            "/v1/delegate",
            {"Host": "mesh.example:80", "Origin": "http://mesh.example"},
            True,
        ),
        # DNS rebinding: own origin as the browser sees it, but the Host is not ours
        (
            "POST",
            "/v1/delegate",
            {"Host": "evil.example:7946", "Origin": "http://evil.example:7946"},
            False,
        ),
        (
            "GET",
            "/v1/members",
            {"Host": "evil.example:7946", "Sec-Fetch-Site": "same-origin"},
            False,
        ),
        ("GET", "/v1/members", {"Host": "127.0.0.1:7946", "Sec-Fetch-Site": "same-origin"}, True),
        # a listed console
        (
            "POST",
            "/v1/delegate",
            {"Host": "127.0.0.1:7946", "Origin": "https://console.example:443"},
            True,
        ),
        ("POST", "/v1/delegate", {"Host": "127.0.0.1:7946", "Sec-Fetch-Site": "cross-site"}, False),
        ("GET", "/v1/members", {"Host": "127.0.0.1:7946", "Sec-Fetch-Site": "cross-site"}, False),
        ("GET", "/", {"Host": "127.0.0.1:7946", "Sec-Fetch-Site": "cross-site"}, True),
        ("GET", "/ui/app.js", {"Host": "127.0.0.1:7946", "Sec-Fetch-Site": "cross-site"}, True),
        ("POST", "/", {"Host": "127.0.0.1:7946", "Sec-Fetch-Site": "cross-site"}, False),
        # a peer: no browser headers, any Host
        ("POST", "/v1/wire/pushpull", {"Host": "node7.mesh.internal:7946"}, True),
    ],
)
def test_origin_rule(method: str, path: str, headers: dict[str, str], allowed: bool) -> None:
    problem = origin_problem(request(method, path, headers), CONFIG)
    assert (problem is None) is allowed, problem


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:7946", True),
        ("10.1.2.3", True),
        ("[::1]:7946", True),
        ("[fe80::1%25eth0]:7946", True),
        ("localhost:7946", True),
        ("localhost.", True),
        ("mesh.example:7946", True),
        ("MESH.EXAMPLE", True),
        ("evil.example:7946", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("", False),
        ("[::1", False),
        ("127.0.0.1:99999", False),
    ],
)
def test_host_rule(host: str, allowed: bool) -> None:
    assert host_allowed(request("GET", "/v1/members", {"Host": host}), CONFIG) is allowed


def test_the_node_own_names_count() -> None:
    config = NodeConfig.local(host="0.0.0.0", advertise_host="node1.lan", open=True)
    assert host_allowed(request("GET", "/", {"Host": "node1.lan:7946"}), config)
    assert not host_allowed(request("GET", "/", {"Host": "node2.lan:7946"}), config)


def test_authorize_holds_tokenless_access_to_the_host_and_lets_the_token_pass() -> None:
    evil = {"Host": "evil.example:7946"}
    # the peer is 127.0.0.1: loopback trust applies
    with pytest.raises(HostRefused):
        authorize(request("POST", "/v1/delegate", evil), CONFIG, Access.WORK)
    authorize(request("POST", "/v1/delegate", {"Host": "127.0.0.1"}), CONFIG, Access.WORK)
    bearer = {**evil, "Authorization": f"Bearer {TOKEN}"}
    authorize(request("POST", "/v1/delegate", bearer), CONFIG, Access.WORK)
    wrong = {**evil, "Authorization": "Bearer not-the-token-at-all"}
    with pytest.raises(HostRefused):
        authorize(request("POST", "/v1/delegate", wrong), CONFIG, Access.WORK)
    # open reads hold to the Host too
    reads = NodeConfig.local(api_open_reads=True, api_trust_loopback=False)
    with pytest.raises(HostRefused):
        authorize(request("GET", "/v1/members", evil), reads, Access.READ)
    with pytest.raises(web.HTTPUnauthorized):
        authorize(request("POST", "/v1/delegate", {"Host": "127.0.0.1"}), reads, Access.WORK)


def test_config_normalises_names_and_origins() -> None:
    assert CONFIG.api_allowed_hosts == ("mesh.example",)
    assert CONFIG.api_allowed_origins == ("https://console.example:443",)
    config = NodeConfig.local(api_allowed_origins=["HTTP://[::1]:8080", "http://a.b:80"])
    assert config.api_allowed_origins == ("http://[::1]:8080", "http://a.b:80")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_allowed_hosts", "one.string"),
        ("api_allowed_hosts", ("a.b:80",)),
        ("api_allowed_hosts", ("*.example",)),
        ("api_allowed_hosts", ("",)),
        ("api_allowed_hosts", (3,)),
        ("api_allowed_hosts", tuple(f"h{i}" for i in range(65))),
        ("api_allowed_origins", ("null",)),
        ("api_allowed_origins", ("http://a.b/path",)),
        ("api_allowed_origins", ("ftp://a.b",)),
        ("api_allowed_origins", ("a.b",)),
        ("api_allowed_origins", ("http://a.b:x",)),
        ("api_allowed_origins", "http://a.b"),
    ],
)
def test_config_refuses_junk(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field.split("_")[-1].rstrip("s") or field):
        NodeConfig.local(**{field: value})
