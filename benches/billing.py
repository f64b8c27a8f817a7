"""The billing ingest benchmark (BENCHMARKS.md, "Billing ingest").

Generates a FOCUS 1.0 CSV export of --rows rows (seeded, so every run reads the same file),
then, --runs times:
  * DuckDB reads it: read_csv of the file with the cost columns as DECIMAL(38,12), the rows
    counted and BilledCost summed;
  * recmeter ingests it: `recmeter serve` (test hooks, fake clock, billing.url the folder
    the file is moved into), timed from the clock tick that starts the scan until the scan
    has landed the export, plus the checkpoint after it (the next tick of
    storage.checkpoint_interval). Both answer once the work is done.
Each run checks that recmeter's cost_lines hold every row and that its SUM(billed_cost)
equals DuckDB's, as text. Prints each run and the medians.

Run with the test venv (it has DuckDB): target/venv/bin/python benches/billing.py
    --binary target/release/recmeter
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request

import duckdb

HEADER = [
    "BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargePeriodEnd",
    "ChargePeriodStart", "ConsumedQuantity", "ConsumedUnit", "EffectiveCost", "ListCost",
    "PricingCategory", "PricingQuantity", "PricingUnit", "ProviderName", "RegionId",
    "ResourceId", "ResourceName", "ServiceCategory", "ServiceName", "SubAccountId", "Tags",
]


def generate(path, rows, seed, services, accounts, resources, days):
    """One September 2024 billing period: hourly charge periods over `days` days, costs with
    up to 10 decimals, a JSON tag map of two keys on every row."""
    rng = random.Random(seed)
    names = [f"Service {i:02d}" for i in range(services)]
    categories = ["Compute", "Storage", "Networking", "Databases", "Analytics"]
    with open(path, "w") as f:
        f.write(",".join(HEADER) + "\n")
        for i in range(rows):
            hour = rng.randrange(days * 24)
            day, h = divmod(hour, 24)
            start = f"2024-09-{day + 1:02d} {h:02d}:00:00"
            end_day, end_h = divmod(hour + 1, 24)
            end = (f"2024-09-{end_day + 1:02d} {end_h:02d}:00:00" if end_day < 30
                   else "2024-10-01 00:00:00")
            billed = rng.randrange(0, 10**12) / 10**10
            effective = billed * 0.8
            service = rng.randrange(services)
            resource = rng.randrange(resources)
            pricing = "Dynamic" if service % 7 == 0 else "Standard"
            tags = json.dumps({"component": f"c{resource % 9}", "env": "prod"})
            f.write(",".join([
                f"{billed:.10f}",
                f"{1000 + rng.randrange(accounts)}",
                "USD",
                "2024-10-01 00:00:00",
                "2024-09-01 00:00:00",
                "Usage",
                "NULL",
                end,
                start,
                f"{rng.randrange(1, 1000)}",
                "Hours",
                f"{effective:.10f}",
                f"{billed:.10f}",
                pricing,
                f"{rng.randrange(1, 1000)}",
                "Hours",
                "AWS",
                "us-west-2",
                f"arn:aws:ec2:us-west-2:1000:instance/i-{resource:08x}",
                f"node-{resource}",
                categories[service % len(categories)],
                names[service],
                f"{2000 + rng.randrange(accounts * 4)}",
                '"' + tags.replace('"', '""') + '"',
            ]) + "\n")


def duckdb_read(path):
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    started = time.perf_counter()
    rows, billed = con.execute(
        "SELECT COUNT(*), CAST(SUM(BilledCost) AS VARCHAR) FROM read_csv(?, header = true, "
        "nullstr = 'NULL', types = {'BilledCost': 'DECIMAL(38,12)', "
        "'EffectiveCost': 'DECIMAL(38,12)', 'ListCost': 'DECIMAL(38,12)'})",
        [path],
    ).fetchone()
    return time.perf_counter() - started, rows, billed


def post(url, body, timeout=120):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def sql(api, query):
    request = urllib.request.Request(
        f"http://{api}/api/v1/sql", data=query.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def recmeter_ingest(binary, source):
    with tempfile.TemporaryDirectory() as work:
        bucket = os.path.join(work, "bucket")
        os.makedirs(bucket)
        with open(os.path.join(work, "recmeter.toml"), "w") as f:
            f.write(f'[storage]\ncheckpoint_interval = "1h"\n'
                    f'[billing]\nurl = "{bucket}"\nscan_interval = "5m"\n')
        ready = os.path.join(work, "ready.json")
        env = dict(os.environ, RECMETER_OTLP__GRPC_ADDRESS="127.0.0.1:0",
                   RECMETER_OTLP__HTTP_ADDRESS="127.0.0.1:0",
                   RECMETER_API__ADDRESS="127.0.0.1:0", RECMETER_LOG__LEVEL="warn")
        with open(os.path.join(work, "recmeter.log"), "w") as log:
            child = subprocess.Popen(
                [binary, "serve", "--config", "recmeter.toml", "--ready-file", ready,
                 "--test-hooks", "--fake-clock", "2024-10-03T00:00:00Z"],
                cwd=work, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(ready):
                if time.monotonic() > deadline or child.poll() is not None:
                    raise SystemExit(open(os.path.join(work, "recmeter.log")).read())
                time.sleep(0.02)
            time.sleep(0.05)
            api = json.load(open(ready))["api"]
            clock = f"http://{api}/-/test/clock"
            post(clock, {"advance": "1s"})  # the first scan, of the empty bucket
            shutil.copy(source, os.path.join(bucket, "focus.csv"))
            started = time.perf_counter()
            post(clock, {"advance": "5m"})  # the scan that lands the export
            landed = time.perf_counter()
            post(clock, {"advance": "1h"})  # the checkpoint after it
            done = time.perf_counter()
            rows = sql(api, "SELECT COUNT(*) AS n, CAST(SUM(billed_cost) AS VARCHAR) AS b "
                            "FROM cost_lines")[0]
            manifests = sorted(os.listdir(os.path.join(work, "data", "manifests")))
            manifest = json.load(open(os.path.join(work, "data", "manifests", manifests[-1])))
            in_manifest = sum(f["rows"] for f in manifest["sections"]["cost_lines"]["files"])
            return landed - started, done - started, rows["n"], rows["b"], in_manifest
        finally:
            child.kill()
            child.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default="target/release/recmeter")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--services", type=int, default=40)
    parser.add_argument("--accounts", type=int, default=3)
    parser.add_argument("--resources", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--csv", help="read this file instead of generating one (profiling)")
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)
    with tempfile.TemporaryDirectory() as work:
        path = args.csv or os.path.join(work, "focus.csv")
        if not args.csv:
            generate(path, args.rows, args.seed, args.services, args.accounts, args.resources,
                     args.days)
        size = os.path.getsize(path)
        print(f"FOCUS CSV: {args.rows} rows, {size / 2**20:.1f} MiB, seed {args.seed}, "
              f"{args.services} services, {args.accounts} billing accounts, "
              f"{args.resources} resources, {args.days} days of hourly charge periods")
        results = []
        for run in range(args.runs):
            duck, duck_rows, duck_billed = duckdb_read(path)
            scan, total, rows, billed, in_manifest = recmeter_ingest(args.binary, path)
            assert duck_rows == args.rows and rows == args.rows and in_manifest == args.rows, \
                (duck_rows, rows, in_manifest)
            assert billed == duck_billed, (billed, duck_billed)
            results.append((duck, scan, total))
            print(f"run {run + 1}: DuckDB read_csv {duck:.2f} s; recmeter scan {scan:.2f} s, "
                  f"scan + checkpoint {total:.2f} s = {args.rows / total:,.0f} rows/s; "
                  f"SUM(BilledCost) {billed} in both")
        duck = statistics.median(r[0] for r in results)
        scan = statistics.median(r[1] for r in results)
        total = statistics.median(r[2] for r in results)
        print(f"median: DuckDB {duck:.2f} s ({args.rows / duck:,.0f} rows/s); recmeter scan "
              f"{scan:.2f} s, with the checkpoint {total:.2f} s ({args.rows / total:,.0f} "
              f"rows/s); recmeter / DuckDB time {total / duck:.1f}x")


if __name__ == "__main__":
    main()
