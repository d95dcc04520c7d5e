"""A comma-separated address list: every entry is used whatever its address family, and under TLS each
host is checked against its own name."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nnprobe import AttentionClient, TlsConfig
from nnprobe._client import channel_targets

ports = st.integers(1, 65535)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
)


@given(st.lists(st.tuples(hosts, ports), min_size=2, max_size=6), st.sampled_from([",", ", ", " ,"]))
def test_every_entry_becomes_its_own_target_in_order(entries, separator):
    address = separator.join(f"{host}:{port}" for host, port in entries)
    targets = channel_targets(address)
    assert targets == [f"{host}:{port}" for host, port in entries]
    for target, (host, _) in zip(targets, entries, strict=True):
        if host.startswith("["):  # IPv6 literals stay bracketed, whatever the other entries' family
            assert ipaddress.ip_address(target.rpartition(":")[0].strip("[]")).version == 6


@pytest.mark.parametrize("bad", ["a:1,b", "a:1,:2", "1::2::3:5,a:1", ",", "a:1,b:x"])
def test_malformed_lists_are_refused(bad):
    with pytest.raises(ValueError):
        channel_targets(bad)


def check(client: AttentionClient) -> bool:
    return client.check_feed_forward_equivalence(widths=[2, 4, 2], timing_repeats=1).equivalent


def test_ipv4_and_ipv6_entries_are_both_used(server_factory):
    """Regression: a list mixing families kept only its IPv4 entries."""
    v4, _ = server_factory("attention")
    v6, _ = server_factory("attention", host="::1")
    with AttentionClient(f"127.0.0.1:{v4.port},[::1]:{v6.port}", timeout=20) as client:
        client.wait_until_ready(timeout=20)
        assert all(check(client) for _ in range(4))
        v4.shutdown(0).wait(60)
        assert all(check(client) for _ in range(4))  # only the IPv6 replica is left


def test_tls_checks_each_host_against_its_own_name(server_factory, pki):
    """Regression: the first host name of the list was the TLS name of every entry, so a server whose
    certificate names only 127.0.0.1 was refused when the list began with localhost."""
    by_name, _ = server_factory("attention", tls_cert=pki["name_only_cert"], tls_key=pki["name_only_key"])
    by_ip, _ = server_factory("attention", tls_cert=pki["ip_only_cert"], tls_key=pki["ip_only_key"])
    address = f"localhost:{by_name.port},127.0.0.1:{by_ip.port}"
    with AttentionClient(address, timeout=20, tls=TlsConfig(ca=pki["ca"])) as client:
        client.wait_until_ready(timeout=20)  # both handshakes succeed
        assert all(check(client) for _ in range(4))
        by_name.shutdown(0).wait(60)
        assert all(check(client) for _ in range(4))  # 127.0.0.1 verified against its own certificate
