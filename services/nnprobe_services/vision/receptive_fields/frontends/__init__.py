"""Front-ends that turn a model into the receptive-field graph (``..ir``): ``torch_capture`` (torch.export,
torch.fx) run by ``trace_worker`` in a child process, and ``onnx_reader`` (with ``onnx_tensors`` for the data
an ONNX file embeds), which reads the graph without running it. Each lowers an operator family with one
registered function; the registries are the list of supported operators."""
