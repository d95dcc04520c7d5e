"""Receptive fields: exact per-axis arithmetic, whole-model graphs, and their proof by back-propagation.
Flow: ``convert`` reads a ComputeReceptiveField request into plain values (``values``);
``workflow.compute`` builds the layer fields of a layer list (``arithmetic``) or captures a model into the
typed graph (``ir``) through a front-end (``frontends``: torch.export/torch.fx in a worker process, or the
ONNX reader), propagates the fields through it (``propagate``, ``graph``), picks the units asked for,
proves their boxes and measures the effective field on a gradient-transparent twin (``empirical``,
``twin``), draws the picture (``plot``), and ``convert`` turns the result back into the response message.
Nothing here but ``convert`` knows protobuf."""
