"""The model repository library every service uses: a folder in Triton's layout of ONNX models and
``torch.export`` archives, never pickles (``artifacts``: format detection, safety checks and limits),
loaded as PyTorch graph modules in a chosen precision (``loading``) and called with flat tensors
(``calling``). No gRPC: the services convert their messages into these plain values."""
