"""`rollout_can_approve`: the one statement of when the manual gate acts, which the UI asks too."""

from __future__ import annotations

import pytest

from deployments.models import RolloutStatus, WaveStatus
from deployments.services.rollouts import rollout_can_approve


@pytest.mark.parametrize("rollout_status", [RolloutStatus.RUNNING, RolloutStatus.PAUSED])
@pytest.mark.parametrize("wave_status", [WaveStatus.AWAITING_APPROVAL, WaveStatus.HELD])
def test_a_running_or_paused_rollout_with_a_waiting_or_held_wave_can_be_approved(rollout_status, wave_status):
    assert rollout_can_approve(rollout_status, wave_status)


@pytest.mark.parametrize(
    ("rollout_status", "wave_status"),
    [
        (RolloutStatus.RUNNING, WaveStatus.BAKING),
        (RolloutStatus.RUNNING, WaveStatus.INSTALLING),
        (RolloutStatus.RUNNING, None),
        (RolloutStatus.ROLLING_BACK, WaveStatus.HELD),
        (RolloutStatus.DRAFT, WaveStatus.AWAITING_APPROVAL),
    ],
)
def test_anything_else_cannot(rollout_status, wave_status):
    assert not rollout_can_approve(rollout_status, wave_status)
