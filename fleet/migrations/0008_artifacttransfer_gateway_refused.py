from django.db import migrations, models


def backfill(apps, schema_editor):
    """Set the new column from the JSON list for the rows stored before it existed (any backend)."""
    ArtifactTransfer = apps.get_model("fleet", "ArtifactTransfer")
    refused = []
    for pk, sources in ArtifactTransfer.objects.values_list("pk", "refused").iterator():
        if any(isinstance(item, dict) and item.get("source") == "gateway" for item in sources or []):
            refused.append(pk)
    for start in range(0, len(refused), 1000):
        ArtifactTransfer.objects.filter(pk__in=refused[start : start + 1000]).update(gateway_refused=True)


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0007_device_uid_not_reserved"),
    ]

    operations = [
        migrations.AddField(
            model_name="artifacttransfer",
            name="gateway_refused",
            field=models.BooleanField(default=False, editable=False),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
