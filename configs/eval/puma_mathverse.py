"""Math-PUMA (Qwen2-7B; ``model=puma_deepseek`` for the DeepSeek-Math variant) on MathVerse testmini:
the five visual versions and Text Only (Math-PUMA Table 2).

    python -m mathvlm.evaluate run --config configs/eval/puma_mathverse.py \
        --hf /ckpt/puma-qwen2-7b --data /data/mathverse --workdir runs/eval/puma_mathverse

--data layout (ZrrSkywalker/MathVerse; HF AI4Math/MathVerse):
    testmini.json               3,940 records, five visual versions
    testmini_text_only.json     788 Text Only records (``image`` is "")
    images/<image>              every visual record's ``image``
Writes OUT/mathverse_responses.json and OUT/mathverse_text_only_responses.json (MathVerse's output
records: each problem with ``model_answer`` = the response, plus our ``extraction`` and
``true_false``), mathverse.md/.json (accuracy by version, subject, question type), eval_metrics.json
and table.md (ALL and TD TL VI VD VO over the visual file, TO from the text-only file).
Re-score: ``python -m mathvlm.evaluate score --benchmark mathverse --predictions OUT/mathverse_responses.json``.

As the paper: the dataset's ``query_cot`` prompt, with the image for the visual versions and none for
Text Only; the folder's template (ChatML, image first); SigLIP preprocessing; sampling at temperature
0.1, top-p 0.8, 768 new tokens (DeepSeek variant: 0.3, top-k 40, top-p 0.8, 2048, seed 3407); plain
accuracy (not CoT-E), "ALL" over the five visual versions.
Differs: local scoring (the answer after the last answer marker, MathVerse's own fallback; option
letter or math-verify equivalence) instead of the GPT extract + GPT judge steps; set
``judge_url=...,judge_model=gpt-4o-mini`` for an OpenAI-compatible judge (off by default; cached in
./judge_cache). Sampling keys are ours.
Args: model=puma|puma_deepseek, template, image_preprocess, max_examples, batch_size, dtype, judge_url,
judge_model.
"""

from mathvlm.eval import protocols


def get_config(arg=None):
    arg = protocols.parse_arg(arg, model="puma")
    evaluators = [{"name": "mathverse", "file": "testmini.json", "prompt_field": "query_cot"},
                  {"name": "mathverse", "label": "mathverse_text_only", "file": "testmini_text_only.json",
                   "prompt_field": "query_cot"}]
    table = protocols.mathverse_table() + (("TO", "mathverse_text_only/accuracy"),)
    return protocols.protocol_config("puma_mathverse", arg, evaluators, protocols.decoding_for(arg.model), table)
