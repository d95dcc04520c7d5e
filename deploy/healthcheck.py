#!/usr/bin/env python3
"""Ask a server's grpc.health.v1 service whether it is SERVING; exit 0 if so, 1 otherwise.

Used as the container HEALTHCHECK (installed as /usr/local/bin/nnprobe-healthcheck) and usable from a
shell: ``python deploy/healthcheck.py --address localhost:50053``. Needs only grpcio and
grpcio-health-checking (both come with the nnprobe SDK).

Settings, from flags or the environment the server itself reads:
  address   --address, else 127.0.0.1:$NNPROBE_PORT
  service   --service (a full service name such as nnprobe.vision.v1.VisionService); default "" (the server)
  TLS       on when NNPROBE_TLS_CERT is set (the server's certificate), or with --tls.
            Root of trust: NNPROBE_PROBE_TLS_CA when set, else the server's own NNPROBE_TLS_CERT (right for
            a self-signed certificate; a certificate signed by a CA needs NNPROBE_PROBE_TLS_CA).
            Host name checked: NNPROBE_PROBE_TLS_SERVER_NAME, else the first DNS name of the certificate,
            else "localhost".
  mutual TLS when NNPROBE_TLS_CLIENT_CA is set, the server requires a client certificate: give one with
            NNPROBE_PROBE_TLS_CERT and NNPROBE_PROBE_TLS_KEY (signed by that CA).
The health service is open without a bearer token, so the probe sends none.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _first_dns_name(cert_path: str) -> str | None:
    """The first DNS subjectAltName (else the common name) of a PEM certificate, using only the stdlib."""
    try:
        decoded = ssl._ssl._test_decode_cert(cert_path)  # type: ignore[attr-defined]
    except (AttributeError, ssl.SSLError, OSError, ValueError):
        return None
    for kind, value in decoded.get("subjectAltName", ()):
        if kind == "DNS" and "*" not in value:
            return value
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def channel(address: str, env: dict[str, str], force_tls: bool) -> grpc.Channel:
    server_cert = env.get("NNPROBE_TLS_CERT")
    ca = env.get("NNPROBE_PROBE_TLS_CA") or server_cert
    if not (server_cert or force_tls):
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca),
        private_key=_read(env.get("NNPROBE_PROBE_TLS_KEY")),
        certificate_chain=_read(env.get("NNPROBE_PROBE_TLS_CERT")),
    )
    name = env.get("NNPROBE_PROBE_TLS_SERVER_NAME") or (server_cert and _first_dns_name(server_cert))
    options = [("grpc.ssl_target_name_override", name or "localhost")]
    return grpc.secure_channel(address, credentials, options=options)


def check(address: str, service: str, timeout: float, env: dict[str, str], force_tls: bool) -> str:
    """The serving status name, or the gRPC error code name when the call fails."""
    with channel(address, env, force_tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            return error.code().name  # type: ignore[attr-defined]
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=f"127.0.0.1:{env.get('NNPROBE_PORT', '50051')}")
    parser.add_argument("--service", default="")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--tls", action="store_true", help="use TLS even when NNPROBE_TLS_CERT is unset")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        status = check(args.address, args.service, args.timeout, env, args.tls)
    except OSError as error:  # an unreadable certificate file
        status = f"ERROR {error}"
    if not args.quiet:
        print(f"{args.address} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
