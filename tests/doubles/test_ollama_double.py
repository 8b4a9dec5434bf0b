"""The Ollama double, driven by the real `ollama` client (sync and async) and plain httpx.

Fault knobs and the /v1 layer are in test_ollama_double_faults.py and test_ollama_double_openai.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import httpx
import jsonschema
import pytest

import ollama
from testkit.ollama import OllamaDoubleControl
from testkit.processes import Service
from tests.doubles.conftest import MODEL, QUESTION, TOKENS, smollm2_gguf, write_tiny_gguf
from tests.doubles.ollama_text import WORDS, count_prompt_tokens


@pytest.fixture
def aclient(double: Service, control: OllamaDoubleControl) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=double.url, timeout=10)


def words_of(text: str) -> list[str]:
    return text.split()


# --- chat and generate -------------------------------------------------------------------------


def test_chat_answers_deterministic_words_with_ollama_counters(client: ollama.Client) -> None:
    first = client.chat(model=MODEL, messages=QUESTION)
    again = client.chat(model=MODEL, messages=QUESTION)

    assert first.done is True and first.done_reason == "stop"
    assert first.message.role == "assistant"
    assert len(words_of(first.message.content)) == TOKENS
    assert set(words_of(first.message.content)) <= set(WORDS)
    assert again.message.content == first.message.content
    assert first.eval_count == TOKENS
    # the double renders a chat as "role: content" lines and counts ceil(chars / 4) tokens
    assert first.prompt_eval_count == math.ceil(len("user: Why is the sky blue?") / 4)
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(first[name], int) and first[name] > 0, name


def test_answers_differ_by_prompt_model_and_seed(client: ollama.Client) -> None:
    base = client.generate(model=MODEL, prompt="one").response
    assert client.generate(model=MODEL, prompt="two").response != base
    assert client.generate(model="llama3.2:1b", prompt="one").response != base
    assert client.generate(model=MODEL, prompt="one", options={"seed": 7}).response != base


def test_chat_stream_is_one_chunk_per_token_then_a_final_line(client: ollama.Client) -> None:
    chunks = list(client.chat(model=MODEL, messages=QUESTION, stream=True))

    *tokens, last = chunks
    assert len(tokens) == TOKENS
    assert all(c.done is False and c.message.content.strip() in WORDS for c in tokens)
    assert last.done is True and last.message.content == "" and last.done_reason == "stop"
    assert last.eval_count == TOKENS and last.prompt_eval_count > 0 and last.total_duration > 0
    whole = client.chat(model=MODEL, messages=QUESTION).message.content
    assert "".join(c.message.content for c in tokens) == whole


def test_generate_stream_and_whole_answer_agree(client: ollama.Client) -> None:
    parts = list(client.generate(model=MODEL, prompt="Tell me a story", stream=True))
    whole = client.generate(model=MODEL, prompt="Tell me a story")

    assert [p.done for p in parts] == [False] * TOKENS + [True]
    assert "".join(p.response for p in parts) == whole.response
    assert whole.done_reason == "stop" and whole.eval_count == TOKENS
    assert whole.prompt_eval_count == count_prompt_tokens("Tell me a story")


def test_raw_ndjson_stream_has_ollama_fields(double: Service, control: OllamaDoubleControl) -> None:
    with httpx.stream("POST", f"{double.url}/api/generate", json={"model": MODEL, "prompt": "hi"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert {"model", "created_at", "response", "done"} <= set(lines[0])
    assert lines[0]["created_at"].endswith("Z")
    final = lines[-1]
    for key in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
        "done_reason",
    ):
        assert key in final, key


@pytest.mark.parametrize("limit", [1, 5, TOKENS - 1])
def test_num_predict_caps_tokens_and_says_length(client: ollama.Client, limit: int) -> None:
    reply = client.generate(model=MODEL, prompt="long answer please", options={"num_predict": limit})
    assert len(words_of(reply.response)) == limit
    assert reply.eval_count == limit and reply.done_reason == "length"
    streamed = list(client.chat(model=MODEL, messages=QUESTION, options={"num_predict": limit}, stream=True))
    assert len(streamed) == limit + 1 and streamed[-1].done_reason == "length"


def test_num_predict_above_the_natural_length_stops_normally(client: ollama.Client) -> None:
    reply = client.generate(model=MODEL, prompt="short", options={"num_predict": TOKENS + 10})
    assert reply.eval_count == TOKENS and reply.done_reason == "stop"


def test_stop_option_cuts_before_the_stop_word(client: ollama.Client) -> None:
    full = words_of(client.generate(model=MODEL, prompt="stop test").response)
    cut = client.generate(model=MODEL, prompt="stop test", options={"stop": [full[3]]})
    assert words_of(cut.response) == full[: full.index(full[3])]
    assert cut.done_reason == "stop"


@pytest.mark.parametrize("limit", [None, 3])
def test_format_json_gives_valid_json(client: ollama.Client, limit: int | None) -> None:
    options = {"num_predict": limit} if limit else None
    chat = client.chat(model=MODEL, messages=QUESTION, format="json", options=options)
    gen = client.generate(model=MODEL, prompt="json please", format="json", stream=True, options=options)
    assert isinstance(json.loads(chat.message.content), dict)
    assert isinstance(json.loads("".join(part.response for part in gen)), dict)


def test_format_schema_gives_matching_json(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "required": ["age", "available", "name", "tags"],
        "properties": {
            "age": {"type": "integer"},
            "available": {"type": "boolean"},
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "mood": {"enum": ["happy", "sad"]},
        },
    }
    reply = client.chat(model=MODEL, messages=QUESTION, format=schema)
    jsonschema.validate(json.loads(reply.message.content), schema)


def test_think_off_has_no_thinking_and_think_on_has_some(client: ollama.Client) -> None:
    off = client.chat(model=MODEL, messages=QUESTION, think=False)
    on = client.chat(model=MODEL, messages=QUESTION, think=True)
    assert not off.message.thinking
    assert on.message.thinking
    assert on.message.content == off.message.content


def test_options_and_fields_sent_are_recorded(client: ollama.Client, control: OllamaDoubleControl) -> None:
    client.chat(model=MODEL, messages=QUESTION, options={"temperature": 0.25}, keep_alive="1m")
    body = control.last_body("/api/chat")
    assert body["options"] == {"temperature": 0.25}
    assert body["keep_alive"] == "1m" and body["messages"] == QUESTION
    assert control.calls("/api/chat") == 1


def test_empty_messages_load_the_model_and_keep_alive_zero_unloads(client: ollama.Client) -> None:
    loaded = client.chat(model=MODEL, messages=[])
    assert loaded.done and loaded.done_reason == "load" and loaded.message.content == ""
    assert [m.model for m in client.ps().models] == [MODEL]
    unloaded = client.generate(model=MODEL, keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert client.ps().models == []


# --- errors ------------------------------------------------------------------------------------


def test_unknown_model_is_404_with_ollamas_message(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="nope:7b", messages=QUESTION)
    assert err.value.status_code == 404
    assert err.value.error == 'model "nope:7b" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as err:
        list(client.generate(model="nope", prompt="x", stream=True))
    assert err.value.status_code == 404


@pytest.mark.parametrize(
    "path,body,fragment",
    [
        ("/api/chat", b"{not json", "invalid JSON"),
        ("/api/chat", b"", "missing request body"),
        ("/api/chat", b"[1, 2]", "JSON object"),
        ("/api/chat", json.dumps({"messages": QUESTION}).encode(), "model is required"),
        ("/api/chat", json.dumps({"model": MODEL, "messages": "hi"}).encode(), "messages"),
        ("/api/generate", json.dumps({"model": MODEL, "prompt": 5}).encode(), "prompt"),
        (
            "/api/generate",
            json.dumps({"model": MODEL, "prompt": "x", "options": {"num_predict": "9"}}).encode(),
            "num_predict",
        ),
        ("/api/generate", json.dumps({"model": MODEL, "prompt": "x", "format": "yaml"}).encode(), "format"),
        ("/api/embed", json.dumps({"model": MODEL, "input": [1, 2]}).encode(), "input"),
    ],
)
def test_bad_bodies_are_400_with_a_readable_error(
    double: Service, control: OllamaDoubleControl, path: str, body: bytes, fragment: str
) -> None:
    response = httpx.post(double.url + path, content=body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


# --- embeddings --------------------------------------------------------------------------------


def test_embed_is_deterministic_normalised_and_counts_tokens(client: ollama.Client) -> None:
    one = client.embed(model=MODEL, input="Why is the sky blue?")
    many = client.embed(model=MODEL, input=["Why is the sky blue?", "Why is the grass green?"])

    assert len(one.embeddings) == 1 and len(many.embeddings) == 2
    assert many.embeddings[0] == one.embeddings[0]
    assert many.embeddings[1] != many.embeddings[0]
    assert math.isclose(sum(v * v for v in one.embeddings[0]), 1.0, rel_tol=1e-9)
    assert one.prompt_eval_count == count_prompt_tokens("Why is the sky blue?")
    assert client.embed(model=MODEL, input="x", dimensions=8).embeddings[0].__len__() == 8


def test_legacy_embeddings_endpoint(client: ollama.Client) -> None:
    legacy = client.embeddings(model=MODEL, prompt="Here is an article about llamas")
    modern = client.embed(model=MODEL, input="Here is an article about llamas")
    assert list(legacy.embedding) == list(modern.embeddings[0])


# --- models: list, ps, show, version ------------------------------------------------------------


def test_list_shows_start_models_with_details(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert set(models) == {"smollm2:135m", "llama3.2:1b"}
    small = models["smollm2:135m"]
    assert small.size > 0 and len(small.digest) == 64 and small.modified_at is not None
    assert small.details.format == "gguf" and small.details.parameter_size == "135M"
    assert small.details.family and small.details.quantization_level


def test_ps_lists_models_after_use(client: ollama.Client) -> None:
    assert client.ps().models == []
    client.generate(model="llama3.2:1b", prompt="warm up")
    running = client.ps().models
    assert [m.model for m in running] == ["llama3.2:1b"]
    assert running[0].expires_at is not None and running[0].size_vram == running[0].size


def test_show_describes_a_start_model(client: ollama.Client) -> None:
    info = client.show(MODEL)
    assert info.details.parameter_size == "135M" and info.template
    assert info.modelfile.startswith("# Modelfile generated by")
    assert "completion" in info.capabilities and info.modelinfo["general.architecture"]
    with pytest.raises(ollama.ResponseError) as err:
        client.show("missing:1b")
    assert err.value.status_code == 404


def test_version_and_root(double: Service, control: OllamaDoubleControl) -> None:
    # ollama-python 0.6 has no version() method; the endpoint is plain GET
    version = httpx.get(f"{double.url}/api/version").json()["version"]
    assert [int(p) for p in version.split(".")] >= [0, 12, 0]
    assert httpx.get(double.url + "/").text == "Ollama is running"


# --- blobs and create --------------------------------------------------------------------------


def test_blob_head_and_upload_check_the_digest(double: Service, control: OllamaDoubleControl, tmp_path: Path) -> None:
    data = b"adapter weights"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.head(f"{double.url}/api/blobs/{digest}").status_code == 404
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    bad = httpx.post(f"{double.url}/api/blobs/{wrong}", content=data)
    assert bad.status_code == 400 and "digest mismatch" in bad.json()["error"]
    assert httpx.head(f"{double.url}/api/blobs/{wrong}").status_code == 404
    assert httpx.post(f"{double.url}/api/blobs/{digest}", content=data).status_code == 201
    assert httpx.head(f"{double.url}/api/blobs/{digest}").status_code == 200
    assert httpx.post(f"{double.url}/api/blobs/sha256:xyz", content=data).status_code == 400
    assert control.stats()["blobs"] == {digest: len(data)}


def test_create_from_uploaded_gguf_then_use_it(
    client: ollama.Client, control: OllamaDoubleControl, tmp_path: Path
) -> None:
    gguf = write_tiny_gguf(tmp_path / "model.gguf", architecture="llama", size_label="135M", file_type=3)
    digest = client.create_blob(gguf)
    assert digest == "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()

    statuses = [
        p.status
        for p in client.create(
            model="tuned:v1",
            files={"model.gguf": digest},
            template="{{ .Prompt }}",
            system="You are terse.",
            parameters={"temperature": 0.2, "stop": ["<|im_end|>"]},
            license="Apache-2.0",
            stream=True,
        )
    ]
    assert statuses[0] == "parsing GGUF" and statuses[-1] == "success"
    assert f"using existing layer {digest}" in statuses and "writing manifest" in statuses

    listed = {m.model: m for m in client.list().models}
    assert listed["tuned:v1"].details.family == "llama"
    assert listed["tuned:v1"].details.quantization_level == "Q4_1"
    info = client.show("tuned:v1")
    assert info.template == "{{ .Prompt }}" and info.license == "Apache-2.0"
    assert "temperature" in info.parameters and '"<|im_end|>"' in info.parameters
    assert 'SYSTEM """You are terse."""' in info.modelfile
    created = control.stats()["created"]["tuned:v1"]
    assert created["files"] == {"model.gguf": digest} and created["system"] == "You are terse."
    # the created model answers, and its default system prompt is part of what it reads
    with_system = client.chat(model="tuned:v1", messages=QUESTION)
    plain = client.chat(model=MODEL, messages=QUESTION)
    assert with_system.prompt_eval_count > plain.prompt_eval_count


def test_create_from_the_real_smollm2_gguf(client: ollama.Client, control: OllamaDoubleControl) -> None:
    gguf = smollm2_gguf()
    digest = client.create_blob(gguf)
    assert control.stats()["blobs"] == {digest: gguf.stat().st_size}
    assert client.create(model="smol-tuned:1", files={gguf.name: digest}, stream=False).status == "success"
    details = client.show("smol-tuned:1").details
    assert (details.family, details.parameter_size, details.quantization_level) == ("llama", "135M", "Q4_1")


def test_create_from_a_model_with_adapter_and_quantize(client: ollama.Client, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter.gguf"
    write_tiny_gguf(adapter, file_type=1)
    digest = client.create_blob(adapter)
    done = client.create(
        model="with-lora",
        from_=MODEL,
        adapters={"adapter.gguf": digest},
        quantize="q4_K_M",
        messages=[{"role": "user", "content": "hello"}],
        stream=False,
    )
    assert done.status == "success"
    details = {m.model: m for m in client.list().models}["with-lora:latest"].details
    assert details.parent_model == MODEL and details.quantization_level == "Q4_K_M"


def test_create_with_a_blob_never_uploaded_fails(client: ollama.Client) -> None:
    missing = "sha256:" + "0" * 64
    with pytest.raises(ollama.ResponseError, match="never uploaded"):
        list(client.create(model="broken", files={"model.gguf": missing}, stream=True))
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="broken", files={"model.gguf": missing}, stream=False)
    assert err.value.status_code == 400
    assert "broken:latest" not in {m.model for m in client.list().models}


def test_create_rejects_a_file_that_is_not_gguf(client: ollama.Client, tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    digest = client.create_blob(fake)
    with pytest.raises(ollama.ResponseError, match="invalid file magic"):
        client.create(model="fake", files={"model.gguf": digest}, stream=False)


def test_create_needs_from_or_files(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="empty", system="hi")
    assert err.value.status_code == 400 and "neither 'from' or 'files'" in err.value.error


def test_copy_and_delete(client: ollama.Client) -> None:
    assert client.copy(MODEL, "backup:1").status == "success"
    names = {m.model for m in client.list().models}
    assert {"backup:1", MODEL} <= names
    assert client.delete("backup:1").status == "success"
    assert "backup:1" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("backup:1")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.copy("absent:1", "other:1")
    assert err.value.status_code == 404


def test_pull_streams_progress_and_adds_the_model(client: ollama.Client) -> None:
    progress = list(client.pull("qwen2.5:0.5b", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    downloads = [p for p in progress if p.total]
    assert (
        downloads and all(p.completed <= p.total for p in downloads) and downloads[-1].completed == downloads[-1].total
    )
    assert "qwen2.5:0.5b" in {m.model for m in client.list().models}
    assert client.pull("tinyllama", stream=False).status == "success"
    assert client.generate(model="tinyllama:latest", prompt="hi").done


def test_reset_restores_the_start_state(client: ollama.Client, control: OllamaDoubleControl) -> None:
    client.copy(MODEL, "temp:1")
    client.chat(model=MODEL, messages=QUESTION)
    control.reset()
    assert {m.model for m in client.list().models} == {"smollm2:135m", "llama3.2:1b"}
    stats = control.stats()
    assert stats["calls"] == {"/api/tags": 1} and stats["created"] == {} and stats["loaded"] == []


# --- the async client --------------------------------------------------------------------------


async def test_async_client_chat_generate_and_stream(aclient: ollama.AsyncClient) -> None:
    reply = await aclient.chat(model=MODEL, messages=QUESTION)
    parts = [p async for p in await aclient.chat(model=MODEL, messages=QUESTION, stream=True)]
    assert "".join(p.message.content for p in parts) == reply.message.content
    gen = await aclient.generate(model=MODEL, prompt="async", options={"num_predict": 4})
    assert gen.eval_count == 4 and gen.done_reason == "length"


async def test_async_client_models_and_embeddings(aclient: ollama.AsyncClient, tmp_path: Path) -> None:
    digest = await aclient.create_blob(write_tiny_gguf(tmp_path / "m.gguf"))
    statuses = [p.status async for p in await aclient.create(model="async-made", files={"m.gguf": digest}, stream=True)]
    assert statuses[-1] == "success"
    assert "async-made:latest" in {m.model for m in (await aclient.list()).models}
    assert (await aclient.show("async-made")).details.parameter_size == "135M"
    embedded = await aclient.embed(model="async-made", input=["a", "b"])
    assert len(embedded.embeddings) == 2
    assert [m.model for m in (await aclient.ps()).models] == ["async-made:latest"]
    assert (await aclient.copy("async-made", "async-copy")).status == "success"
    assert (await aclient.delete("async-copy")).status == "success"
    assert (await aclient.pull("phi3:mini")).status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        await aclient.chat(model="ghost", messages=QUESTION)
    assert err.value.status_code == 404
