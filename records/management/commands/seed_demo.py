"""Create the fictional demo consortium. Safe to run any number of times.

On the single node (``make run``) it seeds every institution and person. In a
consortium (``make cluster``) node I runs it with ``--cluster-node I``: it
creates the I-th institution only (its keys exist on its own node alone), with
its staff, the patients registered there and the node's operator, and the
records its own doctors wrote (a care institution also gets its share of
the research cohort; the research institute, its dataset). The other
institutions and their staff reach this node through the chain's directory
once the consortium runs (``accounts.directory``). Then ``--research-grants``
(which ``cluster run`` repeats until nothing waits) has this node's cohort
patients grant the research institute research use.
"""

from __future__ import annotations

from allauth.account.models import EmailAddress
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from accounts import demo
from accounts.models import Institution, User
from accounts.services import institution_create, user_create
from records.demo import (
    grant_cluster_research,
    seed_cluster_research,
    seed_demo_records,
    seed_demo_research,
    seed_institution_records,
)


class Command(BaseCommand):
    help = "Create demo institutions and users (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--quiet-logins", action="store_true", help="Do not print the demo logins.")
        parser.add_argument(
            "--cluster-node",
            type=int,
            metavar="I",
            help="Seed node I of a consortium (``cluster init``): the I-th institution's staff, patients, records.",
        )
        parser.add_argument(
            "--research-grants",
            action="store_true",
            help="In a running consortium: this node's research cohort grants the research institute access.",
        )

    def handle(self, *args, quiet_logins=False, cluster_node=None, research_grants=False, **options):
        if research_grants:
            issued, waiting = grant_cluster_research()
            self.stdout.write(f"research grants: {issued} issued, {waiting} waiting")
            return
        self._seed(quiet_logins, cluster_node)

    @transaction.atomic
    def _seed(self, quiet_logins, cluster_node):
        home = None if cluster_node is None else demo.cluster_institution(cluster_node)
        institutions = {}
        created = 0
        for item in demo.INSTITUTIONS:
            if home is not None and item.code != home:
                continue  # another node's: it lists itself on chain
            institution = Institution.objects.filter(code=item.code).first()
            if institution is None:
                institution = institution_create(
                    code=item.code, kind=item.kind, name=item.name, name_en=item.name_en, city=item.city
                )
                created += 1
            institutions[item.code] = institution
        admins = {}
        # Admins first, so the staff they vouch for can name them as verifier.
        for item in sorted(demo.users_at(home), key=lambda u: u.role != "institution_admin"):
            user = User.objects.filter(email=item.email).first()
            if user is None:
                user = user_create(
                    email=item.email,
                    password=demo.DEMO_PASSWORD,
                    role=item.role,
                    name=item.name,
                    name_en=item.name_en,
                    institution=institutions.get(item.institution) if item.institution else None,
                    staff_title=item.title,
                )
                if item.role == "operator":
                    user.is_superuser = True
                    user.save(update_fields=["is_superuser"])
                created += 1
            EmailAddress.objects.update_or_create(
                user=user, email=user.email, defaults={"verified": True, "primary": True}
            )
            if item.role == "institution_admin":
                admins[item.institution] = user
            if item.verified and item.institution and user.verified_at is None:
                user.verified_at = timezone.now()
                user.verified_by = admins.get(item.institution) if item.role != "institution_admin" else None
                user.save(update_fields=["verified_at", "verified_by"])
        if home is None:
            created += seed_demo_records()
            created += seed_demo_research()
        else:
            created += seed_institution_records(home)
            created += seed_cluster_research(home)
        self.stdout.write(f"Demo data ready ({created} new objects).")
        if home:
            here = institutions[home]
            self.stdout.write(f"{here.name} {here.name_en}")
        if not quiet_logins:
            for line in demo.login_lines():
                self.stdout.write(line)
