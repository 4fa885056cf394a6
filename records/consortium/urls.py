from django.urls import path

from records.consortium import views

urlpatterns = [
    path("patient/card/", views.patient_card, name="patient_card"),
]
