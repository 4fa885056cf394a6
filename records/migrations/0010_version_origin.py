"""Why a version exists: original, amendment, or re-encryption after a revocation.

Versions a re-keying job wrote were stored as if the patient had amended the
record; they get their origin and their predecessor's clinical author back.
"""

from django.db import migrations, models


def classify(apps, schema_editor):
    RecordVersion = apps.get_model("records", "RecordVersion")
    RekeyItem = apps.get_model("records", "RekeyItem")
    RecordVersion.objects.filter(number__gt=1).update(origin="amendment")
    rekeyed = RekeyItem.objects.exclude(new_version=None).values_list("new_version_id", flat=True)
    for version in RecordVersion.objects.filter(pk__in=list(rekeyed)).order_by("record_id", "number"):
        previous = RecordVersion.objects.filter(record_id=version.record_id, number=version.number - 1).first()
        version.origin = "rekey"
        if previous is not None:
            version.created_by_id = previous.created_by_id
        version.save(update_fields=["origin", "created_by"])


class Migration(migrations.Migration):
    dependencies = [("records", "0009_discarded_drafts")]

    operations = [
        migrations.AddField(
            model_name="recordversion",
            name="origin",
            field=models.CharField(
                choices=[
                    ("original", "Original"),
                    ("amendment", "Amendment"),
                    ("rekey", "Re-encrypted after a revocation"),
                ],
                default="original",
                max_length=10,
            ),
        ),
        migrations.RunPython(classify, migrations.RunPython.noop),
    ]
