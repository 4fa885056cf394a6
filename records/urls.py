"""The records app's pages: each room's urls, under the same paths as before the rooms."""

from django.urls import include, path

urlpatterns = [
    path("", include("records.clinical.urls")),
    path("", include("records.sharing.urls")),
    path("", include("records.footprint.urls")),
    path("", include("records.research.urls")),
    path("", include("records.consortium.urls")),
    path("", include("records.fhir.portal_urls")),
]
