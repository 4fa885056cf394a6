from django.urls import path

from records.sharing.views import breakglass, grants, ops, requests

urlpatterns = [
    path("patient/sharing/", grants.patient_sharing, name="patient_sharing"),
    path("patient/sharing/new/", grants.patient_grant_new, name="patient_grant_new"),
    path("patient/sharing/<uuid:grant_id>/revoke/", grants.patient_grant_revoke, name="patient_grant_revoke"),
    path(
        "patient/sharing/requests/<uuid:request_id>/approve/",
        requests.patient_request_approve,
        name="patient_request_approve",
    ),
    path(
        "patient/sharing/requests/<uuid:request_id>/decline/",
        requests.patient_request_decline,
        name="patient_request_decline",
    ),
    path("notifications/", requests.notifications, name="notifications"),
    path("records/<uuid:record_id>/sensitive/", grants.record_set_sensitive, name="record_set_sensitive"),
    path("clinic/patients/", requests.clinic_patients, name="clinic_patients"),
    path("clinic/requests/new/", requests.clinic_request_new, name="clinic_request_new"),
    path(
        "clinic/requests/<uuid:request_id>/withdraw/",
        requests.clinic_request_withdraw,
        name="clinic_request_withdraw",
    ),
    path("clinic/break-glass/", breakglass.clinic_break_glass, name="clinic_break_glass"),
    path("ops/rekeying/<uuid:job_id>/retry/", ops.ops_rekey_retry, name="ops_rekey_retry"),
    path("institution/break-glass/", breakglass.institution_break_glass, name="institution_break_glass"),
    path(
        "institution/break-glass/<uuid:session_id>/",
        breakglass.institution_break_glass_detail,
        name="institution_break_glass_detail",
    ),
]
