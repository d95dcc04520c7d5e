"""Images in, model-ready pixels out: ``decode`` turns request images into arrays (naming the field at fault);
``preprocess`` decodes, converts to RGB, resizes and crops as a model's preprocessing says."""
