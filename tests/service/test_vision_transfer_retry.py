"""Transfer checks on other servers survive a replica that restarts: a server that starts only after the first
connection attempt still answers the transfer, and one that never comes is reported, naming its address,
before the request's deadline."""

from __future__ import annotations

import socket
import threading

import grpc
import pytest
from nnprobe import VisionClient

PHOTO = "n01726692_4802_snake.jpg"


@pytest.fixture
def photo(shared_dir):
    return shared_dir / "data" / "seed-images" / PHOTO


def test_a_server_that_starts_after_the_first_attempt_answers_the_transfer(server_factory, tmp_path, photo):
    _, address = server_factory("vision", tmp_path / "attacker", weights_download_timeout=0.0)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.settimeout(120)
    started = threading.Event()

    def first_attempt_then_start() -> None:
        """Take the first connection attempt, start the real server on that port, then drop the attempt."""
        try:
            attempt, _ = listener.accept()
        except OSError:
            return
        listener.close()
        server_factory("vision", tmp_path / "replica", weights_download_timeout=0.0, port=port)
        started.set()
        attempt.close()

    thread = threading.Thread(target=first_attempt_then_start, daemon=True)
    thread.start()
    try:
        with VisionClient(address, timeout=240) as vision:
            (result,) = vision.attack(
                photo, untargeted=True, method="fgsm", eps="1/255", transfer_addresses=[f"127.0.0.1:{port}"]
            )
            thread.join(120)
            assert started.is_set(), "the transfer never tried the address"
            (remote,) = result.transfers
            assert remote.error == "" and remote.address == f"127.0.0.1:{port}"
            with VisionClient(f"127.0.0.1:{port}", timeout=120) as replica:  # the replica's own answer
                before, after = replica.classify(
                    [result.original_png, result.adversarial_png], skip_resize=True, top_k=1
                )
            assert (remote.original_top1.label, remote.top1.label) == (
                before.top[0].label,
                after.top[0].label,
            )
            assert remote.fooled == (after.top[0].label != before.top[0].label)
    finally:
        listener.close()


def test_a_server_that_never_comes_is_reported_before_the_deadline(
    server_factory, tmp_path, photo, free_port
):
    # The connection wait allowed is far longer than the request's deadline: the deadline must bound it.
    _, address = server_factory(
        "vision", tmp_path / "attacker", weights_download_timeout=0.0, transfer_connect_timeout=3600.0
    )
    nobody = f"127.0.0.1:{free_port()}"
    with VisionClient(address, timeout=20) as vision:
        (result,) = vision.attack(
            photo, untargeted=True, method="fgsm", eps="1/255", transfer_addresses=[nobody]
        )
    (remote,) = result.transfers
    assert remote.address == nobody and remote.top1 is None and not remote.fooled
    assert remote.error.startswith(grpc.StatusCode.UNAVAILABLE.name) and nobody in remote.error
