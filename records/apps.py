from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class RecordsConfig(AppConfig):
    name = "records"
    verbose_name = _("Medical records")

    def ready(self) -> None:
        # Fill the ledger's one registry; opens no store (DESIGN section 3).
        from chain.services import register_health_section
        from records import consortium, ledger
        from records.footprint import forwarding
        from records.sharing import emergency
        from records.sharing.rekey import rekey_health

        ledger.register()
        consortium.register()  # what other nodes may ask of this one (cards, records, grants)
        forwarding.register()  # and the accesses to this node's patients they log
        emergency.register()  # and emergency releases for this node's patients
        register_health_section("rekeying", report=rekey_health, template="ops/_rekeying.html")
