"""Front-ends that turn a model into the receptive-field graph (``..ir``): ``torch_capture`` (torch.export,
torch.fx) run by ``trace_worker`` in a child process, and ``onnx_reader`` (with ``onnx_tensors`` for the data
an ONNX file embeds), which reads the graph without running it. Each lowers an operator family with one
registered function (``registry``): ``torch_lowerings`` (``@lowers("conv2d", ...)``, listed in
``SUPPORTED_TORCH_OPS``) and ``onnx_lowerings`` (``@lowers_onnx("Conv")``, ``SUPPORTED_ONNX_OPS``); the
registries are the lists of supported operators."""
