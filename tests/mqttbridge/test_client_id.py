"""The bridge's client id is in the control plane's reserved namespace (issue 14, finding 3): a device's client
id is its uid, and no device uid may start with `fogdeck-`, so no device can connect under the bridge's id."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from deployments import bridge_handlers
from mqttbridge.runtime import Bridge

HANDLERS = bridge_handlers.HANDLERS


@pytest.mark.parametrize("client_id", ["bridge-1", "lyon-gw-01", "", "xfogdeck-bridge"])
def test_a_bridge_id_outside_the_reserved_namespace_is_refused(client_id):
    with pytest.raises(ValueError, match="must start with 'fogdeck-'"):
        Bridge(client_id=client_id, **HANDLERS)


def test_the_command_says_which_option_is_wrong():
    with pytest.raises(CommandError, match="--client-id: the bridge's client id must start with 'fogdeck-'"):
        call_command("mqtt_bridge", "--client-id", "bridge-1")


def test_the_default_and_the_documented_replica_ids_are_accepted():
    assert Bridge(**HANDLERS).client_id == "fogdeck-bridge"
    assert Bridge(client_id="fogdeck-bridge-2", **HANDLERS).client_id == "fogdeck-bridge-2"
