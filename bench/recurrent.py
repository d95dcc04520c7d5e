"""SequenceService benchmark: exact Jacobian products for every k vs a full Jacobian per k.

    .venv/bin/python bench/recurrent.py

For a tanh RNN with T = 100 steps and hidden size 256 (float64), |dh_T/dh_k|_2 is needed for every k:

1. AnalyzeGradients (SDK -> in-process server on loopback): one autograd Jacobian per step and one
   running product, T Jacobians and T matrix products in all;
2. the same core called in-process (what the RPC layer adds is the difference);
3. the naive approach: for every k, the full Jacobian of the unrolled map h_k -> h_T with
   ``torch.autograd.functional.jacobian`` (vectorised, its fastest form), T(T+1)/2 step evaluations.

Both give the same norms (checked); the table prints the times side by side with the ratio.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from nnprobe import SequenceClient
from nnprobe.cli.output import print_table
from nnprobe_services.sequence.recurrent import gradients, rnn
from nnprobe_services.server import ServerConfig, create_server

STEPS, HIDDEN, RHO, SEED = 100, 256, 0.9, 0
F64 = torch.float64


def core_inputs() -> tuple[rnn.Cell, torch.Tensor, torch.Tensor]:
    """The cell, inputs and initial state the service builds for this request."""
    weights = rnn.init_weights("rnn_tanh", HIDDEN, HIDDEN, seed=SEED)
    weights["weight_hh_l0"] = rnn.rescale_spectral_radius(weights["weight_hh_l0"], RHO)
    x = gradients.draw_inputs(STEPS, HIDDEN, "normal", 1.0, SEED, F64)
    return rnn.Cell("rnn_tanh", weights), x, torch.zeros(HIDDEN, dtype=F64)


def core(cell: rnn.Cell, x: torch.Tensor, h0: torch.Tensor) -> list[float]:
    run = gradients.analyze(cell, x, h0)
    while True:
        try:
            next(run)
        except StopIteration as finished:
            return finished.value.jacobian_norms


def naive(cell: rnn.Cell, x: torch.Tensor, h0: torch.Tensor) -> list[float]:
    """A full Jacobian dh_T/dh_k of the unrolled recurrence for every k."""
    states = [h0]
    with torch.no_grad():
        for t in range(STEPS - 1):
            states.append(cell.step(states[-1], x[t]))

    def unroll(h: torch.Tensor, k: int) -> torch.Tensor:
        for t in range(k, STEPS):
            h = cell.step(h, x[t])
        return h

    norms = []
    for k in range(STEPS):
        jac = torch.autograd.functional.jacobian(lambda h, k=k: unroll(h, k), states[k], vectorize=True)
        norms.append(float(torch.linalg.matrix_norm(jac, ord=2)))
    return norms


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def main() -> None:
    cell, x, h0 = core_inputs()
    core(cell, x, h0)  # warm up torch.func once, as a running server would be
    config = ServerConfig(
        service="sequence",
        host="127.0.0.1",
        port=0,
        device="cpu",
        data_dir=Path(tempfile.mkdtemp()),
        cache_dir=Path(tempfile.mkdtemp()),
    ).validate()
    server, port = create_server(config)
    server.start()
    try:
        with SequenceClient(f"127.0.0.1:{port}", timeout=600) as client:

            def rpc():
                return client.analyze_gradients(
                    cells=["rnn_tanh"],
                    spectral_radii=[RHO],
                    hidden_size=HIDDEN,
                    sequence_length=STEPS,
                    seed=SEED,
                )

            rpc()
            result, rpc_s = timed(rpc)
    finally:
        server.shutdown(0).wait()
    exact, core_s = timed(core, cell, x, h0)
    reference, naive_s = timed(naive, cell, x, h0)
    worst = max(abs(a - b) / b for a, b in zip(exact, reference, strict=True))
    served = result.runs[0].jacobian_norms
    assert max(abs(a - b) / b for a, b in zip(served, exact, strict=True)) < 1e-12
    assert worst < 1e-9, f"the two methods disagree: {worst:g}"
    print(
        f"|dh_T/dh_k|_2 for all k < T: tanh RNN, T={STEPS}, H={HIDDEN}, rho={RHO}, float64, CPU threads "
        f"{torch.get_num_threads()}"
    )
    print_table(
        [
            ("AnalyzeGradients (gRPC, exact products)", f"{rpc_s:.3f}", f"{naive_s / rpc_s:.1f}x"),
            ("core in-process (exact products)", f"{core_s:.3f}", f"{naive_s / core_s:.1f}x"),
            ("naive: autograd.functional.jacobian per k", f"{naive_s:.3f}", "1.0x"),
        ],
        ["method", "seconds", "speed-up vs naive"],
    )
    print(f"largest relative difference between the methods' norms: {worst:.2e}")
    print(
        f"|dh_T/dh_0|_2 = {exact[0]:.6e}, regime {result.runs[0].regime}, "
        f"rate {result.runs[0].growth_rate:.4f}"
    )


if __name__ == "__main__":
    main()
