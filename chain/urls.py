from django.urls import path

from chain import views

urlpatterns = [
    path("ops/", views.ops_home, name="ops_home"),
]
