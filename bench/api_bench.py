"""The REST API beside the portal, and FHIR ``Patient/$everything``, on a throwaway node.

A patient with ``--records`` (default 1,000) signed records; gunicorn as
``make run`` starts it (two sync workers). ``--clients`` (default 32)
concurrent signed-in clients, each on its own keep-alive connection, ask in
turn for:

* the record list: ``GET /api/v1/records/`` beside the portal's timeline
  ``GET /patient/`` (both the newest 50);
* one record: ``GET /api/v1/records/{id}/`` beside the portal's record page
  (each a decrypted read with its audit row and footprint entry).

Printed: p50 and p99 latency of each and requests per second, API and portal
in the same run, so the ratio is what matters. Then ``Patient/$everything``
for the same 1,000 records, in this process through the WSGI handler: the
time to stream the whole Bundle, its size, and the peak Python memory while
streaming (tracemalloc), beside the Bundle's size: streamed, so the peak stays
far below the output.

    .venv/bin/python bench/api_bench.py [--records 1000] [--clients 32] [--requests 20]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from records_bench import configure, make_records, session_headers, setup_node, start_gunicorn, stop_node  # noqa: E402


def load(port: int, headers: dict[str, str], paths: list[str], clients: int, requests: int, think: float = 0.0) -> dict:
    """``clients`` threads, each sending ``requests`` GETs (cycling through ``paths``); latencies and rate.

    ``think``: each client pauses a random 0.5–1.5 × ``think`` seconds after
    each answer, as a person reads a page before the next click, and the
    clients arrive spread over the first ``think`` seconds rather than all at
    one instant (as a load generator ramps its users up). 0: no pauses, all
    start together, each next request leaves at once.
    """
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        pauses = random.Random(index)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, bad = [], []
        start_line.wait()
        if think:
            time.sleep(think * pauses.random())
        for n in range(requests):
            path = paths[(index + n) % len(paths)]
            began = time.perf_counter()
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    bad.append(f"{path}: {response.status}")
            except (OSError, http.client.HTTPException) as exc:
                bad.append(f"{path}: {exc}")
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            mine.append(time.perf_counter() - began)
            if think:
                time.sleep(think * pauses.uniform(0.5, 1.5))
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    took = time.perf_counter() - began
    latencies.sort()
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "rate": len(latencies) / took,
        "errors": errors,
    }


def everything(patient) -> tuple[float, int, int]:
    """Seconds, bytes and peak traced memory of streaming the patient's $everything through the WSGI handler."""
    from django.test import Client

    client = Client()
    client.force_login(patient)
    client.get(f"/fhir/r4/Patient/{patient.public_id}")  # the first request loads what every request shares
    tracemalloc.start()
    began = time.perf_counter()
    response = client.get(f"/fhir/r4/Patient/{patient.public_id}/$everything", HTTP_ACCEPT="application/fhir+json")
    size = sum(len(chunk) for chunk in response.streaming_content)
    took = time.perf_counter() - began
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return took, size, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20, help="requests per client for each page")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="api-bench-"))
    server = None
    try:
        env = configure(workdir)
        # One person asks 640 times a minute here: the per-person rate limit would answer 429, not the page.
        env["API_RATE_USER"] = os.environ["API_RATE_USER"] = "1000000/min"
        doctor, patient, visit = setup_node()
        make_records(doctor, patient, visit, args.records)
        from records.models import MedicalRecord

        MedicalRecord.objects.filter(patient=patient).update(status=MedicalRecord.Status.FINAL)
        ids = [str(i) for i in MedicalRecord.objects.filter(patient=patient).values_list("public_id", flat=True)[:50]]
        server, port = start_gunicorn(env, workdir, workers=2)  # as `make run` starts it
        headers = session_headers(patient) | {"Accept-Language": "en"}
        pages = {
            "record list  API    /api/v1/records/": ["/api/v1/records/"],
            "record list  portal /patient/": ["/patient/"],
            "record read  API    /api/v1/records/{id}/": [f"/api/v1/records/{i}/" for i in ids],
            "record read  portal /records/{id}/": [f"/records/{i}/" for i in ids],
        }
        for paths in pages.values():  # warm both workers
            load(port, headers, paths, 2, 2)
        print(f"REST API beside the portal: {args.records} records, {args.clients} concurrent clients, "
              f"{args.requests} requests each, gunicorn with 2 workers")  # fmt: skip
        for label, paths in pages.items():
            result = load(port, headers, paths, args.clients, args.requests)
            errors = f"  ({len(result['errors'])} errors: {result['errors'][:2]})" if result["errors"] else ""
            print(f"  {label:42} p50 {result['p50'] * 1000:7.1f} ms  p99 {result['p99'] * 1000:7.1f} ms  "
                  f"{result['rate']:6.1f} req/s{errors}")  # fmt: skip
        took, size, peak = everything(patient)
        print(f"FHIR Patient/$everything, {args.records} records: {took:.2f} s, {size / 1e6:.1f} MB streamed, "
              f"peak traced memory {peak / 1e6:.1f} MB ({peak / size:.2f}x the Bundle)")  # fmt: skip
    finally:
        stop_node(server, workdir)


if __name__ == "__main__":
    main()
