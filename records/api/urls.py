"""``/api/v1/``: the REST API's endpoints, and its schema and documentation (served from this node)."""

from csp.decorators import csp_update
from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from chain import api as chain_api
from records.api import care, research, views

# Swagger UI and ReDoc style their pages inline (ReDoc builds its own worker); they show no patient data.
docs_policy = csp_update({"style-src": ["'unsafe-inline'"], "worker-src": ["'self'", "blob:"]})

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("docs/", docs_policy(SpectacularSwaggerSplitView.as_view(url_name="api_schema")), name="api_docs"),
    path("redoc/", docs_policy(SpectacularRedocView.as_view(url_name="api_schema")), name="api_redoc"),
    path("me/", views.MeView.as_view(), name="api_me"),
    path("records/", views.RecordListView.as_view(), name="api_records"),
    path("records/<uuid:record_id>/", views.RecordDetailView.as_view(), name="api_record"),
    path("records/<uuid:record_id>/sign/", views.RecordSignView.as_view(), name="api_record_sign"),
    path("records/<uuid:record_id>/amend/", views.RecordAmendView.as_view(), name="api_record_amend"),
    path("records/<uuid:record_id>/files/<uuid:file_id>/", views.RecordFileView.as_view(), name="api_record_file"),
    path("visits/", views.VisitOpenView.as_view(), name="api_visits"),
    path("visits/<uuid:visit_id>/close/", views.VisitCloseView.as_view(), name="api_visit_close"),
    path("grants/", views.GrantListView.as_view(), name="api_grants"),
    path("grants/<uuid:grant_id>/revoke/", views.GrantRevokeView.as_view(), name="api_grant_revoke"),
    path("footprint/", views.FootprintView.as_view(), name="api_footprint"),
    path("notifications/", views.NotificationListView.as_view(), name="api_notifications"),
    path("notifications/read/", views.NotificationsReadView.as_view(), name="api_notifications_read"),
    path("shared-with-me/", views.SharedWithMeView.as_view(), name="api_shared_with_me"),
    path("records/<uuid:record_id>/files/", care.RecordFilesView.as_view(), name="api_record_files"),
    path("documents/", care.DocumentUploadView.as_view(), name="api_documents"),
    path("access-requests/", care.AccessRequestListView.as_view(), name="api_access_requests"),
    path(
        "access-requests/<uuid:request_id>/approve/",
        care.AccessRequestApproveView.as_view(),
        name="api_access_request_approve",
    ),
    path(
        "access-requests/<uuid:request_id>/decline/",
        care.AccessRequestDeclineView.as_view(),
        name="api_access_request_decline",
    ),
    path(
        "access-requests/<uuid:request_id>/withdraw/",
        care.AccessRequestWithdrawView.as_view(),
        name="api_access_request_withdraw",
    ),
    path("break-glass/", care.BreakGlassView.as_view(), name="api_break_glass"),
    path("research/datasets/", research.DatasetListView.as_view(), name="api_research_datasets"),
    path("research/datasets/<uuid:dataset_id>/", research.DatasetDetailView.as_view(), name="api_research_dataset"),
    path(
        "research/datasets/<uuid:dataset_id>/exports/",
        research.ExportListView.as_view(),
        name="api_research_exports",
    ),
    path(
        "research/datasets/<uuid:dataset_id>/exports/<uuid:export_id>/",
        research.ExportDetailView.as_view(),
        name="api_research_export",
    ),
    path("chain/", chain_api.StatusView.as_view(), name="api_chain_status"),
    path("chain/blocks/", chain_api.BlockListView.as_view(), name="api_chain_blocks"),
    path("chain/blocks/<int:height>/", chain_api.BlockDetailView.as_view(), name="api_chain_block"),
    path(
        "chain/blocks/<int:height>/transactions/",
        chain_api.BlockTransactionsView.as_view(),
        name="api_chain_block_transactions",
    ),
    path("chain/transactions/<str:cid>/", chain_api.TransactionDetailView.as_view(), name="api_chain_transaction"),
    path("chain/peers/", chain_api.PeersView.as_view(), name="api_chain_peers"),
    re_path(r"^[\s\S]*$", views.NotFoundView.as_view(), name="api_not_found"),  # newlines too
]
