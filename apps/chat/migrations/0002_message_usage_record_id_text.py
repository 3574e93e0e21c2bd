# The ledger's UsageRecord ids are UUID strings, not integers.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0001_initial"),
    ]

    operations = [
        migrations.RemoveField(model_name="message", name="usage_record_id"),
        migrations.AddField(
            model_name="message",
            name="usage_record_id",
            field=models.CharField(blank=True, default="", max_length=64),
            preserve_default=False,
        ),
    ]
