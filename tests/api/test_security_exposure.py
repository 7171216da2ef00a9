"""What create_app refuses before anything listens: exposure without tokens, and tokens it cannot read.

These build the app only; nothing binds a non-loopback address and no traffic leaves loopback.
"""

from __future__ import annotations

import secrets

import pytest
from fastapi import FastAPI

from hotswap.config import parse_config
from hotswap.errors import ConfigError
from hotswap.serve.app import create_app

TOKEN_ENV = "HOTSWAP_TEST_EXPOSURE_TOKEN"


def build(registry, server: dict) -> FastAPI:
    return create_app(parse_config({"server": server, "models": []}, "test", registry), registry)


def test_a_public_address_without_tokens_is_refused(registry):
    """0.0.0.0 with no tokens is a config error naming server.host and the two ways out."""
    with pytest.raises(ConfigError) as info:
        build(registry, {"host": "0.0.0.0"})
    message = str(info.value)
    assert "server.host" in message and "0.0.0.0" in message
    assert "server.auth.tokens" in message and "server.auth.allow_anonymous" in message


def test_a_public_address_is_allowed_when_anonymous_access_is_explicit(registry):
    """`auth.allow_anonymous: true` lets the same config build (create_app only; nothing is bound)."""
    assert isinstance(build(registry, {"host": "0.0.0.0", "auth": {"allow_anonymous": True}}), FastAPI)


def test_a_public_address_is_allowed_with_a_token(registry, monkeypatch):
    """Tokens are the other way to serve a non-loopback address."""
    monkeypatch.setenv(TOKEN_ENV, secrets.token_hex(16))
    server = {"host": "0.0.0.0", "auth": {"tokens": [{"scope": "infer", "env": TOKEN_ENV}]}}
    assert isinstance(build(registry, server), FastAPI)


def test_loopback_needs_no_token(registry):
    """The default bind address (127.0.0.1) builds without tokens."""
    assert isinstance(build(registry, {}), FastAPI)


def test_an_unset_token_variable_fails_at_create_app(registry, monkeypatch):
    """A token whose environment variable is missing stops create_app, naming the key, not the first request."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match=rf"server\.auth\.tokens\.0\.env: environment variable {TOKEN_ENV}"):
        build(registry, {"auth": {"tokens": [{"scope": "infer", "env": TOKEN_ENV}]}})


def test_an_unreadable_or_short_token_fails_at_create_app(registry, monkeypatch, tmp_path):
    """A missing token file, an empty one, or a token under 16 characters are config errors naming the key."""
    missing = tmp_path / "missing.token"
    with pytest.raises(ConfigError, match=r"server\.auth\.tokens\.0\.file: cannot read a token"):
        build(registry, {"auth": {"tokens": [{"scope": "admin", "file": str(missing)}]}})
    empty = tmp_path / "empty.token"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"server\.auth\.tokens\.0\.file"):
        build(registry, {"auth": {"tokens": [{"scope": "admin", "file": str(empty)}]}})
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(ConfigError, match=r"server\.auth\.tokens\.0: a token needs at least 16 characters"):
        build(registry, {"auth": {"tokens": [{"scope": "infer", "env": TOKEN_ENV}]}})
