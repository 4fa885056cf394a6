from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class RecordsConfig(AppConfig):
    name = "records"
    verbose_name = _("Medical records")

    def ready(self) -> None:
        # Fill the ledger's one registry; opens no store (DESIGN section 3).
        from records import ledger

        ledger.register()
