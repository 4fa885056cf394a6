"""The break-glass review note is sealed like the reason: to the patient, the clinician and the
institution. Existing plaintext notes are sealed, then the plaintext column is dropped."""

from django.db import migrations, models

READERS = ("patient", "clinician", "institution")


def seal_notes(apps, schema_editor):
    from records.keys import seal_message
    from records.models import review_note_aad

    BreakGlass = apps.get_model("records", "BreakGlass")
    for session in BreakGlass.objects.exclude(review_note="").select_related("patient", "clinician", "institution"):
        holders = [session.patient, session.clinician, session.institution]
        ciphertext, envelopes = seal_message(
            session.review_note, aad=review_note_aad(session.public_id), recipients=holders
        )
        session.review_note_ciphertext = ciphertext
        session.review_note_keys = {label: e.hex() for label, e in zip(READERS, envelopes, strict=True)}
        session.save(update_fields=["review_note_ciphertext", "review_note_keys"])


class Migration(migrations.Migration):
    dependencies = [("records", "0011_request_asked_as")]

    operations = [
        migrations.AddField(
            model_name="breakglass",
            name="review_note_ciphertext",
            field=models.BinaryField(default=b"", editable=False),
        ),
        migrations.AddField(
            model_name="breakglass",
            name="review_note_keys",
            field=models.JSONField(default=dict, editable=False),
        ),
        migrations.RunPython(seal_notes, migrations.RunPython.noop),
        migrations.RemoveField(model_name="breakglass", name="review_note"),
    ]
