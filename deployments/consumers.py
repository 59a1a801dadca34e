"""The live rollout page's websocket (`/ws/rollouts/{id}/`): a telemetry stream consumer whose group
deployments/rollout_streams.py feeds."""

from __future__ import annotations

from protocol.streams import rollout_group
from telemetry.consumers import StreamConsumer

from .models import Rollout


class RolloutConsumer(StreamConsumer):
    """`/ws/rollouts/{id}/`: the rollout's progress (status, per-wave job-state counts, gate timeline) and
    canary vs baseline latency and error figures, coalesced to at most 5 messages a second."""

    async def stream_groups(self) -> list[str] | None:
        rollout_id = int(self.scope["url_route"]["kwargs"]["rollout_id"])
        if not await Rollout.objects.filter(pk=rollout_id).aexists():
            return None
        return [rollout_group(rollout_id)]
