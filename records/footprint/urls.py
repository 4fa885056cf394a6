from django.urls import path

from records.footprint import views

urlpatterns = [
    path("patient/footprint/", views.patient_footprint, name="patient_footprint"),
]
