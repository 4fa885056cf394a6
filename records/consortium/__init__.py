"""Care across nodes (DESIGN section 7): patient cards, record deliveries to a patient's home node.

Each module here has two halves: what this node asks of another
(``peer_apps.call``), and the handler that answers when another asks it
(registered in :func:`register`, from ``RecordsConfig.ready``).
"""


def register() -> None:
    from chain.ledger_registry import register_commit_hook
    from chain.peer_apps import register_peer_handler
    from records import ledger
    from records.consortium import cards, deliveries

    register_peer_handler(cards.CARD_MESSAGE, cards.card_release)
    register_peer_handler(deliveries.DELIVERY_MESSAGE, deliveries.delivery_receive)
    register_peer_handler(deliveries.SHARE_MESSAGE, deliveries.share_receive)
    # A revocation committed anywhere is in force here from the block that carries it.
    register_commit_hook("records.grants", (ledger.GRANT_PREFIX,), deliveries.grants_revoked_on_chain)
