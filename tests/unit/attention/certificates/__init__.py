"""Symmetry certificates of token models against brute force."""
