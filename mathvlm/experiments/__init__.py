"""Toy-scale experiments and diagnostics: scripts whose figures go in docs/results.md."""

from mathvlm.experiments import label_noise  # noqa: F401  (registers the row transforms: data.row_transforms)
