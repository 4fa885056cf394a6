"""Register, list and remove the third-party apps that may ask people for access (OAuth2, PKCE).

    python manage.py api_app register --name "Health diary" --redirect-uri https://diary.example/callback
    python manage.py api_app list
    python manage.py api_app remove CLIENT_ID

A registered app is public (a phone or browser app: no secret, PKCE proves
it), unless ``--confidential`` (a server that can keep a secret, printed once).
Redirect URIs must be https, or http on the loopback address for development.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from oauth2_provider.generators import generate_client_secret
from oauth2_provider.models import get_application_model

from records.api.oauth import redirect_uri_allowed


def check_redirect_uri(uri: str) -> str:
    if not redirect_uri_allowed(uri):
        raise CommandError(f"{uri}: a redirect URI must be https, or http on the loopback address")
    return uri


class Command(BaseCommand):
    help = "Register, list and remove OAuth2 apps (authorization code with PKCE)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        register = sub.add_parser("register", help="register an app; prints its client id")
        register.add_argument("--name", required=True)
        register.add_argument("--redirect-uri", action="append", required=True, dest="redirect_uris")
        register.add_argument("--confidential", action="store_true", help="a server app with a client secret")
        sub.add_parser("list", help="every registered app")
        remove = sub.add_parser("remove", help="remove an app and every token it holds")
        remove.add_argument("client_id")

    def handle(self, *args, action: str, **options) -> None:
        getattr(self, f"do_{action}")(**options)

    def do_register(self, *, name: str, redirect_uris: list[str], confidential: bool, **_: object) -> None:
        uris = [check_redirect_uri(u) for u in redirect_uris]
        Application = get_application_model()
        secret = generate_client_secret() if confidential else ""
        app = Application.objects.create(
            name=name,
            redirect_uris=" ".join(uris),
            client_type=Application.CLIENT_CONFIDENTIAL if confidential else Application.CLIENT_PUBLIC,
            authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
            client_secret=secret,
            hash_client_secret=True,
            skip_authorization=False,
        )
        self.stdout.write(f"client_id: {app.client_id}")
        if confidential:
            self.stdout.write(f"client_secret: {secret}  (shown once; only its hash is kept)")

    def do_list(self, **_: object) -> None:
        for app in get_application_model().objects.order_by("name"):
            self.stdout.write(f"{app.client_id}  {app.client_type:12}  {app.name}  {app.redirect_uris}")

    def do_remove(self, *, client_id: str, **_: object) -> None:
        removed, _detail = get_application_model().objects.filter(client_id=client_id).delete()
        if not removed:
            raise CommandError(f"no app with client id {client_id}")
        self.stdout.write(f"removed {client_id} and its tokens")
