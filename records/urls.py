from django.urls import include, path

from records import views, views_breakglass, views_requests, views_sharing

urlpatterns = [
    path("", include("records.footprint.urls")),
    path("", include("records.research.urls")),
    path("patient/", views.patient_home, name="patient_home"),
    path("patient/upload/", views.patient_upload, name="patient_upload"),
    path("patient/sharing/", views_sharing.patient_sharing, name="patient_sharing"),
    path("patient/sharing/new/", views_sharing.patient_grant_new, name="patient_grant_new"),
    path("patient/sharing/<uuid:grant_id>/revoke/", views_sharing.patient_grant_revoke, name="patient_grant_revoke"),
    path(
        "patient/sharing/requests/<uuid:request_id>/approve/",
        views_requests.patient_request_approve,
        name="patient_request_approve",
    ),
    path(
        "patient/sharing/requests/<uuid:request_id>/decline/",
        views_requests.patient_request_decline,
        name="patient_request_decline",
    ),
    path("notifications/", views_requests.notifications, name="notifications"),
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
    path("records/<uuid:record_id>/sensitive/", views_sharing.record_set_sensitive, name="record_set_sensitive"),
    path("records/<uuid:record_id>/upload/", views.record_file_upload, name="record_file_upload"),
    path("records/<uuid:record_id>/files/<uuid:file_id>/remove/", views.record_file_remove, name="record_file_remove"),
    path("records/<uuid:record_id>/finalize/", views.record_finalize, name="record_finalize"),
    path("records/<uuid:record_id>/discard/", views.record_discard, name="record_discard"),
    path("clinic/", views.clinic_home, name="clinic_home"),
    path("clinic/patients/", views.clinic_patients, name="clinic_patients"),
    path("clinic/requests/new/", views_requests.clinic_request_new, name="clinic_request_new"),
    path(
        "clinic/requests/<uuid:request_id>/withdraw/",
        views_requests.clinic_request_withdraw,
        name="clinic_request_withdraw",
    ),
    path("clinic/break-glass/", views_breakglass.clinic_break_glass, name="clinic_break_glass"),
    path("institution/break-glass/", views_breakglass.institution_break_glass, name="institution_break_glass"),
    path(
        "institution/break-glass/<uuid:session_id>/",
        views_breakglass.institution_break_glass_detail,
        name="institution_break_glass_detail",
    ),
    path("clinic/patients/<uuid:patient_id>/", views.clinic_chart, name="clinic_chart"),
    path("clinic/visits/<uuid:visit_id>/", views.clinic_visit, name="clinic_visit"),
    path("clinic/visits/<uuid:visit_id>/close/", views.clinic_visit_close, name="clinic_visit_close"),
    path("clinic/visits/<uuid:visit_id>/records/new/<str:kind>/", views.clinic_record_new, name="clinic_record_new"),
]
