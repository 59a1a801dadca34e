"""Users, groups (the roles) and API tokens in the admin, every change in the audit chain."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.db import transaction

from audit.actors import Actor
from audit.admin_mixins import AuditedAdminMixin
from audit.services import audit_record

from .models import ApiToken
from .services import api_token_revoke

User = get_user_model()

for model in (User, Group):
    if admin.site.is_registered(model):
        admin.site.unregister(model)


@admin.register(User)
class AuditedUserAdmin(AuditedAdminMixin, UserAdmin):
    audit_object_type = "user"
    audit_secret_fields = frozenset({"password"})
    _AUDIT_SKIP = frozenset({"id", "last_login", "date_joined"})

    def user_change_password(self, request: Any, id: str, form_url: str = "") -> Any:
        """Django's password form saves outside save_model: record the change here, in one transaction."""
        with transaction.atomic():
            before = User.objects.filter(pk=id).values_list("password", flat=True).first()
            response = super().user_change_password(request, id, form_url)
            user = User.objects.filter(pk=id).first()
            if user is not None and request.method == "POST" and user.password != before:
                audit_record(
                    actor=Actor.for_user(request.user),
                    action="user.set_password",
                    object_type="user",
                    object_id=user.pk,
                    object_repr=user.get_username(),
                    changes={"via": "admin", "password": {"before": "(hidden)", "after": "(hidden)"}},
                )
            return response


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdminMixin, GroupAdmin):
    audit_object_type = "group"


@admin.action(description="Revoke the selected tokens")
def revoke_tokens(modeladmin: Any, request: Any, queryset: Any) -> None:
    for token in queryset:
        api_token_revoke(actor=Actor.for_user(request.user), token=token)
    messages.success(request, f"{queryset.count()} token(s) revoked.")


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedAdminMixin):
    """Tokens are created with `manage.py token_create` (the key is shown once there); here they can be
    seen, renamed, given an expiry, revoked or deleted."""

    audit_object_type = "api_token"
    audit_secret_fields = frozenset({"key_hash"})
    list_display = ["name", "user", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = ["user", "prefix", "created_at", "last_used_at"]
    fields = ["user", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]
    actions = [revoke_tokens]

    def has_add_permission(self, request: Any) -> bool:
        return False
