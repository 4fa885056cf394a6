"""The consortium in real processes on loopback, under faults (``pytest -m cluster``).

One four-node consortium (made as ``make cluster`` makes it) goes through the
scenarios in order; each ends with every running node on the same head and
state hash, an empty mempool everywhere, and every acknowledged transaction
committed exactly once.
"""

from __future__ import annotations

import http.client
import json
import signal
import time

import pytest

from tests.cluster.harness import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster") / "consortium")
    c.init()
    c.start_all()
    c.wait_until(lambda: all(c.consensus_status(n) for n in c.ids), 90, "every node's consensus to start")
    yield c
    c.stop_all()


def settled(cluster: Cluster, *, evidence: bool = False) -> dict:
    head = cluster.converged()
    for node in cluster.up():
        assert cluster.committed_txs(node) == cluster.acknowledged
    if not evidence:
        assert not cluster.evidence(), cluster.evidence()  # nobody here is Byzantine
    return head


def test_without_faults_a_hundred_heights_agree(cluster):
    cluster.submit("node-1", 4)  # the first block
    cluster.wait_until(lambda: cluster.height("node-2") >= 1, 60, "the first block")
    start = cluster.height("node-1")
    for _ in range(6):  # transactions a few at a time, so that they make many small blocks
        feeders = [cluster.submit_in_background(n, 60, per_second=6) for n in ("node-1", "node-3")]
        for feeder in feeders:
            feeder.join()
        if cluster.height("node-1") - start >= 100:
            break
    head = settled(cluster)
    assert head["height"] - start >= 100, head["height"]
    assert len(head["authorities"]) == 4


def test_dag_objects_go_to_members_only_and_status_asks_every_node(cluster, tmp_path):
    source = tmp_path / "ciphertext.bin"
    source.write_bytes(bytes(range(256)) * 4096)
    added = cluster.manage("node-1", "dag", "add", str(source), "--chunk-size", "65536")
    assert added.returncode == 0, added.stderr
    root = added.stdout.strip()

    done = cluster.manage("node-2", "dag", "status", root, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["nodes"]["node-1"]["state"] == "held" and report["nodes"]["node-2"]["state"] == "missing"
    assert report["copies"] == 1 and not report["meets_minimum"] and len(report["holders"]) == 3
    printed = cluster.manage("node-3", "dag", "status", root).stdout
    assert "UNDER-REPLICATED" in printed and "node-4" in printed

    port = json.loads((cluster.root / "node-1" / "consortium.json").read_text())["peer_listen"].rsplit(":", 1)[1]
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
    for headers, status in (({}, 401), ({"X-Yilian-Node": "node-9", "X-Yilian-Signature": "AAAA"}, 403)):
        conn.request("GET", f"/ipfs/{root}?format=car", headers=headers)
        response = conn.getresponse()
        assert response.status == status and b"\x00\x01\x02" not in response.read()
    conn.close()


def test_a_killed_node_does_not_halt_the_others_and_catches_up(cluster):
    before = cluster.height("node-1")
    cluster.kill("node-3")
    cluster.submit("node-1", 30, per_second=10)
    cluster.wait_until(lambda: cluster.height("node-1") > before + 3, 60, "progress without node-3")
    time.sleep(max(0.0, 10 - 3))
    cluster.start("node-3")
    settled(cluster)


def test_a_stopped_node_resumes_and_catches_up(cluster):
    before = cluster.height("node-2")
    cluster.kill("node-4", signal.SIGSTOP)
    cluster.submit("node-2", 30, per_second=10)
    cluster.wait_until(lambda: cluster.height("node-2") > before + 3, 60, "progress with node-4 stopped")
    cluster.kill("node-4", signal.SIGCONT)
    settled(cluster)


def test_a_node_stopped_mid_round_restarts_without_a_conflicting_vote(cluster):
    feeder = cluster.submit_in_background("node-1", 40, per_second=20)
    time.sleep(1.0)
    cluster.kill("node-2", signal.SIGTERM)
    cluster.start("node-2")
    feeder.join()
    settled(cluster)


def test_a_minority_cut_off_catches_up_when_the_partition_heals(cluster):
    before = cluster.height("node-1")
    cluster.partition(["node-4"], ["node-1", "node-2", "node-3"])
    cluster.submit("node-1", 30, per_second=10)
    cluster.wait_until(lambda: cluster.height("node-2") > before + 3, 60, "the majority's progress")
    assert cluster.height("node-4") <= before + 1
    cluster.heal()
    settled(cluster)


def test_an_even_split_makes_no_progress_and_no_fork_then_resumes(cluster):
    before = {n: cluster.height(n) for n in cluster.ids}
    cluster.partition(["node-1", "node-2"], ["node-3", "node-4"])
    cluster.submit("node-1", 10)
    cluster.submit("node-3", 10)
    time.sleep(8)
    assert all(cluster.height(n) <= before[n] + 1 for n in cluster.ids), "a half decided alone"
    cluster.heal()
    settled(cluster)


def test_two_nodes_down_halts_and_one_returning_resumes(cluster):
    cluster.kill("node-3")
    cluster.kill("node-4")
    before = cluster.height("node-1")
    cluster.submit("node-1", 10)
    time.sleep(6)
    assert cluster.height("node-1") == before, "two of four decided a block"
    cluster.start("node-3")
    cluster.wait_until(lambda: cluster.height("node-1") > before, 90, "progress once a third node returned")
    cluster.start("node-4")
    settled(cluster)


def test_delays_up_to_two_seconds_with_duplicates_and_reordering_on_every_link(cluster):
    cluster.slow(2.0, duplicate=0.2)
    cluster.submit("node-2", 40, per_second=8)
    cluster.heal()
    settled(cluster)


def test_a_torn_write_at_the_tail_of_a_nodes_chain_store_recovers_or_refuses_clearly(cluster):
    cluster.submit("node-3", 20)
    cluster.wait_idle()
    cluster.kill("node-2")
    logs = sorted((cluster.root / "node-2" / "chain").glob("*.log"), key=lambda p: p.stat().st_mtime)
    assert logs, "no write-ahead log in the chain store"
    tail = logs[-1]
    data = tail.read_bytes()
    tail.write_bytes(data[: max(0, len(data) - 37)] + b"\x00torn")  # a write cut short, then garbage
    cluster.submit("node-1", 20)
    cluster.start("node-2")
    time.sleep(5)
    if cluster.procs["node-2"].poll() is not None:  # refused: it must say why, then an operator restores it
        log = (cluster.root / "node-2.consensus.log").read_text()
        assert "Corruption" in log or "cannot" in log, log[-2000:]
        pytest.fail(f"node-2 refused to start after a torn write: {log[-500:]}")
    settled(cluster)


BYZANTINE = """
import os, dataclasses
from chain import cluster
from chain.core import consensus as c, crypto, dagcbor
from chain.peers import PeerClient
from chain.services import node_identity, node_signing_key
from django.conf import settings

key = node_signing_key(node_identity())
height = int(os.environ["AT_HEIGHT"])
votes = []
for value in (os.urandom(32), None):
    vote = c.Vote(c.Kind.PREVOTE, height, 0, value, settings.NODE_ID)
    votes.append(dataclasses.replace(vote, signature=crypto.sign(key, c.sign_bytes(settings.CHAIN_ID, vote))))
config = cluster.cluster_config()
client = PeerClient(settings.NODE_ID, key, config.peers)
for vote in votes:
    body = dagcbor.encode({"messages": [c.message_to_cbor(vote)], "blocks": []})
    for peer in config.peers:
        assert client.request(peer, "POST", "/peer/v1/messages", body) is not None, peer
print("sent")
"""


def test_a_byzantine_node_sending_conflicting_prevotes_is_caught_and_the_evidence_committed(cluster):
    cluster.kill("node-4", signal.SIGTERM)
    height = cluster.consensus_status("node-1")["height"]
    done = cluster.manage("node-4", "shell", "-c", BYZANTINE, extra_env={"AT_HEIGHT": str(height)})
    assert done.returncode == 0 and "sent" in done.stdout, done.stderr

    count = "from chain.models import Transaction; print(Transaction.objects.filter(type='consensus.evidence').count())"

    def recorded(node: str) -> bool:
        out = cluster.manage(node, "shell", "-c", count)
        return out.returncode == 0 and int(out.stdout.strip().splitlines()[-1]) >= 1

    cluster.wait_until(lambda: all(recorded(n) for n in ("node-1", "node-2", "node-3")), 90, "the evidence on chain")
    assert any(e["validator"] == "node-4" for e in cluster.evidence())
    cluster.start("node-4")
    head = cluster.converged()
    assert head["height"] >= height


def test_a_fifth_authority_joins_and_one_leaves_while_transactions_flow(cluster):
    feeder = cluster.submit_in_background("node-1", 300, per_second=10)
    added = cluster.manage(None, "cluster", "add-node", "--dir", str(cluster.root), "--base-port", str(cluster.base))
    assert added.returncode == 0, added.stderr
    key = added.stdout.split("public key ")[1].split(":")[0]
    cluster.ids.append("node-5")
    cluster.procs["node-5"] = None
    one = cluster.manage("node-1", "cluster", "approve-join", "node-5", key)
    assert one.returncode == 0 and "takes a quorum" in one.stdout, one.stderr
    assert cluster.manage("node-1", "cluster", "approve-join", "node-5", key).returncode != 0  # not twice
    time.sleep(3)
    assert len(cluster.status("node-2")["authorities"]) == 4  # one approval of the three needed
    for node in ("node-2", "node-3"):
        assert cluster.manage(node, "cluster", "approve-join", "node-5", key).returncode == 0
    cluster.wait_until(lambda: len(cluster.status("node-4")["authorities"]) == 5, 60, "node-5 admitted")
    cluster.start("node-5")
    cluster.wait_until(
        lambda: cluster.consensus_status("node-5").get("validators", []).count("node-5") == 1,
        120,
        "node-5 catching up to its admission",
    )
    for node in ("node-1", "node-3", "node-4", "node-5"):  # 4 of 5: node-2's removal
        done = cluster.manage(node, "cluster", "approve-leave", "node-2")
        assert done.returncode == 0, done.stderr
    cluster.wait_until(lambda: len(cluster.status("node-1")["authorities"]) == 4, 90, "node-2 removed")
    feeder.join()
    cluster.kill("node-2")
    head = settled(cluster, evidence=True)  # the Byzantine test's evidence is still in the nodes' reports
    assert [a["id"] for a in head["authorities"]] == ["node-1", "node-3", "node-4", "node-5"]
