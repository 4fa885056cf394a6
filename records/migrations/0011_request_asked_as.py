"""A request shows the doctor what they typed, not the account it reached, until approved."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def fill_asked_as(apps, schema_editor):
    AccessRequest = apps.get_model("records", "AccessRequest")
    for request in AccessRequest.objects.select_related("patient"):
        request.asked_as = request.patient.email
        request.save(update_fields=["asked_as"])


class Migration(migrations.Migration):
    dependencies = [("records", "0010_version_origin"), migrations.swappable_dependency(settings.AUTH_USER_MODEL)]

    operations = [
        migrations.AddField(
            model_name="accessrequest", name="asked_as", field=models.CharField(blank=True, max_length=254)
        ),
        migrations.AlterField(
            model_name="accessrequest",
            name="patient",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="access_requests",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.RunPython(fill_asked_as, migrations.RunPython.noop),
    ]
