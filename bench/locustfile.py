"""Locust users for `make load` (driven by bench/load_bench.py, which seeds the data and checks it).

Annotators save saliency maps with If-Match (a 409 re-reads the revision and retries once);
viewers browse the gallery, image files and consensus maps. Every acknowledged save is appended
to the file in SAGE_LOAD_ACKS so the bench can check afterwards that each one is readable with its
exact bytes and revision.
"""

from __future__ import annotations

import io
import json
import os
import random

import numpy as np
from locust import HttpUser, between, task
from PIL import Image as PILImage

SEED = json.loads(os.environ["SAGE_LOAD_SEED"])  # {"annotators": [tokens], "viewers": [...], ...}
ACKS = os.environ["SAGE_LOAD_ACKS"]


def _map(width: int, height: int, rng: random.Random) -> bytes:
    arr = np.full((height, width), rng.randrange(1, 256), dtype=np.uint8)  # all-zero means "no map"
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class Annotator(HttpUser):
    weight = 20
    wait_time = between(0.2, 0.6)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.headers = {"Authorization": f"Bearer {self.rng.choice(SEED['annotators'])}"}
        self.revisions: dict[int, int] = {}

    @task
    def save_map(self) -> None:
        iid = self.rng.choice(SEED["images"])
        data = _map(SEED["width"], SEED["height"], self.rng)
        for _ in range(2):
            headers = dict(self.headers)
            if iid in self.revisions:
                headers["If-Match"] = str(self.revisions[iid])
            with self.client.put(
                f"/api/v1/images/{iid}/annotation",
                headers=headers,
                data={"label": "cat"},
                files={"saliency": ("m.png", data, "image/png")},
                name="PUT /images/{iid}/annotation",
                catch_response=True,
            ) as r:
                if r.status_code in (200, 201):
                    body = r.json()
                    self.revisions[iid] = body["revision"]
                    with open(ACKS, "a") as f:
                        f.write(
                            json.dumps({"aid": body["id"], "revision": body["revision"], "png": data.hex()})
                            + "\n"
                        )
                    r.success()
                    return
                if r.status_code in (409, 428):
                    r.success()  # someone else's revision (or ours unknown): read it and retry
                    mine = self.client.get(
                        f"/api/v1/images/{iid}/annotation",
                        headers=self.headers,
                        name="GET /images/{iid}/annotation",
                    )
                    if mine.status_code == 200:
                        self.revisions[iid] = mine.json()["revision"]
                    else:
                        self.revisions.pop(iid, None)
                    continue
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return


class Viewer(HttpUser):
    weight = 5
    wait_time = between(0.2, 0.6)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.headers = {"Authorization": f"Bearer {self.rng.choice(SEED['viewers'])}"}

    @task(3)
    def gallery(self) -> None:
        self.client.get(
            f"/api/v1/projects/{SEED['project']}/images?limit=50", headers=self.headers, name="GET gallery"
        )

    @task(2)
    def image_file(self) -> None:
        iid = self.rng.choice(SEED["images"])
        self.client.get(f"/api/v1/images/{iid}/file", headers=self.headers, name="GET /images/{iid}/file")

    @task(2)
    def consensus(self) -> None:
        iid = self.rng.choice(SEED["images"])
        with self.client.get(
            f"/api/v1/images/{iid}/saliency.png",
            headers=self.headers,
            name="GET /images/{iid}/saliency.png",
            catch_response=True,
        ) as r:
            if r.status_code in (200, 404):  # 404: nobody painted this image yet
                r.success()
