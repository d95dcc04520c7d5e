"""Receptive fields: exact per-axis arithmetic, whole-model graphs, and their proof by back-propagation.
Flow: ``convert`` reads a ComputeReceptiveField request into plain values (``values``);
``workflow.compute`` builds the layer fields of a layer list (``arithmetic``) or captures a model into the
typed graph (``ir``: a frozen dataclass per operation family) through a front-end (``frontends``:
torch.export/torch.fx in a worker process, or the ONNX reader; each lowers its operators through one
registry), propagates the fields through it (``propagate``, dispatching on the operation's type to the rules
of ``field_rules``; ``graph``), picks the units asked for and their boxes (``boxes``), proves them and
measures the effective field on a gradient-transparent twin (``empirical``, ``twin``), draws the picture
(``plot``), and ``convert`` turns the result back into the response message. Nothing here but ``convert``
knows protobuf; the errors (``arithmetic.FieldError`` and its subclasses) are the service's domain errors.
"""
