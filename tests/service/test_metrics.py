"""Prometheus metrics of the sequence server: training jobs by state, the running job's step and loss."""

from __future__ import annotations

import re
import time

from nnprobe import SequenceClient


def gauge(text: str, name: str, labels: str) -> float | None:
    match = re.search(rf"^{name}{{{re.escape(labels)}}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_training_jobs_appear_in_the_metrics(
    server_factory, tmp_path, tiny_lm, pattern_text, free_port, scrape
):
    port = free_port()
    server, address = server_factory("sequence", tmp_path, metrics_port=port)
    try:
        with SequenceClient(address, timeout=120) as lm:
            corpus = lm.upload_corpus(pattern_text(120), pattern_text(20, 120), pattern_text(20, 140))
            done = lm.start_training(corpus.corpus_id, epochs=1, seed=1, **tiny_lm)
            lm.wait_job(done.job_id)
            running = lm.start_training(corpus.corpus_id, epochs=10_000, seed=2, **tiny_lm)
            deadline = time.monotonic() + 60
            while lm.get_job(running.job_id).step < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
            text = scrape(port)
            job = lm.get_job(running.job_id)
            lm.cancel_job(running.job_id)
            after = scrape(port)
    finally:
        server.shutdown(0).wait()
    assert gauge(text, "nnprobe_training_jobs", 'state="succeeded"') == 1
    assert gauge(text, "nnprobe_training_jobs", 'state="running"') == 1
    assert gauge(text, "nnprobe_training_jobs", 'state="failed"') == 0
    step = gauge(text, "nnprobe_training_step", f'job_id="{running.job_id}"')
    loss = gauge(text, "nnprobe_training_loss", f'job_id="{running.job_id}"')
    assert step is not None and 5 <= step <= job.step
    assert loss is not None and 0 < loss < 10
    assert gauge(after, "nnprobe_training_jobs", 'state="running"') == 0
    assert gauge(after, "nnprobe_training_jobs", 'state="cancelled"') == 1
    assert gauge(after, "nnprobe_training_step", f'job_id="{running.job_id}"') is None
