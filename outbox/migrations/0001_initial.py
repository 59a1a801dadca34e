# The outbox and the rejected-message counters moved here from mqttbridge (whose 0001 created their tables,
# and whose 0002 drops them from its state). Only Django's state changes: the tables keep their names and
# rows. Their content types (and so any permissions granted on them) move along.

from django.db import migrations, models

MOVED = ("outboxmessage", "rejectedmessagecount")


def _move_content_types(apps, source: str, target: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model in MOVED:
        if not ContentType.objects.filter(app_label=target, model=model).exists():
            ContentType.objects.filter(app_label=source, model=model).update(app_label=target)


def forwards(apps, schema_editor):
    _move_content_types(apps, "mqttbridge", "outbox")


def backwards(apps, schema_editor):
    _move_content_types(apps, "outbox", "mqttbridge")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("mqttbridge", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="RejectedMessageCount",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("reason", models.CharField(max_length=64, unique=True)),
                        ("count", models.BigIntegerField(default=0)),
                        ("last_detail", models.CharField(blank=True, max_length=500)),
                        ("last_topic", models.CharField(blank=True, max_length=300)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                    ],
                    options={"db_table": "mqttbridge_rejectedmessagecount"},
                ),
                migrations.CreateModel(
                    name="OutboxMessage",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("topic", models.CharField(max_length=300)),
                        ("payload", models.BinaryField()),
                        ("qos", models.PositiveSmallIntegerField(default=1)),
                        ("retain", models.BooleanField(default=False)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("published_at", models.DateTimeField(blank=True, null=True)),
                        ("attempts", models.PositiveIntegerField(default=0)),
                        ("last_error", models.CharField(blank=True, max_length=300)),
                    ],
                    options={
                        "db_table": "mqttbridge_outboxmessage",
                        "indexes": [
                            models.Index(
                                condition=models.Q(("published_at__isnull", True)), fields=["id"], name="outbox_pending_idx"
                            )
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(forwards, backwards),
    ]
