"""Symmetry certificates of the user's own token models (pure PyTorch, no gRPC).

A token model f maps X (B, T, D), tokens on axis 1, to (B, T, D) (``equivariance``: f(PX) == P f(X)) or to
a pooled tensor such as (B, D) (``invariance``: f(PX) == f(X)), for every permutation P of the T tokens.
``certify`` checks the declared action over all or sampled permutations and judges the largest deviation
against the model's own floating-point noise (``noise``); when the check fails, ``localize`` finds the first
node of the graph whose output stops commuting with the permutation.

Sources: Zaheer et al. (2017), "Deep Sets" (invariant and equivariant set functions); Lee et al. (2019),
"Set Transformer" (self-attention without positions is permutation equivariant, pooling makes it invariant).

Modules: ``noise`` (the scale), ``certify`` (the check), ``localize`` (the breaking node).
"""
