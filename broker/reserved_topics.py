"""Client publishes on `$aws/things/…` for the embedded broker (the AWS IoT Jobs dialect, protocol/aws_jobs.py).

amqtt 0.12.1 drops every client PUBLISH whose topic starts with `$` and closes the connection (it reads
MQTT-4.7.2-1, which is about wildcard *matching* of `$` topics, as a ban). Mosquitto and AWS IoT accept
them. `_handle_message_delivery` below is amqtt's, with that one check narrowed to the `$` topics that
are not `$aws/things/…`; the topic plugin (broker/acl.py) still decides who may publish there, which is
only a device under its own `$aws/things/{uid}/jobs/`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.events import BrokerEvents
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from protocol.aws_jobs import THINGS_ROOT

ALLOWED_RESERVED_PREFIX = THINGS_ROOT + "/"


class ReservedTopicsMixin(Broker):
    async def _handle_message_delivery(
        self, client_session: Session, handler: BrokerProtocolHandler, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        app_message = wait_deliver.result()
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_RECEIVED, client_id=client_session.client_id, message=app_message
        )
        if app_message is None:
            return True
        topic = app_message.topic
        if not topic or "#" in topic or "+" in topic:  # MQTT-4.7.3-1, MQTT-3.3.2-2: the connection is closed
            self.logger.warning("%s sent an invalid PUBLISH topic, closing connection", client_session.client_id)
            return False
        if topic.startswith("$") and not topic.startswith(ALLOWED_RESERVED_PREFIX):
            self.logger.warning("%s cannot publish on %s (reserved)", client_session.client_id, topic[:200])
            return False
        if not await self._topic_filtering(client_session, topic=topic, action=Action.PUBLISH):
            self.logger.info("%s not allowed to publish to TOPIC %s.", client_session.client_id, topic[:200])
            return True
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_BROADCAST, client_id=client_session.client_id, message=app_message
        )
        await self._broadcast_message(client_session, topic, app_message.data)
        if app_message.publish_packet and app_message.publish_packet.retain_flag:
            await self.retain_message(client_session, topic, app_message.data, app_message.qos)
        return True
