"""The Open Inference Protocol (KServe v2 / Triton ``inference.GRPCInferenceService``) over the classifiers of
the model store: ``servicer`` on the vision server's port converts each message (``convert``), runs the
entry point (``workflow``) over the protocol core (``protocol``: signatures, versions, readiness,
inference; its plain values in ``values``) and converts the answer back."""
