"""Run this node's consensus process (a consortium node; ``runnode`` starts it as a child)."""

from __future__ import annotations

import signal

from django.core.management.base import BaseCommand, CommandError

from chain.cluster import cluster_config
from chain.consensus_guard import GuardError
from chain.ledger_services import ChainError


class Command(BaseCommand):
    help = "Take part in the consortium's consensus: peer port, votes, blocks. Stops on SIGTERM or Ctrl-C."

    def handle(self, *args, **options) -> None:
        from chain.consensus_node import ConsensusNode

        config = cluster_config()
        if config is None:
            raise CommandError("this node is not in a consortium (no consortium.json in its data directory)")
        try:
            node = ConsensusNode(config)
        except (GuardError, ChainError) as exc:
            raise CommandError(str(exc)) from None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: node.stop())
        node.run()
