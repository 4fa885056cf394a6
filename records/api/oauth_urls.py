"""``/o/``: OAuth2 for apps (authorize with our consent screen, token, revoke, introspect); connected apps."""

from django.urls import path
from oauth2_provider import views as oauth

from records.api import oauth as consent

urlpatterns = [
    path("authorize/", consent.ConsentView.as_view(), name="authorize"),
    path("token/", oauth.TokenView.as_view(), name="token"),
    path("revoke_token/", oauth.RevokeTokenView.as_view(), name="revoke-token"),
    path("introspect/", oauth.IntrospectTokenView.as_view(), name="introspect"),
]
app_name = "oauth2_provider"
