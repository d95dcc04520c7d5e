"""Bearer tokens, TLS and mutual TLS: accepted and rejected calls for each mode; metrics over HTTP."""

from __future__ import annotations

import logging
import re
import socket
import time
import urllib.request

import grpc
import pytest
from nnprobe import AttentionClient, NnprobeError, TlsConfig

TOKEN = "s3cret-token-value"


@pytest.fixture()
def token_server(server_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# accepted tokens\nother-token\n\n")
    server, address = server_factory("attention", tmp_path, auth_token=TOKEN, auth_token_file=tokens)
    yield address
    server.shutdown(0).wait()


def call(address: str, **kwargs) -> bool:
    with AttentionClient(address, timeout=20, **kwargs) as client:
        return client.check_feed_forward_equivalence(widths=[4, 8, 4], timing_repeats=1).equivalent


def test_token_accepted(token_server):
    assert call(token_server, token=TOKEN)
    assert call(token_server, token="other-token")  # from the token file


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing bearer token"),
        ("wrong", "invalid bearer token"),
        (TOKEN + "x", "invalid bearer token"),
    ],
)
def test_token_rejected(token_server, token, reason, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(NnprobeError) as info:
        call(token_server, token=token)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert reason in info.value.message
    deadline = time.monotonic() + 60  # the server logs the call after answering it; a hang guard only
    while "UNAUTHENTICATED" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "UNAUTHENTICATED" in caplog.text  # the request log line records the refusal
    assert TOKEN not in caplog.text and "wrong" not in caplog.text  # secrets never reach the log


def test_health_stays_open_without_token(token_server):
    with AttentionClient(token_server) as client:
        assert client.health() == "SERVING"


def test_config_repr_hides_the_token(tmp_path):
    from nnprobe_services.server.config import load_config

    config = load_config("attention", [], {"NNPROBE_AUTH_TOKEN": TOKEN})
    assert config.tokens() == [TOKEN] and TOKEN not in repr(config)


def test_tls(server_factory, tmp_path, pki):
    server, address = server_factory(
        "attention", tmp_path, tls_cert=pki["server_cert"], tls_key=pki["server_key"]
    )
    try:
        assert call(address, tls=TlsConfig(ca=pki["ca"]))
        assert call(address.replace("127.0.0.1", "localhost"), tls=TlsConfig(ca=pki["ca"]))
        with pytest.raises(NnprobeError) as info:
            call(address)  # plain text against a TLS server
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(NnprobeError) as info:
            call(address, tls=TlsConfig())  # the system roots do not trust the test CA
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.shutdown(0).wait()


def test_mutual_tls_with_token(server_factory, tmp_path, pki):
    server, address = server_factory(
        "attention",
        tmp_path,
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca"],
        auth_token=TOKEN,
    )
    full = TlsConfig(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])
    try:
        assert call(address, tls=full, token=TOKEN)
        with pytest.raises(NnprobeError) as info:
            call(address, tls=TlsConfig(ca=pki["ca"]), token=TOKEN)  # no client certificate
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(NnprobeError) as info:
            call(address, tls=full)  # certificate but no token
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.shutdown(0).wait()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tls_cert": "/nonexistent.crt", "tls_key": "/nonexistent.key"}, "no such file"),
        ({"tls_client_ca": "/x"}, "needs tls_cert"),
        ({"auth_token": "   "}, "must not be empty"),
    ],
)
def test_bad_security_settings(server_factory, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        server_factory("attention", tmp_path, **overrides)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def counter(text: str, method: str, code: str) -> float:
    labels = f'code="{code}",method="{re.escape(method)}",protocol="nnprobe"'
    pattern = rf"nnprobe_requests_total{{{labels}}} (\S+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_metrics_endpoint_counts_requests(server_factory, tmp_path):
    port = free_port()
    server, address = server_factory("attention", tmp_path, metrics_port=port)
    method = "/nnprobe.attention.v1.AttentionService/CheckFeedForwardEquivalence"
    try:
        before = scrape(port)
        for _ in range(3):
            assert call(address)
        with pytest.raises(NnprobeError), AttentionClient(address) as client:
            client.check_feed_forward_equivalence(widths=[3])
        # The interceptor records a call just after its status reaches the client: wait (bounded) for the
        # last one to be counted before reading the figures.
        give_up = time.monotonic() + 60
        after = scrape(port)
        idle = f'nnprobe_requests_in_flight{{method="{method}",protocol="nnprobe"}} 0.0'
        while (
            counter(after, method, "INVALID_ARGUMENT") == counter(before, method, "INVALID_ARGUMENT")
            or idle not in after
        ) and time.monotonic() < give_up:
            time.sleep(0.05)
            after = scrape(port)
    finally:
        server.shutdown(0).wait()
    assert counter(after, method, "OK") - counter(before, method, "OK") == 3
    assert counter(after, method, "INVALID_ARGUMENT") - counter(before, method, "INVALID_ARGUMENT") == 1
    assert f'nnprobe_request_duration_seconds_count{{method="{method}",protocol="nnprobe"}}' in after
    assert f'nnprobe_requests_in_flight{{method="{method}",protocol="nnprobe"}} 0.0' in after
