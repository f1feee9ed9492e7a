"""Model zoo. Importing this package registers every model with :mod:`mathvlm.registry`."""

from mathvlm.models import decoder, generate, layers, lora  # noqa: F401
from mathvlm.models import vit, text_tower, dual_encoder, projectors, vlm, classifier  # noqa: F401,E402
