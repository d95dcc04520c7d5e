"""SequenceService: recurrent networks, gradient flow, LSTM language models."""
