# OutboxMessage and RejectedMessageCount now belong to the `outbox` app (below the apps that write them);
# their tables stay where mqttbridge's 0001 created them, so this only drops them from mqttbridge's state.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("mqttbridge", "0001_initial"),
        ("outbox", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="OutboxMessage"),
                migrations.DeleteModel(name="RejectedMessageCount"),
            ],
            database_operations=[],
        ),
    ]
