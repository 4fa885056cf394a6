"""``/fhir/r4/``: FHIR R4 read and search, ``Patient/$everything``, the CapabilityStatement."""

from django.urls import path

from records.fhir import views

urlpatterns = [
    path("", views.TransactionView.as_view(), name="fhir_transaction"),
    path("metadata", views.MetadataView.as_view(), name="fhir_metadata"),
    path(".well-known/smart-configuration", views.SmartConfigurationView.as_view(), name="fhir_smart_config"),
    path("Patient/<str:resource_id>/$everything", views.EverythingView.as_view(), name="fhir_everything"),
    path("<str:resource_type>", views.SearchView.as_view(), name="fhir_search"),
    path("<str:resource_type>/<str:resource_id>", views.ReadView.as_view(), name="fhir_read"),
]
