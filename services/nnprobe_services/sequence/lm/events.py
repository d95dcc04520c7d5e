"""What a training run reports: ``Event``, a step window, an evaluation or a checkpoint. The job store
keeps each as a history entry (its fields as JSON); the TensorBoard log (``training_logs``) writes the same
values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Event:
    """A step window, an evaluation or a checkpoint.

    A step window averages its steps: ``loss`` (mean cross-entropy, nats per token), ``perplexity``
    (exp of it), ``grad_norm`` (mean over the window's steps of the total L2 norm of all gradients before
    clipping, as ``torch.nn.utils.clip_grad_norm_`` returns it; data-parallel: of the averaged gradients).
    ``learning_rate`` is the rate the window's steps used. ``sample``: an evaluation's text sample
    (``training_samples``), drawn only for a job whose TensorBoard log is open ("" otherwise); the job's
    history stores it only when not empty."""

    kind: str  # "step", "evaluation" or "checkpoint"
    step: int
    epoch: int
    total_steps: int
    loss: float = 0.0
    perplexity: float = 0.0
    tokens_per_second: float = 0.0
    elapsed_seconds: float = 0.0
    learning_rate: float = 0.0
    valid_perplexity: float = 0.0
    test_perplexity: float = 0.0
    best_step: int = -1  # evaluations: the best-validation step so far (-1: none)
    best_valid_perplexity: float = 0.0
    grad_norm: float = 0.0
    sample: str = ""
