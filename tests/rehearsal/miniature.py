"""Miniature transformers folders in the architectures and config fields of the papers' released models.

Each ``make_X(out_dir, seed=0) -> str`` writes a folder the way the released checkpoint is laid out —
``config.json`` with the real model's fields (only the widths, depths and vocabulary shrunk),
``model.safetensors`` written by transformers' ``save_pretrained``, the tokenizer of the real tokenizer
class and, for image towers, the real image processor's ``preprocessor_config.json`` — so a recipe's
real-size code path (``hf=<folder>``) runs on it in seconds:

==================  ==============================================  ==========================================
maker               released model                                   what it keeps
==================  ==============================================  ==========================================
``clip_vit_l_336``  openai/clip-vit-large-patch14-336 (MAVIS)        CLIPModel, patch 14 + class token,
                                                                     quick_gelu, legacy ``eos_token_id 2``
                                                                     (pools at the highest id), CLIP BPE
                                                                     (lower-cased, ``</w>``), 77 positions
``siglip_so400m``   google/siglip-so400m-patch14-384 (Math-PUMA)     SiglipModel (or the vision tower), patch
                                                                     14, no class token, attention-pool head,
                                                                     gelu_pytorch_tanh, image size *not* a
                                                                     multiple of 14 (384 = 27·14 + 6 → 62 =
                                                                     4·14 + 6), SentencePiece tokenizer
``vicuna``          lmsys/vicuna-13b-v1.5 (LLaVA-1.5 / Math-LLaVA)   LLaMA-2: MHA (kv heads = heads),
                                                                     rms 1e-5, θ 1e4, untied, LLaMA BPE with
                                                                     byte fallback, no pad token
``mistral``         TIGER-Lab/MAmmoTH2-7B (MAVIS)                    Mistral-7B-v0.1: GQA, sliding
                                                                     window 4096, θ 1e4, untied,
                                                                     the LLaMA tokenizer
``qwen2``           Qwen/Qwen2-7B-Instruct (``tied``: 1.5B)          GQA, q/k/v bias, θ 1e6, vocab padded
                                                                     past the tokenizer, byte-level BPE,
                                                                     ChatML template, eos ``<|im_end|>``
``llava_15``        llava-hf/llava-1.5-13b-hf (Math-LLaVA)           CLIP tower above + 2-layer GELU
                                                                     projector + Vicuna, layer −2, strategy
                                                                     ``default``, ``<image>`` and ``<pad>``
                                                                     added, vocab padded to a multiple of 64,
                                                                     LlavaProcessor + Vicuna v1 template
==================  ==============================================  ==========================================

Tokenizers are trained (``tokenizers`` BPE under the real class's normaliser / pre-tokeniser /
end-of-word rules, deterministically) on text of the built-in data engine plus the chat templates'
fixed prompts, and saved through the real transformers class (``LlamaTokenizer``, ``Qwen2Tokenizer``,
``CLIPTokenizer``, ``SiglipTokenizer``). Engine text never becomes ``<unk>``: LLaMA pieces cover the
engine's characters and printable ASCII and fall back to bytes for anything else, Qwen2 is byte level,
CLIP's alphabet holds the bytes of every engine character, printable ASCII and common math symbols
(``MATH_CHARS``). Weights are float32 (``torch.manual_seed(seed)``): transformers and mathvlm agree to
~1e-6. The vocabularies keep the released ones' layout: specials first (LLaMA, ids 0–2, then the 256
byte pieces) or last (Qwen2, CLIP), embedding rows padded past the tokenizer where the release does so.
"""

from __future__ import annotations

import functools
import json
import os
import string

# ------------------------------------------------------------------------------------ sizes

LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
CLIP_VISION = {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "image_size": 56, "patch_size": 14}
# Narrower than the image tower and the projection (ViT-L/14-336: 1024 image, 768 text, 768 projection),
# so every projection is a non-square matrix whose transposition a loader could get wrong.
CLIP_TEXT = {"hidden_size": 24, "intermediate_size": 96, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 77}
CLIP_PROJECTION = 16
# so400m: width 1152, MLP 4304 (3.74×), 16 heads; here 32, 120, 4.
SIGLIP = {"hidden_size": 32, "intermediate_size": 120, "num_hidden_layers": 2, "num_attention_heads": 4}
SIGLIP_IMAGE_SIZE = 62        # 4·14 + 6 like 384 = 27·14 + 6: the patch conv drops the last 6 pixels
# Image tokens a LLaVA-style model takes per picture with strategy "default" (first token dropped):
# CLIP 56 px → 4² patches + class token − 1 (576 at 336 px); SigLIP 62 px → 4² − 1 (728 at 384 px).
CLIP_IMAGE_TOKENS = (CLIP_VISION["image_size"] // 14) ** 2
SIGLIP_IMAGE_TOKENS = (SIGLIP_IMAGE_SIZE // 14) ** 2 - 1
SP_VOCAB = 510                # LLaMA / Mistral tokenizers (32000 in the real ones); LLaVA adds 2 → 512
QWEN2_REGULAR = 480           # Qwen2's byte-level BPE before its 3 specials (151643 real), 512 rows

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Characters the data engine and MathVerse-style text use, beyond printable ASCII.
MATH_CHARS = "°²³·×÷±√π∠△▱□⊥∥≅∼≈≠≤≥∞θαβγΔ∫′″∘⌒→←↑↓⋅−–—…"
VICUNA_V1_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + ' ' }}"
    "{% set messages = messages[1:] %}{% else %}"
    "{{ 'A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user\\'s questions. ' }}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'USER: ' + message['content'] + ' ' }}{% else %}"
    "{{ 'ASSISTANT: ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
# Qwen2-7B-Instruct's tokenizer_config.json chat_template, verbatim.
QWEN2_CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Qwen2's pre-tokeniser split (transformers' Qwen2Tokenizer.PRETOKENIZE_REGEX).
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
CLIP_SPLIT = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
              r"""[^\s\p{L}\p{N}]+""")


# ------------------------------------------------------------------------------------ corpus

@functools.lru_cache(maxsize=4)
def corpus(num: int = 24, seed: int = 0) -> tuple[str, ...]:
    """Engine captions, questions (every MathVerse version), options, answers and chains of thought
    of problems ``0..num-1`` of every family (no rendering), text_math problems and the chat
    templates' fixed prompts. Cached: the first call imports the engine (~1–3 s)."""
    from mathvlm.data import arithmetic, templates
    from mathvlm.engine import core
    from mathvlm.engine import wording
    from mathvlm.engine.common import ALL_FAMILIES

    texts = []
    for index in range(num):
        problem = core.make_problem(seed, index, ALL_FAMILIES)
        rng = core.rng_for(seed, index, "text")
        texts.append(wording.caption(problem, rng))
        options, _ = wording.choices(problem, rng)
        texts += ["\n".join(options), wording.answer_string(problem["answer"]),
                  wording.cot_text(problem)]
        texts += [wording.version_text(problem, v) for v in wording.VERSIONS]
        question, answer = arithmetic.make_problem(seed, index)
        texts.append(f"{question}\n{answer}")
    texts += [templates.VICUNA_SYSTEM + " USER: What is 3 + 4? ASSISTANT: 7",
              f"system\n{templates.CHATML_SYSTEM}\nuser\nassistant\n",
              "Answer the question shown in the image. The answer is option A, B, C or D."]
    return tuple(texts)


def _alphabet(texts, extra: str = MATH_CHARS) -> list[str]:
    """Every character of the texts, printable ASCII and ``extra``, sorted (no whitespace)."""
    chars = set("".join(texts)) | set(string.printable) | set(extra)
    return sorted(c for c in chars if not c.isspace())


def _train_merges(texts, *, normalizer, pre_tokenizer, alphabet, suffix: str = "") -> list[tuple]:
    """BPE merges (in order) learnt on ``texts`` split into words by the given normaliser and
    pre-tokeniser; ``suffix`` marks word ends (CLIP's ``</w>``).

    Deterministic: the words are counted here and handed to the trainer whitespace-separated with every
    symbol already in its (sorted) initial alphabet, so no symbol gets its id in hash-map order (which
    would break count ties differently from run to run). A word-final character becomes a
    private-use stand-in during training and ``char + suffix`` afterwards."""
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    counts = Counter()
    for text in texts:
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
    alphabet = sorted(set(alphabet) | {c for word in counts for c in word})
    back = {}
    if suffix:
        ends = {c: chr(0xF0000 + i) for i, c in enumerate(alphabet)}   # plane-15 private use
        back = {stand_in: c + suffix for c, stand_in in ends.items()}
        counts = Counter({word[:-1] + ends[word[-1]]: n for word, n in counts.items()})
        alphabet += sorted(ends.values())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + 1000, min_frequency=2,
                                  show_progress=False, initial_alphabet=alphabet)
    tok.train_from_iterator((" ".join([word] * n) for word, n in sorted(counts.items())), trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]

    def restore(piece):
        return piece[:-1] + back[piece[-1]] if piece and piece[-1] in back else piece

    return [(restore(a), restore(b)) for a, b in merges]


def _vocab_with_merges(base: list[str], merges, limit: int, tail: list[str] = ()):
    """``base`` tokens, then the results of the first merges (as many as ``limit`` allows), then
    ``tail``; returns (vocab dict, kept merges). A prefix of a merge list is itself a valid BPE."""
    vocab = {token: i for i, token in enumerate(base)}
    kept = []
    room = limit - len(vocab) - len(tail)
    for a, b in merges:
        if a not in vocab or b not in vocab:
            continue                     # built from a token that did not fit
        if a + b not in vocab:
            if room == 0:
                break
            vocab[a + b] = len(vocab)
            room -= 1
        kept.append((a, b))
    for token in tail:
        vocab[token] = len(vocab)
    return vocab, kept


def _quiet(make):
    """Run ``make`` with transformers' warnings (e.g. 'requires torchvision … falling back to Pil') and
    progress bars off, restoring both afterwards."""

    @functools.wraps(make)
    def run(*args, **kwargs):
        from transformers.utils import logging

        level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        try:
            return make(*args, **kwargs)
        finally:
            logging.set_verbosity(level)
            if bars:
                logging.enable_progress_bar()

    return run


def _write_json(path, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def _patch_json(path, **changes) -> None:
    with open(path) as f:
        data = json.load(f)
    data.update(changes)
    _write_json(path, data)


# ------------------------------------------------------------------------------------ tokenizers

def llama_tokenizer(vocab_size: int = SP_VOCAB):
    """LLaMA-2 / Vicuna / Mistral-v0.1 style: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<0x00>``…``<0xFF>``
    3–258 (byte fallback), then SentencePiece-BPE pieces (``▁`` for spaces, digits always single) —
    a ``transformers.LlamaTokenizer`` with ``add_bos_token`` and no pad token, as Vicuna ships."""
    from tokenizers import pre_tokenizers
    from transformers import LlamaTokenizer

    texts = corpus()
    # Training splits words at ▁ and digits apart (SentencePiece's split_digits); the tokenizer itself
    # is LlamaTokenizer's: Metaspace without splitting, which these merges can never cross.
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Digits(individual_digits=True)])
    # Engine characters and ASCII as pieces; other symbols (△, ∥, …) fall back to bytes, as many do
    # in LLaMA's 32000 pieces.
    alphabet = ["▁"] + _alphabet(texts, extra="")
    merges = _train_merges(texts, normalizer=None, pre_tokenizer=pre, alphabet=alphabet)
    base = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + alphabet
    vocab, merges = _vocab_with_merges(base, merges, vocab_size)
    return LlamaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>",
                          eos_token="</s>", add_bos_token=True, add_eos_token=False, legacy=False,
                          model_max_length=4096, padding_side="right",
                          clean_up_tokenization_spaces=False)


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte → printable character map (the byte-level BPE alphabet)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    return bytes_to_unicode()


def qwen2_tokenizer(regular: int = QWEN2_REGULAR):
    """Qwen2 style: NFC, Qwen2's split regex, byte-level BPE over all 256 bytes, then
    ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` as the last ids; eos ``<|im_end|>``, pad
    ``<|endoftext|>``, no bos / unk, the ChatML chat template."""
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import Qwen2Tokenizer

    texts = corpus()
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    byte_chars = list(_byte_chars().values())
    merges = _train_merges(texts, normalizer=normalizers.NFC(), pre_tokenizer=pre, alphabet=byte_chars)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab, merges = _vocab_with_merges(byte_chars, merges, regular + len(specials), tail=specials)
    return Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                          eos_token="<|im_end|>", pad_token="<|endoftext|>",
                          extra_special_tokens=["<|im_start|>", "<|im_end|>"],
                          chat_template=QWEN2_CHATML_TEMPLATE, model_max_length=32768,
                          errors="replace", split_special_tokens=False,
                          clean_up_tokenization_spaces=False)


def clip_tokenizer(limit: int = 512):
    """CLIP style: NFC + whitespace squeeze + lower case, CLIP's split regex, byte-level BPE with
    ``</w>`` word ends; every alphabet byte in both forms, then merges, then ``<|startoftext|>`` and
    ``<|endoftext|>`` as the two highest ids (the legacy ``eos_token_id 2`` config pools at the highest
    id); unk = pad = ``<|endoftext|>``, 77 positions."""
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    texts = corpus()
    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                       normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    to_char = _byte_chars()
    needed = sorted({b for c in _alphabet(texts) for b in c.lower().encode("utf-8")})
    alphabet = [to_char[b] for b in needed]
    merges = _train_merges(texts, normalizer=normalizer, pre_tokenizer=pre, alphabet=alphabet,
                           suffix="</w>")
    specials = ["<|startoftext|>", "<|endoftext|>"]
    base = alphabet + [c + "</w>" for c in alphabet]
    vocab, merges = _vocab_with_merges(base, merges, limit, tail=specials)
    return CLIPTokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>",
                         bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>", model_max_length=77, do_lower_case=True,
                         errors="replace", clean_up_tokenization_spaces=False)


def siglip_spiece(out_dir, vocab_size: int = 256) -> str:
    """A SentencePiece Unigram ``spiece.model`` like SigLIP's (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2,
    no bos, lower-cased input) trained on the corpus; returns its path."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    texts = [t.lower() for t in corpus()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", hard_vocab_limit=False, character_coverage=1.0, split_digits=True,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        required_chars="".join(sorted(set("".join(_alphabet(texts)).lower()))),
        num_threads=1, minloglevel=2)
    path = os.path.join(out_dir, "spiece.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


# ------------------------------------------------------------------------------------ models

def _save(model, out_dir) -> None:
    model.eval()
    model.save_pretrained(out_dir)


def _decoder_config(family: str, vocab_size: int, tokenizer, **changes):
    import transformers as tf

    if family == "llama":      # lmsys/vicuna-13b-v1.5 (LLaMA-2-13B: no GQA)
        fields = dict(num_key_value_heads=LLM["num_attention_heads"], rms_norm_eps=1e-5,
                      rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=False,
                      attention_bias=False, mlp_bias=False, pretraining_tp=1, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0)
        cls = tf.LlamaConfig
    elif family == "mistral":  # TIGER-Lab/MAmmoTH2-7B = Mistral-7B-v0.1 (32 heads, 8 kv heads; here 4, 2)
        fields = dict(num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
                      sliding_window=4096, max_position_embeddings=32768, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)
        cls = tf.MistralConfig
    else:                      # Qwen/Qwen2-7B-Instruct (28 heads, 4 kv heads)
        fields = dict(num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                      max_position_embeddings=32768, sliding_window=131072, use_sliding_window=False,
                      max_window_layers=LLM["num_hidden_layers"], tie_word_embeddings=False,
                      bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                      eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
        cls = tf.Qwen2Config
    values = {**LLM, "vocab_size": vocab_size, "hidden_act": "silu", "initializer_range": 0.02,
              **fields, **changes}
    return cls(**values)


def _finish_llama_tokenizer(out_dir, **changes) -> None:
    """tokenizer_config.json entries of the released LLaMA-family folders that transformers 5 leaves
    out (4.x reads them): bos added, eos not, ``legacy: false``, pad as given (Vicuna: none)."""
    fields = {"add_bos_token": True, "add_eos_token": False, "legacy": False, "sp_model_kwargs": {},
              "pad_token": None, **changes}
    _patch_json(os.path.join(out_dir, "tokenizer_config.json"), **fields)


def _finish_qwen2_tokenizer(out_dir) -> None:
    """The chat template inside tokenizer_config.json, where Qwen2-Instruct ships it (transformers 5
    writes chat_template.jinja; older versions read only the config entry)."""
    jinja = os.path.join(out_dir, "chat_template.jinja")
    if os.path.exists(jinja):
        os.remove(jinja)
    _patch_json(os.path.join(out_dir, "tokenizer_config.json"), chat_template=QWEN2_CHATML_TEMPLATE,
                add_prefix_space=False)


def _decoder(family: str, out_dir, seed: int, tokenizer, vocab_size: int, **changes) -> str:
    import torch
    import transformers as tf

    os.makedirs(out_dir, exist_ok=True)
    config = _decoder_config(family, vocab_size, tokenizer, **changes)
    cls = {"llama": tf.LlamaForCausalLM, "mistral": tf.MistralForCausalLM,
           "qwen2": tf.Qwen2ForCausalLM}[family]
    torch.manual_seed(seed)
    _save(cls(config), out_dir)
    tokenizer.save_pretrained(out_dir)
    if family == "qwen2":
        _finish_qwen2_tokenizer(out_dir)
    else:
        _finish_llama_tokenizer(out_dir)
    return str(out_dir)


@_quiet
def make_vicuna(out_dir, seed: int = 0) -> str:
    """LlamaForCausalLM with Vicuna-13B-v1.5's fields (MHA, rms 1e-5, θ 1e4, 4096 positions, untied,
    ``pad_token_id 0`` in config.json but no pad token in the tokenizer)."""
    tok = llama_tokenizer()
    return _decoder("llama", out_dir, seed, tok, len(tok))


@_quiet
def make_mistral(out_dir, seed: int = 0) -> str:
    """MistralForCausalLM with MAmmoTH2-7B's fields (Mistral-7B-v0.1: GQA, sliding window 4096,
    θ 1e4, 32768 positions, untied) and the LLaMA tokenizer."""
    tok = llama_tokenizer()
    return _decoder("mistral", out_dir, seed, tok, len(tok))


@_quiet
def make_qwen2(out_dir, seed: int = 0, tied: bool = False) -> str:
    """Qwen2ForCausalLM with Qwen2-7B-Instruct's fields (GQA, q/k/v bias, θ 1e6, rms 1e-6, untied,
    embedding rows past the tokenizer: 152064 vs 151646 → 512 vs 483); ``tied=True`` for the 1.5B
    (tied embeddings, 151936 rows, sliding_window 32768)."""
    tok = qwen2_tokenizer()
    changes = {"tie_word_embeddings": True, "sliding_window": 32768} if tied else {}
    return _decoder("qwen2", out_dir, seed, tok, 512, **changes)


def _clip_image_processor(size: int):
    from transformers import CLIPImageProcessor
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True,
                              do_convert_rgb=True, resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD)


def _clip_vision_config():
    return {**CLIP_VISION, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            "projection_dim": CLIP_PROJECTION, "num_channels": 3, "initializer_range": 0.02,
            "initializer_factor": 1.0}


@_quiet
def make_clip_vit_l_336(out_dir, seed: int = 0) -> str:
    """CLIPModel with clip-vit-large-patch14-336's fields at 56 px (4×4 patches + class token), the
    CLIP tokenizer and a CLIPImageProcessor (shortest edge + center crop, CLIP mean/std)."""
    import torch
    import transformers as tf

    os.makedirs(out_dir, exist_ok=True)
    tok = clip_tokenizer()
    # The released text_config says bos 0, eos 2, pad 1 (pre-2023 ids; eos 2 makes transformers pool
    # at the highest token id, which is <|endoftext|>).
    text = {**CLIP_TEXT, "vocab_size": len(tok), "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            "projection_dim": CLIP_PROJECTION, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
            "initializer_range": 0.02, "initializer_factor": 1.0}
    config = tf.CLIPConfig(text_config=text, vision_config=_clip_vision_config(),
                           projection_dim=CLIP_PROJECTION, logit_scale_init_value=2.6592,
                           initializer_factor=1.0)
    torch.manual_seed(seed)
    _save(tf.CLIPModel(config), out_dir)
    tok.save_pretrained(out_dir)
    _clip_image_processor(CLIP_VISION["image_size"]).save_pretrained(out_dir)
    return str(out_dir)


@_quiet
def make_siglip_so400m(out_dir, seed: int = 0, vision_only: bool = False,
                       image_size: int = SIGLIP_IMAGE_SIZE) -> str:
    """SiglipModel with siglip-so400m-patch14-384's fields (no class token, attention-pool head,
    gelu_pytorch_tanh, 1e-6 layer norms, text: 64 positions, pools the last token), a SigLIP
    SentencePiece tokenizer and a SiglipImageProcessor (plain resize, mean/std 0.5). ``vision_only``
    writes a SiglipVisionModel (what Math-PUMA's LLaVA-format folder holds) instead."""
    import torch
    import transformers as tf

    os.makedirs(out_dir, exist_ok=True)
    vision = {**SIGLIP, "image_size": image_size, "patch_size": 14, "num_channels": 3,
              "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": True}
    torch.manual_seed(seed)
    if vision_only:
        _save(tf.SiglipVisionModel(tf.SiglipVisionConfig(**vision)), out_dir)
    else:
        spiece = siglip_spiece(out_dir)
        tok = tf.SiglipTokenizer(vocab_file=spiece, model_max_length=64, do_lower_case=True)
        # The released text_config names no token ids: transformers' defaults (pad 1 = </s>, bos 49406,
        # eos 49407, both outside the vocabulary; SigLIP pools the last position, not an eos).
        text = {**SIGLIP, "vocab_size": len(tok), "max_position_embeddings": 64,
                "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
        config = tf.SiglipConfig(text_config=text, vision_config=vision, initializer_factor=1.0)
        _save(tf.SiglipModel(config), out_dir)
        tok.save_pretrained(out_dir)
    tf.SiglipImageProcessor(size={"height": image_size, "width": image_size}, do_resize=True,
                            do_rescale=True, do_normalize=True, resample=3, image_mean=[0.5] * 3,
                            image_std=[0.5] * 3).save_pretrained(out_dir)
    return str(out_dir)


@_quiet
def make_llava_15(out_dir, seed: int = 0) -> str:
    """llava-hf/llava-1.5-13b-hf in miniature: LlavaForConditionalGeneration with the CLIP tower of
    :func:`make_clip_vit_l_336` (layer −2, strategy ``default``: 16 image tokens), the ``gelu``
    2-layer projector and the Vicuna decoder; tokenizer = Vicuna's + ``<image>`` (``image_token_index``)
    + ``<pad>`` (``pad_token_id``), embedding rows padded to a multiple of 64 (32064 in the real one);
    CLIPImageProcessor, LlavaProcessor (expands ``<image>`` to 16 ids) and the Vicuna v1 template."""
    import torch
    import transformers as tf
    from tokenizers import AddedToken

    os.makedirs(out_dir, exist_ok=True)
    tok = llama_tokenizer()
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tok.add_special_tokens({"pad_token": AddedToken("<pad>", special=True, normalized=False)})
    tok.chat_template = VICUNA_V1_TEMPLATE
    image_id, pad_id = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<pad>")
    vocab_size = -(-len(tok) // 64) * 64
    text = _decoder_config("llama", vocab_size, tok, pad_token_id=pad_id)
    vision = {**_clip_vision_config(), "model_type": "clip_vision_model"}
    config = tf.LlavaConfig(vision_config=vision, text_config=text.to_dict(),
                            image_token_index=image_id, projector_hidden_act="gelu",
                            vision_feature_layer=-2, vision_feature_select_strategy="default",
                            multimodal_projector_bias=True, tie_word_embeddings=False,
                            image_seq_length=CLIP_IMAGE_TOKENS,
                            pad_token_id=pad_id)
    torch.manual_seed(seed)
    _save(tf.LlavaForConditionalGeneration(config), out_dir)
    processor = tf.LlavaProcessor(image_processor=_clip_image_processor(CLIP_VISION["image_size"]),
                                  tokenizer=tok, patch_size=CLIP_VISION["patch_size"],
                                  vision_feature_select_strategy="default",
                                  num_additional_image_tokens=1, chat_template=VICUNA_V1_TEMPLATE)
    processor.save_pretrained(out_dir)
    _finish_llama_tokenizer(out_dir, pad_token="<pad>")
    return str(out_dir)


MAKERS = {"clip_vit_l_336": make_clip_vit_l_336, "siglip_so400m": make_siglip_so400m,
          "vicuna": make_vicuna, "mistral": make_mistral, "qwen2": make_qwen2,
          "llava_15": make_llava_15}
