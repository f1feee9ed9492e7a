"""MAVIS-7B on MathVerse testmini, five visual versions (MAVIS Table 3, accuracy column).

    python -m mathvlm.evaluate run --config configs/eval/mavis_mathverse.py \
        --hf /ckpt/mavis-7b --data /data/mathverse --workdir runs/eval/mavis_mathverse

--data layout (ZrrSkywalker/MathVerse; HF AI4Math/MathVerse):
    testmini.json       3,940 records, five visual versions
    images/<image>      every record's ``image``
Writes OUT/mathverse_responses.json (MathVerse output records with ``model_answer``), mathverse.md/.json
(accuracy by version), eval_metrics.json and table.md (ALL, TD TL VI VD VO).
Re-score: ``python -m mathvlm.evaluate score --benchmark mathverse --predictions OUT/mathverse_responses.json``.

As the paper: MathVerse's ``query_cot`` prompt with the diagram; the folder's template (what
``convert build-vlm`` gave the MAmmoTH2/Mistral LLM: Vicuna v1) and CLIP pad-to-square preprocessing.
Differs: MAVIS released no inference code: its template, preprocessing and decoding are unknown; we
decode greedily with 1024 new tokens. MAVIS reports CoT-E and accuracy scored by GPT-4; we score
accuracy locally (answer after the last marker; option letter or math-verify), ``judge_url=...`` for a
GPT judge (off by default). No CoT-E.
Args: template, image_preprocess, max_examples, batch_size, dtype, judge_url, judge_model.
"""

from mathvlm.eval import protocols


def get_config(arg=None):
    arg = protocols.parse_arg(arg)
    evaluators = [{"name": "mathverse", "file": "testmini.json", "prompt_field": "query_cot"}]
    return protocols.protocol_config("mavis_mathverse", arg, evaluators, protocols.decoding_for("mavis"),
                                     protocols.mathverse_table())
