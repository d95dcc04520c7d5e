"""ImageNet classification: ``convert`` reads a Classify request, ``workflow`` resolves the model, decodes the
images and asks ``classify`` for the top-k classes, directly or through the dynamic batcher (``batcher``, in
the manner of Triton's), and ``convert`` builds the response."""
