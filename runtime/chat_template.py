"""Chat templates rendered the way transformers 5 renders them, with jinja2 only.

`processor.apply_chat_template(messages, tokenize=False)` (transformers/processing_utils.py) and
its tokenizer twin (tokenization_utils_base.py) hand a conversation to
`utils/chat_template_utils.render_jinja_template`. Reproduced here:

- the environment of `_cached_compile_jinja_template`: a sandboxed (immutable) environment with
  trim_blocks and lstrip_blocks, the loop-controls extension, the `{% generation %}` block (which
  transformers uses to find assistant text for training masks; rendering emits its body), a
  `tojson` filter that does not HTML-escape, and the globals `raise_exception`, `strftime_now`,
  `dict` and a `namespace` that refuses underscore names;
- the variables: `messages`, `tools` and `documents` (None), `add_generation_prompt`, and the
  tokenizer's named special tokens (`bos_token`, `eos_token`, ..., plus model tokens such as
  `image_token`), which explicit keyword variables override;
- the message clean-up: None-valued keys dropped, OpenAI `image_url` parts turned into
  `{"type": "image", "url": ...}` (the processor's `_normalize_conversations`), every value
  rebuilt from plain JSON types (anything else becomes "<TypeName>", as in `_plain_template_data`),
  and `reasoning_content` / `thinking` aliases filled.

Where a folder's template comes from follows transformers' loaders: `processor_config.json`'s
"chat_template", then `chat_template.json`, then `chat_template.jinja` (then
`chat_templates/default.jinja`), then `tokenizer_config.json`'s "chat_template".
"""
from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils
import numpy as np

from .errors import UserError, one_line

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class GenerationBlock(jinja2.ext.Extension):
    """`{% generation %} ... {% endgeneration %}` (llava-hf templates wrap assistant text in it)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class SafeNamespace(jinja2.utils.Namespace):
    """jinja's `namespace`, refusing attribute names that start with an underscore."""

    def __init__(*args, **kwargs):  # noqa: N805 (jinja's own signature trick, so namespace(self=...) works)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            SafeNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        SafeNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set {name!r} on a namespace")


class SafeDict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without exposing the dict type."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=SafeDict(),
                       namespace=SafeNamespace)
    return env


# ---------------------------------------------------------------------------------------------
# what the template sees
# ---------------------------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """A copy built from JSON types only: str/int/float subclasses (enums, numpy scalars) become
    their base type, mappings/lists/tuples/dataclasses/pydantic models are rebuilt, and any other
    object (an image, an array) becomes the inert string "<TypeName>"."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain(value.model_dump())
    return f"<{type(value).__name__}>"


def normalize_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """transformers' message clean-up for processors (see the module doc)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise UserError(f"a chat must be a list of messages, not {type(messages).__name__}")
    out = []
    for index, message in enumerate(messages):
        if dataclasses.is_dataclass(message) and not isinstance(message, type):
            message = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
        elif callable(getattr(message, "model_dump", None)):
            message = message.model_dump()
        if not isinstance(message, Mapping):
            raise UserError(f"message {index} of the chat is a {type(message).__name__}, not a dict")
        message = {key: value for key, value in message.items() if value is not None}
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "image_url" and "image_url" in part:
                    url = part["image_url"]
                    parts.append({"type": "image", "url": url.get("url", "") if isinstance(url, Mapping) else url})
                else:
                    parts.append(part)
            message["content"] = parts
        message = plain(message)
        reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


# ---------------------------------------------------------------------------------------------
# the template
# ---------------------------------------------------------------------------------------------
class ChatTemplate:
    """One compiled chat template; `render` equals transformers' `apply_chat_template(...,
    tokenize=False)` for the same messages and special tokens."""

    def __init__(self, source: str, origin: str = "the chat template"):
        if not isinstance(source, str) or not source:
            raise UserError(f"{origin} is empty")
        self.source, self.origin = source, origin
        try:
            self.template = environment().from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise UserError(f"{origin} is broken (line {exc.lineno}): {one_line(exc)}") from None
        except jinja2.exceptions.TemplateError as exc:
            raise UserError(f"{origin} is broken: {one_line(exc)}") from None

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "ChatTemplate":
        found = find_template(Path(path))
        if found is None:
            raise UserError(f"{path} has no chat template (chat_template.jinja, chat_template.json, or a "
                            "\"chat_template\" entry in processor_config.json / tokenizer_config.json)")
        source, origin = found
        return cls(source, f"the chat template in {origin}")

    def render(self, messages: Sequence[Any], *, add_generation_prompt: bool = False,
               special_tokens: Mapping[str, str] | None = None, **variables: Any) -> str:
        chat = normalize_messages(messages)
        context = plain({**(special_tokens or {}), **variables})
        try:
            return self.template.render(messages=chat, tools=None, documents=None,
                                        add_generation_prompt=add_generation_prompt, **context)
        except jinja2.exceptions.TemplateError as exc:
            raise UserError(f"{self.origin} refused the chat: {one_line(exc)}") from None
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, ZeroDivisionError) as exc:
            raise UserError(f"{self.origin} failed on this chat: {type(exc).__name__}: {one_line(exc)}") from None


def _default_of(value: Any) -> str | None:
    """A template entry: a string, {"default": ...}, or [{"name": ..., "template": ...}]."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        value = {item.get("name"): item.get("template") for item in value if isinstance(item, Mapping)}
    if isinstance(value, Mapping) and isinstance(value.get("default"), str):
        return value["default"]
    return None


def _json_entry(file: Path) -> Any:
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file} is not readable JSON: {one_line(exc)}") from None
    return data.get("chat_template") if isinstance(data, dict) else None


def find_template(folder: Path) -> tuple[str, Path] | None:
    """(template text, file it came from) in transformers' order of precedence, else None."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    for name in ("processor_config.json", "chat_template.json"):
        entry = _json_entry(folder / name)
        if entry is not None:
            text = _default_of(entry)
            if text is None:
                raise UserError(f"{folder / name}: its chat_template has no \"default\" template")
            return text, folder / name
    for file in (folder / "chat_template.jinja", folder / "chat_templates" / "default.jinja"):
        if file.is_file():
            try:
                return file.read_text(encoding="utf-8"), file
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"cannot read {file}: {one_line(exc)}") from None
    entry = _json_entry(folder / "tokenizer_config.json")
    if entry is not None:
        text = _default_of(entry)
        if text is None:
            raise UserError(f"{folder / 'tokenizer_config.json'}: its chat_template has no \"default\" template")
        return text, folder / "tokenizer_config.json"
    return None
