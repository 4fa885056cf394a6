"""A local consortium on this machine: ``cluster init`` makes it, ``cluster run`` serves it.

``make cluster`` runs both. Node ``i`` (1…N) keeps everything in
``$CLUSTER_DIR/node-<i>/`` (its own embedded database, chain and DAG stores,
KEK, broker), answers the web on ``BASE_PORT + i`` and its peers on
``BASE_PORT + 100 + i``. Founding the chain: every node makes its key, block 0
names all of them as authorities, and each node signs block 0 with its own key
(inside its own process: no key leaves its data directory). ``cluster run``
starts each node's ``runnode`` (web, store worker, consensus, default worker,
beat), prints the URLs, and stops them all on Ctrl-C.

While it runs, ``cluster stop NODE`` stops one node and keeps it stopped
(the others go on without it: a hospital's server is down), ``cluster start
NODE`` starts it again, and ``cluster exec NODE -- COMMAND…`` runs a
``manage.py`` command inside one node (``dag verify``, ``dag status CID``).

The subcommands ``identity`` and ``sign-genesis`` run inside one node (its
``EMR_DATA_DIR``); ``init`` calls them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from chain.cluster import ClusterConfig, genesis_path, write_config
from chain.core import ledger
from chain.core.block import Block, Vote
from chain.core.consortium import Authority
from chain.core.transaction import now_ms
from chain.ledger_services import TxRejected, configured_params, tx_sign_and_submit
from chain.management.commands.runnode import Command as Runnode
from chain.services import node_identity, node_signing_key
from chain.supervisor import Child, GaveUp, Supervisor, read_status

CHAIN_ID = "yilian-cluster"
PEER_OFFSET = 100
LOGINS_NAME = "demo-logins.txt"  # what ``cluster run`` prints under a seeded node's address
HOLD_PREFIX = "hold-"
"""``run/hold-<node>``: ``cluster stop`` asks the running ``cluster run`` to keep that node stopped."""
HOLD_WAIT = 90.0
RESEARCH_WAIT = 300.0
"""How long ``cluster run`` keeps asking the nodes to issue their demo cohort's research grants."""


def _named_node(options: dict) -> tuple[Path, str]:
    root = options["dir"].resolve()
    node = options["node"]
    if not (root / node / "consortium.json").exists():
        raise CommandError(f"there is no node {node!r} in {root}")
    return root, node


def _apply_holds(supervisor: Supervisor, run_dir: Path) -> None:
    """Hold the nodes ``cluster stop`` named (``run/hold-<node>``); release those ``cluster start`` named again."""
    held = {path.name.removeprefix(HOLD_PREFIX) for path in run_dir.glob(HOLD_PREFIX + "*")}
    for child in supervisor.children:
        if child.name in held and not child.held:
            supervisor.hold(child.name)
        elif child.held and child.name not in held:
            supervisor.release(child.name)


def node_env(data_dir: Path, node_id: str) -> dict[str, str]:
    """A cluster node's environment: its own data directory and the embedded default services."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "REQUIRE_SERVICES"}}
    env.update(EMR_DATA_DIR=str(data_dir), EMR_NODE_ID=node_id, CHAIN_ID=CHAIN_ID)
    return env


class Command(BaseCommand):
    help = "Create (init) or serve (run) a local consortium of N nodes; see the module docstring."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        init = sub.add_parser("init", help="create a fresh consortium")
        run = sub.add_parser("run", help="start every node of a consortium made by init")
        add = sub.add_parser("add-node", help="make one more node's data directory (it joins once approved)")
        stop = sub.add_parser("stop", help="stop one node of the running consortium and keep it stopped")
        start = sub.add_parser("start", help="start again a node that `cluster stop` stopped")
        run_in = sub.add_parser("exec", help="run a manage.py command inside one node: exec NODE -- COMMAND…")
        for p in (stop, start, run_in):
            p.add_argument("node", help="the node's name, e.g. node-1")
        run_in.add_argument("command", nargs="+", help="the manage.py command and its arguments")
        for p in (init, run, add, stop, start, run_in):
            p.add_argument("--dir", type=Path, default=Path("var/cluster"))
        for p in (init, run, add):
            p.add_argument("--base-port", type=int, default=8000)
        init.add_argument("--nodes", type=int, default=4)
        init.add_argument("--no-seed", action="store_true", help="do not seed the demo data")
        sub.add_parser("identity", help="(inside a node) print this node's public key")
        join = sub.add_parser("approve-join", help="(inside a node) approve admitting node ID with key HEX")
        join.add_argument("id")
        join.add_argument("key", help="the newcomer's public key, hex (printed by add-node)")
        leave = sub.add_parser("approve-leave", help="(inside a node) approve removing node ID")
        leave.add_argument("id")
        sign = sub.add_parser("sign-genesis", help="(inside a node) print this node's vote for block 0")
        sign.add_argument("file", type=Path)

    def handle(self, *args, **options) -> None:
        getattr(self, "handle_" + options["action"].replace("-", "_"))(options)

    # -- inside one node ----------------------------------------------------------------------------
    def handle_identity(self, options: dict) -> None:
        self.stdout.write(bytes(node_identity().sign_public).hex())

    def handle_approve_join(self, options: dict) -> None:
        try:
            key = bytes.fromhex(options["key"])
        except ValueError:
            raise CommandError("KEY must be the new node's public key in hex") from None
        self._approve("node.joined", {"id": options["id"], "public_key": key})

    def handle_approve_leave(self, options: dict) -> None:
        self._approve("node.left", {"id": options["id"]})

    def _approve(self, type_: str, payload: dict) -> None:
        try:
            with transaction.atomic():
                entry = tx_sign_and_submit(private_key=node_signing_key(node_identity()), type=type_, payload=payload)
        except TxRejected as exc:
            raise CommandError(f"refused: {exc}") from None
        self.stdout.write(f"{settings.NODE_ID} approved {type_} {payload['id']} ({entry.cid}); it takes a quorum")

    def handle_sign_genesis(self, options: dict) -> None:
        block = Block.decode(options["file"].read_bytes())
        vote = block.vote(settings.NODE_ID, node_signing_key(node_identity()))
        self.stdout.write(vote.signature.hex())

    # -- the whole consortium ---------------------------------------------------------------------------
    def handle_init(self, options: dict) -> None:
        count, root, base = options["nodes"], options["dir"].resolve(), options["base_port"]
        if not 1 <= count <= 16:
            raise CommandError("a local consortium has 1 to 16 nodes")
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True, mode=0o700)
        ids = [f"node-{i}" for i in range(1, count + 1)]
        dirs = {node: root / node for node in ids}
        keys = {}
        for node in ids:
            self._manage(dirs[node], node, "migrate", "--no-input", "-v", "0")
            keys[node] = bytes.fromhex(self._manage(dirs[node], node, "cluster", "identity").strip())
        genesis = ledger.make_genesis(
            chain_id=CHAIN_ID,
            authorities=[Authority(node, keys[node]) for node in ids],
            timestamp=now_ms(),
            params=configured_params(),
        )
        unsigned = root / "genesis.unsigned"
        unsigned.write_bytes(genesis.encode())
        votes = [
            Vote(node, bytes.fromhex(self._manage(dirs[node], node, "cluster", "sign-genesis", str(unsigned)).strip()))
            for node in ids
        ]
        genesis = genesis.with_votes(votes)
        ledger.validate_genesis(genesis)
        unsigned.unlink()
        for i, node in enumerate(ids, start=1):
            genesis_path(dirs[node]).write_bytes(genesis.encode())
            peers = {other: f"http://127.0.0.1:{base + PEER_OFFSET + j}" for j, other in enumerate(ids, 1) if j != i}
            write_config(dirs[node], ClusterConfig(CHAIN_ID, node, "127.0.0.1", base + PEER_OFFSET + i, peers))
        if not options["no_seed"]:
            # Node i is the i-th demo institution's (the seed's own choice: chain knows no accounts).
            for i, node in enumerate(ids, start=1):
                seeded = self._manage(dirs[node], node, "seed_demo", "--cluster-node", str(i))
                lines = [line for line in seeded.splitlines() if not line.startswith("Demo data ready")]
                (dirs[node] / LOGINS_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.stdout.write(f"consortium {CHAIN_ID}: {count} authorities, block 0 {genesis.cid}")
        for i, node in enumerate(ids, start=1):
            self.stdout.write(f"  {node}: {dirs[node]}  web :{base + i}  peers :{base + PEER_OFFSET + i}")

    def handle_add_node(self, options: dict) -> None:
        root, base = options["dir"].resolve(), options["base_port"]
        nodes = sorted((p for p in root.glob("node-*") if (p / "consortium.json").exists()), key=_index)
        if not nodes:
            raise CommandError(f"no consortium in {root}")
        i = _index(nodes[-1]) + 1
        node, data_dir = f"node-{i}", root / f"node-{i}"
        data_dir.mkdir(mode=0o700)
        self._manage(data_dir, node, "migrate", "--no-input", "-v", "0")
        key = self._manage(data_dir, node, "cluster", "identity").strip()
        genesis_path(data_dir).write_bytes(genesis_path(nodes[0]).read_bytes())
        peers = {}
        for other in nodes:
            config = json.loads((other / "consortium.json").read_text(encoding="utf-8"))
            peers[other.name] = f"http://{config['peer_listen']}"
            config["peers"][node] = f"http://127.0.0.1:{base + PEER_OFFSET + i}"
            (other / "consortium.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        write_config(data_dir, ClusterConfig(CHAIN_ID, node, "127.0.0.1", base + PEER_OFFSET + i, peers))
        self.stdout.write(f"{node}: {data_dir}  web :{base + i}  peers :{base + PEER_OFFSET + i}")
        self.stdout.write(f"public key {key}: a quorum of the authorities runs `cluster approve-join {node} {key}`")

    def handle_run(self, options: dict) -> None:
        root, base = options["dir"].resolve(), options["base_port"]
        nodes = sorted((p for p in root.glob("node-*") if (p / "consortium.json").exists()), key=_index)
        if not nodes:
            raise CommandError(f"no consortium in {root}; run `manage.py cluster init` (or `make cluster`) first")
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        children = [
            Child(
                node.name,
                [sys.executable, manage, "runnode", "--port", str(base + _index(node)), "--no-banner"],
                node_env(node, node.name),
            )
            for node in nodes
        ]
        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        for stale in (root / "run").glob(HOLD_PREFIX + "*"):  # a fresh run starts every node
            stale.unlink()
        supervisor = Supervisor(children, root / "run", log=lambda m: self.stdout.write(f"[cluster] {m}"))
        supervisor.start_all()
        waiting = {node.name: f"http://127.0.0.1:{base + _index(node)}/healthz" for node in nodes}
        done = threading.Event()
        try:
            while not stopping:
                supervisor.tick()
                _apply_holds(supervisor, root / "run")
                if waiting:
                    waiting = {name: url for name, url in waiting.items() if not Runnode.web_answers(url)}
                    if not waiting:
                        self._banner(root, nodes, base)
                        threading.Thread(target=self._research_grants, args=(nodes, done), daemon=True).start()
                time.sleep(0.5)
        except GaveUp as exc:
            self.stderr.write(str(exc))
        done.set()
        self.stdout.write("stopping the consortium…")
        supervisor.stop_all(timeout=60)

    def _research_grants(self, nodes: list[Path], done: threading.Event) -> None:
        """The demo's research cohort grants the research institute access, once each node can (story 5).

        A grant needs the patient's key on chain and the institute in the
        node's directory: both arrive seconds after the nodes start, so each
        node is asked again until nothing waits there.
        """
        pending = list(nodes)
        deadline = time.monotonic() + RESEARCH_WAIT
        while pending and not done.wait(5) and time.monotonic() < deadline:
            for node in list(pending):
                try:
                    answer = self._manage(node, node.name, "seed_demo", "--research-grants")
                except CommandError:
                    continue  # a node restarting: asked again
                if answer.strip().endswith(" 0 waiting"):
                    pending.remove(node)
        if not pending:
            self.stdout.write("[cluster] the demo research cohort has granted the research institute access")

    def handle_stop(self, options: dict) -> None:
        root, node = self._running_node(options)
        (root / "run" / f"{HOLD_PREFIX}{node}").touch()
        self._wait_for(root, node, running=False)
        self.stdout.write(f"{node} is stopped; the other nodes go on without it. `cluster start {node}` starts it.")

    def handle_start(self, options: dict) -> None:
        root, node = self._running_node(options)
        (root / "run" / f"{HOLD_PREFIX}{node}").unlink(missing_ok=True)
        self._wait_for(root, node, running=True)
        self.stdout.write(f"{node} is starting; it catches up with the chain and repairs its store by itself.")

    def handle_exec(self, options: dict) -> None:
        root, node = _named_node(options)
        command = options["command"][1:] if options["command"][:1] == ["--"] else options["command"]
        done = subprocess.run(  # noqa: S603 - our own manage.py
            [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *command],
            env=node_env(root / node, node),
            check=False,
        )
        if done.returncode:
            raise SystemExit(done.returncode)

    def _running_node(self, options: dict) -> tuple[Path, str]:
        root, node = _named_node(options)
        if read_status(root / "run") is None:
            raise CommandError(f"no consortium is running from {root}: `make cluster` (or `cluster run`) starts it")
        return root, node

    def _wait_for(self, root: Path, node: str, *, running: bool) -> None:
        deadline = time.monotonic() + HOLD_WAIT
        while time.monotonic() < deadline:
            status = read_status(root / "run")
            process = (status or {}).get("processes", {}).get(node, {})
            if bool(process.get("running")) == running and bool(process.get("held")) != running:
                return
            time.sleep(0.5)
        raise CommandError(f"{node} did not {'start' if running else 'stop'} within {HOLD_WAIT:.0f} s")

    def _banner(self, root: Path, nodes: list[Path], base: int) -> None:
        line = "=" * 72
        title = f"Yilian 医链 consortium {CHAIN_ID}: {len(nodes)} nodes in {root}"
        self.stdout.write(self.style.SUCCESS(f"\n{line}\n  {title}\n{line}"))
        for node in nodes:
            i = _index(node)
            self.stdout.write(f"\n  {node.name}: http://localhost:{base + i}/  (peers on :{base + PEER_OFFSET + i})")
            logins = node / LOGINS_NAME
            for text in logins.read_text(encoding="utf-8").splitlines() if logins.exists() else []:
                self.stdout.write(f"    {text}")
        self.stdout.write("\n  Press Ctrl-C to stop every node.\n")
        self.stdout.flush()

    def _manage(self, data_dir: Path, node: str, *args: str) -> str:
        done = subprocess.run(  # noqa: S603 - our own manage.py
            [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args],
            env=node_env(data_dir, node),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise CommandError(f"{node}: manage.py {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout


def _index(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])
