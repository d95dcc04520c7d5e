"""Robustness evaluation: robust accuracy of a classifier over a data set at each ε, AutoAttack-grade
(Croce & Hein 2020), white-box and black-box, judged on 8-bit images.

``evaluate`` is the entry point (a workflow calls it); ``apgd``, ``fab``, ``square`` and ``pgd`` are the
attacks, ``ensemble`` runs them in order, ``grid`` holds the 8-bit rule, ``results`` the per-image records
and the checkpoint, ``intervals`` the Wilson score interval, ``diagnostics`` AutoAttack's warnings.
"""
