"""Prometheus view of the training jobs, read from the job database at each scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from nnprobe_services.sequence.jobs.store import RUNNING, STATES, JobStore


class JobCollector(Collector):
    """``nnprobe_training_jobs{state}``, and the step and loss of each running job."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.store.count_by_state()
        jobs = GaugeMetricFamily("nnprobe_training_jobs", "Training jobs by state.", labels=["state"])
        for state in STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        step = GaugeMetricFamily(
            "nnprobe_training_step", "Current step of each running job.", labels=["job_id"]
        )
        loss = GaugeMetricFamily(
            "nnprobe_training_loss", "Latest training loss of each running job.", labels=["job_id"]
        )
        for job in self.store.jobs(states=[RUNNING]):
            step.add_metric([job.job_id], job.step)
            loss.add_metric([job.job_id], job.loss)
        yield step
        yield loss
