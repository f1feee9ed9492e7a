"""The CLIP-Math claim (MAVIS stage 1) at a CI budget: training improves held-out retrieval."""

from mathvlm import config as mc


def test_held_out_retrieval_beats_the_untrained_encoder(tmp_path):
    """The CLIP-Math claim at a CI budget: held-out diagram → caption retrieval (the engine_retrieval
    evaluator, logged at step 0 before any update and at the end) improves with training."""
    from mathvlm import main as entry
    from mathvlm.train.metrics import read_metrics

    config = mc.load("configs/mavis/clip_math.py:size=tiny,steps=120")
    mc.override(config, "eval.evaluators", "({'name': 'engine_retrieval', 'num_examples': 50},)")
    entry.run(config, str(tmp_path))
    rows = [r for r in read_metrics(str(tmp_path)) if "retrieval/i2t_r@5" in r]
    before, after = rows[0], rows[-1]
    assert before["step"] == 0 and after["step"] == 120
    assert after["retrieval/i2t_r@5"] > before["retrieval/i2t_r@5"] + 0.1, (before, after)
    assert after["retrieval/i2t_r@1"] >= before["retrieval/i2t_r@1"]
