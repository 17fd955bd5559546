"""REST API v1: training runs (start or join, list, detail with lineage, cancel, event stream)."""

from __future__ import annotations

import json
import logging
import time
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Header, Path, Query, Request, status
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.deps import (
    MAX_ID,
    CurrentUser,
    ProjectManager,
    ProjectViewer,
    SessionDep,
    SettingsDep,
    row_in_project,
)
from app.run_events import RunEventHub
from app.schemas import TrainingRequest, TrainingRunOut, WeightsOut
from app.services import runs as run_service
from app.tables import Role, RunStatus, TrainingRun, User

log = logging.getLogger(__name__)
router = APIRouter(tags=["training"])

RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="training run id")]
SSE_RECHECK_S = 5.0  # a stream re-reads its run on its own at least this often
SSE_KEEPALIVE_S = 15.0
SSE_BATCH = 500  # events read per query


def run_event_hub(app) -> RunEventHub:
    hub = getattr(app.state, "run_event_hub", None)
    if hub is None:
        hub = app.state.run_event_hub = RunEventHub(app.state.session_factory)
    return hub


def run_for(session: Session, user: User, run_id: int, role: Role) -> TrainingRun:
    return row_in_project(session, user, TrainingRun, run_id, "training run", role)


@router.post(
    "/projects/{pid}/training-runs", status_code=status.HTTP_202_ACCEPTED, response_model=TrainingRunOut
)
def start_training(
    project: ProjectManager,
    user: CurrentUser,
    session: SessionDep,
    request: Request,
    settings: SettingsDep,
    body: Annotated[TrainingRequest | None, Body()] = None,
) -> TrainingRunOut:
    """Train the project's model now ("train now"). Options override the project's defaults for
    this run only and are validated before anything is queued (422). When a run is already queued
    or running, it is returned instead (`joined: true`)."""
    result = run_service.create_or_join_run(
        session,
        project,
        user,
        body.training if body else None,
        force=True,
        reason="manual",
        settings=settings,
    )
    if result.created:
        try:
            run_service.enqueue_run(request.app.state.celery, result.run.id)
        except Exception:  # the run is committed; the reaper re-sends it
            log.exception("could not enqueue run %s now; the scheduler will send it again", result.run.id)
    return TrainingRunOut.from_row(result.run, lineage=True, joined=not result.created)


@router.get("/projects/{pid}/training-runs", response_model=list[TrainingRunOut])
def list_training_runs(
    project: ProjectViewer,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="page: runs older than this id")
    ] = None,
) -> list[TrainingRunOut]:
    """The project's runs, newest first."""
    return [
        TrainingRunOut.model_validate(r) for r in run_service.list_runs(session, project.id, limit, before_id)
    ]


@router.get("/training-runs/{rid}", response_model=TrainingRunOut)
def get_training_run(rid: RunId, user: CurrentUser, session: SessionDep) -> TrainingRunOut:
    """One run with its lineage: the exact annotation revisions it trained on."""
    return TrainingRunOut.from_row(run_for(session, user, rid, Role.VIEWER), lineage=True)


@router.post("/training-runs/{rid}/cancel", response_model=TrainingRunOut)
def cancel_training_run(rid: RunId, user: CurrentUser, session: SessionDep) -> TrainingRunOut:
    """A queued run is cancelled at once; a running one stops within seconds. 409 when finished."""
    run = run_for(session, user, rid, Role.MANAGER)
    return TrainingRunOut.from_row(run_service.request_cancel(session, run), lineage=True)


def _sse(event_id: int | None, kind: str, data: dict[str, Any]) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"


@router.get(
    "/training-runs/{rid}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
def training_run_events(
    rid: RunId,
    user: CurrentUser,
    session: SessionDep,
    request: Request,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, Query(ge=0, description="resume after this event id")] = None,
) -> StreamingResponse:
    """Server-sent events of a run (`status`, `progress`, `epoch`, `log`), from the start or after
    `Last-Event-ID`; the stream ends after the run's final status."""
    run_for(session, user, rid, Role.VIEWER)
    session.close()
    factory = request.app.state.session_factory
    try:
        start = int(last_event_id) if last_event_id else (after or 0)
    except ValueError:
        start = after or 0

    def fetch(after_id: int) -> tuple[list[tuple[int, str, dict]], str]:
        with factory() as s:
            # Status first: a final status commits together with its event, so once the status
            # read is final, the events read next include the last one.
            run = s.get(TrainingRun, rid)
            run_status = run.status if run else RunStatus.CANCELLED
            events = [(e.id, e.kind, e.data) for e in run_service.events_after(s, rid, after_id, SSE_BATCH)]
            return events, run_status

    hub = run_event_hub(request.app)

    async def stream():
        after_id = start
        idle = 0.0
        yield "retry: 2000\n\n"
        while True:
            events, run_status = await anyio.to_thread.run_sync(fetch, after_id)
            for event_id, kind, data in events:
                after_id = event_id
                yield _sse(event_id, kind, data)
            if events:
                idle = 0.0
                if len(events) >= SSE_BATCH:
                    continue  # drain a backlog before waiting
            if run_status in RunStatus.FINISHED:
                yield _sse(None, "end", {"status": run_status})
                return
            if await request.is_disconnected():
                return
            # Wait for the shared poller to see a new event of this run (one database query per
            # interval for all streams), or re-check on our own now and then.
            waited = time.monotonic()
            await hub.wait(rid, SSE_RECHECK_S)
            idle += time.monotonic() - waited
            if idle >= SSE_KEEPALIVE_S:
                idle = 0.0
                yield ": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/weights",
    response_model=list[WeightsOut],
    responses={401: {"description": "not signed in"}},
)
def list_weights(user: CurrentUser, session: SessionDep) -> list[WeightsOut]:
    """Pretrained weights a training run may name in `weights`: the registry folder SAGE_WEIGHTS_DIR
    and the files `sage-studio weights add` stored in the object storage (workers fetch those)."""
    from app.services.weights import registered as stored
    from sage.weights import as_dicts
    from sage.weights import list_weights as registered

    out = [WeightsOut(**e) for e in as_dicts(registered())]
    names = {w.name for w in out}
    for row in stored(session):
        if row.name not in names:
            out.append(WeightsOut.from_row(row, present=True))
    return out
