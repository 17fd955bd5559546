"""Locust users for `make load` (driven by bench/load_bench.py, which seeds the data and checks it).

Annotators save saliency maps with If-Match (a 409 re-reads the revision and retries once);
viewers browse the gallery, image files, consensus maps, stored predictions and their overlays;
predictors POST small PNGs to the synchronous predict route. Every acknowledged save is appended
to the file in SAGE_LOAD_ACKS so the bench can check afterwards that each one is readable with its
exact bytes and revision. Every answer that is not 2xx is counted by request type and status (a 503
with Retry-After is the limiters shedding load) and written to SAGE_LOAD_STATUSES when locust quits.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections import Counter

import numpy as np
from locust import HttpUser, between, events, task
from PIL import Image as PILImage

SEED = json.loads(os.environ["SAGE_LOAD_SEED"])  # {"annotators": [tokens], "viewers": [...], ...}
ACKS = os.environ["SAGE_LOAD_ACKS"]
STATUSES = os.environ.get("SAGE_LOAD_STATUSES", "")
COUNTS: Counter[str] = Counter()  # "name|status" (status "503-shed" for a 503 with Retry-After)


@events.request.add_listener
def _count(name: str, response=None, exception=None, **_: object) -> None:
    code = getattr(response, "status_code", 0) or 0
    if 200 <= code < 300:
        return
    key = str(code)
    if code in (429, 503) and response is not None and response.headers.get("Retry-After"):
        key = f"{code}-shed"
    COUNTS[f"{name}|{key}"] += 1


@events.quitting.add_listener
def _dump(**_: object) -> None:
    if STATUSES:
        with open(STATUSES, "w") as f:
            json.dump(dict(COUNTS), f)


def _map(width: int, height: int, rng: random.Random) -> bytes:
    arr = np.full((height, width), rng.randrange(1, 256), dtype=np.uint8)  # all-zero means "no map"
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _photo(rng: random.Random) -> bytes:
    arr = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class Annotator(HttpUser):
    weight = SEED.get("weights", {}).get("annotator", 20)
    wait_time = between(0.2, 0.6)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.headers = {"Authorization": f"Bearer {self.rng.choice(SEED['annotators'])}"}
        self.revisions: dict[int, int] = {}

    @task
    def save_map(self) -> None:
        iid = self.rng.choice(SEED["images"])
        data = _map(SEED["width"], SEED["height"], self.rng)
        label = self.rng.choice(["cat", "dog"])
        for _ in range(2):
            headers = dict(self.headers)
            if iid in self.revisions:
                headers["If-Match"] = str(self.revisions[iid])
            with self.client.put(
                f"/api/v1/images/{iid}/annotation",
                headers=headers,
                data={"label": label},
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
    weight = SEED.get("weights", {}).get("viewer", 5)
    wait_time = between(0.2, 0.6)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.headers = {"Authorization": f"Bearer {self.rng.choice(SEED['viewers'])}"}

    def _get(self, path: str, name: str, ok: tuple[int, ...] = (200,)) -> None:
        with self.client.get(path, headers=self.headers, name=name, catch_response=True) as r:
            if r.status_code in ok:
                r.success()
            else:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(3)
    def gallery(self) -> None:
        self._get(f"/api/v1/projects/{SEED['project']}/images?limit=50", "GET gallery")

    @task(2)
    def image_file(self) -> None:
        iid = self.rng.choice(SEED["images"])
        self._get(f"/api/v1/images/{iid}/file", "GET /images/{iid}/file")

    @task(2)
    def consensus(self) -> None:
        iid = self.rng.choice(SEED["images"])  # 404: nobody painted this image yet
        self._get(f"/api/v1/images/{iid}/saliency.png", "GET /images/{iid}/saliency.png", (200, 404))

    @task(1)
    def predictions(self) -> None:
        self._get(f"/api/v1/projects/{SEED['project']}/predictions", "GET predictions gallery")

    @task(2)
    def overlay(self) -> None:
        # 404: no stored prediction of the active model for this image (a retrain just activated a
        # new version whose predictions are still being written)
        iid = self.rng.choice(SEED["images"])
        self._get(f"/api/v1/images/{iid}/prediction/overlay.png", "GET /images/{iid}/prediction/overlay.png",
                  (200, 404))  # fmt: skip


class Predictor(HttpUser):
    weight = SEED.get("weights", {}).get("predictor", 2)
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.headers = {"Authorization": f"Bearer {self.rng.choice(SEED['predictors'])}"}

    @task
    def predict(self) -> None:
        with self.client.post(
            f"/api/v1/projects/{SEED['project']}/predict",
            headers=self.headers,
            files={"file": ("p.png", _photo(self.rng), "image/png")},
            name="POST /projects/{pid}/predict",
            catch_response=True,
        ) as r:
            if r.status_code == 200 and "label" in r.json():
                r.success()
            else:
                r.failure(f"{r.status_code}: {r.text[:200]}")
