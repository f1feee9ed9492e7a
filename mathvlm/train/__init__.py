"""The one trainer: step kinds (registry "step") and the training job (registry "job")."""

from mathvlm.train import chain, loop, steps  # noqa: F401  (registers the jobs and the step kinds)
