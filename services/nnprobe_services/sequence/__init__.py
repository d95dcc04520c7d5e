"""SequenceService: recurrent networks (forward passes, gradient flow, truncated-BPTT memory) and the LSTM
language model trained as durable jobs.

Flow: ``servicer`` converts each request (``recurrent.convert``, ``lm.convert``), runs ``recurrent.workflow``
or ``lm.workflow`` in the compute pool and converts the result back. Training jobs live on the durable lease
queue of ``jobs`` (SQLite or PostgreSQL, shared by replicas), which knows nothing of torch or the model."""
