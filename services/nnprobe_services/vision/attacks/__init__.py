"""Adversarial examples: ``convert`` reads a GenerateAdversarial request (goal, method, budget, transfer
targets) into plain values, ``workflow`` decodes the images and loads the model, ``methods`` runs the
attack in [0, 1] pixel space (settings and events in ``spec``, each method's iteration in ``steps``, the
8-bit results in ``lattice``), ``adversarial`` judges the 8-bit results, and ``transfer`` checks them
against other local models and, through ``remote``, other servers. ``metrics`` counts attacks that stop
early. Progress events and results go back through ``convert``."""
