from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path
from django.utils.translation import gettext_lazy as _
from drf_spectacular.views import SpectacularAPIView

from accounts.views import home
from chain.views import healthz

# The admin signs in through allauth (2FA, lockout), never Django's bare password form.
admin.site.login = secure_admin_login(admin.site.login)
admin.site.site_header = _("Yilian administration")
admin.site.site_title = _("Yilian")
admin.site.index_title = _("Institutions, staff and the node")

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("accounts/", include("accounts.urls")),
    path("", include("records.urls")),
    path("", include("chain.urls")),
    path("", home, name="home"),
]
