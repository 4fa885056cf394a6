from django.urls import include, path

from chain import views

urlpatterns = [
    path("ops/", views.ops_home, name="ops_home"),
    path("chain/", include("chain.explorer_urls")),
]
