"""The patient portal, the clinic dashboard and the research portal."""

from __future__ import annotations

from django.shortcuts import render

from accounts.access import patient_data_gate, role_required, staff_may_open_patient_data
from accounts.models import Role


@role_required(Role.PATIENT)
def patient_home(request):
    return render(request, "patient/home.html")


@role_required(Role.CLINICIAN)
def clinic_home(request):
    context = {"can_open_patient_data": staff_may_open_patient_data(request.user)}
    return render(request, "clinic/home.html", context)


@role_required(Role.CLINICIAN)
@patient_data_gate
def clinic_patients(request):
    return render(request, "clinic/patients.html", {"patients": []})


@role_required(Role.RESEARCHER)
def research_home(request):
    context = {"can_open_patient_data": staff_may_open_patient_data(request.user)}
    return render(request, "research/home.html", context)
