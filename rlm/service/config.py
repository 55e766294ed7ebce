"""The server's configuration: one TOML file, owned by whoever runs ``rlm serve``.

Everything that could make the server call an address or spend money on someone's account lives
here and only here: model providers (base URLs and keys, or the names of environment variables that
hold the keys), the custom-tool registry, global limits. Tenants' requests name models and tools
from this file; they never carry a URL or a key.

    [server]
    database_url = "sqlite:///rlm-service.db"   # or postgresql://user@host/db
    data_dir = "rlm-service-data"                # uploaded contexts
    backends = ["docker"]                        # sandbox backends offered (checked by /readyz)
    max_concurrent_runs = 8                      # runs executing at once, all tenants
    max_boxes = 32                               # sandboxes at once, all tenants (worst case per run)
    max_queued_runs = 10000

    [models.gpt-5-mini]                          # the name tenants use
    backend = "openai"
    base_url = "https://api.openai.com/v1"      # optional
    api_key_env = "OPENAI_API_KEY"               # or api_key = "..."
    price = [0.25, 2.0]                          # optional: USD per million input / output tokens

    [defaults]
    model = "gpt-5-mini"
    sub_model = "gpt-5-nano"

    [default_policy]                             # policy of a new tenant (see policy.Policy)
    backends = ["docker"]

    [tools]
    word_count = "my_package.tools:word_count"  # importable callable
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rlm.service.policy import Policy
from sandboxes.spec import BACKENDS

DEFAULT_DATABASE_URL = "sqlite:///rlm-service.db"


class ConfigError(ValueError):
    """The configuration file is wrong; the message says where."""


@dataclass(frozen=True)
class ModelConfig:
    """One model tenants may use, with everything needed to reach it."""

    name: str
    backend: str = "openai"
    model_name: str | None = None  # what the provider calls it; default: ``name``
    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    price: tuple[float, float] | None = None

    def backend_kwargs(self) -> dict[str, Any]:
        """What ``RLM(backend_kwargs=...)`` gets: the provider model name, URL and key."""
        kwargs: dict[str, Any] = {"model_name": self.model_name or self.name}
        if self.base_url:
            kwargs["base_url"] = self.base_url
        key = self.api_key or (os.environ.get(self.api_key_env) if self.api_key_env else None)
        if key:
            kwargs["api_key"] = key
        return kwargs


@dataclass(frozen=True)
class ServerConfig:
    database_url: str = DEFAULT_DATABASE_URL
    # Sandbox backends this server offers (and /readyz checks); a tenant's policy picks among them.
    backends: tuple[str, ...] = ("docker",)
    data_dir: str = "rlm-service-data"
    max_concurrent_runs: int = 8
    max_boxes: int = 32
    max_queued_runs: int = 10_000
    # Whole request bodies (inline contexts included), and uploads to /v1/contexts.
    max_request_bytes: int = 10 * 1024 * 1024
    max_upload_bytes: int = 1024 * 1024 * 1024
    # A request body must arrive within this many seconds (a slow drip holds a connection forever).
    body_timeout_s: float = 60.0
    # SIGTERM: running runs get this long to finish before they are interrupted.
    shutdown_grace_s: float = 30.0
    # How often the server looks for tenants disabled by `rlm tenants disable` (another process).
    tenant_poll_s: float = 1.0
    retry_after_s: int = 5
    # When set, /metrics asks for `Authorization: Bearer <value of this environment variable>`.
    metrics_token_env: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "backends", tuple(self.backends))
        for backend in self.backends:
            if backend not in BACKENDS:
                raise ValueError(f"backends: unknown sandbox backend {backend!r}; choose from {', '.join(BACKENDS)}")
        for name in ("max_concurrent_runs", "max_boxes", "max_request_bytes", "max_upload_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    default_model: str | None = None
    default_sub_model: str | None = None
    default_policy: Policy = field(default_factory=Policy)
    tools: dict[str, str] = field(default_factory=dict)

    def model(self, name: str) -> ModelConfig:
        return self.models[name]

    def tool(self, name: str) -> Callable[..., Any]:
        """Import a registered tool (``module:attribute``)."""
        target = self.tools[name]
        module, _, attr = target.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"tool {name!r}: cannot import {target!r} ({exc})") from None
        if not callable(fn):
            raise ConfigError(f"tool {name!r}: {target!r} is not callable")
        return fn


def _build(cls: type, section: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigError(f"[{where}]: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    try:
        return cls(**section)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}]: {exc}") from None


def parse_config(data: dict[str, Any]) -> Config:
    known = {"server", "models", "defaults", "default_policy", "tools"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    server = _build(ServerConfig, dict(data.get("server", {})), "server")
    models: dict[str, ModelConfig] = {}
    for name, section in dict(data.get("models", {})).items():
        section = dict(section)
        if "price" in section:
            price = section["price"]
            if not (isinstance(price, list) and len(price) == 2):
                raise ConfigError(f"[models.{name}]: price is [usd_in_per_mtok, usd_out_per_mtok]")
            section["price"] = (float(price[0]), float(price[1]))
        models[name] = _build(ModelConfig, {"name": name, **section}, f"models.{name}")
    defaults = dict(data.get("defaults", {}))
    default_model = defaults.pop("model", None) or (next(iter(models)) if models else None)
    default_sub_model = defaults.pop("sub_model", None) or default_model
    if defaults:
        raise ConfigError(f"[defaults]: unknown setting(s) {', '.join(sorted(defaults))}; known: model, sub_model")
    for which in (default_model, default_sub_model):
        if which is not None and which not in models:
            raise ConfigError(f"[defaults]: model {which!r} is not configured under [models]")
    try:
        policy = Policy.from_dict(dict(data.get("default_policy", {})))
    except ValueError as exc:
        raise ConfigError(f"[default_policy]: {exc}") from None
    tools = {str(k): str(v) for k, v in dict(data.get("tools", {})).items()}
    for name, target in tools.items():
        if ":" not in target:
            raise ConfigError(f"[tools]: {name} = {target!r} must be 'module:function'")
    return Config(server=server, models=models, default_model=default_model, default_sub_model=default_sub_model,
                  default_policy=policy, tools=tools)


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """The configuration from a TOML file, or the built-in defaults (no models) without one."""
    if path is None:
        return Config()
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no such configuration file: {file}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None
