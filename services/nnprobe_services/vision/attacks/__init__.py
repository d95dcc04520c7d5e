"""Adversarial examples: ``convert`` reads a GenerateAdversarial request (goal, method, budget, transfer
targets) into plain values, ``workflow`` decodes the images and loads the model, ``methods`` runs the
attack in [0, 1] pixel space, ``adversarial`` judges the 8-bit results, and ``transfer`` checks them
against other local or remote models. Progress events and results go back through ``convert``."""
