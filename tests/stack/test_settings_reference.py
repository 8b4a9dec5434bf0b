"""One source for settings: the `Settings` fields render `.env.example`'s gateway block and
docs/configuration.md (that compose forwards each setting: test_deployment.py)."""

from __future__ import annotations

import re

from gateway.settings import Settings
from gateway.settings.reference import CONFIGURATION, ENV_EXAMPLE, SECRETS, SET_BY_COMPOSE, env_name, rendered


def test_env_example_and_the_configuration_page_match_the_settings_fields() -> None:
    stale = [path.name for path, text in rendered().items() if path.read_text() != text]
    assert stale == [], f"{stale} drifted from gateway/settings/: python -m gateway.settings.reference --write"


def test_every_setting_is_in_the_configuration_page_and_the_offered_ones_in_the_env_example() -> None:
    env_text, doc_text = ENV_EXAMPLE.read_text(), CONFIGURATION.read_text()
    names = {name: env_name(name, info) for name, info in Settings.model_fields.items()}
    assert [v for v in names.values() if f"`{v}`" not in doc_text] == []
    offered = [v for n, v in names.items() if n not in SET_BY_COMPOSE | SECRETS]
    assert [v for v in offered if not re.search(rf"^{v}=", env_text, re.M)] == []
    # Secrets are files in secrets/ (compose passes their *_FILE forms): .env.example offers none of them.
    assert [names[n] for n in SECRETS if re.search(rf"^{names[n]}(_FILE)?=", env_text, re.M)] == []
