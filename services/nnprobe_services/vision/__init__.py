"""VisionService: receptive fields, classification, adversarial examples."""
