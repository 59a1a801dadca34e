"""The device side of the AWS IoT Jobs dialect (`--dialect aws-iot-jobs`), for the agent and the simulator.

Jobs arrive the way an AWS IoT jobs client takes them: `notify-next` says there is a next execution, a
`start-next` request starts it and its `/accepted` reply carries the jobDocument, which is Fogdeck's own
JobDocument (so the agent verifies it exactly as in Fogdeck's dialect). Progress goes out as
`{jobId}/update` with `statusDetails` (`step`, `progress`, `reason`), one per status (steps and progress
within IN_PROGRESS are not sent). Status, state and telemetry stay on
Fogdeck's topics. A job the control plane ended (canceled, timed out) shows up as a `notify-next` naming
another execution, or none: the job in hand is then canceled locally. See docs/protocol.md.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Collection
from typing import Any

from protocol import aws_jobs
from protocol.messages import JobDocument, JobUpdate, Payload

logger = logging.getLogger("fogdeck.agent.aws")

QOS = 1
Publish = Callable[[str, bytes], object]
"""(topic, payload) -> published at QoS 1"""


class AwsJobsLink:
    def __init__(self, uid: str, publish: Publish) -> None:
        self.uid = uid
        self._publish = publish
        self._prefix = aws_jobs.jobs_prefix(uid)
        self._last_sent: dict[str, str] = {}  # job id -> the status last sent while it runs

    def subscriptions(self) -> list[tuple[str, int]]:
        return [
            (aws_jobs.notify_next_topic(self.uid), QOS),
            (f"{self._prefix}/start-next/accepted", QOS),
            (f"{self._prefix}/start-next/rejected", QOS),
            (f"{self._prefix}/+/update/rejected", QOS),
        ]

    def handles(self, topic: str) -> bool:
        return topic.startswith(self._prefix + "/")

    def start_next(self) -> None:
        """Ask for the next pending execution (on every connect, and after each job ends)."""
        body = {"clientToken": secrets.token_hex(8)}
        self._publish(aws_jobs.request_topic(self.uid, "start_next"), aws_jobs.encode(body))

    def publish_update(self, update: JobUpdate) -> bool:
        """Send a Fogdeck job update as UpdateJobExecution; False when the dialect has no such update (a device
        cannot set CANCELED: the control plane canceled it already)."""
        status, details = update.status, {}
        if status == "CANCELED":
            return False
        # as AWS jobs clients do, one UpdateJobExecution per status (each is a versioned write on the control
        # plane, answered one by one): steps and progress within IN_PROGRESS are not sent
        if update.status not in aws_jobs.TERMINAL_STATUSES:
            if self._last_sent.get(update.job_id) == update.status:
                return False
            self._last_sent[update.job_id] = update.status
        else:
            self._last_sent.pop(update.job_id, None)
        if status == "TIMED_OUT":  # only the service sets TIMED_OUT; the device says why it gave up
            status, details = "FAILED", {"timedOut": "true"}
        if update.step:
            details["step"] = update.step
        if update.progress is not None:
            details["progress"] = f"{update.progress:.3f}"
        if update.reason:
            details["reason"] = update.reason[:1024]
        body: dict[str, Any] = {"status": status, "clientToken": f"{update.seq}-{secrets.token_hex(4)}"}
        if details:
            body["statusDetails"] = details
        self._publish(aws_jobs.request_topic(self.uid, "update", update.job_id), aws_jobs.encode(body))
        return True

    def on_message(
        self,
        topic: str,
        payload: Payload,
        *,
        submit: Callable[[JobDocument], object],
        cancel: Callable[[str], object],
        in_hand: Callable[[], Collection[str]],
    ) -> None:
        """Route one message below the device's `$aws/things/{uid}/jobs/`."""
        try:
            message = json.loads(payload)
        except ValueError:
            logger.warning("%s: dropping non-JSON message on %s", self.uid, topic)
            return
        if not isinstance(message, dict):
            return
        suffix = topic[len(self._prefix) + 1 :]
        if suffix == "notify-next":
            upcoming = (message.get("execution") or {}).get("jobId")
            held = set(in_hand())
            for job_id in held - {upcoming}:
                cancel(job_id)  # no longer the next execution: the control plane ended it
            if upcoming and upcoming not in held:
                self.start_next()
        elif suffix == "start-next/accepted":
            document = (message.get("execution") or {}).get("jobDocument")
            if document is not None:
                submit(JobDocument.model_validate_json(json.dumps(document)))
        elif suffix.endswith("/rejected"):
            logger.warning("%s: %s rejected: %s %s", self.uid, suffix, message.get("code"), message.get("message"))
