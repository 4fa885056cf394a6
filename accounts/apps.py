from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = _("Accounts and institutions")

    def ready(self) -> None:
        from accounts import ledger

        ledger.register()  # the "key registered" transaction type and its projection
