"""Synthesized templates, cached by content: a stack is synthesized through jsii (a minute or
more on a busy machine) only when its settings or the code it ships changed.

    key = sha256(StackConfig JSON, stack name, the asset's source digest, aws-cdk-lib and
                 cdk-nag versions)
    $STEPMAP_TEMPLATE_CACHE/<key>.json   (default: ~/.cache/stepmap/templates)

Shared across processes: a template is written under a temporary name and renamed into
place, so a reader sees a whole file or none. A template is cached only after cdk-nag passed
on it (synth raises otherwise). Within a process, templates are also kept in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from importlib import metadata
from pathlib import Path

from .asset import source_digest
from .names import DEFAULT_STACK
from .stack_config import StackConfig

CACHE_ENV = "STEPMAP_TEMPLATE_CACHE"

_MEMORY: dict[str, dict] = {}
_LOCK = threading.Lock()


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stepmap" / "templates"


def template_key(config: StackConfig, stack_name: str = DEFAULT_STACK) -> str:
    versions = []
    for package in ("aws-cdk-lib", "cdk-nag"):
        try:
            versions.append(metadata.version(package))
        except metadata.PackageNotFoundError:
            versions.append("-")
    text = json.dumps([config.to_context(), stack_name,
                       source_digest(config.workload, config.requirements, config.runtime),
                       versions])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def template_for(config: StackConfig, stack_name: str = DEFAULT_STACK) -> dict:
    """The stack's CloudFormation template: from memory, the cache directory, or a synth
    (which runs cdk-nag) whose result is then cached."""
    key = template_key(config, stack_name)
    with _LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
        template = _read(key)
        if template is None:
            from .stack import synth_template  # jsii starts only here
            template = synth_template(config, stack_name=stack_name)
            _write(key, template)
        _MEMORY[key] = template
        return template


def cached(config: StackConfig, stack_name: str = DEFAULT_STACK) -> dict | None:
    """The template if it is cached (memory or disk), else None; never synthesizes."""
    key = template_key(config, stack_name)
    with _LOCK:
        template = _MEMORY.get(key) or _read(key)
        if template is not None:
            _MEMORY[key] = template
        return template


def remember(config: StackConfig, template: dict, stack_name: str = DEFAULT_STACK) -> None:
    """Keep a template synthesized elsewhere (e.g. a test session's one App), on disk too."""
    key = template_key(config, stack_name)
    with _LOCK:
        _MEMORY[key] = template
        if _read(key) is None:
            _write(key, template)


def _read(key: str) -> dict | None:
    path = cache_dir() / f"{key}.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent, or unreadable: synthesize again
    return value if isinstance(value, dict) and "Resources" in value else None


def _write(key: str, template: dict) -> None:
    directory = cache_dir()
    tmp = directory / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(template), encoding="utf-8")
        os.replace(tmp, directory / f"{key}.json")
    except OSError:  # a read-only home is no reason to fail a run: it just is not cached
        tmp.unlink(missing_ok=True)
