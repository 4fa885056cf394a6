"""The institution portal's exports page (the API's Bulk Data endpoints are in ``records.fhir.urls``)."""

from django.urls import path

from records.fhir import pages

urlpatterns = [
    path("institution/exports/", pages.institution_exports, name="institution_exports"),
]
