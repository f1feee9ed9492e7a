"""Toy-scale experiments and diagnostics (issue 13): scripts whose figures go in the README."""
