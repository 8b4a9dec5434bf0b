"""The Ollama chat template and stop tokens, derived from the tokenizer's own Jinja chat template.

No table of known model families: the Jinja template is rendered for a conversation of marker strings,
and the text around each marker gives that role's prefix and suffix, the generation prompt, and any
system prompt the template inserts by default. The result is written as a Go template (the form
Ollama's own templates use: `.System` plus a range over `.Messages`) and checked by rendering test
conversations both ways; a template that cannot be expressed like this is refused with a clear error
(set `ollama.template` by hand for it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainer.encoding import render
from trainer.errors import ExportError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_S, _U1, _A1, _U2, _A2 = "QXSYSTEMQX", "QXUSERONEQX", "QXASSISTANTONEQX", "QXUSERTWOQX", "QXASSISTANTTWOQX"


@dataclass(frozen=True)
class Wrap:
    prefix: str
    suffix: str


@dataclass(frozen=True)
class ChatFormat:
    system: Wrap
    user: Wrap
    assistant: Wrap
    generation_prompt: str
    default_system: str | None
    stops: list[str] = field(default_factory=list)

    def render(self, messages: list[dict[str, Any]]) -> str:
        """What the Go template produces for `messages` (ending with a user turn): used to verify it."""
        system = "".join(m["content"] for m in messages if m["role"] == "system")
        out = ""
        if system:
            out += self.system.prefix + system + self.system.suffix
        elif self.default_system is not None:
            out += self.system.prefix + self.default_system + self.system.suffix
        turns = [m for m in messages if m["role"] != "system"]
        for i, m in enumerate(turns):
            last = i == len(turns) - 1
            wrap = self.user if m["role"] == "user" else self.assistant
            out += wrap.prefix + m["content"] + (wrap.suffix if m["role"] == "user" or not last else "")
            if last and m["role"] != "assistant":
                out += self.generation_prompt
        return out

    def go_template(self) -> str:
        """Ollama's Go template; one line without whitespace trimming, so every character is literal."""
        lit = _literal
        system = f"{{{{ if .System }}}}{lit(self.system.prefix)}{{{{ .System }}}}{lit(self.system.suffix)}"
        if self.default_system is not None:
            system += f"{{{{ else }}}}{lit(self.system.prefix + self.default_system + self.system.suffix)}"
        system += "{{ end }}"
        turns = (
            "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
            f'{{{{ if eq .Role "user" }}}}{lit(self.user.prefix)}{{{{ .Content }}}}{lit(self.user.suffix)}'
            f'{{{{ else if eq .Role "assistant" }}}}{lit(self.assistant.prefix)}{{{{ .Content }}}}'
            f"{{{{ if not $last }}}}{lit(self.assistant.suffix)}{{{{ end }}}}{{{{ end }}}}"
            f'{{{{ if and $last (ne .Role "assistant") }}}}{lit(self.generation_prompt)}{{{{ end }}}}{{{{ end }}}}'
        )
        return system + turns


def _literal(text: str) -> str:
    # Go template text is literal except for action delimiters; quote those as a string action.
    return "{{ " + json.dumps(text) + " }}" if "{{" in text or "}}" in text else text


def _split(block: str, marker: str, what: str) -> Wrap:
    prefix, found, suffix = block.partition(marker)
    if not found:
        raise ExportError(f"the chat template drops or rewrites the {what} content; set ollama.template by hand")
    return Wrap(prefix, suffix)


def _without_bos(text: str, bos: str) -> str:
    return text[len(bos) :] if bos and text.startswith(bos) else text


def _stop_strings(tok: PreTrainedTokenizerBase, assistant_suffix: str) -> list[str]:
    """The end-of-turn special token(s) the assistant's turn ends with, plus EOS."""
    special = sorted({str(t) for t in tok.all_special_tokens} | set(tok.get_added_vocab()), key=len, reverse=True)
    stops = [t for t in special if t and t in assistant_suffix]
    if not stops and assistant_suffix.strip():
        stops.append(assistant_suffix.strip())
    if tok.eos_token and tok.eos_token not in stops:
        stops.append(tok.eos_token)
    return stops


def derive_chat_format(tok: PreTrainedTokenizerBase) -> ChatFormat:
    """Role wrappers, generation prompt, default system prompt and stop strings of the tokenizer's template."""
    # Ollama and llama.cpp add BOS themselves (per the GGUF), so a template that writes bos_token loses it here.
    bos = (tok.bos_token or "") if "bos_token" in (tok.chat_template or "") else ""
    conv = [
        {"role": "system", "content": _S},
        {"role": "user", "content": _U1},
        {"role": "assistant", "content": _A1},
        {"role": "user", "content": _U2},
        {"role": "assistant", "content": _A2},
    ]
    try:
        growing = [_without_bos(render(tok, conv[:k]), bos) for k in range(1, 6)]
        with_prompt = _without_bos(render(tok, conv[:2], generation_prompt=True), bos)
        user_only = _without_bos(render(tok, conv[1:2], generation_prompt=True), bos)
    except Exception as exc:  # noqa: BLE001 - a template is arbitrary Jinja: it may raise anything
        raise ExportError(
            f"cannot render the chat template with system/user/assistant turns ({exc}); set ollama.template by hand"
        ) from None
    blocks, previous = [], ""
    for text in growing:
        if not text.startswith(previous):
            raise ExportError(
                "the chat template rewrites earlier turns as the conversation grows; set ollama.template by hand"
            )
        blocks.append(text[len(previous) :])
        previous = text
    system, user, assistant = (
        _split(blocks[0], _S, "system"),
        _split(blocks[1], _U1, "user"),
        _split(blocks[2], _A1, "assistant"),
    )
    if (_split(blocks[3], _U2, "user"), _split(blocks[4], _A2, "assistant")) != (user, assistant):
        raise ExportError(
            "the chat template wraps turns differently later in a conversation; set ollama.template by hand"
        )
    if not with_prompt.startswith(growing[1]):
        raise ExportError(
            "the chat template's generation prompt is not appended at the end; set ollama.template by hand"
        )
    generation_prompt = with_prompt[len(growing[1]) :]
    default_block = user_only[: user_only.find(user.prefix + _U1)] if user.prefix + _U1 in user_only else None
    default_system = None
    if default_block:
        if not (default_block.startswith(system.prefix) and default_block.endswith(system.suffix)):
            raise ExportError("the chat template adds an unrecognised preamble; set ollama.template by hand")
        default_system = default_block[len(system.prefix) : len(default_block) - len(system.suffix)]
    fmt = ChatFormat(system, user, assistant, generation_prompt, default_system, _stop_strings(tok, assistant.suffix))
    _verify(fmt, tok)
    return fmt


def _verify(fmt: ChatFormat, tok: PreTrainedTokenizerBase) -> None:
    """The Go template must give the same prompt as the Jinja template for typical conversations."""
    s = {"role": "system", "content": "Be brief."}
    u1, a1, u2 = (
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
    )
    for conv in ([s, u1], [s, u1, a1, u2], [u1], [u1, a1, u2]):
        bos = (tok.bos_token or "") if "bos_token" in (tok.chat_template or "") else ""
        want = _without_bos(render(tok, conv, generation_prompt=True), bos)
        if fmt.render(conv) != want:
            raise ExportError(
                f"derived Ollama template does not reproduce the chat template for roles "
                f"{[m['role'] for m in conv]}; set ollama.template by hand"
            )


def modelfile_text(
    *, from_: str, template: str, system: str | None, parameters: dict[str, Any], adapter: str | None = None
) -> str:
    """A Modelfile equivalent to the API create request (for `ollama create -f` by hand)."""
    if '"""' in template or (system and '"""' in system):
        raise ExportError('template or system prompt contains """, which a Modelfile cannot quote')
    lines = [f"FROM {from_}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    for key, value in parameters.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {json.dumps(v) if isinstance(v, str) else v}")
    return "\n".join(lines) + "\n"
