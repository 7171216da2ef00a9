"""The serve layer's ASGI pieces driven in-process with real ASGI messages, each test pinned by mutants
that survived the rest of the suite, or outlived its first seconds (`make mutate`, docs/TESTING.md): here the
guard's bearer tokens and scopes, the tokens, allowed hosts and exposure read at start-up, and the Host
check, each refusal read whole. How the tests drive ASGI: mutants_serve_support.py.
"""

from __future__ import annotations

import orjson
import pytest

from hotswap.errors import ConfigError
from hotswap.serve.guard import Guard, allowed_hosts, check_exposure, read_tokens
from hotswap.server_config import ServerConfig
from tests.unit.mutants_serve_support import _call, _guard_error, _reached, _server

TOKEN_ENV = "HOTSWAP_TEST_MUTANT_TOKEN"
TOKEN = "t0ken-of-at-least-16-characters"
CHALLENGE = (b"www-authenticate", b'Bearer realm="hotswap"')


@pytest.fixture
def secured(monkeypatch) -> Guard:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return Guard(_reached, _server(auth={"tokens": [{"scope": "infer", "env": TOKEN_ENV}]}))


# --- guard: bearer tokens -------------------------------------------------------------------------------------


def test_no_token_is_the_whole_401_with_lower_case_headers_and_the_challenge(secured):
    assert _call(secured) == _guard_error(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                                          CHALLENGE)


def test_a_wrong_token_is_the_whole_401_with_the_challenge(secured):
    sent = _call(secured, headers=[(b"authorization", b"Bearer " + b"x" * 20)])
    assert sent == _guard_error(401, "invalid bearer token", CHALLENGE)


@pytest.mark.parametrize("header", [b"Bearer  " + TOKEN.encode(), b"bearer " + TOKEN.encode() + b" "])
def test_spaces_around_the_token_are_not_part_of_it(secured, header):
    """The scheme ends at the first space; the token is what follows, stripped."""
    assert _call(secured, headers=[(b"authorization", header)])[0]["status"] == 204


def test_an_infer_token_is_refused_admin_paths_and_metrics_follow_auth_metrics(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    tokens = {"tokens": [{"scope": "infer", "env": TOKEN_ENV}]}
    infer = [(b"authorization", b"Bearer " + TOKEN.encode())]
    guard = Guard(_reached, _server(auth=tokens | {"metrics": "admin"}))
    assert _call(guard, "/v2/repository/index", infer) == _guard_error(
        403, "this token's scope is 'infer'; this endpoint needs 'admin'")
    assert _call(guard, "/metrics", infer)[0]["status"] == 403
    assert _call(guard, "/v2/health/ready")[0]["status"] == 204
    assert _call(Guard(_reached, _server(auth=tokens)), "/metrics")[0]["status"] == 204


# --- guard: tokens, hosts and exposure at start-up -----------------------------------------------------------------


def _tokens_config(*sources: dict) -> ServerConfig:
    return _server(auth={"tokens": list(sources)})


def test_tokens_are_read_from_the_environment_and_from_a_file_s_first_line(monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, f"  {TOKEN}\n")
    token_file = tmp_path / "admin.token"
    token_file.write_text("\n  a-file-token-0123456789  \nsecond line\n")
    assert read_tokens(_tokens_config({"scope": "infer", "env": TOKEN_ENV}, {"scope": "admin", "file": str(token_file)})
                       ) == {TOKEN: "infer", "a-file-token-0123456789": "admin"}


def test_a_token_of_exactly_16_characters_is_enough(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "x" * 16)
    assert read_tokens(_tokens_config({"scope": "admin", "env": TOKEN_ENV})) == {"x" * 16: "admin"}
    monkeypatch.setenv(TOKEN_ENV, "x" * 15)
    with pytest.raises(ConfigError) as info:
        read_tokens(_tokens_config({"scope": "admin", "env": TOKEN_ENV}))
    assert str(info.value) == "server.auth.tokens.0: a token needs at least 16 characters"


@pytest.mark.parametrize("value", [None, "   "])
def test_an_unset_or_blank_token_variable_is_named(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(TOKEN_ENV, value)
    config = _tokens_config({"scope": "infer", "env": TOKEN_ENV})
    with pytest.raises(ConfigError) as info:
        read_tokens(config)
    assert str(info.value) == f"server.auth.tokens.0.env: environment variable {TOKEN_ENV} is not set or empty"


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_or_empty_token_file_is_named(tmp_path, monkeypatch, content):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        read_tokens(_tokens_config({"scope": "infer", "env": TOKEN_ENV}, {"scope": "admin", "file": str(path)}))
    assert str(info.value) == f"server.auth.tokens.1.file: cannot read a token from {path}"


def test_allowed_hosts_are_lower_case_loopback_by_default_and_star_is_any():
    assert allowed_hosts(_server()) == frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
    assert allowed_hosts(_server(allowed_hosts=["Example.COM", "b.example"])) == frozenset({"example.com", "b.example"})
    assert allowed_hosts(_server(allowed_hosts=["a.example", "*"])) is None
    assert allowed_hosts(_server(host="0.0.0.0")) is None


def test_exposure_without_tokens_is_refused_unless_anonymous_is_explicit(monkeypatch):
    with pytest.raises(ConfigError) as info:
        check_exposure(_server(host="0.0.0.0"))
    assert str(info.value) == (
        "server.host: 0.0.0.0 is reachable from other machines but server.auth.tokens is empty; add tokens, "
        "or set server.auth.allow_anonymous: true to serve without them")
    check_exposure(_server(host="0.0.0.0", auth={"allow_anonymous": True}))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    check_exposure(_server(host="0.0.0.0", auth={"tokens": [{"scope": "infer", "env": TOKEN_ENV}]}))


# --- guard: Host header --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "status"), [
    (b"127.0.0.1:8000", 204), (b"LOCALHOST", 204), (b"[::1]", 204), (b"[::1]:8000", 204), (b"localhost:80", 204),
    (b"evil.example", 400), (b"127.0.0.1.evil.example:8000", 400)])
def test_the_host_check_strips_the_port_and_keeps_ipv6_brackets(host, status):
    assert _call(Guard(_reached, _server()), host=host)[0]["status"] == status


def test_a_refused_host_is_named_whole():
    guard = Guard(_reached, _server(allowed_hosts=["api.example"]))
    assert _call(guard, host=b"Evil.Example:80") == _guard_error(
        400, "Host 'evil.example:80' is not in server.allowed_hosts")
    assert _call(guard, host=None) == _guard_error(400, "Host '' is not in server.allowed_hosts")
    assert _call(guard, host=b"API.example:443")[0]["status"] == 204


def test_a_refusal_on_an_openai_path_has_openai_s_error_shape(secured):
    raw = orjson.dumps({"error": {"message": "missing bearer token: send 'Authorization: Bearer <token>'",
                                  "type": "authentication_error", "param": None, "code": "unauthorized"}})
    sent = _call(secured, "/v1/embeddings")
    assert sent[0]["status"] == 401 and orjson.loads(sent[1]["body"]) == orjson.loads(raw)
