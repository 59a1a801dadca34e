"""The bridge's job-message rules: every update gets an answer, even on a job no update ever reached."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from audit.actors import Actor
from deployments.bridge_handlers import job_updates
from deployments.services.job_endings import jobs_sweep_timeouts
from deployments.services.jobs import deployment_create
from protocol.messages import JobUpdate, parse_job_update_accepted
from tests.deployments.rollout_helpers import RecordingBridge
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


def test_a_late_result_for_a_job_timed_out_while_queued_is_answered_with_the_job_as_stored(published_version):
    """The job never got an update (stored seq -1); the device's late SUCCEEDED is ignored and answered
    `accepted` with TIMED_OUT, so the device stops re-sending it (this answer once broke the whole batch)."""
    device = DeviceFactory()
    job = deployment_create(actor=Actor.system("tests"), device=device, version=published_version, timeout_seconds=1)
    later = timezone.now() + dt.timedelta(seconds=2)
    assert jobs_sweep_timeouts(actor=Actor.system("sweeper"), now=later) == [str(job.id)]
    update = JobUpdate(schema_version=1, job_id=str(job.id), seq=1, status="SUCCEEDED", ts=timezone.now())
    bridge = RecordingBridge()
    assert job_updates([(device.uid, update)], bridge) == [None]
    [(topic, payload)] = bridge.answers
    answer = parse_job_update_accepted(payload)
    assert topic.endswith(f"/jobs/{job.id}/update/accepted")
    assert (answer.status, answer.seq) == ("TIMED_OUT", 0)
    assert bridge.counted == ["job_update_ignored:job_already_terminal"]
