"""Assistant-only labels, and the Ollama template derived from a tokenizer's Jinja chat template."""

from __future__ import annotations

import pytest

from tests.trainer.conftest import make_tokenizer
from trainer.encoding import IGNORE, encode_conversation, encode_prompt
from trainer.errors import ExportError
from trainer.modelfile import derive_chat_format, modelfile_text

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
NO_SYSTEM = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] "
    "+ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
MERGES_SYSTEM = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + "
    "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)


def test_only_assistant_tokens_carry_labels(chatml_tokenizer):
    tok = chatml_tokenizer
    enc = encode_conversation(tok, CONV)
    assert len(enc.labels) == len(enc.input_ids)
    labelled = [i for i, x in enumerate(enc.labels) if x != IGNORE]
    spans, start = [], labelled[0]
    for a, b in zip(labelled, labelled[1:] + [None], strict=False):
        if b != a + 1:
            spans.append(tok.decode(enc.input_ids[start : a + 1]))
            start = b
    # both assistant turns, each with its end-of-turn marker (so the model learns to stop), nothing else
    assert spans == ["Hello!<|im_end|>\n", "4<|im_end|>\n"]
    assert all(enc.labels[i] == enc.input_ids[i] for i in labelled)


def test_prompt_ends_with_the_generation_prompt(chatml_tokenizer):
    text = chatml_tokenizer.decode(encode_prompt(chatml_tokenizer, CONV))
    assert text.endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert "4<|im_end|>" not in text


@pytest.mark.parametrize(
    "template,bos,eos,specials,stop",
    [
        (None, None, "<|im_end|>", ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
        (
            LLAMA3,
            "<|begin_of_text|>",
            "<|end_of_text|>",
            ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            "<|eot_id|>",
        ),
        (ZEPHYR, None, "</s>", ("</s>",), "</s>"),
    ],
)
def test_template_is_derived_from_the_tokenizer_and_reproduces_it(template, bos, eos, specials, stop):
    kwargs = {"template": template} if template else {}
    tok = make_tokenizer(**kwargs, specials=specials, bos=bos, eos=eos)
    fmt = derive_chat_format(tok)
    assert stop in fmt.stops and eos in fmt.stops
    three_turns = CONV + [{"role": "user", "content": "and 3+3?"}]
    want = tok.apply_chat_template(three_turns, tokenize=False, add_generation_prompt=True)
    if bos and "bos_token" in tok.chat_template:
        want = want.removeprefix(bos)  # Ollama / llama.cpp add BOS from the GGUF metadata
    assert fmt.render(three_turns) == want
    go = fmt.go_template()
    assert go.count("{{ if") == go.count("{{ end }}") - go.count("{{ range")  # every if and range is closed
    assert "{{ .System }}" in go and "{{ .Content }}" in go and "{{-" not in go


def test_default_system_prompt_of_the_template_is_kept(chatml_tokenizer):
    fmt = derive_chat_format(chatml_tokenizer)
    assert fmt.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert "{{ else }}<|im_start|>system\nYou are a helpful" in fmt.go_template()


@pytest.mark.parametrize(
    "template,message",
    [(NO_SYSTEM, "System role not supported"), (MERGES_SYSTEM, "drops or rewrites the system content")],
)
def test_templates_that_cannot_be_expressed_are_refused_clearly(template, message):
    tok = make_tokenizer(
        template=template, specials=("<bos>", "<start_of_turn>", "<end_of_turn>", "</s>"), bos="<bos>", eos="</s>"
    )
    with pytest.raises(ExportError, match=message) as err:
        derive_chat_format(tok)
    assert "ollama.template" in str(err.value)


def test_modelfile_text(chatml_tokenizer):
    fmt = derive_chat_format(chatml_tokenizer)
    text = modelfile_text(
        from_="./model-q4_k_m.gguf",
        template=fmt.go_template(),
        system="Reply in JSON.",
        parameters={"temperature": 0, "stop": fmt.stops},
        adapter="./adapter.gguf",
    )
    lines = text.splitlines()
    assert lines[0] == "FROM ./model-q4_k_m.gguf" and lines[1] == "ADAPTER ./adapter.gguf"
    assert 'TEMPLATE """{{ if .System }}' in text and 'SYSTEM """Reply in JSON."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in lines and "PARAMETER temperature 0" in lines
    with pytest.raises(ExportError, match='"""'):
        modelfile_text(from_="x", template='say """', system=None, parameters={})
