"""The portal's busiest pages under load, on a throwaway node served as ``make run`` serves it.

A patient with ``--records`` (default 1,000) records by one doctor; gunicorn
with two sync workers. ``--clients`` (default 32) concurrent signed-in
clients, each on its own keep-alive connection, send ``--requests`` GETs each
to one page at a time, twice: as people use the portal, each pausing about
``--think`` seconds (0.5–1.5 ×) to read an answer before the next click, which
is the figure the target applies to; then saturated, each client sending its
next request the moment an answer arrives, which shows how many requests a
second the node can serve and how latency grows once it is the bottleneck:

* the patient's timeline ``/patient/`` (the newest records);
* a record's page ``/records/{id}/`` (decrypted, with its audit row and footprint entry);
* the patient's footprint ``/patient/footprint/``;
* the doctor's chart of the patient ``/clinic/patients/{id}/``;
* the chain explorer ``/chain/``;

and, first, ``/healthz``: the same server answering with nothing to do, so
the pages' figures can be read against what 32 clients cost this machine in
the same run (2 workers for 32 clients: most of a page's latency is its
queue). Printed per page and mode: p50 and p99 latency, requests per second, errors.

Then the same again on a throwaway MariaDB database (root on 127.0.0.1:3306,
as CI has it), in a process of its own, when MariaDB answers there
(``--mariadb``: only that; ``--sqlite-only``: only the embedded default).

    .venv/bin/python bench/portal_bench.py [--records 1000] [--clients 32] [--requests 10] [--think 1.0] [--mariadb]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from api_bench import load  # noqa: E402
from records_bench import configure, make_records, session_headers, setup_node, start_gunicorn, stop_node  # noqa: E402

MARIADB_DATABASE = "yilian_portal_bench"


def mariadb(create: bool) -> str:
    """Make (or drop) the throwaway database; its URL."""
    import MySQLdb

    connection = MySQLdb.connect(host="127.0.0.1", port=3306, user="root", passwd="")
    try:
        cursor = connection.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS {MARIADB_DATABASE}")
        if create:
            cursor.execute(f"CREATE DATABASE {MARIADB_DATABASE} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    finally:
        connection.close()
    return f"mysql://root@127.0.0.1:3306/{MARIADB_DATABASE}"


def mariadb_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 3306), timeout=1):
            return True
    except OSError:
        return False


def operator_of():
    """The node's operator, who browses the chain explorer."""
    from allauth.account.models import EmailAddress

    from accounts.services import user_create

    operator = user_create(email="operator@example.org", password=None, role="operator")
    EmailAddress.objects.create(user=operator, email=operator.email, verified=True, primary=True)
    return operator


def pages_of(doctor, patient, operator) -> dict[str, tuple[object, list[str]]]:
    from records.models import MedicalRecord

    ids = [str(i) for i in MedicalRecord.objects.filter(patient=patient).values_list("public_id", flat=True)[:50]]
    return {
        "server floor       /healthz": (patient, ["/healthz"]),
        "timeline           /patient/": (patient, ["/patient/"]),
        "record page        /records/{id}/": (patient, [f"/records/{i}/" for i in ids]),
        "footprint          /patient/footprint/": (patient, ["/patient/footprint/"]),
        "clinic chart       /clinic/patients/{id}/": (doctor, [f"/clinic/patients/{patient.public_id}/"]),
        "chain explorer     /chain/": (operator, ["/chain/"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=10, help="requests per client for each page")
    parser.add_argument("--think", type=float, default=1.0, help="seconds a client reads an answer (mean)")
    parser.add_argument("--mariadb", action="store_true", help="run the node on MariaDB instead of SQLite")
    parser.add_argument("--sqlite-only", action="store_true", help="do not run the MariaDB round after SQLite's")
    args = parser.parse_args()
    run(args)
    if args.mariadb or args.sqlite_only:
        return
    if not mariadb_answers():
        print("MariaDB: nothing answers on 127.0.0.1:3306, so no MariaDB round this run")
        return
    again = [sys.executable, __file__, "--mariadb", "--records", str(args.records), "--clients", str(args.clients)]
    subprocess.run([*again, "--requests", str(args.requests), "--think", str(args.think)], check=True)


def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    server = None
    try:
        env = configure(workdir)
        if args.mariadb:
            env["DATABASE_URL"] = os.environ["DATABASE_URL"] = mariadb(create=True)
        doctor, patient, visit = setup_node()
        make_records(doctor, patient, visit, args.records)
        from records.models import MedicalRecord

        MedicalRecord.objects.filter(patient=patient).update(status=MedicalRecord.Status.FINAL)
        server, port = start_gunicorn(env, workdir, workers=2)  # as `make run` starts it
        operator = operator_of()
        people = (doctor, patient, operator)
        sessions = {user.pk: session_headers(user) | {"Accept-Language": "zh-hans"} for user in people}
        pages = pages_of(doctor, patient, operator)
        for user, paths in pages.values():  # warm both workers; the reads fill the footprint a little
            load(port, sessions[user.pk], paths, 2, 4)
        database = "MariaDB" if args.mariadb else "SQLite (embedded default)"
        print(f"portal under load: {args.records} records, {args.clients} concurrent signed-in clients, "
              f"{args.requests} requests each, gunicorn with 2 workers, {database}")  # fmt: skip
        for mode, think in ((f"people clicking, {args.think:g} s to read each page", args.think), ("saturated", 0.0)):
            print(f" {mode}:")
            for label, (user, paths) in pages.items():
                result = load(port, sessions[user.pk], paths, args.clients, args.requests, think)
                errors = f"  ({len(result['errors'])} errors: {result['errors'][:2]})" if result["errors"] else ""
                verdict = "ok" if result["p99"] < 0.1 else "ABOVE 100 ms"
                print(f"  {label:42} p50 {result['p50'] * 1000:7.1f} ms  p99 {result['p99'] * 1000:7.1f} ms "
                      f"[{verdict}]  {result['rate']:6.1f} req/s{errors}")  # fmt: skip
    finally:
        stop_node(server, workdir)
        if args.mariadb:
            from django.db import connections

            connections.close_all()
            mariadb(create=False)


if __name__ == "__main__":
    main()
