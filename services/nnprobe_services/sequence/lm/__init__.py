"""The LSTM language model of SequenceService: corpora, model, training, jobs, sampling, embeddings."""
