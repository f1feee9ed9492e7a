"""MAVIS-7B on GeoQA test (MAVIS Table 4).

    python -m mathvlm.evaluate run --config configs/eval/mavis_geoqa.py \
        --hf /ckpt/mavis-7b --data /data/geoqa --workdir runs/eval/mavis_geoqa

--data layout (pipilurj/G-LLaVA playground/data/ + the test images of HF Luckyjhg/Geo170K):
    test_questions.jsonl    754 questions: question_id, image, text (the prompt)
    test_answers.jsonl      question_id, text (the answer letter)
    test/<question_id>.png  every question's ``image``, relative to DIR
Writes OUT/geoqa_responses.jsonl (G-LLaVA's answers file: question_id, prompt, text = the response),
geoqa.md/.json, eval_metrics.json and table.md (accuracy).
Re-score: ``python -m mathvlm.evaluate score --benchmark geoqa --predictions OUT/geoqa_responses.jsonl
--data DIR`` (geo_acc_calculate.py's regexes).

As the paper: G-LLaVA's packaged test prompt, whose text carries the question with the choices A-D
appended ("Choices:\\nA:...") and asks for "Answer: X"; the folder's template and CLIP preprocessing;
G-LLaVA's regex scorer (accuracy over the 754 items).
Differs: MAVIS released no inference code (template, decoding unknown): greedy, 1024 new tokens.
Args: template, image_preprocess, max_examples, batch_size, dtype.
"""

from mathvlm.eval import protocols


def get_config(arg=None):
    arg = protocols.parse_arg(arg)
    return protocols.protocol_config("mavis_geoqa", arg, [{"name": "geoqa"}], protocols.decoding_for("mavis"),
                                     (("GeoQA", "geoqa/accuracy"),))
