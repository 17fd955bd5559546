"""Browser pages (Jinja2 templates) at the URLs of DESIGN.md section 6.

Pages are thin: they check who is asking (the session cookie; unauthenticated requests are sent
to /login) and what they may see (a project the caller is not a member of answers 404, as the
REST API does), render the page's frame with the facts it needs to paint immediately, and leave
every change to the REST API, which the page scripts call with the session cookie and the
`X-CSRF-Token` header. The only form posts are /login and /logout, checked with `verify_csrf`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app import security
from app.deps import ROLE_RANK, OptionalUser, SessionDep, SettingsDep, member_role
from app.schemas import ImageOut, ModelOut, TrainingRunOut
from app.services import adjudication as adjudication_service
from app.services import projects as project_service
from app.services import reading
from app.services.images import next_image
from app.services.login import login_with_password
from app.services.lookups import active_model
from app.tables import Annotation, Image, ModelVersion, Prediction, Project, ProjectMember, TrainingRun, User

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))

router = APIRouter(include_in_schema=False)


def _tojson_script(value: Any) -> Markup:
    """JSON safe inside <script type="application/json"> (no `</script>` break-out)."""
    text = (
        json.dumps(value, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )
    return Markup(text)


templates.env.filters["json_script"] = _tojson_script


class LoginRequired(Exception):
    """Raised by page helpers; turned into a redirect to /login?next=... ."""


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def _safe_next(target: str | None) -> str:
    """Only same-site absolute paths: `next=//evil.example` or `https://...` would be an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    context = {"request": request, "csrf_token": security.csrf_token(request), **context}
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    security.attach_csrf_cookie(request, response)
    return response


def error_page(
    request: Request, user: User | None, status_code: int, title: str, message: str
) -> HTMLResponse:
    return render(
        request,
        "error.html",
        {"user": user, "title": title, "message": message, "status": status_code},
        status_code,
    )


def _not_found(request: Request, user: User | None, what: str = "page") -> HTMLResponse:
    return error_page(
        request, user, 404, "Not found", f"There is no such {what}, or you are not a member of it."
    )


class ProjectAccess:
    """A project page's subject: the project and the caller's role in it (None: not a member)."""

    def __init__(self, project: Project, role: str) -> None:
        self.project = project
        self.role = role

    def at_least(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def _project_access(session: Session, user: User, pid: int) -> ProjectAccess | None:
    project = session.get(Project, pid)
    if project is None:
        return None
    role = member_role(session, user, pid)
    return ProjectAccess(project, role) if role else None


def _page_context(user: User, access: ProjectAccess | None = None, nav: str = "") -> dict[str, Any]:
    ctx: dict[str, Any] = {"user": user, "nav": nav}
    if access is not None:
        p = access.project
        ctx.update(
            project=p,
            role=access.role,
            can_annotate=access.at_least("annotator"),
            can_manage=access.at_least("manager"),
        )
    return ctx


# --- read models for pages -------------------------------------------------------------------------


def project_counts(session: Session, project_id: int, user: User | None = None) -> dict[str, Any]:
    """Counts for the overview and the project list (denormalised columns: index-only at 100k images)."""
    row = session.execute(
        select(
            func.count(Image.id),
            func.count(Image.label),
            func.sum(case((Image.annotation_count > 0, 1), else_=0)),
            func.avg(Image.agreement_iou),
            func.count(Image.agreement_iou),
        ).where(Image.project_id == project_id)
    ).one()
    counts = {
        "images": row[0] or 0,
        "labelled": row[1] or 0,
        "annotated": int(row[2] or 0),
        "agreement": float(row[3]) if row[3] is not None else None,
        "agreement_images": row[4] or 0,
    }
    if user is not None:
        counts["mine"] = session.scalar(
            select(func.count(Annotation.id)).where(
                Annotation.project_id == project_id, Annotation.author_id == user.id
            )
        )
    return counts


def latest_run(session: Session, project_id: int) -> TrainingRun | None:
    return session.scalar(
        select(TrainingRun)
        .where(TrainingRun.project_id == project_id)
        .order_by(TrainingRun.id.desc())
        .limit(1)
    )


def neighbours(session: Session, project_id: int, image_id: int) -> dict[str, Any]:
    prev_id = session.scalar(
        select(Image.id)
        .where(Image.project_id == project_id, Image.id < image_id)
        .order_by(Image.id.desc())
        .limit(1)
    )
    next_id = session.scalar(
        select(Image.id)
        .where(Image.project_id == project_id, Image.id > image_id)
        .order_by(Image.id)
        .limit(1)
    )
    position = session.scalar(
        select(func.count(Image.id)).where(Image.project_id == project_id, Image.id <= image_id)
    )
    return {"prev": prev_id, "next": next_id, "position": position}


def image_json(image: Image) -> dict[str, Any]:
    """The image facts the annotation and review pages paint first, read as the REST API's ImageOut."""
    out = ImageOut.model_validate(image)
    return {
        "id": out.id,
        "width": out.width,
        "height": out.height,
        "name": out.original_name,
        "split": out.split,
        "label": out.label,
        "import_label": out.import_label,
        "annotation_count": out.annotation_count,
        "file_url": out.file_url,
        "display_url": out.display_url,
        "pixels": out.pixels.model_dump(),
    }


def model_json(model: ModelVersion | None) -> dict[str, Any] | None:
    """The model as the REST API gives it, so a page's first paint and its later fetches agree."""
    return None if model is None else ModelOut.model_validate(model).model_dump(mode="json")


def run_json(run: TrainingRun | None) -> dict[str, Any] | None:
    """The training run as the REST API gives it."""
    return None if run is None else TrainingRunOut.model_validate(run).model_dump(mode="json")


# --- login -------------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, user: OptionalUser, next: str | None = None):
    if user is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", {"next": _safe_next(next), "error": None, "username": ""})


@router.post("/login", response_class=HTMLResponse)
def login_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: str = Form(""),
    password: str = Form(""),
    csrf_token: str = Form(""),
    next: str = Form("/"),
):
    target = _safe_next(next)

    def again(message: str, status_code: int) -> HTMLResponse:
        return render(
            request,
            "login.html",
            {"next": target, "error": message, "username": username},
            status_code=status_code,
        )

    if not security.verify_csrf(request, csrf_token):
        return again("Your sign-in form expired. Please try again.", 400)
    if not username or not password:
        return again("Enter your username and password.", 422)
    try:
        user = login_with_password(request, session, username, password)
    except HTTPException as exc:
        if exc.status_code == 429:
            return again(f"Too many failed attempts: {exc.detail}.", 429)
        return again("Wrong username or password.", 401)
    response = RedirectResponse(target, status_code=303)
    security.login_session(response, user, settings, request)
    return response


@router.get("/logout", response_class=HTMLResponse)
def logout_page(request: Request, user: OptionalUser):
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return render(request, "logout.html", {"user": user})


@router.post("/logout")
def logout_submit(
    request: Request,
    settings: SettingsDep,
    user: OptionalUser,
    session: SessionDep,
    csrf_token: str = Form(""),
):
    if not security.verify_csrf(request, csrf_token):
        return RedirectResponse("/logout", status_code=303)
    if user is not None:  # end the session server side too: a copied cookie stops working
        security.end_sessions(session, user)
        session.commit()
    response = RedirectResponse("/login", status_code=303)
    security.logout_session(response, settings, request)
    return response


# --- projects ----------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def projects_page(request: Request, user: OptionalUser, session: SessionDep):
    if user is None:
        return _login_redirect(request)
    query = select(Project).order_by(Project.name)
    if not user.is_admin:
        query = query.join(ProjectMember, ProjectMember.project_id == Project.id).where(
            ProjectMember.user_id == user.id
        )
    projects = []
    for project in session.scalars(query):
        model = active_model(session, project.id)
        projects.append(
            {
                "project": project,
                "role": member_role(session, user, project.id),
                "counts": project_counts(session, project.id, user),
                "model": model,
            }
        )
    return render(request, "projects.html", {"user": user, "nav": "projects", "projects": projects})


def _with_project(request: Request, user: User | None, session: Session, pid: int):
    """(access, None) for a member, else (None, the response to send: login redirect or 404)."""
    if user is None:
        return None, _login_redirect(request)
    access = _project_access(session, user, pid)
    if access is None:
        return None, _not_found(request, user, "project")
    return access, None


@router.get("/projects/{pid}", response_class=HTMLResponse)
def project_page(request: Request, pid: int, user: OptionalUser, session: SessionDep):
    access, response = _with_project(request, user, session, pid)
    if response:
        return response
    project = access.project
    counts = project_counts(session, pid, user)
    model = active_model(session, pid)
    run = latest_run(session, pid)
    recent = list(
        session.scalars(select(Image).where(Image.project_id == pid).order_by(Image.id.desc()).limit(60))
    )
    mine = set(
        session.scalars(
            select(Annotation.image_id).where(
                Annotation.author_id == user.id, Annotation.image_id.in_([i.id for i in recent])
            )
        )
    )
    hidden = reading.hidden_image_ids(session, project, user, [i.id for i in recent])
    privileged = reading.is_privileged(session, pid, user)
    study = reading_study_context(session, project, privileged)
    boot = {
        "project": {
            "id": project.id,
            "name": project.name,
            "labels": project.labels,
            "retrain_enabled": project.retrain_enabled,
            "retrain_min_new": project.retrain_min_new,
            "activation_policy": project.activation_policy,
        },
        "role": access.role,
        "run": run_json(run),
    }
    return render(
        request,
        "project.html",
        {
            **_page_context(user, access, "overview"),
            "counts": counts,
            "model": model,
            "run": run,
            "recent": recent,
            "mine": mine,
            "hidden": hidden,
            "study": study,
            "can_export": not project.blind or privileged,
            "boot": boot,
            "weights": _registered_weights(),
        },
    )


def reading_study_context(session: Session, project: Project, privileged: bool) -> dict[str, Any]:
    """The project page's reading-study facts: coverage for everyone; the unsure and flagged
    readings for managers and adjudicators."""
    return {
        "coverage": reading.coverage(session, project),
        "blind": project.blind,
        "privileged": privileged,
        "attention": reading.attention(session, project) if privileged else [],
    }


def _registered_weights() -> list[dict[str, Any]]:
    """The pretrained weights the train box offers, each with the input size its backbone trains at
    (empty when the registry is unreadable)."""
    from sage.config import default_image_size
    from sage.weights import WeightsError, as_dicts, list_weights

    try:
        entries = as_dicts(list_weights())
    except (WeightsError, OSError):
        return []
    return [e | {"image_size": default_image_size(e["backbone"])} for e in entries]


# --- annotate ----------------------------------------------------------------------------------------


def _annotators_only(request: Request, user) -> HTMLResponse:
    return error_page(
        request, user, 403, "Annotators only", "Your role in this project is viewer: you can look, not paint."
    )


@router.get("/projects/{pid}/annotate", response_class=HTMLResponse)
def annotate_next(
    request: Request, pid: int, user: OptionalUser, session: SessionDep, after: int | None = None
):
    access, response = _with_project(request, user, session, pid)
    if response:
        return response
    if not access.at_least("annotator"):
        return _annotators_only(request, user)
    image, _policy = next_image(session, access.project, user, after=after)
    if image is None:
        return render(
            request,
            "queue_done.html",
            {**_page_context(user, access, "annotate"), "counts": project_counts(session, pid, user)},
        )
    return RedirectResponse(f"/projects/{pid}/annotate/{image.id}", status_code=303)


@router.get("/projects/{pid}/annotate/{iid}", response_class=HTMLResponse)
def annotate_page(request: Request, pid: int, iid: int, user: OptionalUser, session: SessionDep):
    access, response = _with_project(request, user, session, pid)
    if response:
        return response
    if not access.at_least("annotator"):
        return _annotators_only(request, user)
    image = session.get(Image, iid)
    if image is None or image.project_id != pid:
        return _not_found(request, user, "image")
    mine = session.scalar(
        select(Annotation).where(Annotation.image_id == iid, Annotation.author_id == user.id)
    )
    model = active_model(session, pid)
    has_prediction = bool(
        model
        and session.scalar(
            select(func.count(Prediction.id)).where(
                Prediction.image_id == iid, Prediction.model_id == model.id
            )
        )
    )
    counts = project_counts(session, pid, user)
    image_facts = image_json(image)
    if reading.hidden_image_ids(session, access.project, user, [iid]):
        image_facts["label"] = image.import_label  # blind reading: not the other readers' majority
    boot = {
        "user": {"id": user.id, "username": user.username},
        "project": {"id": pid, "name": access.project.name, "labels": active_labels(access.project)},
        "image": image_facts,
        "annotation": (
            {
                "id": mine.id,
                "label": mine.label,
                "revision": mine.revision,
                "has_saliency": mine.saliency_key is not None,
                "status": mine.status,
                "comment": mine.comment,
                "updated_at": mine.updated_at,
            }
            if mine
            else None
        ),
        "model": model_json(model),
        "has_prediction": has_prediction,
        "nav": neighbours(session, pid, iid),
        "counts": counts,
    }
    return render(
        request,
        "annotate.html",
        {
            **_page_context(user, access, "annotate"),
            "image": image,
            "boot": boot,
            "body_class": "annotate",
            "labels": boot["project"]["labels"],
        },
    )


def active_labels(project: Project) -> list[str]:
    """The labels offered for new readings: all but the retired ones, in the project's order."""
    retired = set(project.retired_labels or [])
    return [label for label in project.labels if label not in retired]


# --- review, models, predictions ---------------------------------------------------------------------


@router.get("/projects/{pid}/review/{iid}", response_class=HTMLResponse)
def review_page(request: Request, pid: int, iid: int, user: OptionalUser, session: SessionDep):
    access, response = _with_project(request, user, session, pid)
    if response:
        return response
    image = session.get(Image, iid)
    if image is None or image.project_id != pid:
        return _not_found(request, user, "image")
    if reading.hidden_image_ids(session, access.project, user, [iid]):
        return error_page(
            request,
            user,
            403,
            "Blind reading",
            "Other readers' labels and maps of this image stay hidden until you have saved your own reading.",
        )
    model = active_model(session, pid)
    boot = {
        "project": {"id": pid, "labels": access.project.labels},
        "image": image_json(image),
        "model": model_json(model),
        "nav": neighbours(session, pid, iid),
    }
    return render(
        request, "review.html", {**_page_context(user, access, "review"), "image": image, "boot": boot}
    )


# --- adjudication (issue 12) -------------------------------------------------------------------------


def _adjudicators_only(request: Request, user) -> HTMLResponse:
    return error_page(
        request,
        user,
        403,
        "Adjudicators only",
        "Only the project's managers and members with the adjudicator flag settle disagreements.",
    )


@router.get("/projects/{pid}/adjudicate", response_class=HTMLResponse)
def adjudicate_list_page(
    request: Request, pid: int, user: OptionalUser, session: SessionDep, offset: int = 0
):
    access, response = _with_project(request, user, session, pid)
    if response:
        return response
    if not reading.is_privileged(session, pid, user):
        return _adjudicators_only(request, user)
    offset = max(0, min(offset, 10_000_000))
    rows = adjudication_service.disagreements(session, access.project, limit=100, offset=offset)
    return render(
        request,
        "adjudicate_list.html",
        {**_page_context(user, access, "adjudicate"), "rows": rows, "offset": offset},
    )


@router.get("/projects/{pid}/adjudicate/{iid}", response_class=HTMLResponse)
def adjudicate_page(request: Request, pid: int, iid: int, user: OptionalUser, session: SessionDep):
    access, response = _with_project(request, user, session, pid)
    if response:
        return response
    if not reading.is_privileged(session, pid, user):
        return _adjudicators_only(request, user)
    image = session.get(Image, iid)
    if image is None or image.project_id != pid:
        return _not_found(request, user, "image")
    adj = adjudication_service.get_adjudication(session, iid)
    boot = {
        "project": {"id": pid, "labels": access.project.labels},
        "image": image_json(image),
        "adjudication": {
            "label": adj.label,
            "revision": adj.revision,
            "has_saliency": adj.saliency_key is not None,
        }
        if adj
        else None,
    }
    return render(
        request,
        "adjudicate.html",
        {
            **_page_context(user, access, "adjudicate"),
            "image": image,
            "boot": boot,
            "body_class": "adjudicate",
        },
    )


# --- settings and the image browser (issue 12) ----------------------------------------------------


def _managers_only(request: Request, user) -> HTMLResponse:
    return error_page(request, user, 403, "Managers only", "Only the project's managers change its settings.")


@router.get("/projects/{pid}/settings", response_class=HTMLResponse)
def settings_page(request: Request, pid: int, user: OptionalUser, session: SessionDep):
    access, response = _with_project(request, user, session, pid)
    if response:
        return response
    if not access.at_least("manager"):
        return _managers_only(request, user)
    from sage.config import METHODS  # torch-free: the option names the API validates

    project = access.project
    members = [
        {"username": u.username, "role": m.role, "adjudicator": m.adjudicator}
        for m, u in project_service.list_members(session, project)
    ]
    boot = {
        "project": {
            "id": project.id,
            "name": project.name,
            "description": project.description,
            "labels": project.labels,
            "retired_labels": project.retired_labels or [],
            "training": project.training or {},
        },
        "members": members,
        "me": user.username,
    }
    return render(
        request,
        "settings.html",
        {**_page_context(user, access, "settings"), "boot": boot, "methods": METHODS, "members": members},
    )


@router.get("/projects/{pid}/images", response_class=HTMLResponse)
def images_page(request: Request, pid: int, user: OptionalUser, session: SessionDep):
    access, response = _with_project(request, user, session, pid)
    if response:
        return response
    project = access.project
    privileged = reading.is_privileged(session, pid, user)
    readers = [u.username for _, u in project_service.list_members(session, project)]
    boot = {
        "project": {"id": pid, "labels": project.labels},
        "can_manage": access.at_least("manager"),
        "can_filter_others": privileged or not project.blind,
        "me": user.username,
        "readers": readers,
    }
    return render(
        request, "images.html", {**_page_context(user, access, "images"), "boot": boot, "readers": readers}
    )


@router.get("/projects/{pid}/models", response_class=HTMLResponse)
def models_page(request: Request, pid: int, user: OptionalUser, session: SessionDep):
    access, response = _with_project(request, user, session, pid)
    if response:
        return response
    boot = {"project": {"id": pid, "labels": access.project.labels}, "role": access.role}
    return render(request, "models.html", {**_page_context(user, access, "models"), "boot": boot})


@router.get("/projects/{pid}/predictions", response_class=HTMLResponse)
def predictions_page(request: Request, pid: int, user: OptionalUser, session: SessionDep):
    access, response = _with_project(request, user, session, pid)
    if response:
        return response
    model = active_model(session, pid)
    boot = {
        "project": {"id": pid, "labels": access.project.labels},
        "model": model_json(model),
        "role": access.role,
    }
    return render(
        request,
        "predictions.html",
        {**_page_context(user, access, "predictions"), "model": model, "boot": boot},
    )


# --- administration ----------------------------------------------------------------------------------


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request, user: OptionalUser, session: SessionDep):
    if user is None:
        return _login_redirect(request)
    if not user.is_admin:
        return _not_found(request, user)
    projects = list(session.scalars(select(Project).order_by(Project.name)))
    boot = {
        "me": {"id": user.id, "username": user.username},
        "projects": [{"id": p.id, "name": p.name} for p in projects],
    }
    return render(request, "admin.html", {"user": user, "nav": "admin", "boot": boot})


@router.get("/tokens", response_class=HTMLResponse)
def tokens_page(request: Request, user: OptionalUser):
    if user is None:
        return _login_redirect(request)
    return render(request, "tokens.html", {"user": user, "nav": "tokens", "boot": {"me": {"id": user.id}}})


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    svg = (
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'><defs><radialGradient id='g' cx='.4' cy='.4'>"
        "<stop offset='.15' stop-color='#ffec78'/><stop offset='.5' stop-color='#f5642a'/>"
        "<stop offset='1' stop-color='#6a1d96'/></radialGradient></defs>"
        "<rect width='32' height='32' rx='8' fill='url(#g)'/></svg>"
    )
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})
