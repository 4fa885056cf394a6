"""``/fhir/r4/``: FHIR R4 read and search, ``Patient/$everything``, Bulk Data ``$export``, the CapabilityStatement."""

from django.urls import path

from records.fhir import exports, views

urlpatterns = [
    path("", views.TransactionView.as_view(), name="fhir_transaction"),
    path("metadata", views.MetadataView.as_view(), name="fhir_metadata"),
    path(".well-known/smart-configuration", views.SmartConfigurationView.as_view(), name="fhir_smart_config"),
    path("Patient/<str:resource_id>/$everything", views.EverythingView.as_view(), name="fhir_everything"),
    path("$export", exports.KickoffView.as_view(), name="fhir_export"),
    path("$export-status/<uuid:job_id>", exports.StatusView.as_view(), name="fhir_export_status"),
    path("$export-file/<uuid:job_id>/<str:name>", exports.FileView.as_view(), name="fhir_export_file"),
    path("<str:resource_type>", views.SearchView.as_view(), name="fhir_search"),
    path("<str:resource_type>/<str:resource_id>", views.ReadView.as_view(), name="fhir_read"),
]
