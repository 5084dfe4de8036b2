"""Issue 10 item 6: every setting is defined once (ca_service/config.py) and the example file
is that definition, so neither can change without the other."""

from __future__ import annotations

import dataclasses
import sys
import tomllib
from pathlib import Path

import pytest

from ca_service.config import (
    ENV_PREFIX,
    SettingInfo,
    Settings,
    example_toml,
    load_settings,
    setting_fields,
)
from ca_service.errors import ConfigError

from .conftest import run

EXAMPLE = Path(__file__).parent.parent / "config" / "ca-service.example.toml"
REGENERATE = "python -m ca_service.config --example > config/ca-service.example.toml"


def test_the_example_file_is_generated_from_the_definition() -> None:
    assert EXAMPLE.read_text() == example_toml(), f"the example has drifted: run {REGENERATE}"


def test_the_generator_runs_as_documented() -> None:
    result = run([sys.executable, "-W", "error", "-m", "ca_service.config", "--example"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == example_toml()
    assert "python -m ca_service.config --example" in result.stdout
    usage = run([sys.executable, "-m", "ca_service.config"])
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_every_field_of_settings_is_defined_and_explained() -> None:
    for f in dataclasses.fields(Settings):
        info = f.metadata.get("setting")
        assert isinstance(info, SettingInfo), f"{f.name}: no definition"
        assert len(info.help) > 10, f"{f.name}: no explanation"
        assert info.plain + info.secret + (info.table is not None) == 1, f.name


def test_the_example_states_every_plain_setting_with_its_default_and_explanation() -> None:
    text = EXAMPLE.read_text()
    parsed = tomllib.loads(text)
    flat = " ".join(line.lstrip("# ").strip() for line in text.splitlines())
    for f, info in setting_fields():
        if not info.plain:
            continue
        assert " ".join(info.help.split()) in flat, f"{f.name}: explanation missing"
        if f.default is None:
            assert f"# {f.name} = " in text, f.name
            assert f.name not in parsed
        else:
            assert f.name in parsed, f"{f.name} is not in the example"
            assert info.parse is not None
            assert info.parse(f.name, parsed[f.name]) == f.default, f"{f.name}: other default"
    for f, info in setting_fields():
        if info.secret:
            assert f"{ENV_PREFIX}{f.name.upper()}_FILE" in text
            assert f.name not in parsed


def test_loading_the_example_gives_the_defaults() -> None:
    assert load_settings({"CA_CONFIG_FILE": str(EXAMPLE)}) == load_settings({})


def test_every_plain_setting_is_read_from_the_environment_and_checked() -> None:
    """Each defined key is accepted as CA_<KEY>, and a value of the wrong kind stops the load
    with one line naming it (the loader knows nothing the definition does not say)."""
    for f, info in setting_fields():
        if not info.plain:
            continue
        env = ENV_PREFIX + f.name.upper()
        default = f.default
        if isinstance(default, tuple):
            raw = ",".join(default)
        else:
            raw = "" if default is None else str(default)
        load_settings({env: raw})  # the default, written as the environment would
        if isinstance(default, bool | int) or f.name in ("bind", "public_url", "log_level"):
            with pytest.raises(ConfigError, match=f.name) as info_:
                load_settings({env: "not a value"})
            assert "\n" not in str(info_.value)


def test_overrides_are_checked_like_the_environment() -> None:
    assert load_settings({}, overrides={"workers": 3, "tls": None}).workers == 3
    with pytest.raises(ConfigError, match="bind must be HOST:PORT"):
        load_settings({}, overrides={"bind": "nowhere"})
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        load_settings({}, overrides={"nope": 1})


def test_workers_zero_means_one_per_cpu_and_serve_passes_the_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default: one worker per CPU, at least 2 (one per core does the most for CPU-bound
    Python, bench/PROFILES.md); gunicorn is given the resolved number, never 0."""
    import os

    from ca_service.cli.serve import gunicorn_argv

    settings = load_settings({})
    assert settings.workers == 0 and settings.threads == 16
    for cpus, expected in ((None, 2), (1, 2), (2, 2), (12, 12), (500, 64)):
        monkeypatch.setattr(os, "cpu_count", lambda cpus=cpus: cpus)
        assert settings.worker_count == expected
        argv = gunicorn_argv(settings, None)
        assert argv[argv.index("--workers") + 1] == str(expected)
    assert load_settings({"CA_WORKERS": "3"}).worker_count == 3
    with pytest.raises(ConfigError, match="workers must be between 0 and 64"):
        load_settings({"CA_WORKERS": "-1"})
