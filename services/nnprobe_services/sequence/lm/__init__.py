"""The LSTM language model of SequenceService: corpora (``corpus``), the model (``model``), training
(``training``, data-parallel workers in ``distributed`` started by ``supervisor``), checkpoints, and using
a trained model (``queries`` over ``evaluation``, ``sampling``, ``embeddings``). A corpus is uploaded and
tokenised; StartTraining's config is completed and checked (``training_checks``) and the job queued on the
shared queue of ``sequence.jobs``, where a replica's ``JobManager`` (``training_jobs``) claims it and runs
it (``running``), recording events and checkpoints; clients watch, list, cancel and resume jobs, then query
the model of the job's last checkpoint. Handlers go through ``convert`` (protobuf <-> plain values) and
``workflow`` (the job and corpus calls) or ``queries``."""
