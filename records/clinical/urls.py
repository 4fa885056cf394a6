from django.urls import path

from records.clinical import views

urlpatterns = [
    path("patient/", views.patient_home, name="patient_home"),
    path("patient/upload/", views.patient_upload, name="patient_upload"),
    path("records/<uuid:record_id>/", views.record_detail, name="record_detail"),
    path("records/<uuid:record_id>/status.json", views.record_status, name="record_status"),
    path("records/<uuid:record_id>/history/", views.record_history, name="record_history"),
    path("records/<uuid:record_id>/amend/", views.record_amend, name="record_amend"),
    path("records/<uuid:record_id>/files/<uuid:file_id>/", views.record_file, name="record_file"),
    path(
        "records/<uuid:record_id>/files/<uuid:file_id>/preview.png",
        views.record_file_preview,
        name="record_file_preview",
    ),
    path("records/<uuid:record_id>/edit/", views.record_edit, name="record_edit"),
    path("records/<uuid:record_id>/upload/", views.record_file_upload, name="record_file_upload"),
    path("records/<uuid:record_id>/files/<uuid:file_id>/remove/", views.record_file_remove, name="record_file_remove"),
    path("records/<uuid:record_id>/finalize/", views.record_finalize, name="record_finalize"),
    path("records/<uuid:record_id>/discard/", views.record_discard, name="record_discard"),
    path("clinic/", views.clinic_home, name="clinic_home"),
    path("clinic/patients/<uuid:patient_id>/", views.clinic_chart, name="clinic_chart"),
    path("clinic/visits/<uuid:visit_id>/", views.clinic_visit, name="clinic_visit"),
    path("clinic/visits/<uuid:visit_id>/close/", views.clinic_visit_close, name="clinic_visit_close"),
    path("clinic/visits/<uuid:visit_id>/records/new/<str:kind>/", views.clinic_record_new, name="clinic_record_new"),
]
