"""Sharing against a simple model: random sequences of grants, revocations, expiry, new records,
access requests, break-glass and reads; the code and a plain re-statement of the rules must agree.

The world is fixed and built once per test: two patients (Alice, Bob); Carol, the author, at the
North hospital (the only clinician there, so the care-team rule never decides anything the author
rule does not); Dave and Fay at the South hospital, whose administrator Otto reviews their
break-glass sessions; Gus, a doctor at a third hospital with no relation to anyone; Erin, a
researcher at the research institute. Everyone is verified with TOTP on, and their key
registrations are sealed on chain so grant transactions validate.

Each hypothesis example runs inside a savepoint that is rolled back at the end, so every example
starts from the same database. Nothing is sealed during an example (transactions wait in the
mempool, a database table), so the chain store on disk never gets ahead of the database.

The clock is frozen and moved by hand: ``django.utils.timezone.now`` (what the access helper, grants
and break-glass read) and the chain clock (``chain.core.transaction.now_ms``, which stamps
transactions, and ``chain.ledger_services.clock_ms``, which judges them) both return the model's
clock. They must move together: a break-glass transaction carries ``not_after`` from
``timezone.now()`` and is refused unless it lies within 12 hours of the transaction's own
timestamp, and a transaction stamped ahead of the validating clock is refused as from the future.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from unittest import mock

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from chain.ledger_services import chain_seal, datetime_to_ms
from records.clinical.services import record_create, record_finalize_imported, visit_open
from records.keys import decrypt_content
from records.models import AccessEvent
from records.policy import RecordAccessDenied, record_get_for_user
from records.sharing.breakglass import break_glass_close, break_glass_open
from records.sharing.grants import grant_issue, grant_revoke, record_set_sensitive
from records.sharing.requests import access_request_approve, access_request_create, access_request_decline
from tests.factories import PASSWORD, InstitutionFactory, UserFactory, enable_totp

pytestmark = pytest.mark.django_db

EXAMPLES, STEPS = 40, 25
PATIENTS = ("alice", "bob")
READERS = ("alice", "bob", "carol", "dave", "fay", "gus", "erin", "otto")
KINDS = ("prescription", "lab_report", "note")
GRANTEES = ("dave", "fay", "erin", "South hospital", "Research institute")
INSTITUTION_OF = {"carol": "North hospital", "dave": "South hospital", "fay": "South hospital"}
INSTITUTION_OF |= {"gus": "East hospital", "erin": "Research institute", "otto": "South hospital"}
ROLE_OF = {"alice": "patient", "bob": "patient", "carol": "clinician", "dave": "clinician", "fay": "clinician"}
ROLE_OF |= {"gus": "clinician", "erin": "researcher", "otto": "institution_admin"}


# -- the model -------------------------------------------------------------------------------------
@dataclass(eq=False)
class MRecord:
    name: str
    patient: str
    kind: str
    draft: bool
    sensitive: bool = False
    obj: object = field(default=None, repr=False)


@dataclass(eq=False)
class MGrant:
    name: str
    patient: str
    grantee: str
    scope: str
    kinds: tuple
    named: tuple  # names of records
    purpose: str
    valid_from: datetime = field(repr=False)
    valid_until: datetime = field(repr=False)
    include_sensitive: bool
    revoked: bool = False
    obj: object = field(default=None, repr=False)

    def usable_by(self, user: str, now: datetime) -> bool:
        if self.revoked or not (self.valid_from <= now < self.valid_until):
            return False
        return self.grantee in (user, INSTITUTION_OF.get(user))

    def covers(self, record: MRecord) -> bool:
        if record.patient != self.patient:
            return False
        named = record.name in self.named
        if record.sensitive and not (named or self.include_sensitive):
            return False
        if self.scope == "all":
            return True
        if self.scope == "kinds":
            return record.kind in self.kinds
        return named


@dataclass(eq=False)
class MRequest:
    name: str
    requester: str
    patient: str
    scope: str
    kinds: tuple
    purpose: str
    days: int
    status: str = "pending"
    obj: object = field(default=None, repr=False)


@dataclass(eq=False)
class MSession:
    name: str
    clinician: str
    patient: str
    expires_at: datetime = field(repr=False)
    closed: bool = False
    obj: object = field(default=None, repr=False)

    def active(self, now: datetime) -> bool:
        return not self.closed and now < self.expires_at


def predicted_basis(user: str, record: MRecord, grants, sessions, now: datetime) -> str | None:
    """The rules of ``records.policy`` restated: the basis ``user`` reads ``record`` on, or None."""
    if user == record.patient:
        return None if record.draft else "patient"  # the author is never the patient here
    role = ROLE_OF[user]
    if role == "clinician" and user == "carol":  # the author of every record
        return "author"
    # Researchers never open a single record: research grants feed de-identified datasets only.
    if role != "clinician" or record.draft:
        return None
    if any(g.usable_by(user, now) and g.covers(record) for g in grants):
        return "grant"
    if role == "clinician" and any(
        s.clinician == user and s.patient == record.patient and s.active(now) for s in sessions
    ):
        return "break-glass"
    return None


# -- the world ------------------------------------------------------------------------------------
@pytest.fixture
def world(node):
    north = InstitutionFactory(code="north", kind="hospital", name="北院", name_en="North Hospital")
    south = InstitutionFactory(code="south", kind="hospital", name="南院", name_en="South Hospital")
    east = InstitutionFactory(code="east", kind="hospital", name="东院", name_en="East Hospital")
    lab = InstitutionFactory(code="lab", kind="research", name="研究院", name_en="Research Institute")
    people = {
        "alice": UserFactory(email="alice@example.org", role="patient", name="Alice"),
        "bob": UserFactory(email="bob@example.org", role="patient", name="Bob"),
    }
    where = {"North hospital": north, "South hospital": south, "East hospital": east, "Research institute": lab}
    for name in ("carol", "dave", "fay", "gus", "erin", "otto"):
        user = UserFactory(
            email=f"{name}@example.org", role=ROLE_OF[name], institution=where[INSTITUTION_OF[name]], verified=True
        )
        enable_totp(user)
        people[name] = user
    visits = {p: visit_open(clinician=people["carol"], patient=people[p]) for p in PATIENTS}
    chain_seal()  # everyone's key registration, so the grant validator finds the keys
    return {"people": people, "institutions": where, "visits": visits}


# -- the machine --------------------------------------------------------------------------------
class SharingMachine(RuleBasedStateMachine):
    world: dict = {}
    clock: list = []  # one datetime, shared with the patched clocks
    start: datetime

    def __init__(self):
        super().__init__()
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        self.clock[0] = self.start
        self.people = self.world["people"]
        self.records: list[MRecord] = []
        self.grants: list[MGrant] = []
        self.requests: list[MRequest] = []
        self.sessions: list[MSession] = []
        self.steps: list[str] = []

    def teardown(self):
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    @property
    def now(self) -> datetime:
        return self.clock[0]

    def at(self, moment: datetime) -> str:
        """``moment`` relative to the example's start, in hours: ``+5h``."""
        return f"+{(moment - self.start) / timedelta(hours=1):g}h"

    def window(self, grant: MGrant) -> str:
        return f"{grant} from {self.at(grant.valid_from)} until {self.at(grant.valid_until)}"

    def until(self, session: MSession) -> str:
        return f"{session} until {self.at(session.expires_at)}"

    def log(self, text: str) -> None:
        self.steps.append(f"[{self.at(self.now)}] {text}")

    def state(self) -> str:
        lines = [f"clock: {self.at(self.now)}", "steps:", *(f"  {s}" for s in self.steps)]
        lines += ["records:", *(f"  {r}" for r in self.records)]
        lines += ["grants:", *(f"  {self.window(g)}" for g in self.grants)]
        lines += ["requests:", *(f"  {r}" for r in self.requests)]
        lines += ["break-glass:", *(f"  {self.until(s)}" for s in self.sessions)]
        return "\n".join(lines)

    # -- checks ---------------------------------------------------------------------------------
    def read(self, user: str, record: MRecord) -> str | None:
        try:
            access = record_get_for_user(self.people[user], record.obj.public_id)
        except (RecordAccessDenied, Http404):  # a patient is not shown a clinician's unsigned draft
            return None
        assert decrypt_content(access.dek, access.version)["title"] == record.name
        return access.basis

    def expect(self, user: str, record: MRecord) -> None:
        expected = predicted_basis(user, record, self.grants, self.sessions, self.now)
        got = self.read(user, record)
        assert got == expected, (
            f"{user} reading {record.name}: the model says {expected or 'denied'}, the code says {got or 'denied'}"
            f"\n{self.state()}"
        )

    def denial(self, user: str, record: MRecord) -> str:
        denied = AccessEvent.objects.filter(actor=self.people[user], record=record.obj, outcome="denied")
        return denied.order_by("-pk").values_list("detail", flat=True).first() or ""

    @precondition(lambda self: self.records)
    @rule(user=st.sampled_from(READERS), i=st.integers(0, 50))
    def check(self, user, i):
        self.expect(user, self.records[i % len(self.records)])

    @invariant()
    def everyone_agrees_on_every_record(self):
        # Cheap enough (a handful of queries per read, a few records per example).
        for record in self.records:
            for user in READERS:
                self.expect(user, record)

    # -- records --------------------------------------------------------------------------------
    @rule(patient=st.sampled_from(PATIENTS), kind=st.sampled_from(KINDS), draft=st.booleans(), sensitive=st.booleans())
    def new_record(self, patient, kind, draft, sensitive):
        name = f"r{len(self.records)}"
        obj = record_create(
            patient=self.people[patient],
            author=self.people["carol"],
            kind=kind,
            content={"title": name},
            visit=self.world["visits"][patient],
        )
        record = MRecord(name=name, patient=patient, kind=kind, draft=draft, obj=obj)
        if not draft:
            record.obj = record_finalize_imported(record=obj)
            if sensitive:  # the patient marks it at once
                record_set_sensitive(patient=self.people[patient], record=record.obj, sensitive=True)
                record.sensitive = True
        self.records.append(record)
        self.log(f"new {record}")

    @precondition(lambda self: any(r.draft for r in self.records))
    @rule(i=st.integers(0, 50))
    def finalize(self, i):
        drafts = [r for r in self.records if r.draft]
        record = drafts[i % len(drafts)]
        record.obj = record_finalize_imported(record=record.obj)
        record.draft = False
        self.log(f"finalize {record.name}")

    @precondition(lambda self: any(not r.draft for r in self.records))
    @rule(i=st.integers(0, 50), sensitive=st.booleans())
    def set_sensitive(self, i, sensitive):
        final = [r for r in self.records if not r.draft]
        record = final[i % len(final)]
        record_set_sensitive(patient=self.people[record.patient], record=record.obj, sensitive=sensitive)
        record.sensitive = sensitive
        self.log(f"{record.patient} marks {record.name} sensitive={sensitive}")

    # -- grants ---------------------------------------------------------------------------------
    def _remember_grant(self, obj, *, patient, grantee) -> MGrant:
        grant = MGrant(
            name=f"g{len(self.grants)}",
            patient=patient,
            grantee=grantee,
            scope=obj.scope,
            kinds=tuple(obj.kinds or ()),
            named=tuple(r.name for r in self.records if r.obj.pk in set(obj.records.values_list("pk", flat=True))),
            purpose=obj.purpose,
            valid_from=obj.valid_from,
            valid_until=obj.valid_until,
            include_sensitive=obj.include_sensitive,
            obj=obj,
        )
        self.grants.append(grant)
        return grant

    @rule(
        data=st.data(),
        patient=st.sampled_from(PATIENTS),
        grantee=st.sampled_from(GRANTEES),
        scope=st.sampled_from(("all", "kinds", "records")),
        kinds=st.sets(st.sampled_from(KINDS), min_size=1),
        purpose=st.sampled_from(("treatment", "research")),
        starts_in=st.sampled_from((0, 0, 3)),
        hours=st.integers(1, 48),
        include_sensitive=st.booleans(),
    )
    def grant(self, data, patient, grantee, scope, kinds, purpose, starts_in, hours, include_sensitive):
        # A patient names only records they can see: their own, signed ones.
        visible = [r for r in self.records if r.patient == patient and not r.draft]
        named = []
        if scope == "records":
            if not visible:
                scope = "all"
            else:
                named = data.draw(st.lists(st.sampled_from(visible), min_size=1, max_size=3, unique=True))
        target = (
            {"grantee_institution": self.world["institutions"][grantee]}
            if grantee in self.world["institutions"]
            else {"grantee_user": self.people[grantee]}
        )
        valid_from = self.now + timedelta(hours=starts_in)
        obj = grant_issue(
            patient=self.people[patient],
            scope=scope,
            kinds=sorted(kinds) if scope == "kinds" else (),
            records=[r.obj for r in named],
            purpose=purpose,
            valid_from=valid_from,
            valid_until=valid_from + timedelta(hours=hours),
            include_sensitive=include_sensitive,
            **target,
        )
        grant = self._remember_grant(obj, patient=patient, grantee=grantee)
        assert set(grant.named) == {r.name for r in named}
        self.log(f"grant {self.window(grant)}")

    @precondition(lambda self: self.grants)
    @rule(i=st.integers(0, 50))
    def revoke(self, i):
        grant = self.grants[i % len(self.grants)]
        grant_revoke(patient=self.people[grant.patient], grant=grant.obj)
        grant.revoked = True
        self.log(f"{grant.patient} revokes {grant.name}")

    @rule(hours=st.sampled_from((1, 2, 3, 6, 12, 24, 48)))
    def advance(self, hours):
        self.clock[0] = self.now + timedelta(hours=hours)
        self.log(f"advance {hours}h")

    # -- access requests ------------------------------------------------------------------------
    @rule(
        requester=st.sampled_from(("dave", "fay", "erin")),
        patient=st.sampled_from(PATIENTS),
        scope=st.sampled_from(("all", "kinds")),
        kinds=st.sets(st.sampled_from(KINDS), min_size=1),
        purpose=st.sampled_from(("treatment", "research", "second_opinion")),
        days=st.integers(1, 3),
    )
    def request(self, requester, patient, scope, kinds, purpose, days):
        arguments = {
            "requester": self.people[requester],
            "patient": self.people[patient],
            "scope": scope,
            "kinds": sorted(kinds) if scope == "kinds" else (),
            "purpose": purpose,
            "reason": "Follow-up after referral",
            "days": days,
        }
        if ROLE_OF[requester] != "clinician":
            with pytest.raises(PermissionDenied):
                access_request_create(**arguments)
            self.log(f"{requester} may not request (refused)")
            return
        if any(r.requester == requester and r.patient == patient and r.status == "pending" for r in self.requests):
            with pytest.raises(ValidationError):
                access_request_create(**arguments)
            self.log(f"{requester} asks {patient} again while pending (refused)")
            return
        obj = access_request_create(**arguments)
        request = MRequest(
            name=f"q{len(self.requests)}",
            requester=requester,
            patient=patient,
            scope=scope,
            kinds=tuple(sorted(kinds)) if scope == "kinds" else (),
            purpose=purpose,
            days=days,
            obj=obj,
        )
        self.requests.append(request)
        self.log(f"request {request}")

    def _pending(self) -> list[MRequest]:
        return [r for r in self.requests if r.status == "pending"]

    @precondition(lambda self: self._pending())
    @rule(i=st.integers(0, 50))
    def approve(self, i):
        pending = self._pending()
        request = pending[i % len(pending)]
        obj = access_request_approve(patient=self.people[request.patient], request=request.obj)
        request.status = "approved"
        grant = self._remember_grant(obj.grant, patient=request.patient, grantee=request.requester)
        assert (grant.scope, grant.kinds, grant.purpose) == (request.scope, request.kinds, request.purpose)
        assert (grant.valid_from, grant.valid_until) == (self.now, self.now + timedelta(days=request.days))
        self.log(f"{request.patient} approves {request.name}: {self.window(grant)}")

    @precondition(lambda self: self._pending())
    @rule(i=st.integers(0, 50))
    def decline(self, i):
        pending = self._pending()
        request = pending[i % len(pending)]
        access_request_decline(patient=self.people[request.patient], request=request.obj)
        request.status = "declined"
        self.log(f"{request.patient} declines {request.name}")

    # -- break-glass ----------------------------------------------------------------------------
    @rule(
        clinician=st.sampled_from(("dave", "fay", "erin")), patient=st.sampled_from(PATIENTS), hours=st.integers(1, 12)
    )
    def break_glass(self, clinician, patient, hours):
        arguments = {
            "clinician": self.people[clinician],
            "patient": self.people[patient],
            "reason": "unconscious",
            "detail": "Brought in unconscious",
            "credential": PASSWORD,
            "hours": hours,
        }
        if ROLE_OF[clinician] != "clinician":  # researchers never break the glass
            with pytest.raises(PermissionDenied):
                break_glass_open(**arguments)
            self.log(f"{clinician} may not break the glass (refused)")
            return
        obj = break_glass_open(**arguments)
        current = [s for s in self.sessions if s.clinician == clinician and s.patient == patient and s.active(self.now)]
        if current:  # the session already open is returned, not a second one
            assert obj.pk == current[-1].obj.pk
            self.log(f"{clinician} breaks the glass for {patient} again: {current[-1].name} returned")
            return
        session = MSession(
            name=f"b{len(self.sessions)}",
            clinician=clinician,
            patient=patient,
            expires_at=self.now + timedelta(hours=hours),
            obj=obj,
        )
        assert obj.expires_at == session.expires_at
        self.sessions.append(session)
        self.log(f"break-glass {self.until(session)}")

    @precondition(lambda self: any(not s.closed for s in self.sessions))
    @rule(i=st.integers(0, 50))
    def close(self, i):
        sessions = [s for s in self.sessions if not s.closed]
        session = sessions[i % len(sessions)]
        break_glass_close(reviewer=self.people["otto"], session=session.obj, review="justified")
        session.closed = True
        self.log(f"otto closes {session.name}")


@contextmanager
def frozen_machine(world):
    """A machine class bound to ``world``, with every clock frozen at its model clock."""
    start = timezone.now().replace(microsecond=0) + timedelta(minutes=1)
    clock = [start]

    class Machine(SharingMachine):
        pass

    Machine.world, Machine.clock, Machine.start = world, clock, start

    def frozen_now() -> datetime:
        return clock[0]

    def frozen_ms() -> int:
        return datetime_to_ms(clock[0])

    with (
        mock.patch("django.utils.timezone.now", frozen_now),
        mock.patch("chain.core.transaction.now_ms", frozen_ms),
        mock.patch("chain.ledger_services.clock_ms", frozen_ms),
    ):
        yield Machine


def test_sharing_agrees_with_the_model(world):
    with frozen_machine(world) as Machine:
        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            ),
        )


# -- records entering a grant's scope after it was issued --------------------------------------------
# Sequences the machine found when keys reached grantees only at grant time and at version writes.
def test_a_draft_signed_after_the_grant_is_readable_by_the_grantee(world):
    with frozen_machine(world) as Machine:
        machine = Machine()
        try:
            machine.new_record(patient="alice", kind="note", draft=True, sensitive=False)
            machine.grant(None, "alice", "dave", "all", {"note"}, "treatment", 0, 5, False)
            machine.finalize(i=0)
            assert machine.read("dave", machine.records[0]) == "grant", machine.denial("dave", machine.records[0])
        finally:
            machine.teardown()


def test_a_record_no_longer_sensitive_is_readable_by_the_grantee(world):
    with frozen_machine(world) as Machine:
        machine = Machine()
        try:
            machine.new_record(patient="alice", kind="note", draft=False, sensitive=True)
            machine.grant(None, "alice", "South hospital", "all", {"note"}, "treatment", 0, 5, False)
            assert machine.read("fay", machine.records[0]) is None
            machine.set_sensitive(i=0, sensitive=False)
            assert machine.read("fay", machine.records[0]) == "grant", machine.denial("fay", machine.records[0])
        finally:
            machine.teardown()
