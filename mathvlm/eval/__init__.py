"""Evaluators (registry kind "evaluator"): ``Evaluator(predict_fn, **config).run(state)`` yields
``(name, value)`` pairs; ``predict_fn(state, prompts, images) -> list[str]`` (see ``evaluators``).

The benchmark scorers (``mathvista``, ``math_v``, ``geoqa``, ``we_math``, ``mathverse``) import no JAX, so
this package imports only JAX-free modules eagerly; evaluators that need a model get it via predict_fn.
"""

from mathvlm.eval import (
    arithmetic,  # noqa: F401  (registers the "text_math" evaluator)
    evaluators,  # noqa: F401  (registers the benchmark evaluators)
)
