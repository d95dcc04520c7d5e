"""The classifiers VisionService serves: the built-in ImageNet networks (``registry``) and the model
repository in Triton's layout (``repository``: the shared ``nnprobe_services.repository`` store with the
image-classification ``config``), loaded safely from ONNX or torch.export files (``repository.artifacts``),
served by ONNX Runtime or PyTorch behind one interface (``backends``), and kept loaded once per process
(``store``). ``convert`` turns ListModels/UploadModel/DeleteModel messages into plain values and back."""
