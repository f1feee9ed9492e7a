"""Math-LLaVA-13B on MathVista testmini (Math-LLaVA Table 1).

    python -m mathvlm.evaluate run --config configs/eval/math_llava_mathvista.py \
        --hf /ckpt/math-llava-13b --data /data/mathvista --workdir runs/eval/math_llava_mathvista

--data layout (lupantech/MathVista data/ + HF AI4Math/MathVista images.zip):
    testmini.json       pid -> problem (1,000)
    query.json          pid -> the official prompt
    images/<pid>.jpg    every problem's ``image``
Writes OUT/mathvista_responses.json (calculate_score.py's results JSON: each problem with ``query``,
``response``, ``extraction``, ``prediction``, ``true_false``), mathvista.md/.json (accuracy by task,
skill, grade, ...), eval_metrics.json and table.md (ALL, FQA GPS MWP TQA VQA, ALG ARI GEO LOG NUM SCI STA).
Re-score: ``python -m mathvlm.evaluate score --benchmark mathvista --predictions OUT/mathvista_responses.json``.

As the paper: the official ``query`` (hint + question + choices) from query.json with ``<image>\\n``
prepended, the folder's template (Vicuna v1 for Math-LLaVA, its system prompt), LLaVA's pad-to-square
CLIP preprocessing (a CLIP image processor in the folder), temperature 0.2 with sampling, top-p 1,
512 new tokens, one sample per item; MathVista's own normalisation and exact match.
Differs: the answer is extracted by local rules (mathvlm.eval.local_extraction), not by GPT with
MathVista's few-shot prompt, so free-form answers phrased unusually can be missed; bf16 instead of
fp16; sampling keys are ours (a seed reproduces the run, not the paper's draws).
GPT extraction as the paper: judge_url=URL,judge_model=gpt-3.5-turbo,judge_prompt=FILE (MathVista's
evaluation/prompts/ext_ans.py demo prompt; cached, failures counted).
Args (``:key=value,...``): template, image_preprocess (override the folder's), max_examples (0 = all),
batch_size, dtype, judge_url, judge_model, judge_prompt.
"""

from mathvlm.eval import protocols


def get_config(arg=None):
    arg = protocols.parse_arg(arg)
    return protocols.protocol_config(
        "math_llava_mathvista", arg, [{"name": "mathvista", "prompt": "query"}],
        protocols.decoding_for("math_llava"), table=protocols.mathvista_table())
