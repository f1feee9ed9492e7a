"""Math-PUMA (Qwen2-7B; ``model=puma_deepseek`` for the DeepSeek-Math variant) on MathVista testmini
(Math-PUMA Table 1).

    python -m mathvlm.evaluate run --config configs/eval/puma_mathvista.py \
        --hf /ckpt/puma-qwen2-7b --data /data/mathvista --workdir runs/eval/puma_mathvista

--data layout (lupantech/MathVista data/ + HF AI4Math/MathVista images.zip):
    testmini.json       pid -> problem (1,000)
    images/<pid>.jpg    every problem's ``image``
    (query.json is read when present but not used by this prompt)
Writes OUT/mathvista_responses.json (each problem with ``query`` = the prompt below, ``response``,
``extraction``, ``prediction``, ``true_false``), mathvista.md/.json, eval_metrics.json, table.md.
Re-score: ``python -m mathvlm.evaluate score --benchmark mathvista --predictions OUT/mathvista_responses.json``.

As the paper's script (eval/inference/sub_inference_json_customvlm.py): the prompt
"Hint: Please answer the question and provide the final answer at the end.\\nQuestion: {question}"
with MathVista's raw question -- the choices are NOT shown (answers are mapped to the nearest choice
by MathVista's normalisation); the folder's template (ChatML, image first, for Qwen2; ``deepseek``
for the DeepSeek variant); SigLIP plain-resize preprocessing from the folder; sampling at temperature
0.1, top-p 0.8, 768 new tokens (DeepSeek: temperature 0.3, top-k 40, top-p 0.8, 2048 tokens, seed 3407).
Differs: local rule-based extraction instead of the GPT extraction (gpt-4o-mini default upstream);
sampling keys are ours. Not comparable with Math-LLaVA's row (that one shows the choices).
GPT extraction as the paper: judge_url=URL,judge_model=gpt-4o-mini,judge_prompt=FILE (MathVista's
evaluation/prompts/ext_ans.py demo prompt; cached, failures counted).
Args: model=puma|puma_deepseek, template, image_preprocess, max_examples, batch_size, dtype,
judge_url, judge_model, judge_prompt.
"""

from mathvlm.eval import protocols


def get_config(arg=None):
    arg = protocols.parse_arg(arg, model="puma")
    return protocols.protocol_config(
        "puma_mathvista", arg, [{"name": "mathvista", "prompt": "puma"}],
        protocols.decoding_for(arg.model), table=protocols.mathvista_table())
