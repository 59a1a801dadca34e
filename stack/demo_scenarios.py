"""What the demo sets up through the services, so every step is audited like an operator's.

* the baseline: the sample classifier's production version (demo-classifier v1) recorded as preinstalled on
  every seeded device that can run it, so simulated devices report latency from their first minute and a
  rollout has a baseline to compare with and to roll back to;
* `--scenario bad-canary`: a rollout of the deliberately slower v2 whose canary's health gate trips on
  latency against that baseline, and the rollout rolls the canary back by itself.
"""

from __future__ import annotations

from audit.actors import Actor
from deployments.api.serializers import RolloutPlanSerializer
from deployments.models import Installation, Rollout
from deployments.services.installations import PreinstallResult, installations_preinstall
from deployments.services.rollout_drafts import rollout_create
from deployments.services.rollouts import rollout_start
from fleet.models import Device
from models_registry.models import ModelVersion

BASELINE_MODEL = "demo-classifier"
BASELINE_VERSION = 1
SLOW_VERSION = 2  # sample_models' v2: the same outputs through a chain of identity MatMuls
DEMO_TAG_PREFIX = "profile:"  # seed_demo tags each device with its hardware profile

# The bad canary's plan: a small canary, a health gate on p95 latency against the baseline, and a bake
# long enough for the canary's devices to report a few intervals each (telemetry every 10 s, 2 requests/s).
BAD_CANARY_PLAN = {
    "waves": [{"percent": 5}, {"percent": 30}, {"percent": 100}],
    "install_gate": {"min_success_pct": 90, "max_failure_pct": 10, "min_finished": 3},
    "health_gate": {"max_p95_latency_ratio": 1.5, "max_error_rate": 0.05, "bake_seconds": 60, "min_samples": 200},
    "rate_per_minute": 600,
    "job_timeout_seconds": 300,
}


def demo_devices() -> list[Device]:
    return list(Device.objects.active().filter(tag_links__tag__startswith=DEMO_TAG_PREFIX).distinct())


def demo_baseline_seed(*, actor: Actor) -> tuple[ModelVersion, PreinstallResult]:
    """demo-classifier v1 preinstalled on the seeded devices that can run it (idempotent)."""
    version = ModelVersion.objects.select_related("model").get(model__name=BASELINE_MODEL, number=BASELINE_VERSION)
    return version, installations_preinstall(actor=actor, version=version, devices=demo_devices())


def demo_bad_canary_start(*, actor: Actor) -> Rollout:
    """Create and start the slow version's rollout over the online devices running the baseline (a device
    that never connects would hold its wave's install gate until its job timed out).

    The plan goes through the API's serializer, so it is validated and completed exactly as an operator's.
    """
    slow = ModelVersion.objects.get(model__name=BASELINE_MODEL, number=SLOW_VERSION)
    on_baseline = list(
        Installation.objects.filter(
            until__isnull=True, version__model__name=BASELINE_MODEL, version__number=BASELINE_VERSION,
            device__in=Device.objects.online(),
        ).values_list("device_id", flat=True)
    )  # fmt: skip
    body = {
        "version": slow.pk,
        "name": "bad canary: demo-classifier v2 (slower)",
        "target": {"devices": on_baseline},
        **BAD_CANARY_PLAN,
    }
    serializer = RolloutPlanSerializer(data=body)
    serializer.is_valid(raise_exception=True)
    version, name, plan = serializer.to_plan()
    rollout = rollout_create(actor=actor, version=version, plan=plan, name=name)
    return rollout_start(actor=actor, rollout=rollout)
