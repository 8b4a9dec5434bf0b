# The model-sync image: `python -m trainer.sync` alone (the Ollama client, tqdm and dnspython; no PyTorch),
# which gives every Ollama replica the base model and every version in the trainer's registry.
# Build from the repository root: docker build -f trainer/sync.Dockerfile .

FROM python:3.11.13-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN pip install --no-compile ollama==0.6.3 tqdm==4.70.1 dnspython==2.9.2 \
    && groupadd --system --gid 10001 trainer \
    && useradd --system --uid 10001 --gid trainer --no-create-home --shell /usr/sbin/nologin trainer
WORKDIR /app
COPY trainer/__init__.py trainer/errors.py trainer/manifest.py trainer/ollama_replicas.py trainer/sync.py ./trainer/
USER 10001:10001
ENTRYPOINT ["python", "-m", "trainer.sync"]
