"""Train the small byte-level BPE tokenizer that ships with the repo for tiny configs
(``data.tokenizer: "engine"`` → ``mathvlm/data/assets/engine_bpe``)::

    python -m mathvlm.tools.train_tokenizer --out mathvlm/data/assets/engine_bpe --vocab-size 1024 --num 4000

The corpus is every text the data engine writes for examples ``0..num-1`` of ``--seed`` (caption,
the question in all versions, multiple-choice question and options, answer, chain of thought) plus
the text_math source's problems, so a tiny model sees short ids for exactly the strings it trains on.
Same arguments → byte-identical ``tokenizer.json`` (the corpus is a pure function of (seed, index) and
BPE training is run single-threaded, so merge ties resolve in one order).
"""

from __future__ import annotations

import argparse
import json
import os

# Set before `tokenizers` is imported: its parallel word counting must not reorder merge ties.
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from mathvlm.data import arithmetic, templates  # noqa: E402

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
# The VLM's image placeholder (templates.IMAGE) and the ChatML role markers, so the chatml template
# renders its scaffolding as single ids instead of ~10 bytes each.
EXTRA_SPECIALS = (templates.IMAGE, "<|im_start|>", "<|im_end|>")
_ENGINE_TEXT_KEYS = ("caption", "choices", "answer", "cot", "cot_mc", "question_mc")


def engine_texts(seed: int, num: int):
    """Texts of engine examples ``0..num-1`` and of text_math problems ``0..num-1``, in a fixed order."""
    from mathvlm.engine import wording
    from mathvlm.engine.core import make_record

    # Texts do not depend on the image size (separate random streams); a small render is just faster.
    for index in range(num):
        record = make_record(seed, index, kind="instruct", image_size=64)
        yield from (record[key] for key in _ENGINE_TEXT_KEYS)
        yield from (record[f"question_{v}"] for v in wording.VERSIONS)
        question, answer = arithmetic.make_problem(seed, index)
        yield f"Q: {question}\nA: {answer}"
    # The chat templates' fixed prompts, once each: frequent in training rows, rare in the corpus.
    yield templates.VICUNA_SYSTEM + " USER: ASSISTANT:"
    yield f"system\n{templates.CHATML_SYSTEM}\nuser\nassistant\n"


def train(texts, vocab_size: int):
    """A ``transformers.PreTrainedTokenizerFast`` trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits one by one (as LLaMA does): numbers in the engine text are arbitrary, and per-digit ids
    # let a tiny model do arithmetic instead of memorising multi-digit chunks. Byte level: any UTF-8
    # (Δ, °, √ in the engine text) round-trips exactly with no unknown token.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, EOS, *EXTRA_SPECIALS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
        extra_special_tokens=list(EXTRA_SPECIALS), clean_up_tokenization_spaces=False,
        model_max_length=4096)


def save(tokenizer, out: str) -> None:
    """``save_pretrained`` plus what older transformers (4.x) need to load the folder: a class name
    both versions know (v5 writes its own "TokenizersBackend") and the legacy special_tokens_map.json."""
    os.makedirs(out, exist_ok=True)
    tokenizer.save_pretrained(out)
    path = os.path.join(out, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    specials = {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS,
                "additional_special_tokens": list(EXTRA_SPECIALS)}
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump(specials, f, indent=2, sort_keys=True)
        f.write("\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--num", type=int, default=4000, help="engine examples in the corpus")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    texts = list(engine_texts(args.seed, args.num))
    tokenizer = train(texts, args.vocab_size)
    save(tokenizer, args.out)
    chars = sum(len(t) for t in texts)
    tokens = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)
    print(f"{args.out}: vocab {len(tokenizer)}, {len(texts)} texts, {tokens / chars:.3f} tokens/char "
          f"(bytes: {sum(len(t.encode()) for t in texts) / chars:.3f})")


if __name__ == "__main__":
    main()
