"""Settings of the sequence server: the PTB corpus, corpora, the durable job queue, sampling."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from nnprobe_services.server.settings.base import Section, UserPath

DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")


class SequenceSettings(Section):
    """Settings the sequence server reads."""

    ptb_dir: UserPath | None = Field(
        None,
        description="Folder holding ptb.{train,valid,test}.txt.gz, searched before <data_dir>/ptb, "
        "<cache_dir>/ptb and the repository's sibling shared/data/ptb.",
    )
    sequence_model_repository: UserPath | None = Field(
        None,
        description="The sequence model repository (recurrent_cell and sequence_model models: "
        "<name>/config.yaml, <name>/<version>/model.onnx or model.pt2); unset: <data_dir>/sequence/models. "
        "Replicas that mount one folder share it; files are limited by max_model_bytes and max_model_nodes.",
    )
    ptb_download_timeout: float = Field(
        10.0,
        ge=0,
        description="Seconds to wait for the canonical PTB source when the files are missing; 0 never "
        "downloads.",
    )
    max_corpus_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="Largest corpus UploadCorpus accepts, in bytes of text over all splits.",
    )
    max_queued_jobs: int = Field(
        16,
        gt=0,
        description="Training jobs that may wait in the queue (over all devices and replicas) before "
        "StartTraining is refused.",
    )
    database_url: str | None = Field(
        None,
        repr=False,
        description="The job database: unset keeps jobs in <data_dir>/jobs.sqlite3 (one replica, or several "
        "processes on one host); postgresql://user:password@host:5432/db lets replicas on any host share one "
        "queue (they must share data_dir too: corpora and checkpoints). Never logged with its password.",
    )
    replica_id: str | None = Field(
        None,
        description="This replica's name in the job database; unset: <host name>-<process id>. Must be "
        "unique among the live replicas; a replica restarting under its old name takes its dead jobs over at "
        "once.",
    )
    job_lease_seconds: float = Field(
        30.0,
        gt=0,
        description="Seconds a replica's claim on a running job lasts without a heartbeat; after that "
        "another replica takes the job over from its last checkpoint.",
    )
    job_poll_seconds: float = Field(
        1.0,
        gt=0,
        description="Seconds between a replica's rounds of claiming queued jobs and renewing its leases (a "
        "cancel sent to another replica reaches the owner within one round); at most half of "
        "job_lease_seconds.",
    )
    max_job_takeovers: int = Field(
        3,
        gt=0,
        description="Takeovers in a row after which a job is left INTERRUPTED rather than claimed again.",
    )
    max_sample_words: int = Field(10_000, gt=0, description="Most words one Sample request may generate.")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(DATABASE_SCHEMES):
            raise ValueError(f"database_url must start with one of {DATABASE_SCHEMES}")
        return url

    @field_validator("replica_id")
    @classmethod
    def _replica_named(cls, replica: str | None) -> str | None:
        if replica is not None and not replica.strip():
            raise ValueError("replica_id must not be empty")
        return replica

    @model_validator(mode="after")
    def _renewed_within_the_lease(self) -> SequenceSettings:
        if self.job_poll_seconds * 2 > self.job_lease_seconds:
            raise ValueError(
                f"job_poll_seconds ({self.job_poll_seconds}) must be at most half of job_lease_seconds "
                f"({self.job_lease_seconds}): a lease is renewed once per round"
            )
        return self
