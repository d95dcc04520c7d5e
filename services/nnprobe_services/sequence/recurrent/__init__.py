"""Recurrent networks: single-layer cells and their step-by-step forward pass (``rnn``, weights from requests
in ``weights``), exact gradient flow through time (``gradients``), truncated-BPTT memory (``truncation``)
and their pictures (``plot``). ``convert`` reads RunRecurrent/AnalyzeGradients/CompareTruncation requests
into plain values and builds their replies."""
