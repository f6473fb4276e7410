"""The settings table is the one declaration of every setting: it covers the Config exactly,
its names are unique, and every default is a valid value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway_pkg import config, settings
from gateway_pkg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_every_config_field_has_exactly_one_setting():
    declared: dict[str, set[str]] = {}
    for setting in settings.SETTINGS:
        section, _, name = setting.field.rpartition(".")
        assert name not in declared.setdefault(section, set()), f"{setting.field} is declared twice"
        declared[section].add(name)
    expected = config.section_fields()
    expected["dns"] -= {"resolution_timeout"}  # upstream's fixed bound, not a setting
    assert declared == expected


def test_names_are_unique_and_well_formed():
    envs = [s.env for s in settings.SETTINGS]
    flags = [f for s in settings.SETTINGS for f in (s.flag, s.short) if f]
    assert len(envs) == len(set(envs)) and len(flags) == len(set(flags))
    assert all(s.help.strip() and s.group for s in settings.SETTINGS)
    assert all(f.startswith("-") for f in flags)


@pytest.mark.parametrize("setting", settings.SETTINGS, ids=lambda s: s.env)
def test_every_default_is_a_valid_value(setting):
    setting.parse(None)  # raises ConfigError if the table's own default is invalid


def test_an_empty_variable_means_the_default():
    cfg = config.load({"FIREZONE_TOKEN": "t", "FIREZONE_ID": "x", "FIREZONE_UDP_PORT": "",
                       "FIREZONE_API_URL": "  ", "RUST_LOG": ""})
    assert (cfg.dataplane.udp_port, cfg.portal.api_url, cfg.log.level) == (52625, "wss://api.firezone.dev", "info")


def test_a_bad_value_names_the_variable_once():
    with pytest.raises(ConfigError) as raised:
        settings.BY_ENV["FIREZONE_UDP_PORT"].parse("http")
    assert str(raised.value) == "FIREZONE_UDP_PORT must be a port number (0-65535), got 'http'"


def test_the_configuration_reference_is_generated_from_the_table(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text("# an old page\n")
    tool = [sys.executable, str(ROOT / "tools" / "gen_config_docs.py")]
    assert subprocess.run([*tool, "--check", "--target", str(stale)], capture_output=True).returncode == 1
    assert subprocess.run([*tool, "--target", str(stale)], capture_output=True).returncode == 0
    page = stale.read_text()
    for setting in settings.SETTINGS:
        assert f"`{setting.env}`" in page
    assert subprocess.run([*tool, "--check"], capture_output=True).returncode == 0, "run make docs-config"
