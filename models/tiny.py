"""The built-in `tiny-llava`: a real LLaVA-1.5 checkpoint directory at toy width.

It keeps everything that matters for pruning and engine plumbing (336 px input, 14 px
patches, the 24 x 24 grid, 24 vision layers, the projector, a LLaMA decoder, a tokenizer with
`<image>`, a processor and chat template) and is written with `save_pretrained`, so it loads
through exactly the same code path as a downloaded checkpoint.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .parts import clip_core
from .specs import CLIP_MEAN, CLIP_STD

TINY_NAME = "tiny-llava"
TINY_NEXT_NAME = "tiny-llava-next"
# bump a version when its recipe changes; the cached copy is rebuilt
TINY_VERSIONS = {TINY_NAME: 2, TINY_NEXT_NAME: 1}
TINY_VERSION = TINY_VERSIONS[TINY_NAME]
SEED = 20260611

# Word material for the local BPE tokenizer: deterministic, no download.
_CORPUS = """
USER ASSISTANT image picture photo camera robot arm gripper table floor wall door window
what is in the describe how many where left right top bottom front behind near far object
red green blue yellow black white orange purple brown gray color shape size small large big
cup bottle box ball chair person dog cat car truck bicycle road tree sky cloud grass water
the a an of on in at to with and or is are was were be can could should would will do does
yes no one two three four five six seven eight nine ten zero count number there here this
that these those it its they them he she we you I my your our their pick place move grasp
open close push pull turn stop go forward backward up down obstacle path safe unsafe clear
0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' " ( ) - + = / < > [ ] { }
""".split()

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} {% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def cache_root() -> Path:
    return Path(os.environ.get("EDGEPRUNE_HOME", Path.home() / ".cache" / "edgeprune"))


def tiny_dir(name: str = TINY_NAME) -> Path:
    return cache_root() / "models" / f"{name}-v{TINY_VERSIONS[name]}"


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    sentences = [" ".join(_CORPUS[i : i + 12]) for i in range(0, len(_CORPUS), 3)]
    tok.train_from_iterator(sentences * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(tokenizer, name: str = TINY_NAME):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig

    from .specs import LLAVA_NEXT_PINPOINTS

    vocab = len(tokenizer)
    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=24, num_attention_heads=4,
        image_size=336, patch_size=14, projection_dim=32, hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
        rms_norm_eps=1e-5, hidden_act="silu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    common = dict(
        vision_config=vision, text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        tie_word_embeddings=False, image_seq_length=576,
    )
    if name == TINY_NEXT_NAME:  # the real LLaVA-NeXT-7B layouts: 3, 4 or 5 views of 336 px
        return LlavaNextConfig(**common, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
                               use_image_newline_parameter=True)
    return LlavaConfig(**common)


def _sharpen_attention(model) -> None:
    """Random init at std 0.02 gives nearly uniform attention in a 64-wide tower, so patch
    scores would differ only in the 6th digit. Larger query/key weights give the spread that
    real CLIP attention has, which makes pruning decisions meaningful in tests."""
    import torch

    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for layer in clip_core(model.model.vision_tower).encoder.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.copy_(torch.randn(proj.weight.shape, generator=gen) * 0.25)


def _processor(tokenizer, name: str):
    from transformers import CLIPImageProcessorPil, LlavaProcessor
    from transformers.models.llava_next import LlavaNextImageProcessorPil, LlavaNextProcessor

    from .specs import LLAVA_NEXT_PINPOINTS

    common = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                  do_center_crop=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=3)
    if name == TINY_NEXT_NAME:
        image_processor = LlavaNextImageProcessorPil(**common, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS)
        processor_class = LlavaNextProcessor
    else:
        image_processor = CLIPImageProcessorPil(**common)
        processor_class = LlavaProcessor
    return processor_class(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def build_tiny_checkpoint(dest: Path, name: str = TINY_NAME) -> None:
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    tokenizer = _tokenizer()
    torch.manual_seed(SEED)
    model_class = LlavaNextForConditionalGeneration if name == TINY_NEXT_NAME else LlavaForConditionalGeneration
    model = model_class(_config(tokenizer, name)).eval()
    _sharpen_attention(model)
    processor = _processor(tokenizer, name)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    _tiny_clip(model, tokenizer).save_pretrained(dest / "clip")


def _tiny_clip(llava, tokenizer):
    """A CLIPModel whose vision half is the tiny tower (as openai/clip-vit-large-patch14-336 is
    for LLaVA-1.5), with a tiny text tower: the `--text-tower` HiPrune++ needs."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    vision = llava.config.vision_config
    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=vision.projection_dim,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                        projection_dim=vision.projection_dim)
    torch.manual_seed(SEED + 2)
    clip = CLIPModel(config).eval()
    clip.vision_model.load_state_dict(clip_core(llava.model.vision_tower).state_dict())
    return clip


def build_once(dest: Path, build: Callable[[Path], None]) -> Path:
    """`dest` with a checkpoint in it, built by `build(folder)` into a temporary sibling and
    renamed into place, so concurrent processes never see half a checkpoint (a process that loses
    the race keeps the winner's, which the same recipe made identical)."""
    if (dest / "config.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        build(tmp)
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_tiny_checkpoint(name: str = TINY_NAME) -> Path:
    """Build a tiny checkpoint once into the cache and return its directory."""
    return build_once(tiny_dir(name), lambda folder: build_tiny_checkpoint(folder, name))
