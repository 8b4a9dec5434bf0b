"""A client generated from the gateway's OpenAPI schema, used with no hand-written HTTP: a real gateway (Redis,
an Ollama double) is started, its /openapi.json is given to openapi-python-client (installed apart from the
project, e.g. `python -m venv /tmp/opc && /tmp/opc/bin/pip install openapi-python-client==0.29.1`), and the
generated package creates a key and a route, reads them back, refuses a bad one, and chats with the new key.

    python -m bench.client_demo --generator /tmp/opc/bin/openapi-python-client
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from testkit.api_fuzz import ADMIN_KEY, fuzz_stack

PACKAGE = "slm_stack_gateway_client"  # from the schema's title


def generate(schema: dict[str, Any], generator: str, out: Path) -> None:
    path = out / "openapi.json"
    path.write_text(json.dumps(schema))
    done = subprocess.run(
        [generator, "generate", "--path", str(path), "--meta", "none", "--overwrite"],
        cwd=out,
        capture_output=True,
        text=True,
        check=False,
    )
    warnings = [line for line in done.stdout.splitlines() if "Unable" in line or line.startswith("WARNING")]
    if done.returncode != 0 or warnings:
        raise SystemExit(f"the generator could not use the schema:\n{done.stdout}\n{done.stderr}")
    print(f"generated {PACKAGE} from the schema ({len(schema['paths'])} paths), no warnings")


def demo(url: str) -> None:
    client_mod = importlib.import_module(f"{PACKAGE}.client")
    models = importlib.import_module(f"{PACKAGE}.models")
    api = lambda name: importlib.import_module(f"{PACKAGE}.api.{name}")
    admin = client_mod.AuthenticatedClient(base_url=url, token=ADMIN_KEY)

    created = api("admin.create_key").sync(
        client=admin, body=models.CreateKeyBody(name="demo-bot", owner="demo", rpm=60, tpm=10_000)
    )
    print(
        f"create_key -> {type(created).__name__}: id={created.id} name={created.name} rpm={created.rpm} "
        f"tpm={created.tpm} key={created.key[:6]}..."
    )
    shown = api("admin.show_key").sync(key_id=created.id, client=admin)
    print(f"show_key   -> {type(shown).__name__}: id={shown.id} scopes={shown.scopes} revoked={shown.revoked}")

    spec = models.RouteSpec(variants=[models.Variant(model="smollm2:135m", weight=100)])
    route = api("admin.put_route").sync(name="demo-route", client=admin, body=spec)
    print(
        f"put_route  -> {type(route).__name__}: name={route.name} version={route.version} "
        f"variants={[(v.model, v.weight) for v in route.variants]}"
    )

    refused = api("admin.create_key").sync_detailed(client=admin, body=models.CreateKeyBody(name="too-big", tpm=10**20))
    error = refused.parsed
    print(
        f"create_key tpm=1e20 -> {refused.status_code.value} {type(error).__name__}: "
        f"param={error.error.param} message={error.error.message!r}"
    )

    user = client_mod.AuthenticatedClient(base_url=url, token=created.key)
    request = models.ChatCompletionRequest.from_dict(
        {"model": "demo-route", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    )
    answer = api("inference.chat_completions").sync_detailed(client=user, body=request)
    print(
        f"chat_completions (new key, route) -> {answer.status_code.value}: "
        f"{json.loads(answer.content)['choices'][0]['message']['content']!r}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="openapi-python-client", help="the openapi-python-client command")
    args = parser.parse_args(argv)
    with fuzz_stack() as url, tempfile.TemporaryDirectory(prefix="client-demo-") as out:
        schema = httpx.get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
        generate(schema, args.generator, Path(out))
        sys.path.insert(0, out)
        demo(url)


if __name__ == "__main__":
    main()
