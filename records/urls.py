from django.urls import path

from records import views

urlpatterns = [
    path("patient/", views.patient_home, name="patient_home"),
    path("clinic/", views.clinic_home, name="clinic_home"),
    path("clinic/patients/", views.clinic_patients, name="clinic_patients"),
    path("research/", views.research_home, name="research_home"),
]
