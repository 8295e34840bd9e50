"""Chat templates: how a conversation becomes text, and which characters the draft learns from.

Two kinds of template render a conversation ``[{"role", "content"}, ...]`` (roles system/user/assistant)
into ``(text, spans)``, where ``spans`` are the ``[start, end)`` character ranges of the *assistant*
output (content plus its end-of-turn marker) -- the only text that gets ``loss_mask = 1``:

* a registry :class:`ChatTemplate` (the seed's API) renders header strings + content + end token::

      TEMPLATE_REGISTRY.register(
          name="your-template-name",
          template=ChatTemplate(assistant_header="...", user_header="...",
                                system_prompt="...", end_of_turn_token="..."),
      )

* ``auto`` (:class:`AutoChatTemplate`) renders with the tokenizer's own Jinja chat template and finds
  the assistant spans by rendering prefixes of the conversation, so any HF chat model works without
  hand-written header strings.

Tokenisation and masks live in :mod:`specforge.data.preprocess`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from specforge.errors import SpecforgeError

ROLES = ("system", "user", "assistant")
Span = tuple[int, int]


class Renderer(Protocol):
    """Anything that turns messages into ``(text, assistant character spans)``."""

    def render(self, messages: Sequence[dict]) -> tuple[str, list[Span]]: ...


@dataclass(frozen=True)
class ChatTemplate:
    """A chat format given by header strings (the seed's ``ChatTemplate``).

    Rendering: ``bos_token``, then (when the first message is not a system message and
    ``system_prompt`` is set) a default system turn, then for each message
    ``header(role) + content + end_of_turn_token``. Assistant content and its ``end_of_turn_token``
    are the loss spans.

    ``system_header`` defaults to ``user_header`` with its last ``user`` replaced by ``system``,
    which is right for ChatML, Llama-3 and most header-style formats.
    """

    assistant_header: str
    user_header: str
    system_prompt: str | None
    end_of_turn_token: str
    system_header: str | None = None
    bos_token: str = ""

    def header(self, role: str) -> str:
        """The header string written before a message of ``role``."""
        if role == "assistant":
            return self.assistant_header
        if role == "user":
            return self.user_header
        if role == "system":
            if self.system_header is not None:
                return self.system_header
            head, sep, tail = self.user_header.rpartition("user")
            if not sep:
                raise SpecforgeError(
                    "this ChatTemplate has no system_header and its user_header contains no 'user' to "
                    "derive one from; pass system_header=... when registering it."
                )
            return head + "system" + tail
        raise SpecforgeError(f"unknown role '{role}'; roles must be one of {', '.join(ROLES)}.")

    def render(self, messages: Sequence[dict]) -> tuple[str, list[Span]]:
        """Render messages; return ``(text, spans)`` with spans the assistant output char ranges."""
        parts: list[str] = [self.bos_token]
        pos = len(self.bos_token)
        spans: list[Span] = []
        if self.system_prompt and (not messages or messages[0]["role"] != "system"):
            piece = self.header("system") + self.system_prompt + self.end_of_turn_token
            parts.append(piece)
            pos += len(piece)
        for m in messages:
            head = self.header(m["role"])
            body = m["content"] + self.end_of_turn_token
            parts.append(head)
            parts.append(body)
            pos += len(head)
            if m["role"] == "assistant" and m["content"].strip():  # an empty reply teaches nothing
                spans.append((pos, pos + len(body)))
            pos += len(body)
        return "".join(parts), spans


class AutoChatTemplate:
    """Render with ``tokenizer.apply_chat_template`` and derive assistant spans from prefixes.

    For the assistant message at index ``k``: its output starts where a unique sentinel placed as
    that message's content appears in the rendering of ``messages[:k] + [sentinel]`` (so the header is
    whatever the template writes, nothing hand-written), and ends at ``len(render(messages[:k+1]))``.
    Both prefixes must be prefixes of the full rendering; a template that rewrites earlier turns
    (e.g. one that strips reasoning from past turns) is rejected with a clear error.
    """

    SENTINEL = "\u2063SPECFORGE\u2063ASSISTANT\u2063SPAN\u2063"

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise SpecforgeError(
                "--chat-template auto needs a tokenizer with a chat template, and this one has none; "
                f"pass a registered template instead ({', '.join(TEMPLATE_REGISTRY.names())})."
            )
        self.tokenizer = tokenizer

    def _render(self, messages: Sequence[dict]) -> str:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False)

    def render(self, messages: Sequence[dict]) -> tuple[str, list[Span]]:
        """Render messages with the tokenizer's template; return ``(text, spans)``."""
        text = self._render(messages)
        spans: list[Span] = []
        for k, m in enumerate(messages):
            if m["role"] != "assistant" or not m["content"].strip():  # an empty reply teaches nothing
                continue
            probe = self._render([*messages[:k], {"role": "assistant", "content": self.SENTINEL}])
            start = probe.find(self.SENTINEL)
            upto = self._render(messages[: k + 1])
            if start < 0 or not text.startswith(probe[:start]) or not text.startswith(upto):
                raise SpecforgeError(
                    "--chat-template auto: this tokenizer's chat template renders earlier turns "
                    "differently depending on later ones, so assistant spans cannot be derived; "
                    f"register a ChatTemplate and pass its name ({', '.join(TEMPLATE_REGISTRY.names())})."
                )
            if len(upto) > start:
                spans.append((start, len(upto)))
        return text, spans


class TemplateRegistry:
    """Name -> :class:`ChatTemplate`; ``--chat-template NAME`` looks templates up here."""

    def __init__(self) -> None:
        self._templates: dict[str, ChatTemplate] = {}

    def register(self, name: str, template: ChatTemplate, override: bool = False) -> None:
        """Add ``template`` under ``name`` (a second registration of a name needs ``override=True``)."""
        if not isinstance(template, ChatTemplate):
            raise TypeError(f"template must be a ChatTemplate, got {type(template).__name__}")
        if name == "auto":
            raise SpecforgeError("'auto' is reserved for the tokenizer's own chat template; pick another name.")
        if name in self._templates and not override:
            raise SpecforgeError(f"chat template '{name}' is already registered; pass override=True to replace it.")
        self._templates[name] = template

    def get(self, name: str) -> ChatTemplate:
        """The template registered as ``name``; unknown names raise a :class:`SpecforgeError`."""
        try:
            return self._templates[name]
        except KeyError:
            raise SpecforgeError(
                f"unknown chat template '{name}'; known: auto, {', '.join(self.names())}."
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._templates)

    def __contains__(self, name: str) -> bool:
        return name in self._templates


TEMPLATE_REGISTRY = TemplateRegistry()

TEMPLATE_REGISTRY.register(
    name="llama3",
    template=ChatTemplate(
        assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        user_header="<|start_header_id|>user<|end_header_id|>\n\n",
        system_prompt="You are a helpful assistant.",
        end_of_turn_token="<|eot_id|>",
        bos_token="<|begin_of_text|>",
    ),
)
TEMPLATE_REGISTRY.register(
    name="qwen",
    template=ChatTemplate(
        assistant_header="<|im_start|>assistant\n",
        user_header="<|im_start|>user\n",
        system_prompt="You are a helpful assistant.",
        end_of_turn_token="<|im_end|>\n",
    ),
)
TEMPLATE_REGISTRY.register(
    name="chatml",
    template=ChatTemplate(
        assistant_header="<|im_start|>assistant\n",
        user_header="<|im_start|>user\n",
        system_prompt=None,
        end_of_turn_token="<|im_end|>\n",
    ),
)
# The default target (HuggingFaceTB/SmolLM2-135M-Instruct): ChatML with its built-in system prompt.
TEMPLATE_REGISTRY.register(
    name="smollm2",
    template=ChatTemplate(
        assistant_header="<|im_start|>assistant\n",
        user_header="<|im_start|>user\n",
        system_prompt="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        end_of_turn_token="<|im_end|>\n",
    ),
)


def get_renderer(chat_template: str | ChatTemplate, tokenizer=None) -> Renderer:
    """``"auto"`` -> :class:`AutoChatTemplate` over ``tokenizer``; a name -> the registry entry."""
    if isinstance(chat_template, ChatTemplate):
        return chat_template
    if chat_template == "auto":
        if tokenizer is None:
            raise SpecforgeError("--chat-template auto needs the target tokenizer.")
        return AutoChatTemplate(tokenizer)
    return TEMPLATE_REGISTRY.get(chat_template)


def template_identity(chat_template: str | ChatTemplate, tokenizer=None) -> dict:
    """A JSON-able description of a template that changes whenever its rendering would."""
    if isinstance(chat_template, ChatTemplate):
        return {"name": None, **dataclasses.asdict(chat_template)}
    if chat_template == "auto":
        return {"name": "auto", "jinja": getattr(tokenizer, "chat_template", None)}
    return {"name": chat_template, **dataclasses.asdict(TEMPLATE_REGISTRY.get(chat_template))}
