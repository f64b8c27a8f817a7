"""Writes gcp-sample.jsonl: rows in the layout of Google Cloud's standard usage cost export to
BigQuery (https://cloud.google.com/billing/docs/how-to/export-data-bigquery-tables/standard-usage),
as newline-delimited JSON, credits included. Deterministic: run it again for the same file."""
import json
import random

rng = random.Random(26)
services = [
    ("6F81-5844-456A", "Compute Engine", ["N2 Instance Core running in Americas", "Spot Preemptible N2 Instance Core running in Americas"]),
    ("95FF-2EF5-5EA1", "Cloud Storage", ["Standard Storage US Multi-region"]),
    ("24E6-581D-38E5", "BigQuery", ["Analysis"]),
    ("CCD8-9BF1-090E", "Kubernetes Engine", ["Autopilot Pod mCPU Requests (us-central1)"]),
]
credit_types = [
    ("SUSTAINED_USAGE_DISCOUNT", "Sustained Usage Discount"),
    ("COMMITTED_USAGE_DISCOUNT", "Committed use discount: CPU"),
    ("FREE_TIER", "Free tier"),
]
with open("gcp-sample.jsonl", "w") as out:
    for i in range(60):
        day = 16 + i % 3
        hour = i % 24
        sid, service, skus = services[i % len(services)]
        sku = skus[i % len(skus)]
        cost = round(rng.uniform(0, 40), 6)
        credits = []
        if i % 3 == 0:
            ctype, cname = credit_types[i % len(credit_types)]
            credits.append({"name": cname, "amount": -round(cost * rng.uniform(0.05, 0.4), 6),
                            "full_name": None, "id": f"credit-{i}", "type": ctype})
        if i % 10 == 7:
            # A free-tier credit larger than the line's cost.
            credits.append({"name": "Free tier", "amount": -round(cost + 1.25, 6),
                            "full_name": None, "id": f"free-{i}", "type": "FREE_TIER"})
        row = {
            "billing_account_id": "01A2B3-C4D5E6-F7A8B9",
            "service": {"id": sid, "description": service},
            "sku": {"id": f"SKU-{i % 7:04d}", "description": sku},
            "usage_start_time": f"2024-09-{day:02d}T{hour:02d}:00:00Z",
            "usage_end_time": f"2024-09-{day:02d}T{hour:02d}:59:59Z",
            "project": {"id": "recs-prod" if i % 2 else "recs-staging", "number": "123456789012",
                        "name": "recs", "labels": [], "ancestry_numbers": "/123/"},
            "labels": [{"key": "component", "value": ["ranker", "retrieval", "front"][i % 3]},
                       {"key": "env", "value": "prod" if i % 2 else "staging"}],
            "system_labels": [],
            "location": {"location": "us-central1", "country": "US", "region": "us-central1",
                         "zone": "us-central1-a"},
            "export_time": f"2024-09-{day:02d}T{hour:02d}:30:00Z",
            "cost": cost,
            "currency": "USD",
            "currency_conversion_rate": 1.0,
            "usage": {"amount": round(rng.uniform(1, 1000), 3), "unit": "seconds",
                      "amount_in_pricing_units": round(rng.uniform(0, 1), 6), "pricing_unit": "hour"},
            "credits": credits,
            "invoice": {"month": "202409"},
            "cost_type": "tax" if i == 59 else "regular",
            "adjustment_info": None,
            "resource": {"name": f"gke-node-{i}", "global_name": f"//compute.googleapis.com/projects/recs/zones/us-central1-a/instances/{i}"},
            "cost_at_list": round(cost * 1.1, 6),
        }
        out.write(json.dumps(row) + "\n")
