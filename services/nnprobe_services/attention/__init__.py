"""AttentionService: numerical checks of self-attention (permutation equivariance, invariance under pooling)
and of the Linear-vs-Conv1d feed-forward equivalence. A request flows through ``convert`` (protobuf into
plain specs), ``plans`` (the specs validated against each other and the server's limits into plans),
``workflow`` (a plan's tensors built on the device and its check run by ``checks``, in the compute pool) and
``convert`` again (the reply)."""
