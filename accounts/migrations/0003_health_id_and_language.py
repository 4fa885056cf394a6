"""Every patient gets a Yilian ID; every user a preferred language for emails."""

from django.db import migrations, models


def assign_health_ids(apps, schema_editor):
    from accounts.health_id import new_health_id

    User = apps.get_model("accounts", "User")
    taken = set(User.objects.exclude(health_id=None).values_list("health_id", flat=True))
    for user in User.objects.filter(role="patient", health_id=None):
        health_id = new_health_id()
        while health_id in taken:
            health_id = new_health_id()
        taken.add(health_id)
        user.health_id = health_id
        user.save(update_fields=["health_id"])


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_patient_demographics")]

    operations = [
        migrations.AddField(
            model_name="user",
            name="health_id",
            field=models.CharField(
                blank=True, editable=False, max_length=9, null=True, unique=True, verbose_name="Yilian ID"
            ),
        ),
        migrations.AddField(
            model_name="user",
            name="language",
            field=models.CharField(blank=True, max_length=10, verbose_name="language"),
        ),
        migrations.RunPython(assign_health_ids, migrations.RunPython.noop),
    ]
