from django.urls import path

from accounts import views

urlpatterns = [
    path("profile/", views.profile, name="profile"),
    path("profile/yilian-id.svg", views.health_id_qr, name="health_id_qr"),
    path("institution/", views.institution_home, name="institution_home"),
    path("institution/staff/", views.institution_staff, name="institution_staff"),
    path("institution/staff/<uuid:public_id>/verify/", views.institution_staff_verify, name="institution_staff_verify"),
    path(
        "institution/staff/<uuid:public_id>/unverify/",
        views.institution_staff_unverify,
        name="institution_staff_unverify",
    ),
]
