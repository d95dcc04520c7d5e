"""Smoke test of a deployment through the SDK: health plus one real call per service.

    .venv/bin/python deploy/smoke.py                      # localhost:50051, :50052, :50053
    NNPROBE_VISION_ADDR=host:port ... deploy/smoke.py     # or --vision/--sequence/--attention
    deploy/smoke.py --tls-ca ca.crt --token TOKEN         # TLS and a bearer token (or NNPROBE_TOKEN)
    deploy/smoke.py --sequence-replicas host1:50052,host2:50052   # also: replicas on one job queue
    deploy/smoke.py --only sequence --sequence host1:50052,host2:50052   # some services only

Exits 0 when every check passes; prints one line per check either way.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from nnprobe import AttentionClient, SequenceClient, TlsConfig, VisionClient
from nnprobe.config import default_address
from nnprobe.vision import Layer


def check_attention(address: str, options: dict[str, Any]) -> str:
    with AttentionClient(address, **options) as client:
        assert client.health() == "SERVING", client.health()
        r = client.check_permutation_equivariance(sequence_length=5, model_dim=8, seed=0)
        assert r.holds, r
        assert r.permutations_checked == 120, r.permutations_checked
        assert r.max_deviation <= 1e-12, r.max_deviation
        n, deviation = r.permutations_checked, r.max_deviation
        return f"equivariance holds over {n} permutations, max deviation {deviation:.1e}"


def check_sequence(address: str, options: dict[str, Any]) -> str:
    with SequenceClient(address, **options) as client:
        assert client.health() == "SERVING", client.health()
        # A linear RNN with W_ih = I, W_hh = I/2 and no bias on a constant input x = (1, 2):
        # h_t = x + h_(t-1) / 2, so h = (1, 2), (1.5, 3), (1.75, 3.5).
        inputs = np.tile(np.array([1.0, 2.0]), (3, 1, 1))
        weights = {"weight_ih_l0": np.eye(2), "weight_hh_l0": 0.5 * np.eye(2)}
        r = client.run_recurrent(inputs, cell="rnn_linear", weights=weights, no_bias=True)
        expected = np.array([[[1.0, 2.0]], [[1.5, 3.0]], [[1.75, 3.5]]])
        np.testing.assert_allclose(r.hidden_states, expected, atol=1e-12)
        return f"linear RNN forward pass exact, hidden states {r.hidden_states.shape}"


def check_vision(address: str, options: dict[str, Any]) -> str:
    with VisionClient(address, **options) as client:
        assert client.health() == "SERVING", client.health()
        # conv 3x3 -> max-pool 2x2 -> conv 3x3 on 32x32: receptive field 3, then 4 (jump 2), then 8; the
        # server proves the box of one unit by back-propagation.
        layers = [
            Layer("conv1", kernel=3, padding=1),
            Layer("pool1", kernel=2, kind="pool"),
            Layer("conv2", kernel=3, padding=1),
        ]
        r = client.compute_receptive_field(layers, input_size=32, units=[("conv2", 8, 8)], verify=True)
        last = r.layer("conv2")
        got = (last.height.receptive_size, last.height.jump, last.width.size)
        assert got == (8, 2, 16), got
        (unit,) = r.units
        assert unit.verification is not None and unit.verification.matches, unit
        rows = unit.rows
        assert rows[1] - rows[0] + 1 == 8, rows
        return f"receptive field of conv2: size 8, jump 2; unit (8, 8) sees rows {rows}, proven"


def check_transfer(address: str, peer: str, options: dict[str, Any]) -> str:
    """Service to service: the vision server attacks an image, then asks the vision server at ``peer`` (an
    address as the first server sees it) to classify the result. Both serve the same default model with the
    same weights, so the peer must see exactly the class the attacked model ends on."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    with VisionClient(address, **options) as client:
        (result,) = client.attack(
            pixels, target=15, method="pgd", eps="8/255", steps=10, seed=0, transfer_addresses=[peer]
        )
    (transfer,) = result.transfers
    assert transfer.address == peer and not transfer.error, transfer
    # The same model on both servers: the same top-1 label, and fooled towards the target's label exactly
    # when the attack succeeded (verdicts compare labels, never class indices).
    assert transfer.top1 is not None and transfer.top1.label == result.final_top[0].label, (transfer, result)
    assert transfer.fooled == result.success, (transfer, result)
    verdict = "fooled" if transfer.fooled else "not fooled"
    return (
        f"PGD towards class 15: success {result.success} after {result.iterations} iterations; peer {peer} "
        f"sees class {transfer.top1.index} ({verdict})"
    )


#: A tiny LSTM (a few seconds on one CPU core) and a corpus it learns almost surely: line k is 6
#: consecutive words of 20, starting at word 3k mod 20.
TINY_LM: dict[str, Any] = dict(
    embed_size=16,
    hidden_size=32,
    batch_size=4,
    sequence_length=8,
    learning_rate=0.01,
    eval_batch_size=2,
    log_interval=5,
    checkpoint_interval=20,
)


def _pattern_text(lines: int, offset: int = 0) -> str:
    return "".join(" ".join(f"w{(3 * (k + offset) + j) % 20}" for j in range(6)) + "\n" for k in range(lines))


def check_replicas(addresses: str, options: dict[str, Any]) -> str:
    """Sequence replicas on one job queue (PostgreSQL) and one data volume: through the address list, upload a
    corpus and train a tiny LSTM to completion (whichever replica claims it); then each replica on its own
    must see the finished job (the shared database) and evaluate its model from the checkpoint (the shared
    volume), all to the same perplexity."""
    replicas = [a.strip() for a in addresses.split(",") if a.strip()]
    assert len(replicas) >= 2, f"want two or more comma-separated addresses, got {addresses!r}"
    with SequenceClient(",".join(replicas), **options) as client:
        assert client.health() == "SERVING", client.health()
        corpus = client.upload_corpus(
            _pattern_text(60), _pattern_text(12, 60), _pattern_text(12, 80), name="smoke-replicas"
        )
        job = client.start_training(corpus.corpus_id, name="smoke-replicas", epochs=2, seed=0, **TINY_LM)
        events = list(client.watch_job(job.job_id, timeout=max(120.0, options["timeout"] or 0)))
        final = client.get_job(job.job_id)
    assert final.state == "succeeded", (final.state, final.error)
    assert final.checkpoint_step == final.step == final.total_steps > 0, final
    ran_on = next((e.message for e in events if e.kind == "state" and e.state == "running"), "?")
    perplexities = []
    for address in replicas:
        with SequenceClient(address, **options) as one:
            seen = one.get_job(job.job_id)
            assert seen.state == "succeeded" and seen.step == final.step, (address, seen)
            perplexities.append(one.evaluate_perplexity(job.job_id, split="test").perplexity)
    assert all(math.isclose(p, perplexities[0], rel_tol=1e-9) for p in perplexities), perplexities
    assert perplexities[0] < 5.0, perplexities  # from about 21 untrained: the pattern was learnt
    return (
        f"job {job.job_id[:8]} {final.state} after {final.step} steps, {ran_on}; every replica sees it and "
        f"its checkpoint: test perplexity {perplexities[0]:.3f} on {len(replicas)} replicas"
    )


CHECKS: dict[str, Callable[[str, dict[str, Any]], str]] = {
    "vision": check_vision,
    "sequence": check_sequence,
    "attention": check_attention,
}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = TlsConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    options: dict[str, Any] = {"timeout": args.timeout, "token": args.token, "tls": tls}
    passed = []
    for name, check in CHECKS.items():
        if name in args.only:
            address = getattr(args, name)
            passed.append(_report(f"{name:9} {address}", functools.partial(check, address, options)))
    if args.transfer_peer:
        passed.append(
            _report(
                f"transfer  {args.vision} -> {args.transfer_peer}",
                functools.partial(check_transfer, args.vision, args.transfer_peer, options),
            )
        )
    if args.sequence_replicas:
        passed.append(
            _report(
                f"replicas  {args.sequence_replicas}",
                functools.partial(check_replicas, args.sequence_replicas, options),
            )
        )
    return 0 if all(passed) else 1


def _report(label: str, check: Callable[[], str]) -> bool:
    """Run one check and print its line: ``ok`` with its detail and time, or ``FAIL`` with the error."""
    start = time.perf_counter()
    try:
        detail = check()
    except Exception as error:  # report every check, then fail
        print(f"FAIL {label}: {type(error).__name__}: {error}")
        return False
    print(f"ok   {label}: {detail} ({time.perf_counter() - start:.2f} s)")
    return True


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in CHECKS:
        parser.add_argument(f"--{name}", default=default_address(name), help=f"address of the {name} server")
    parser.add_argument(
        "--only",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=",".join(CHECKS),
        help="comma-separated services whose checks to run (default: %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each call, in seconds")
    parser.add_argument(
        "--transfer-peer",
        help="address of a second vision server as the first one reaches it (e.g. vision-peer:50051): "
        "also check the service-to-service transfer of an adversarial image",
    )
    parser.add_argument(
        "--sequence-replicas",
        help="comma-separated addresses of sequence replicas sharing a job database and data volume: also "
        "train a tiny model through the list and read its job and checkpoint from each replica",
    )
    parser.add_argument("--token", default=os.environ.get("NNPROBE_TOKEN"), help="bearer token")
    parser.add_argument("--tls-ca", help="PEM CA bundle: connect with TLS, trusting this CA")
    parser.add_argument("--tls-cert", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", help="PEM key of --tls-cert")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(CHECKS))
    if unknown:
        parser.error(f"--only: unknown services {unknown}; choose from {sorted(CHECKS)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
