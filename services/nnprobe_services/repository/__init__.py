"""The model repository library every service uses: a folder in Triton's layout of ONNX models and
``torch.export`` archives, never pickles. ``artifacts`` detects formats and checks files (limits, no
unpickling); ``folder`` is the store (staging and atomic renames, locking, ``versions`` never reused, a pinned
default), generic over the task config a service reads (``schema``, ``names``); ``loading`` turns a file into
a PyTorch graph module in a chosen precision, called with flat tensors by ``calling``. No gRPC: the services
convert their messages into these plain values."""
