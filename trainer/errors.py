"""The trainer's exceptions. The CLI turns every `TrainerError` into one clear line and exit code 2;
anything else is a bug and keeps its traceback.

    TrainerError
     +-- ConfigError        the YAML file or a CLI override is wrong
     +-- DataError          the JSONL data cannot be trained on (empty, all rows invalid, ...)
     +-- BackendError       the requested training backend cannot run here (no CUDA, no Unsloth)
     +-- StageOrderError    a stage needs the output of an earlier one that has not run
     +-- ExportError        conversion or quantisation to GGUF failed
     +-- GateRefused        the tuned model did not beat the base model by the configured margin
     +-- PushError          Ollama refused or could not be reached after retries
     +-- DeployError        the gateway refused the route change (the version stays pushed in Ollama)
"""

from __future__ import annotations


class TrainerError(Exception):
    """A user-facing failure: the message says what is wrong and how to fix it."""


class ConfigError(TrainerError):
    pass


class DataError(TrainerError):
    pass


class BackendError(TrainerError):
    pass


class StageOrderError(TrainerError):
    pass


class ExportError(TrainerError):
    pass


class GateRefused(TrainerError):
    pass


class PushError(TrainerError):
    pass


class DeployError(TrainerError):
    pass
