"""The /webhooks/ page: subscriptions and their recent deliveries. Viewers read; admins manage.

A new secret (on create or rotation) is rendered in the POST's own response, never put in the session
or a message, so it is shown exactly once.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from core.roles import ADMIN, VIEWER, has_role
from webhooks.forms import SubscriptionForm
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSubscription
from webhooks.selectors import shows_delivery_errors
from webhooks.services import webhook_create, webhook_delete, webhook_rotate_secret, webhook_update

from .web import actor_of, role_required

RECENT_DELIVERIES = 30


def _render(request: HttpRequest, *, form: SubscriptionForm | None = None, secret: dict | None = None) -> HttpResponse:
    deliveries = (
        WebhookDelivery.objects.select_related("subscription")
        .prefetch_related(Prefetch("attempt_log", queryset=WebhookAttempt.objects.order_by("number")))
        .order_by("-created_at")[:RECENT_DELIVERIES]
    )
    context = {
        "subscriptions": WebhookSubscription.objects.order_by("name", "id"),
        "deliveries": deliveries,
        "form": form or SubscriptionForm(),
        "can_manage": has_role(request.user, ADMIN),
        "show_errors": shows_delivery_errors(request.user),
        "new_secret": secret,
    }
    response = render(request, "frontend/webhooks.html", context, status=400 if form and form.errors else 200)
    if secret:
        response["Cache-Control"] = "no-store"
    return response


@role_required(VIEWER)
def webhook_list(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _render(request)
    if not has_role(request.user, ADMIN):
        raise PermissionDenied
    form = SubscriptionForm(request.POST)
    if not form.is_valid():
        return _render(request, form=form)
    created = webhook_create(actor=actor_of(request), **form.cleaned_data)
    return _render(request, secret={"name": created.subscription.name, "value": created.secret})


@require_POST
@role_required(ADMIN)
def webhook_action(request: HttpRequest, subscription_id: int, verb: str) -> HttpResponse:
    subscription = get_object_or_404(WebhookSubscription, pk=subscription_id)
    actor = actor_of(request)
    if verb == "rotate":
        rotated = webhook_rotate_secret(actor=actor, subscription=subscription)
        return _render(request, secret={"name": subscription.name, "value": rotated.secret})
    if verb == "toggle":
        webhook_update(actor=actor, subscription=subscription, active=not subscription.active)
        messages.success(request, f"{subscription.name} is {'active' if subscription.active else 'paused'}.")
    elif verb == "delete":
        webhook_delete(actor=actor, subscription=subscription)
        messages.success(request, f"{subscription.name} deleted.")
    else:
        raise PermissionDenied
    return redirect("webhooks-page")
