from django.urls import path

from chain import explorer

urlpatterns = [
    path("", explorer.dashboard, name="chain_dashboard"),
    path("block/<int:height>/", explorer.block_detail, name="chain_block"),
    path("tx/<str:cid>/", explorer.tx_detail, name="chain_tx"),
]
