"""What the REST API says about people, records, grants and the footprint (output), and what it takes (input)."""

from __future__ import annotations

from rest_framework import serializers

from records.models import Grant, GrantPurpose, GrantScope, MedicalRecord, RecordKind, Visit
from records.sharing.forms import CHOSEN_PURPOSES

CLINICAL_KINDS = [(value, label) for value, label in RecordKind.choices if value != RecordKind.DOCUMENT]


class Text(serializers.CharField):
    """A string field that refuses numbers and booleans instead of turning them into text.

    ``max_length`` holds for the text as sent, as the OpenAPI schema says
    (``maxLength``), not only once surrounding whitespace is trimmed.
    """

    default_error_messages = {"invalid": serializers.CharField.default_error_messages["invalid"]}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class Person(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    name = serializers.CharField(source="display_name")
    role = serializers.CharField()
    institution = serializers.CharField(source="institution.code", allow_null=True, default=None)


class Me(Person):
    email = serializers.EmailField()
    health_id = serializers.CharField(allow_null=True, help_text="A patient's Yilian ID; null for staff.")
    language = serializers.CharField()


class RecordSummary(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    patient = serializers.UUIDField(source="patient.public_id")
    kind = serializers.ChoiceField(choices=RecordKind.choices)
    status = serializers.ChoiceField(choices=MedicalRecord.Status.choices)
    sensitive = serializers.BooleanField()
    institution = serializers.CharField(source="institution.code", allow_null=True, default=None)
    author = serializers.CharField(source="author.display_name")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    version = serializers.IntegerField(source="current_version.number", allow_null=True)


class RecordFileOut(serializers.Serializer):
    id = serializers.UUIDField(source="record_file.public_id")
    name = serializers.CharField()
    media_type = serializers.CharField(source="record_file.media_type")
    size = serializers.IntegerField(source="record_file.size")
    status = serializers.CharField(source="record_file.status")
    url = serializers.CharField(help_text="Download with the same authentication; Range requests are answered.")


class Anchor(serializers.Serializer):
    transaction = serializers.CharField(help_text="The CID of the anchoring transaction.")
    root_cid = serializers.CharField(help_text="The CID of the version's ciphertext DAG.")
    commitment = serializers.CharField()
    sealed = serializers.BooleanField(help_text="Whether a block holds the anchor yet.")
    height = serializers.IntegerField(allow_null=True)
    block = serializers.CharField(allow_blank=True)


class VersionOut(serializers.Serializer):
    number = serializers.IntegerField()
    origin = serializers.CharField()
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField(source="created_by.display_name")
    storage = serializers.CharField()


class RecordDetail(RecordSummary):
    basis = serializers.CharField(help_text="Why this caller may read it: patient, author, care-team, grant, …")
    shown_version = serializers.IntegerField()
    content = serializers.DictField(help_text="The decrypted content of the version shown; its fields by kind.")
    files = RecordFileOut(many=True)
    versions = VersionOut(many=True)
    anchor = Anchor(allow_null=True)


class GrantOut(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    grantee = serializers.SerializerMethodField()
    scope = serializers.ChoiceField(choices=GrantScope.choices)
    kinds = serializers.ListField(child=serializers.ChoiceField(choices=RecordKind.choices))
    records = serializers.SerializerMethodField()
    include_sensitive = serializers.BooleanField()
    purpose = serializers.ChoiceField(choices=GrantPurpose.choices)
    valid_from = serializers.DateTimeField()
    valid_until = serializers.DateTimeField()
    status = serializers.ChoiceField(choices=Grant.Status.choices)
    issued_tx = serializers.CharField(allow_blank=True)
    revoked_at = serializers.DateTimeField(allow_null=True)

    def get_grantee(self, grant: Grant) -> dict:
        who = grant.grantee_user or grant.grantee_institution
        kind = "user" if grant.grantee_user_id else "institution"
        return {"kind": kind, "id": str(who.public_id), "name": who.display_name}

    def get_records(self, grant: Grant) -> list[str]:
        return [str(r.public_id) for r in grant.records.all()]


class GrantIn(serializers.Serializer):
    """A new grant. Exactly one of ``grantee_user`` (a verified clinician's id) and
    ``grantee_institution`` (an institution's code)."""

    grantee_user = serializers.UUIDField(required=False)
    grantee_institution = serializers.CharField(required=False, max_length=32)
    scope = serializers.ChoiceField(choices=GrantScope.choices)
    kinds = serializers.ListField(child=serializers.ChoiceField(choices=RecordKind.choices), required=False)
    records = serializers.ListField(child=serializers.UUIDField(), required=False, max_length=1000)
    include_sensitive = serializers.BooleanField(default=False)
    purpose = serializers.ChoiceField(
        choices=CHOSEN_PURPOSES, help_text="Emergency grants are made by break-glass only."
    )
    valid_from = serializers.DateTimeField(required=False)
    valid_until = serializers.DateTimeField()


class ProofOut(serializers.Serializer):
    state = serializers.ChoiceField(choices=["unlogged", "pending", "verified", "failed"])
    transaction = serializers.CharField(source="tx_cid", allow_blank=True)
    height = serializers.IntegerField(allow_null=True)
    block = serializers.CharField(source="block_cid", allow_blank=True)
    tx_root = serializers.CharField(allow_blank=True)
    digest = serializers.CharField(allow_blank=True)
    position = serializers.IntegerField(allow_null=True)
    batch_size = serializers.IntegerField()
    merkle_proof = serializers.DictField(source="proof", allow_null=True)


class FootprintEvent(serializers.Serializer):
    id = serializers.UUIDField(source="event.public_id")
    at = serializers.DateTimeField(source="event.at")
    actor = serializers.CharField(source="event.actor.display_name", allow_null=True, default=None)
    institution = serializers.CharField(source="event.actor_institution.display_name", allow_null=True, default=None)
    action = serializers.CharField(source="event.action")
    outcome = serializers.CharField(source="event.outcome")
    purpose = serializers.CharField(source="event.purpose")
    basis = serializers.CharField(source="event.basis")
    record = serializers.UUIDField(source="event.record.public_id", allow_null=True, default=None)
    client = serializers.CharField(source="event.client", help_text="The application: empty for the portal.")
    own = serializers.BooleanField(help_text="Whether it was the patient's own access.")
    chain = ProofOut()


class NotificationOut(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    kind = serializers.CharField()
    text = serializers.CharField()
    link = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    read_at = serializers.DateTimeField(allow_null=True)


class SharedWithMe(serializers.Serializer):
    grant = serializers.UUIDField(source="public_id")
    patient = Person()
    scope = serializers.ChoiceField(choices=GrantScope.choices)
    kinds = serializers.ListField(child=serializers.CharField())
    purpose = serializers.ChoiceField(choices=GrantPurpose.choices)
    valid_until = serializers.DateTimeField()
    through_institution = serializers.BooleanField()


class VisitIn(serializers.Serializer):
    patient = serializers.CharField(max_length=100, help_text="The patient's Yilian ID or email address.")
    kind = serializers.ChoiceField(choices=Visit.Kind.choices, default=Visit.Kind.OUTPATIENT)
    card_code = serializers.CharField(
        max_length=20, required=False, help_text="A patient of another node: the one-time code from their portal."
    )


class VisitOut(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    patient = Person()
    institution = serializers.CharField(source="institution.code")
    kind = serializers.ChoiceField(choices=Visit.Kind.choices)
    status = serializers.ChoiceField(choices=Visit.Status.choices)
    opened_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField(allow_null=True)


class RecordIn(serializers.Serializer):
    visit = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=CLINICAL_KINDS)
    content = serializers.DictField(help_text="The record's fields, as the record's form names them.")


class DraftIn(serializers.Serializer):
    content = serializers.DictField()


class AmendIn(serializers.Serializer):
    content = serializers.DictField()
    reason = serializers.CharField(max_length=500)
