from django.urls import include, path

from records import views_breakglass, views_requests, views_sharing

urlpatterns = [
    path("", include("records.footprint.urls")),
    path("", include("records.research.urls")),
    path("", include("records.clinical.urls")),
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
    path("records/<uuid:record_id>/sensitive/", views_sharing.record_set_sensitive, name="record_set_sensitive"),
    path("clinic/patients/", views_requests.clinic_patients, name="clinic_patients"),
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
]
