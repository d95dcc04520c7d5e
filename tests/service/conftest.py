"""Fixtures of the service suite (in-process servers come from the top-level conftest)."""

from __future__ import annotations

import logging

import pytest
from nnprobe_services.errors import Cancelled


@pytest.fixture
def stops(monkeypatch) -> list[str]:
    """Messages of every ``Cancelled`` raised during the test: a server's work loops raise one saying how far
    they got ("stopped after 4 of 64 units"), which is the server-side evidence that a call really stopped."""
    messages: list[str] = []
    original = Cancelled.__init__

    def recording_init(self, *args, **kwargs):
        messages.append(str(args[0]) if args else "")
        original(self, *args, **kwargs)

    monkeypatch.setattr(Cancelled, "__init__", recording_init)
    return messages


@pytest.fixture
def requests_log(caplog):
    """``caplog`` recording the servers' request log (one line per call, at DEBUG) and INFO elsewhere."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="nnprobe.requests")
    return caplog
