"""The progress bar of long calls: drawn by tqdm where it is installed and asked for, silent otherwise."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from nnprobe import progress_bar
from nnprobe.progress_bar import ProgressBar


@dataclass
class Event:
    done: int
    total: int
    message: str = ""


def test_the_bar_follows_the_events_to_the_end(capsys):
    seen = []
    with ProgressBar(description="attack", unit="iterations") as bar:
        callback = bar.wrap(seen.append)
        for done in range(1, 11):
            callback(Event(done, 10, f"image {done % 2}"))
        assert bar.shown
    err = capsys.readouterr().err
    assert "attack" in err and "10/10" in err and "iterations" in err and "image 0" in err
    assert [e.done for e in seen] == list(range(1, 11))


def test_progress_false_draws_nothing_but_still_calls_back(capsys):
    seen = []
    with ProgressBar(False, description="sweep") as bar:
        bar.wrap(seen.append)(Event(3, 4))
        assert not bar.shown
    assert capsys.readouterr().err == "" and len(seen) == 1


def test_an_unknown_total_counts_and_a_restart_starts_where_the_job_was(capsys):
    with ProgressBar(description="job", unit="steps", total=100, initial=60) as bar:
        bar.update(80, 100, "loss 1.234")
    err = capsys.readouterr().err
    assert "80/100" in err and "loss 1.234" in err
    with ProgressBar(description="count") as bar:
        bar.update(7)
    assert "7" in capsys.readouterr().err


def test_without_tqdm_there_is_no_bar_and_no_error(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(progress_bar.importlib.util, "find_spec", lambda n: None if n == "tqdm" else real(n))
    with ProgressBar(description="upload") as bar:
        bar.update(5, 10)
        assert not bar.shown
    assert capsys.readouterr().err == ""
