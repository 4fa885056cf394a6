from django.urls import path

from records.research import views

urlpatterns = [
    path("research/", views.research_home, name="research_home"),
    path("research/datasets/new/", views.research_dataset_new, name="research_dataset_new"),
    path("research/datasets/<uuid:dataset_id>/", views.research_dataset, name="research_dataset"),
    path(
        "research/datasets/<uuid:dataset_id>/export/",
        views.research_dataset_export,
        name="research_dataset_export",
    ),
]
