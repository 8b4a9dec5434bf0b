"""The run configuration: one YAML file, validated into typed models split by domain.

Every field has a description (`python -m trainer schema` prints them). Unknown keys are rejected
with their dotted path, so a typo never silently falls back to a default. Relative paths are
resolved against the YAML file's folder, so a config works from any working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.errors import ConfigError

Quantization = Literal["q8_0", "q4_k_m", "q4_0", "q5_k_m", "q6_k", "f16"]
TaskCheck = Literal["exact_match", "json_valid", "json_schema", "stops_on_eos"]


def secret_from_environment(name: str, error: type[Exception] = ConfigError) -> str | None:
    """`name`'s value, or the contents of the file `name_FILE` names (one trailing line break dropped: the
    convention of Docker secrets mounted at /run/secrets/...); None when neither is set. Both set, or the file
    unreadable or empty: `error` naming the variable."""
    value, path = os.environ.get(name, ""), os.environ.get(name + "_FILE", "")
    if value and path:
        raise error(f"${name} and ${name}_FILE are both set: give the key one way")
    if not path:
        return value or None
    try:
        text = Path(path).read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"${name}_FILE={path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if not text:
        raise error(f"${name}_FILE={path}: the file is empty")
    return text


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseModelConfig(_Section):
    source: str = Field(
        description="Base model: a hub id (needs the hub cache offline), a local Hugging Face folder, a .gguf file, "
        "or pkg://PACKAGE/FILE for a model file shipped inside an installed Python package."
    )
    chat_template: str | None = Field(
        default=None, description="Jinja chat template to use instead of the tokenizer's own (rarely needed)."
    )


class DataConfig(_Section):
    paths: list[Path] = Field(min_length=1, description="JSONL files of examples, one JSON object per line.")
    eval_paths: list[Path] = Field(
        default=[],
        description="JSONL files that are the held-out set, instead of a random split of `paths` "
        "(e.g. the `.heldout.jsonl` written by `python -m trainer dataset`); training rows with the same prompt "
        "as a held-out row are dropped, so the two never overlap.",
    )
    format: Literal["auto", "messages", "prompt_completion", "alpaca"] = Field(
        default="auto",
        description="Row format: chat `messages`, `prompt`/`completion`, alpaca "
        "`instruction`/`input`/`output`, or `auto` to detect it per row.",
    )
    system_prompt: str | None = Field(
        default=None, description="System prompt added to every example that has none; also the served model's SYSTEM."
    )
    max_seq_length: int = Field(
        default=512, ge=16, le=131072, description="Rows longer than this many tokens are reported and dropped."
    )
    eval_fraction: float = Field(
        default=0.1,
        gt=0.0,
        lt=0.9,
        description="Share of unique rows held out for evaluation (unused with eval_paths).",
    )
    min_eval_examples: int = Field(default=4, ge=1, description="Refuse to run with fewer held-out rows than this.")
    dedupe: bool = Field(default=True, description="Drop rows whose conversation repeats an earlier row exactly.")


class LoraConfig(_Section):
    r: int = Field(default=16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names of the linear layers that get adapters.",
    )


class TrainingConfig(_Section):
    backend: Literal["auto", "peft", "unsloth"] = Field(
        default="auto", description="auto = Unsloth when CUDA and Unsloth are present, else PEFT + transformers."
    )
    load_in_4bit: bool = Field(default=False, description="4-bit QLoRA (needs CUDA and bitsandbytes or Unsloth).")
    epochs: float = Field(
        default=1.0, gt=0, description="Passes over the training set (ignored when max_steps is set)."
    )
    max_steps: int | None = Field(default=None, ge=1, description="Optimizer steps to run; overrides epochs.")
    learning_rate: float = Field(default=2e-4, gt=0, lt=1, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear warm-up steps before the linear decay.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay on the adapter weights.")
    batch_size: int = Field(default=4, ge=1, description="Examples per micro-batch.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Micro-batches per optimizer step.")
    save_steps: int = Field(default=50, ge=1, description="Write a resumable checkpoint every this many steps.")
    logging_steps: int = Field(default=1, ge=1, description="Append the loss to train_log.jsonl every this many steps.")
    seed: int = Field(default=42, description="Seed for the split, adapter init, shuffling and dropout.")
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for memory (long sequences).")


class EvaluationConfig(_Section):
    checks: list[TaskCheck] = Field(
        default=["exact_match"], min_length=1, description="Task checks run on held-out prompts with greedy decoding."
    )
    primary_check: TaskCheck = Field(default="exact_match", description="The check whose score the gate compares.")
    json_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the answer must match (for the json_schema check)."
    )
    max_new_tokens: int = Field(default=128, ge=1, description="Generation cap per held-out prompt.")
    max_examples: int = Field(default=64, ge=1, description="Held-out prompts to generate for (loss uses all).")
    batch_size: int = Field(default=8, ge=1, description="Batch size for eval loss and generation.")
    baseline: str = Field(
        default="base",
        description="What the gate compares the new version with: `base` (the base model, in "
        "PyTorch, before export), or `route:NAME`, the variant deployed on gateway route NAME as well: after "
        "push, the new NAME:vN and the route's stable variant answer the same held-out rows through the "
        "gateway (greedy, the served quantised files), and the version goes on the `deploy` route only if it "
        "wins by gate.deployed_min_score_gain.",
    )

    @field_validator("baseline")
    @classmethod
    def _baseline_form(cls, v: str) -> str:
        if v != "base" and not re.fullmatch(r"route:[a-zA-Z0-9][a-zA-Z0-9._-]{0,99}", v):
            raise ValueError(f"must be `base` or `route:NAME` (a route on the gateway), got {v!r}")
        return v

    @property
    def baseline_route(self) -> str | None:
        """NAME of `route:NAME`, or None for the base model."""
        return self.baseline.removeprefix("route:") if self.baseline.startswith("route:") else None

    @model_validator(mode="after")
    def _schema_given(self) -> EvaluationConfig:
        if "json_schema" in (*self.checks, self.primary_check) and self.json_schema is None:
            raise ValueError("the json_schema check needs evaluation.json_schema")
        if self.primary_check not in self.checks:
            raise ValueError(f"primary_check {self.primary_check!r} must be one of checks {self.checks}")
        return self


class GateConfig(_Section):
    min_loss_improvement: float = Field(
        default=0.0, ge=0, lt=1, description="Tuned eval loss must be at most base * (1 - this)."
    )
    min_score_gain: float = Field(
        default=0.0, ge=0, le=1, description="Tuned primary check score must exceed the base score by more than this."
    )
    min_score: float = Field(default=0.0, ge=0, le=1, description="Tuned primary check score must be at least this.")
    deployed_min_score_gain: float = Field(
        default=0.0,
        ge=-1,
        le=1,
        description="With evaluation.baseline route:NAME: the new version's primary check "
        "score through the gateway must exceed the deployed variant's by more than this (a negative value lets it "
        "be at most that much worse).",
    )


class ExportConfig(_Section):
    quantizations: list[Quantization] = Field(
        default=["q8_0", "q4_k_m"], min_length=1, description="GGUF files to produce besides the f16 conversion."
    )
    serve: Quantization = Field(default="q4_k_m", description="Which GGUF is pushed to Ollama.")
    adapter_gguf: bool = Field(default=True, description="Also export the adapter alone as GGUF (adapter serving).")

    @model_validator(mode="after")
    def _serve_exported(self) -> ExportConfig:
        if self.serve != "f16" and self.serve not in self.quantizations:
            raise ValueError(f"serve {self.serve!r} must be f16 or one of quantizations {self.quantizations}")
        return self


class OllamaConfig(_Section):
    host: str = Field(
        default_factory=lambda: os.environ.get("OLLAMA_HOST", "http://ollama:11434"),
        description="Ollama API base URL (default: $OLLAMA_HOST, else http://ollama:11434).",
    )
    model: str = Field(
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._/-]*$",
        description="Model name in Ollama; versions are tagged NAME:vN and NAME:latest.",
    )
    parameters: dict[str, Any] = Field(
        default={"temperature": 0}, description="Ollama model parameters (stop tokens are added from the template)."
    )
    template: str | None = Field(
        default=None, description="Go template for Ollama; by default derived from the tokenizer's chat template."
    )
    stop: list[str] | None = Field(
        default=None, description="Stop strings to use with a hand-written template (derived ones are automatic)."
    )
    adapter_base: str | None = Field(
        default=None, description="Base model's name in Ollama, for the FROM line of the adapter-only Modelfile."
    )
    dns_servers: list[str] = Field(
        default_factory=lambda: [s for s in os.environ.get("OLLAMA_DNS_SERVERS", "").split(",") if s],
        description="DNS servers (host or host:port) that resolve `host` to its replicas; empty: the system's "
        "resolver (default: $OLLAMA_DNS_SERVERS, comma-separated). Push and deploy publish a version on every "
        "address the host resolves to.",
    )
    retries: int = Field(default=3, ge=0, le=10, description="Retries for transient Ollama errors (5xx, connect).")
    retry_backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles on each retry.")
    timeout_s: float = Field(default=600.0, gt=0, description="Per-request timeout for uploads and create.")

    @field_validator("host")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class GuardOverrides(_Section):
    """The gateway's rollout guard thresholds (its route `guard`); unset fields keep the gateway's defaults."""

    min_requests: int | None = Field(
        default=None, ge=1, description="Minimum requests per variant before the guard judges the canary."
    )
    max_error_rate_delta: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Canary error rate may exceed the stable one's by at most this (absolute).",
    )
    max_ttft_p95_ratio: float | None = Field(
        default=None, gt=0, description="Canary time-to-first-token p95 at most this times the stable one's."
    )
    max_format_failure_delta: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Canary JSON format failure share may exceed the stable one's by at most this.",
    )
    max_thumbs_down_delta: float | None = Field(
        default=None, ge=0, le=1, description="Canary thumbs-down share may exceed the stable one's by at most this."
    )
    min_raters: int | None = Field(
        default=None, ge=1, description="Distinct users who must have rated each variant before thumbs-down counts."
    )
    step_after_s: float | None = Field(
        default=None, ge=0, description="Also step the canary after this many seconds without a breach (0 = unused)."
    )


class DeployConfig(_Section):
    """Register the pushed version on a gateway route as a canary instead of moving NAME:latest."""

    route: str = Field(
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$",
        max_length=100,
        description="Route name clients send as `model`; created with the new version at 100 % "
        "if it does not exist yet.",
    )
    canary_percent: int = Field(
        default=10,
        ge=1,
        le=99,
        description="Starting weight of the new version; the route's stable (first) variant keeps the rest.",
    )
    steps: list[int] = Field(
        default=[],
        description="Canary weights the guard steps through while no signal breaches, e.g. [50, 100]; "
        "[] = stay at canary_percent until promoted by hand.",
    )
    step_after_requests: int | None = Field(
        default=None,
        ge=1,
        description="Step after this many canary requests without a breach (default: the gateway's).",
    )
    guard: GuardOverrides = Field(
        default=GuardOverrides(),
        description="Guard thresholds to set on the route; unset ones keep the route's "
        "current values, else the gateway's defaults.",
    )
    gateway_url: str = Field(
        default_factory=lambda: os.environ.get("GATEWAY_URL", "http://gateway:8000"),
        description="Gateway base URL for its admin API (default: $GATEWAY_URL, else http://gateway:8000).",
    )
    admin_key_env: str = Field(
        default="GATEWAY_ADMIN_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding an admin-scoped gateway key (never the key itself); "
        "NAME_FILE naming a file with the key works too (a Docker secret).",
    )
    model_wait_s: float = Field(
        default=60.0,
        ge=0,
        description="How long to wait for the gateway to list the new version (it polls "
        "Ollama for models); 0 = do not wait.",
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Per-request timeout for the gateway's admin API.")

    @field_validator("gateway_url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _steps_climb(self) -> DeployConfig:
        if any(not self.canary_percent < s <= 100 for s in self.steps):
            raise ValueError(
                f"steps {self.steps} must each be above canary_percent ({self.canary_percent}) and at most 100"
            )
        if self.steps != sorted(set(self.steps)):
            raise ValueError(f"steps {self.steps} must rise strictly")
        return self


PushTarget = Literal["ollama", "llamacpp", "vllm"]


class AdapterPushConfig(_Section):
    gateway_url: str = Field(
        default_factory=lambda: os.environ.get("GATEWAY_URL", "http://gateway:8000"),
        description="The gateway whose adapter registry learns about the adapter "
        "(default: $GATEWAY_URL, else http://gateway:8000).",
    )
    admin_key_env: str = Field(
        default="GATEWAY_ADMIN_KEY",
        description="Environment variable that holds an admin-scope API key for the gateway (or NAME_FILE, a file "
        "holding it).",
    )
    name: str | None = Field(
        default=None,
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$",
        description="The adapter's public model name (default: ollama.model); NAME and NAME:vN are registered.",
    )
    base: str = Field(
        description="The base model's name as the serving replicas list it (llama-server's --alias, "
        "vLLM's --served-model-name): the adapter is served where that base is."
    )
    dir: Path = Field(default=Path("/adapters"), description="The shared adapters folder as the trainer sees it.")
    serving_dir: str | None = Field(
        default=None, description="The same folder as the servers see it (default: the same path as `dir`)."
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Timeout of each call to the gateway.")


class PushConfig(_Section):
    targets: list[PushTarget] = Field(
        default=["ollama"],
        min_length=1,
        description="Where `push` publishes: `ollama` (create NAME:vN), `llamacpp` "
        "(adapter GGUF into adapters.dir), `vllm` (PEFT folder into adapters.dir); "
        "the last two also register the adapter with the gateway.",
    )
    adapters: AdapterPushConfig | None = Field(default=None, description="Needed for the llamacpp and vllm targets.")

    @model_validator(mode="after")
    def _adapters_given(self) -> PushConfig:
        if {"llamacpp", "vllm"} & set(self.targets) and self.adapters is None:
            raise ValueError("the llamacpp and vllm targets need push.adapters (base, dir, gateway_url)")
        return self


class RunConfig(_Section):
    base_model: BaseModelConfig
    data: DataConfig
    lora: LoraConfig = LoraConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    gate: GateConfig = GateConfig()
    export: ExportConfig = ExportConfig()
    ollama: OllamaConfig
    deploy: DeployConfig | None = Field(
        default=None,
        description="Put each pushed version on a gateway route as a canary; without it push moves NAME:latest.",
    )
    push: PushConfig = PushConfig()
    output_dir: Path = Field(
        description="Working folder of this task: data split, checkpoints, reports, GGUFs, versions."
    )

    @model_validator(mode="after")
    def _route_baseline_needs_gateway(self) -> RunConfig:
        route = self.evaluation.baseline_route
        if route is None:
            return self
        if self.deploy is None:
            raise ValueError(
                f"evaluation.baseline route:{route} needs a `deploy` section: the gateway's URL and "
                "admin key come from there, and the version goes on deploy.route only if it wins"
            )
        if "ollama" not in self.push.targets:
            raise ValueError(
                f"evaluation.baseline route:{route} compares the pushed NAME:vN through the gateway: "
                "push.targets must include ollama"
            )
        return self

    def digest(self) -> str:
        """Hash of everything that changes the trained weights, to tell if a checkpoint belongs to this run."""
        relevant = {
            "base": self.base_model.model_dump(mode="json"),
            "data": self.data.model_dump(mode="json"),
            "lora": self.lora.model_dump(mode="json"),
            "training": self.training.model_dump(mode="json", exclude={"save_steps", "logging_steps"}),
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
        node = child
    node[leaf] = value


def _resolve_paths(raw: dict[str, Any], root: Path) -> None:
    """Relative paths in the YAML are relative to the YAML file, not to the shell's cwd."""

    def fix(p: Any) -> Any:
        return str(root / p) if isinstance(p, str) and not Path(p).is_absolute() else p

    data = raw.get("data")
    for key in ("paths", "eval_paths"):
        if isinstance(data, dict) and isinstance(data.get(key), list):
            data[key] = [fix(p) for p in data[key]]
    if "output_dir" in raw:
        raw["output_dir"] = fix(raw["output_dir"])
    adapters = (raw.get("push") or {}).get("adapters") if isinstance(raw.get("push"), dict) else None
    if isinstance(adapters, dict) and "dir" in adapters:
        adapters["dir"] = fix(adapters["dir"])
    base = raw.get("base_model")
    if isinstance(base, dict) and isinstance(base.get("source"), str):
        src = base["source"]
        if "://" not in src and (src.startswith(".") or src.endswith(".gguf") or (root / src).exists()):
            base["source"] = fix(src)


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, with the dotted key; 'unknown key' instead of pydantic's wording."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{where}'")
        elif e["type"] == "missing":
            lines.append(f"missing required key '{where}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
            lines.append(msg if where == "(top level)" else f"{where}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read, override and validate a run config; every mistake becomes a `ConfigError` naming the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
    _resolve_paths(raw, path.resolve().parent)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def parse_set_option(item: str) -> tuple[str, Any]:
    """`--set training.max_steps=40`: the value is read as YAML, so numbers and lists keep their type."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. training.max_steps=40), got {item!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: value {value!r} is not valid YAML") from None
