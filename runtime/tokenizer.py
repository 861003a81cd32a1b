"""The checkpoint's tokenizer from its files, with the `tokenizers` library only (no transformers).

Ids must equal `AutoTokenizer.from_pretrained(folder)(text)["input_ids"]` of transformers 5, and
transformers 5 does not always use `tokenizer.json` as written: the class named in
`tokenizer_config.json` may rebuild the pipeline from the file's vocabulary and merges. This
module reproduces the three behaviours LLaVA checkpoints meet (`tokenization_auto.AutoTokenizer.
from_pretrained`, `tokenization_utils_base._from_pretrained`, `tokenization_utils_tokenizers.
TokenizersBackend.__init__`):

- "generic" (`TokenizersBackend`, `PreTrainedTokenizerFast`, any other class): `tokenizer.json`
  as it is. Engine directories are written by transformers 5's `save_pretrained`, which saves
  the pipeline it actually used, so this is the common case.
- "llama" (`LlamaTokenizer[Fast]`, unless `tokenizer.json` is ByteLevel or a `config.json` next
  to it says llava/llava_next, for which transformers forces the generic class): a BPE model with
  byte fallback rebuilt from the vocabulary, no normalizer, a Metaspace pre-tokenizer whose prefix
  rule follows `legacy` / `add_prefix_space` ("first" for legacy=false: no "▁" after an added
  token, unlike an old Prepend normalizer), and the Replace/ByteFallback/Fuse/Strip decoder
  (`models/llama/tokenization_llama.py`).
- "clip" (`CLIPTokenizer[Fast]`): CLIP's NFC/whitespace/lowercase normalizer, its split regex +
  ByteLevel, `</w>` word ends, RobertaProcessing, and a decode that turns `</w>` into spaces and
  strips (`models/clip/tokenization_clip.py`).

In all three, added and special tokens are registered in transformers' order (the config's
`added_tokens_decoder`, else the legacy `special_tokens_map.json` + `tokenizer.json` list, then
named special tokens the vocabulary lacks), the post-processor is `tokenizer.json`'s
(`add_bos_token` / `add_eos_token` are ignored when `tokenizer.json` exists, as in transformers),
and truncation/padding are off. Not reproduced: `added_tokens.json` (slow tokenizers only),
transformers' Mistral regex patch (vocabularies over 100k) and remote-code tokenizers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import UserError, one_line

STANDARD_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# model types transformers loads with the generic backend whatever tokenizer_class says
GENERIC_MODEL_TYPES = frozenset({"llava", "llava_next", "vipllava"})
CLASS_DEFAULTS = {
    "llama": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
    "clip": {"unk_token": "<|endoftext|>", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
             "pad_token": "<|endoftext|>"},
}
# CLIPTokenizer's pre-tokenizer split (transformers/models/clip/tokenization_clip.py)
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _read_json(file: Path, what: str) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} {file} is not readable JSON: {one_line(exc)}") from None


def _added_token(value: Any):
    """transformers' `convert_added_tokens`: {"__type": "AddedToken", ...} dicts -> AddedToken."""
    from tokenizers import AddedToken

    if isinstance(value, Mapping):
        fields = {k: v for k, v in value.items() if k != "__type"}
        return AddedToken(**fields)
    return value


def flavour(config: Mapping[str, Any], tokenizer_json: str, folder: Path) -> str:
    """Which of transformers' behaviours applies: "generic", "llama" or "clip"."""
    name = str(config.get("tokenizer_class") or "").removesuffix("Fast")
    model_type = None
    if (folder / "config.json").is_file():
        model = _read_json(folder / "config.json", "model config")
        model_type = model.get("model_type") if isinstance(model, dict) else None
    if model_type in GENERIC_MODEL_TYPES:
        return "generic"
    if not name and model_type:
        name = {"llama": "LlamaTokenizer", "clip": "CLIPTokenizer"}.get(model_type, "")
    if name == "LlamaTokenizer":
        return "generic" if '"ByteLevel"' in tokenizer_json else "llama"
    if name == "CLIPTokenizer":
        return "clip"
    return "generic"


def _vocab_and_merges(data: Mapping[str, Any], file: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = data.get("model") or {}
    if model.get("type") not in (None, "BPE") or not isinstance(model.get("vocab"), (dict, list)):
        raise UserError(f"{file}: expected a BPE model for this tokenizer class, found {model.get('type')!r}")
    vocab = model["vocab"]
    if isinstance(vocab, list):
        vocab = {(item[0] if isinstance(item, list) else item): i for i, item in enumerate(vocab)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    return vocab, merges


def _llama_backend(data: Mapping[str, Any], config: Mapping[str, Any], file: Path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, pre_tokenizers
    from tokenizers.models import BPE

    vocab, merges = _vocab_and_merges(data, file)
    backend = Backend(BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
    add_prefix_space = config.get("add_prefix_space")
    add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
    legacy = bool(config.get("legacy", False))
    scheme = ("always" if legacy else "first") if add_prefix_space else "never"
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _clip_backend(data: Mapping[str, Any], unk: str, file: Path):
    from tokenizers import Regex
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocab, merges = _vocab_and_merges(data, file)
    backend = Backend(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                          end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    return backend


def _post_processor_of(text: str):
    """`tokenizer.json`'s post-processor (None when it has none), without parsing the vocabulary."""
    from tokenizers import Tokenizer as Backend

    data = json.loads(text)
    data["model"] = {**data["model"], "vocab": {}}
    if data["model"].get("type") == "BPE":
        data["model"]["merges"] = []
    data["added_tokens"] = []
    if data["model"].get("type") == "Unigram":
        return Backend.from_str(text).post_processor
    return Backend.from_str(json.dumps(data)).post_processor


class Tokenizer:
    """Text <-> ids exactly as the checkpoint's transformers tokenizer does (see the module doc)."""

    def __init__(self, backend, *, special_tokens: Mapping[str, str], extra_special_tokens: Iterable[str] = (),
                 clean_up_tokenization_spaces: bool = False, clean_up_bpe: bool = False,
                 end_of_word_suffix: str | None = None, source: str = "tokenizer"):
        self.backend = backend
        self.special_tokens = dict(special_tokens)
        self.extra_special_tokens = list(extra_special_tokens)
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.clean_up_bpe = clean_up_bpe
        self.end_of_word_suffix = end_of_word_suffix
        self.source = source

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "Tokenizer":
        """`tokenizer.json` + `tokenizer_config.json` (+ `special_tokens_map.json`) of a folder."""
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as Backend
        from tokenizers import processors

        folder = Path(path)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise UserError(f"{folder} has no tokenizer.json (the runtime reads tokenizers in the `tokenizers` "
                            "library's format)")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {file}: {one_line(exc)}") from None
        config_file = folder / "tokenizer_config.json"
        config = _read_json(config_file, "tokenizer config") if config_file.is_file() else {}
        if not isinstance(config, dict):
            raise UserError(f"{config_file} is not a JSON object")
        kind = flavour(config, text, folder)
        try:
            data = json.loads(text)
            if kind == "generic":
                backend = Backend.from_str(text)
            elif kind == "llama":
                backend = _llama_backend(data, config, file)
            else:
                unk = config.get("unk_token", CLASS_DEFAULTS["clip"]["unk_token"])
                backend = _clip_backend(data, str(getattr(_added_token(unk), "content", unk)), file)
            post_processor = backend.post_processor if kind == "generic" else _post_processor_of(text)
        except UserError:
            raise
        except Exception as exc:  # the tokenizers library reports malformed files with its own types
            raise UserError(f"{file} is not a valid tokenizers file: {one_line(exc)}") from None

        init = {k: v for k, v in config.items() if k not in ("tokenizer_class", "add_bos_token", "add_eos_token")}
        if isinstance(data.get("padding"), dict):  # transformers takes a missing pad token from here
            init.setdefault("pad_token", data["padding"].get("pad_token"))
        if "additional_special_tokens" in init and not init.get("extra_special_tokens"):
            init["extra_special_tokens"] = init.pop("additional_special_tokens")
        added: dict[int, Any] = {}
        if "added_tokens_decoder" in init:
            for index, token in (init.pop("added_tokens_decoder") or {}).items():
                added[int(index)] = _added_token(token)
        else:  # transformers' legacy path: special_tokens_map.json, then tokenizer.json's own list
            legacy_map = folder / "special_tokens_map.json"
            if legacy_map.is_file():
                for key, value in (_read_json(legacy_map, "special tokens map") or {}).items():
                    if isinstance(value, dict) and key not in ("extra_special_tokens", "additional_special_tokens"):
                        fields = {k: v for k, v in value.items() if k not in ("special", "__type")}
                        value = AddedToken(**fields, special=True)
                    elif key in ("extra_special_tokens", "additional_special_tokens") and isinstance(value, list):
                        merged = list(init.get("extra_special_tokens") or [])
                        for token in value:
                            token = AddedToken(**{**token, "special": True}) if isinstance(token, dict) else token
                            if token not in merged:
                                merged.append(token)
                        key, value = "extra_special_tokens", merged
                    init[key] = value
            for token in data.get("added_tokens") or []:
                fields = {k: v for k, v in token.items() if k != "id"}
                added[int(token["id"])] = AddedToken(**fields)
        by_content = {str(token): token for token in added.values()}

        named: dict[str, Any] = {}
        for key in STANDARD_SPECIAL:
            value = init.get(key, CLASS_DEFAULTS.get(kind, {}).get(key))
            if value is not None:
                named[key] = by_content.get(str(_added_token(value)), _added_token(value)) if added else \
                    _added_token(value)
        extra = init.get("extra_special_tokens")
        extra_list: list[Any] = []
        for key, value in init.items():
            if key not in STANDARD_SPECIAL and key.endswith("_token") and (isinstance(value, str) or (
                    isinstance(value, Mapping) and value.get("__type") == "AddedToken")):
                named[key] = _added_token(value)
        if isinstance(extra, Mapping):
            named.update({k: _added_token(v) for k, v in extra.items()})
        elif isinstance(extra, (list, tuple)):
            extra_list = [_added_token(t) for t in extra]
        for key, value in named.items():
            if not isinstance(value, (str, AddedToken)):
                raise UserError(f"{config_file}: special token {key} is {value!r}, not a string or an AddedToken")

        # TokenizersBackend.__init__: the config's added tokens, then missing special tokens
        existing = [t.content for _, t in sorted(backend.get_added_tokens_decoder().items())]
        to_add = [token for _, token in sorted(added.items())]
        seen = set(existing) | {str(t) for t in to_add}
        for value in [*named.values(), *extra_list]:
            if str(value) not in seen:
                to_add.append(value)
                seen.add(str(value))
        names = {str(v) for v in named.values() if v}
        tokens = []
        for token in to_add:
            if isinstance(token, str):
                token = AddedToken(token, special=True)
            elif not token.special and str(token) in names:
                token.special = True
            tokens.append(token)
        if post_processor is not None:
            backend.post_processor = post_processor
        if tokens:
            backend.add_tokens(tokens)
        backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
        if backend.post_processor is None:
            backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
        if kind == "clip":
            eos, bos = str(named["eos_token"]), str(named["bos_token"])
            backend.post_processor = processors.RobertaProcessing(
                (eos, _id_or_unk(backend, eos, named)), (bos, _id_or_unk(backend, bos, named)), False, False)
        backend.no_truncation()
        backend.no_padding()
        return cls(backend, special_tokens={k: str(v) for k, v in named.items()},
                   extra_special_tokens=[str(t) for t in extra_list],
                   clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
                   clean_up_bpe=bool(config.get(
                       "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)),
                   end_of_word_suffix="</w>" if kind == "clip" else None, source=str(folder))

    # ---- vocabulary -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Vocabulary size including added tokens (`len(hf_tokenizer)`)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self.backend.id_to_token(int(index))

    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        if token is None:
            return None
        index = self.backend.token_to_id(token)
        if index is None and name != "unk_token":
            return self.unk_token_id  # transformers maps unknown tokens to the unk id
        return index

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk_token")

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    # ---- text <-> ids -----------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """`hf_tokenizer(text, add_special_tokens=...)["input_ids"]`."""
        if not isinstance(text, str):
            raise UserError(f"text to tokenize must be str, not {type(text).__name__}")
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """`hf_tokenizer.decode(ids, skip_special_tokens=...)`. Ids outside the vocabulary
        (negative, or >= len(self): e.g. prompt-table ids) are dropped; transformers drops the
        large ones too and fails on negative ones."""
        limit = len(self)
        kept = [int(i) for i in ids if 0 <= int(i) < limit]
        text = self.backend.decode(kept, skip_special_tokens=skip_special_tokens)
        if self.end_of_word_suffix:
            text = text.replace(self.end_of_word_suffix, " ").strip()
        if self.clean_up_tokenization_spaces and (type(self.backend.model).__name__ != "BPE" or self.clean_up_bpe):
            text = clean_up_tokenization(text)
        return text


def _id_or_unk(backend, token: str, named: Mapping[str, Any]) -> int:
    index = backend.token_to_id(token)
    if index is None:
        unk = named.get("unk_token")
        index = backend.token_to_id(str(unk)) if unk is not None else None
    if index is None:
        raise UserError(f"the CLIP tokenizer has no id for its special token {token!r}")
    return index


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (spaces before punctuation and English contractions)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
