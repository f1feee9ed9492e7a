"""``python -m mathvlm.bench compile``: seconds to lower and to compile the train step of

* the tiny config (default ``configs/mavis/instruct.py:size=tiny``, the tiny VLM), and
* a 7B-shaped decoder (``vicuna-7b``: 32 layers under ``lax.scan``, remat, bf16 compute over float32
  parameters, AdamW), batch × sequence ``--batch`` × ``--seq``,

each from abstract ``ShapeDtypeStruct`` state (:mod:`mathvlm.train.lowering`, the lowering
``launch/aot_compile.py`` uses too) so no 7B parameters are allocated. The step is the trainer's
(:func:`mathvlm.train.loop.make_train_step`) jitted with the state donated.
"""

from __future__ import annotations

import time

from mathvlm.bench import common


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="configs/mavis/instruct.py:size=tiny")
    parser.add_argument("--preset", default="vicuna-7b", help="decoder preset of the large step")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=2048)


def compile_seconds(config, batch: int, seq: int) -> dict:
    """Lowering and compile seconds of ``config``'s train step on abstract state and batch."""
    from mathvlm.train import lowering

    start = time.perf_counter()
    abstract = lowering.abstract_train_state(config)
    abstract_s = time.perf_counter() - start
    start = time.perf_counter()
    lowered = lowering.lower_train_step(config, abstract, lowering.batch_structs(config, batch, seq)[0])
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", 0) if memory is not None else 0
    return {"params": abstract.params, "batch": batch, "seq": seq, "abstract_init_s": abstract_s,
            "lower_s": lower_s, "compile_s": compile_s, "temp_gib": temp / 2**30}


def large_config(preset: str, *, quick: bool):
    from mathvlm import config as mc
    from mathvlm.models.decoder import DECODER_PRESETS

    fields = dict(DECODER_PRESETS[preset])
    if quick:  # the same structure (scan + remat, 7B head shapes), two thin layers
        fields.update(num_layers=2, hidden_size=256, intermediate_size=512, num_heads=2,
                      num_kv_heads=2, vocab_size=1024)
    config = mc.defaults()
    config.name = f"bench: {preset} compile"
    config.mesh.data = 1
    config.model = mc.ConfigDict({"name": "decoder_lm", **fields, "dtype": "bfloat16",
                                  "param_dtype": "float32", "scan_layers": True, "remat": "full"})
    return config


def run(args) -> dict:
    from mathvlm import config as mc

    tiny_spec = "configs/text_demo.py" if args.quick else args.config
    tiny = mc.load(tiny_spec)
    tiny_figures = compile_seconds(tiny, tiny.data.batch_size, tiny.data.seq_len)
    large = large_config(args.preset, quick=args.quick)
    batch, seq = (1, 64) if args.quick else (args.batch, args.seq)
    large_figures = compile_seconds(large, batch, seq)
    figures = {"tiny": {"config": tiny_spec, **tiny_figures},
               "large": {"preset": args.preset, "layers": large.model.num_layers, "scan": True,
                         "remat": True, **large_figures},
               "machine": common.machine()}
    rows = [[name, f"{f['params'] / 1e6:,.1f}M", f"{f['batch']}x{f['seq']}", f["abstract_init_s"],
             f["lower_s"], f["compile_s"]]
            for name, f in ((f"tiny: {tiny_spec}", tiny_figures),
                            (f"{args.preset}, {large.model.num_layers} layers scanned", large_figures))]
    print(common.table(f"compile: train step from abstract state (no parameters allocated); "
                       f"load {figures['machine']['load_avg_1m']}",
                       ["", "params", "batch", "eval_shape s", "lower s", "compile s"], rows))
    return figures
