"""Adversarial examples: ``convert`` reads a GenerateAdversarial request (goal, method, budget, transfer
targets) into plain values, ``workflow`` decodes the images and loads the model, ``methods`` runs the
attack in [0, 1] pixel space (settings and events in ``spec``, each method's iteration in ``steps``, the
8-bit results in ``lattice``), ``adversarial`` judges the 8-bit results, and transfer checks judge them in
other models' own views: ``local`` for other local models, ``remote`` for other servers (addresses, deadlines
and retries in ``transfer``), ``verdicts`` for the verdict in the transfer model's labels. ``metrics`` counts
attacks that stop early. Progress events and results go back through ``convert``."""
