"""The Fogdeck device agent (`fogdeck-agent`) and fleet simulator (`fogdeck-sim`); no Django here."""

from __future__ import annotations

AGENT_VERSION = "0.1.0"
