"""Recurrent networks: single-layer cells and their step-by-step forward pass (``rnn``, weights from requests
in ``weights``), exact gradient flow through time (``gradients``), truncated-BPTT memory (``truncation``)
and their pictures (``plot``). A RunRecurrent/AnalyzeGradients/CompareTruncation request flows through
``convert`` (read into plain values), ``workflow`` (the analysis, in the compute pool) and ``convert`` again
(the reply)."""
