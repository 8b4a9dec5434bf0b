"""The llama.cpp adapter driver against a real llama-server (built from the pinned sdist) holding the
SmolLM2 base and two LoRA adapters: the gateway maps registered adapters to the server's adapter ids
by file name or digest and sends each request with exactly the chosen adapter applied; a route splits
its users between two versions of one adapter on that one server."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.model_routes.assign import bucket, choose
from gateway.model_routes.spec import RouteSpec
from testkit.llama import SMOLLM2_ALIAS, smollm2_gguf
from testkit.processes import Service, wait_until
from tests.support.gateway import ADMIN_KEY, running_gateway
from tests.support.llama_cpp_server import start_llama_cpp
from tests.support.lora_gguf import write_random_lora

pytestmark = pytest.mark.slow  # a real llama-server with SmolLM2
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
PROMPT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    beta = write_random_lora(folder / "beta.gguf", seed=2)
    named = beta.rename(folder / f"beta-{sha256(beta)[:8]}.gguf")  # the name holds the digest, as push names it
    return {"alpha": write_random_lora(folder / "alpha.gguf", seed=1), "beta": named}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def server(files) -> Iterator[Service]:
    service = start_llama_cpp(smollm2_gguf(), alias=SMOLLM2_ALIAS, loras=[files["alpha"], files["beta"]])
    yield service
    service.stop()


@pytest.fixture(scope="module")
def gateway(server, files) -> Iterator[Service]:
    with running_gateway([{"kind": "llamacpp", "url": server.url, "name": "llamacpp"}]) as service:
        records = {
            # by file name (the path as the server sees it may differ: only the name is compared)
            "alpha": {"digest": sha256(files["alpha"]), "files": {"gguf": "/elsewhere/alpha.gguf"}},
            # by digest: a file name holding the short digest
            "beta": {"digest": sha256(files["beta"]), "files": {"gguf": "/adapters/another-name.gguf"}},
            "other-base": {"digest": "cd" * 32, "files": {"gguf": "/elsewhere/alpha.gguf"}, "base": "llama3.2:1b"},
        }
        for name, record in records.items():
            body = {"base": SMOLLM2_ALIAS, "version": 1, **record}
            assert httpx.put(f"{service.url}/admin/adapters/{name}", json=body, headers=ADMIN).status_code == 200
        yield service


def direct(server: Service, lora: list[dict] | None) -> str:
    body = {"model": SMOLLM2_ALIAS, "messages": PROMPT, "temperature": 0, "max_tokens": 12}
    if lora is not None:
        body["lora"] = lora
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def via_gateway(gateway: Service, model: str) -> str:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)
    answer = client.chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=12)
    assert answer.model == model
    return answer.choices[0].message.content


def test_the_server_applies_every_adapter_unless_the_request_lists_them(server):
    """The measured behaviour the driver is built on (see gateway/backends/llamacpp.py)."""
    base = direct(server, [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}])
    assert direct(server, None) != base  # no `lora` field: both adapters applied
    assert direct(server, [{"id": 0, "scale": 1.0}]) == direct(
        server, [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}]
    )


def test_each_adapter_is_served_alone_and_the_base_with_none(gateway, server):
    wait_until(
        lambda: (
            {"alpha", "beta"} <= {m["id"] for m in httpx.get(gateway.url + "/v1/models", headers=ADMIN).json()["data"]}
        ),
        timeout=15,
        what="adapters routed",
    )
    alpha = direct(server, [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}])
    beta = direct(server, [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}])
    base = direct(server, [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}])
    assert len({alpha, beta, base}) == 3  # the adapters really change the answer
    assert via_gateway(gateway, "alpha") == alpha
    assert via_gateway(gateway, "beta") == beta
    assert via_gateway(gateway, SMOLLM2_ALIAS) == base
    assert via_gateway(gateway, "alpha") == alpha  # alternating keeps each request's own adapter


def test_streams_carry_the_adapter_and_its_public_name(gateway, server):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)
    chunks = list(
        client.chat.completions.create(model="beta", messages=PROMPT, temperature=0, max_tokens=12, stream=True)
    )
    assert {c.model for c in chunks} == {"beta"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct(server, [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}])


def test_an_adapter_of_another_base_or_not_loaded_is_not_routed_here(gateway):
    models = {m["id"] for m in httpx.get(gateway.url + "/v1/models", headers=ADMIN).json()["data"]}
    assert "other-base" not in models
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=30)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other-base", messages=PROMPT)


def test_a_client_cannot_pick_adapters_itself(gateway, server):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=SMOLLM2_ALIAS,
            messages=PROMPT,
            temperature=0,
            max_tokens=12,
            extra_body={"lora": [{"id": 0, "scale": 1.0}]},
        )
    assert refused.value.body["param"] == "lora"  # type: ignore[index]
    answer = client.chat.completions.create(model=SMOLLM2_ALIAS, messages=PROMPT, temperature=0, max_tokens=12)
    assert answer.choices[0].message.content == direct(server, [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}])


def lora_of_last_request(server: Service) -> list[dict]:
    """The `lora` field of the last request the server ran, as its /slots monitor shows it."""
    slots = [s for s in httpx.get(server.url + "/slots", timeout=10).json() if "id_task" in s]
    latest = max(slots, key=lambda s: s["id_task"])
    return sorted(latest["params"]["lora"], key=lambda e: e["id"])


def base_mapped_bytes(server: Service, model: Path) -> int:
    """How much of the base GGUF file the server process maps (llama.cpp mmaps the weights)."""
    assert server.proc is not None
    total = 0
    for line in Path(f"/proc/{server.proc.pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]) == model.resolve():
            start, end = (int(x, 16) for x in fields[0].split("-"))
            total += end - start
    return total


def test_two_versions_of_one_adapter_split_a_route_on_one_server(gateway, server, files):
    """v1 and v2 of `support` (the alpha and beta files) on one llama-server: each user stays on a variant,
    each answer comes from that variant's adapter alone, and the one process maps the base model once."""
    for version, path in ((1, files["alpha"]), (2, files["beta"])):
        body = {
            "base": SMOLLM2_ALIAS,
            "version": version,
            "digest": sha256(path),
            "files": {"gguf": f"/adapters/{path.name}"},
        }
        put = httpx.put(f"{gateway.url}/admin/adapters/support:v{version}", json=body, headers=ADMIN)
        assert put.status_code == 200, put.text
    route = {
        "variants": [
            {"model": SMOLLM2_ALIAS, "adapter": "support:v1", "weight": 50},
            {"model": SMOLLM2_ALIAS, "adapter": "support:v2", "weight": 50},
        ]
    }
    assert httpx.put(f"{gateway.url}/admin/routes/support", json=route, headers=ADMIN, timeout=30).status_code == 200
    ids = {Path(e["path"]).name: e["id"] for e in httpx.get(server.url + "/lora-adapters", timeout=10).json()}
    chosen = {"support:v1": ids[files["alpha"].name], "support:v2": ids[files["beta"].name]}
    lora = {
        variant: [{"id": i, "scale": 1.0 if i == own else 0.0} for i in sorted(ids.values())]
        for variant, own in chosen.items()
    }
    expected = {variant: direct(server, entries) for variant, entries in lora.items()}
    assert expected["support:v1"] != expected["support:v2"]

    spec, seen = RouteSpec.model_validate(route), Counter()
    for user in (f"user-{i}" for i in range(12)):
        body = {"model": "support", "user": user, "messages": PROMPT, "temperature": 0, "max_tokens": 12}
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=ADMIN, timeout=120)
        assert answer.status_code == 200, answer.text
        variant = answer.headers["X-Model-Variant"]
        assert variant == choose(spec, bucket("support", user)).served
        assert answer.json()["choices"][0]["message"]["content"] == expected[variant]
        assert lora_of_last_request(server) == lora[variant]  # what the server was sent: this adapter alone
        seen[variant] += 1
    assert set(seen) == {"support:v1", "support:v2"}

    owners = {m["id"]: m["owned_by"] for m in httpx.get(gateway.url + "/v1/models", headers=ADMIN).json()["data"]}
    assert owners["support:v1"] == owners["support:v2"] == "llamacpp"  # one replica serves both versions
    size = smollm2_gguf().stat().st_size  # the weights are mapped from the file (less its header), once
    assert 0.9 * size < base_mapped_bytes(server, smollm2_gguf()) <= size + 4096
