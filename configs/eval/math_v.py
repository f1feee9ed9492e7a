"""MATH-Vision (MATH-V) for any of the three models: the model's own decoding (``model=``) and chat
template (from the folder). Math-LLaVA Table 3 (Math-V 15.7), MAVIS Table 4 (MathVision 19.2).

    python -m mathvlm.evaluate run --config configs/eval/math_v.py:model=math_llava \
        --hf /ckpt/math-llava-13b --data /data/math_v --workdir runs/eval/math_llava_math_v
    (model=puma | puma_deepseek | mavis for the others; file=testmini.jsonl for the 304-item testmini)

--data layout (mathllm/MATH-V):
    test.jsonl          3,040 problems (or testmini.jsonl, 304; file=...)
    images/<id>.jpg     every problem's ``image`` (all sub-figures <image1>.. are drawn in this one file)
Writes OUT/math_v_responses.jsonl (MATH-V's outputs: each record with ``response`` and the extracted
``model_answer``), math_v.md/.json (accuracy by subject and level), eval_metrics.json, table.md.
Re-score: ``python -m mathvlm.evaluate score --benchmark math_v --predictions OUT/math_v_responses.jsonl --data DIR``.

As MATH-V's own model scripts (models/Qwen-VL.py, GPT4V.py): the instruction 'Please solve the problem
step by step and put your answer in one "\\boxed{}". If it is a multiple choice question, only one
letter is allowed in the "\\boxed{}".', the question, then "(A) option" lines unless the options are
the bare letters A-E; the image first (``<image>\\n``); MATH-V's rule-based extraction and is_equal.
Decoding per model: math_llava T 0.2 / 512 tokens; puma T 0.1, top-p 0.8 / 768; puma_deepseek T 0.3,
top-k 40, top-p 0.8 / 2048, seed 3407; mavis greedy / 1024.
Differs: none of the papers published its MATH-V prompt; this is the benchmark's own. Math-PUMA
reports no MATH-V number (its script raises NotImplementedError).
Args: model, file, template, image_preprocess, max_examples, batch_size, dtype.
"""

from mathvlm.eval import protocols


def get_config(arg=None):
    arg = protocols.parse_arg(arg, model="math_llava", file="test.jsonl")
    return protocols.protocol_config(
        f"math_v_{arg.model}", arg, [{"name": "math_v", "file": arg.file, "prompt": "official"}],
        protocols.decoding_for(arg.model), (("MATH-V", "math_v/accuracy"),))
