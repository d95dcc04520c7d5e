"""VisionService: receptive fields, ImageNet classification, adversarial examples, the model repository and
the Open Inference Protocol on the same port.

Flow: ``servicer`` (the only module here that speaks gRPC, besides ``open_inference.servicer`` and the remote
transfer client ``attacks.remote``) converts each request with its feature's ``convert`` module, runs the
feature's ``workflow`` in the compute pool and converts the result back. Features sit above ``models`` (the
classifiers served: built-in and repository), which sits above ``images`` (decoding and preprocessing)."""
