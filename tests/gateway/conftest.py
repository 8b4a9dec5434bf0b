"""Gateway fixtures: Ollama doubles and gateways as real processes."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.observability.access_log import ACCESS_LOGGER
from gateway.observability.logs import JsonFormatter
from testkit.ollama import OllamaDoubleControl, running_ollama_double
from testkit.processes import Service
from tests.support.gateway import ADMIN_KEY, running_gateway

MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def double() -> Iterator[Service]:
    with running_ollama_double(tokens=8) as service:
        yield service


@pytest.fixture
def control(double: Service) -> Iterator[OllamaDoubleControl]:
    ctl = OllamaDoubleControl(double.url)
    ctl.reset()
    yield ctl
    ctl.reset()


@pytest.fixture(scope="module")
def gateway(double: Service) -> Iterator[Service]:
    with running_gateway(
        [("ollama", double.url)],
        env={"GATEWAY_MAX_BODY_BYTES": "65536", "GATEWAY_FIRST_TOKEN_TIMEOUT_S": "2", "GATEWAY_TOTAL_TIMEOUT_S": "5"},
    ) as service:
        yield service


@pytest.fixture
def client(gateway: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=20)


@pytest.fixture
def aclient(gateway: Service) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=20)


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    """A fresh RSA key pair (private PEM, public PEM) for forging and verifying RS256 tokens."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return pem, public


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """What the access logger writes, formatted by the gateway's JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
