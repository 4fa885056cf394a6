from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path
from django.utils.translation import gettext_lazy as _

from accounts.views import favicon, home
from chain.views import healthz
from records.api import oauth as oauth_pages
from records.fhir.views import SmartConfigurationView

# The admin signs in through allauth (2FA, lockout), never Django's bare password form.
admin.site.login = secure_admin_login(admin.site.login)
admin.site.site_header = _("Yilian administration")
admin.site.site_title = _("Yilian")
admin.site.index_title = _("Institutions, staff and the node")

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("favicon.ico", favicon, name="favicon"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("api/v1/", include("records.api.urls")),
    path("o/", include("records.api.oauth_urls")),
    path("fhir/r4/", include("records.fhir.urls")),
    path(".well-known/smart-configuration", SmartConfigurationView.as_view(), name="smart_config"),
    path("account/apps/", oauth_pages.apps_page, name="oauth_apps"),
    path("account/apps/<str:client_id>/disconnect/", oauth_pages.app_disconnect_view, name="oauth_app_disconnect"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("accounts/", include("accounts.urls")),
    path("", include("records.urls")),
    path("", include("chain.urls")),
    path("", home, name="home"),
]
