"""The math data engine: plane geometry, analytic geometry and function problems with rendered diagrams.

MAVIS and Math-PUMA never released their engines; this is ours, and the project's embedded default data.
Three families (``geometry``, ``analytic``, ``functions``) produce problems with an exact answer (sympy), a
forward chain-of-thought, typical-mistake distractors and a machine-readable ``spec``; ``wording`` turns them
into captions and the MathVerse versions; ``render`` draws them with PIL. ``core.EngineSource`` (registry
``source: engine``) serves records on the fly; ``builders`` writes TFDS ArrayRecord datasets; the CLI is
``python -m mathvlm.engine {build,gallery}``.

Record keys (all kinds): ``id``, ``family`` (plane_geometry/analytic_geometry/function), ``skill``,
``complexity`` (int32 0–3), ``spec`` (JSON str), ``caption``.

* kind ``caption``: + ``image`` (uint8 [H, W, 3], every condition drawn).
* kind ``instruct``: + ``image``, ``has_image`` (int32; 0 for text_only, image then all zeros), ``version``,
  ``question`` (free-form, the chosen version), ``question_mc`` (with options A–D; for vision_only the
  options are not listed but drawn into ``image_mc``), ``image_mc`` (the image of the multiple-choice form:
  equal to ``image`` except for vision_only, whose drawn question then also shows the options), ``choices`` (four
  options joined by newlines), ``answer_index`` (int32), ``answer_mc`` (letter), ``answer`` (exact form and
  ≈ value), ``answer_value`` (float64, NaN for non-numeric answers), ``cot``, ``cot_mc``, and
  ``question_<v>`` for every v in ``text.VERSIONS``.
* kind ``pairs`` (Math-PUMA stage 2): the instruct texts without ``image``/``question``/``version``, plus
  ``strong_image``/``strong_question``/``strong_question_mc`` (text-rich = text_dominant) and
  ``weak_image``/``weak_question``/``weak_question_mc`` (vision-rich = vision_dominant); same answer, CoT
  and multiple-choice instruction.

Complexity levels: plane geometry = number of shapes in the deduction chain - 1 (capped at 3);
analytic geometry = number of figures - 1, +1 for two-figure or triangle-area questions (capped at 3);
functions by question type: value/identify 0, zeros/symmetry/period 1, extremum/monotonic/derivative 2,
integral 3.

Splits: ``train`` draws from ``seed``, ``heldout`` from ``seed + 10**6``; seeds stay below 10**6.
"""

from mathvlm.engine import core  # noqa: F401  (registers source "engine")
