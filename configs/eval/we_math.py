"""We-Math testmini for any of the three models: the model's own decoding (``model=``) and chat template
(from the folder). MAVIS Table 4 (S1 57.2 / S2 37.9 / S3 34.6); Math-PUMA's We-Math evaluation.

    python -m mathvlm.evaluate run --config configs/eval/we_math.py:model=puma \
        --hf /ckpt/puma-qwen2-7b --data /data/we_math --workdir runs/eval/puma_we_math
    (model=math_llava | puma_deepseek | mavis for the others)

--data layout (We-Math/We-Math data/):
    testmini.json                            1,740 records (525 composite problems)
    2steps/image/*.png, 3steps/image/*.png   every record's ``image_path``
Writes OUT/we_math_responses.json (the records with ``response``: what four_dimensional_metrics.py
reads), we_math.md/.json (accuracy by step role, S1/S2/S3, IK/IG/CM/RM strict and loose, scores),
eval_metrics.json and table.md (S1 S2 S3, IK IG CM RM strict, score strict and loose).
Re-score: ``python -m mathvlm.evaluate score --benchmark we_math --predictions OUT/we_math_responses.json``.

As Math-PUMA's We-Math script: the template "Now, we require you to solve a multiple-choice math
question ... Knowledge concept: {knowledge concept description} Question: ... Option: ... <Thought
process>: <<...>> <Answer>: <<your option>>" (line breaks as spaces), with the image; We-Math's own
option parsing (after the last "Answer") and four-dimensional metrics. Decoding per model as in
configs/eval/math_v.py.
Differs: Math-LLaVA and MAVIS published no We-Math prompt; all three use this one here.
Args: model, template, image_preprocess, max_examples, batch_size, dtype.
"""

from mathvlm.eval import protocols

TABLE = (("S1", "we_math/S1"), ("S2", "we_math/S2"), ("S3", "we_math/S3"), ("IK", "we_math/IK"),
         ("IG", "we_math/IG"), ("CM", "we_math/CM_strict"), ("RM", "we_math/RM_strict"),
         ("score strict", "we_math/score_strict"), ("score loose", "we_math/score_loose"))


def get_config(arg=None):
    arg = protocols.parse_arg(arg, model="puma")
    return protocols.protocol_config(f"we_math_{arg.model}", arg, [{"name": "we_math", "prompt": "official"}],
                                     protocols.decoding_for(arg.model), TABLE)
