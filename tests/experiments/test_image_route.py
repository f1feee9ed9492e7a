"""The image-route controls of ``mathvlm.experiments.image_route`` (the grounding diagnosis)."""

import numpy as np
import pytest

from mathvlm.experiments import image_route


def test_a_label_every_image_token_carries_is_learned_from_the_picture_alone():
    """One solid colour per answer letter, same question text: the VLM must read the letter off the
    picture. It does within 30 steps, and not with another row's picture, so the image route (tower →
    projector → placeholder slots → decoder attention) carries what the picture says to the answer."""
    curves = image_route.run(images="colour", steps=30, eval_every=30, eval_batches=2, log=lambda *a: None)
    assert curves["step"] == [0, 30]
    assert curves["accuracy"][-1] >= 0.9, curves
    assert curves["shuffled"][-1] <= 0.5, curves


def test_swapped_images_carry_the_letter_and_nothing_else_changes():
    images = np.full((4, 8, 8, 3), 1.9, np.float32)
    batch = {"images": images, "tokens": np.arange(4)}
    labels = np.array([0, 1, 2, 3])
    colour = image_route.swap_images(batch, "colour", labels)
    assert [tuple(np.unique(colour["images"][i].reshape(-1, 3), axis=0)[0]) for i in range(4)] == \
        [tuple(c) for c in image_route._COLOURS]
    tint = image_route.swap_images(batch, "tint:0.1", labels)["images"] - images
    assert np.allclose(tint[0, ..., 0], 0.1) and np.allclose(tint[1, ..., 1], 0.1) and np.allclose(tint[3], 0)
    assert image_route.swap_images(batch, "engine", labels)["images"] is images
    assert np.array_equal(colour["tokens"], batch["tokens"]) and np.all(images == 1.9)
    with pytest.raises(ValueError, match="--images"):
        image_route.swap_images(batch, "noise", labels)


def test_a_tower_that_holds_the_answer_and_standardised_features_let_the_vlm_read_diagrams():
    """The located cause of the grounding stall, at a reduced budget: with the tower first trained on the
    letter (flat probe) and the image features standardised across the batch, the VLM answers from the
    diagram (docs/results.md: 93.8% vs 20.3% with another row's picture at 400 steps; either change alone stays
    at chance, measured by the commands in docs/results.md, not here: each run costs minutes)."""
    quiet = {"log": lambda *a: None, "eval_every": 300, "eval_batches": 2, "tower_pretrain": 300}
    both = image_route.run(steps=300, standardise="batch", **quiet)
    assert both["accuracy"][-1] >= both["shuffled"][-1] + 0.3, both
