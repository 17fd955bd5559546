"""Browser pages (Jinja2 templates) at the URLs of DESIGN.md section 6.

Pages are thin: they check who is asking (the session cookie; unauthenticated requests are sent
to /login) and what they may see (a project the caller is not a member of answers 404, as the
REST API does), render the page's frame with the facts it needs to paint immediately, and leave
every change to the REST API, which the page scripts call with the session cookie and the
`X-CSRF-Token` header. The only form posts are /login and /logout, checked with `verify_csrf`.

Access is checked by dependencies, as in the API (`PageUser`, `ProjectPage`, `AnnotatorPage`, ...):
they raise `LoginRequired` or `PageError`, which the handlers `install_error_pages` registers turn
into the redirect to /login and the error page. Only page dependencies and routes raise them, so
API routes keep their JSON errors. A route lists its role dependency before `ProjectImage`, so a
caller below the role hears about the role, not about the image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy.orm import object_session

from app import security
from app.deps import OptionalUser, SessionDep, SettingsDep, member_role
from app.schemas import AdjudicationOut, AnnotationOut, ImageOut, ModelOut, TrainingRunOut
from app.services import adjudication as adjudication_service
from app.services import projects as project_service
from app.services import reading
from app.services.annotations import annotation_of, images_annotated_by
from app.services.images import neighbours, next_image, recent_images
from app.services.login import login_with_password
from app.services.lookups import active_model
from app.services.predictions import prediction_for
from app.services.runs import latest_run
from app.tables import Image, ModelVersion, Project, Role, TrainingRun, User

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


# --- access: page exceptions, their handlers and the dependencies that raise them -----------------


class LoginRequired(Exception):
    """The caller is not signed in: answered with a redirect to /login?next=<this page>."""


class PageError(Exception):
    """The signed-in caller may not see this page: answered with error.html (status, title, message).

    The user is taken out of the request's database session, with the attributes it has loaded:
    the session rolls back (expiring what it holds) and closes before the handler renders the page,
    whose header shows who is signed in."""

    def __init__(self, user: User, status_code: int, title: str, message: str) -> None:
        super().__init__(message)
        session = object_session(user)
        if session is not None:
            session.expunge(user)
        self.user = user
        self.status_code = status_code
        self.title = title
        self.message = message


def not_found(user: User, what: str = "page") -> PageError:
    """404 for what does not exist and for what the caller may not know exists."""
    return PageError(user, 404, "Not found", f"There is no such {what}, or you are not a member of it.")


def _login_redirect(request: Request, exc: Exception) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def _error_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    return error_page(request, exc.user, exc.status_code, exc.title, exc.message)


def install_error_pages(app: FastAPI) -> None:
    """Answer the page exceptions (raised only by page dependencies and routes) with the login
    redirect and the error page."""
    app.add_exception_handler(LoginRequired, _login_redirect)
    app.add_exception_handler(PageError, _error_page)


def page_user(user: OptionalUser) -> User:
    """The signed-in caller, else LoginRequired."""
    if user is None:
        raise LoginRequired
    return user


PageUser = Annotated[User, Depends(page_user)]


class ProjectAccess:
    """A project page's subject: the project, the caller and the caller's role in it."""

    def __init__(self, project: Project, user: User, role: Role) -> None:
        self.project = project
        self.user = user
        self.role = role

    def at_least(self, role: Role) -> bool:
        return self.role.at_least(role)


def project_access(pid: int, user: OptionalUser, session: SessionDep) -> ProjectAccess:
    """The project `{pid}` of the path for a member (site admins: as manager); 404 for non-members.
    The caller is checked here rather than through `PageUser` so that a malformed `{pid}` answers
    422 before an anonymous caller is sent to /login."""
    if user is None:
        raise LoginRequired
    project = session.get(Project, pid)
    role = member_role(session, user, pid) if project is not None else None
    if project is None or role is None:
        raise not_found(user, "project")
    return ProjectAccess(project, user, role)


ProjectPage = Annotated[ProjectAccess, Depends(project_access)]


def annotator_page(access: ProjectPage) -> ProjectAccess:
    """The project for its annotators and managers; 403 for viewers."""
    if not access.at_least(Role.ANNOTATOR):
        raise PageError(
            access.user,
            403,
            "Annotators only",
            "Your role in this project is viewer: you can look, not paint.",
        )
    return access


def adjudicator_page(access: ProjectPage, session: SessionDep) -> ProjectAccess:
    """The project for its managers and adjudicators (and site admins); 403 for other members."""
    if not reading.is_privileged(session, access.project.id, access.user):
        raise PageError(
            access.user,
            403,
            "Adjudicators only",
            "Only the project's managers and members with the adjudicator flag settle disagreements.",
        )
    return access


def manager_page(access: ProjectPage) -> ProjectAccess:
    """The project for its managers; 403 for other members."""
    if not access.at_least(Role.MANAGER):
        raise PageError(access.user, 403, "Managers only", "Only the project's managers change its settings.")
    return access


AnnotatorPage = Annotated[ProjectAccess, Depends(annotator_page)]
AdjudicatorPage = Annotated[ProjectAccess, Depends(adjudicator_page)]
ManagerPage = Annotated[ProjectAccess, Depends(manager_page)]


def project_image(iid: int, access: ProjectPage, session: SessionDep) -> Image:
    """The image `{iid}` of the path if it belongs to the page's project; 404 otherwise."""
    image = session.get(Image, iid)
    if image is None or image.project_id != access.project.id:
        raise not_found(access.user, "image")
    return image


ProjectImage = Annotated[Image, Depends(project_image)]


def _page_context(access: ProjectAccess, nav: str = "") -> dict[str, Any]:
    return {
        "user": access.user,
        "nav": nav,
        "project": access.project,
        "role": access.role,
        "can_annotate": access.at_least(Role.ANNOTATOR),
        "can_manage": access.at_least(Role.MANAGER),
    }


# --- read models for pages -------------------------------------------------------------------------


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
def projects_page(request: Request, user: PageUser, session: SessionDep):
    projects = project_service.project_cards(session, user)
    return render(request, "projects.html", {"user": user, "nav": "projects", "projects": projects})


@router.get("/projects/{pid}", response_class=HTMLResponse)
def project_page(request: Request, access: ProjectPage, session: SessionDep):
    project, user = access.project, access.user
    counts = project_service.project_counts(session, project.id, user)
    model = active_model(session, project.id)
    run = latest_run(session, project.id)
    recent = recent_images(session, project.id, limit=60)
    recent_ids = [i.id for i in recent]
    mine = images_annotated_by(session, user.id, recent_ids)
    hidden = reading.hidden_image_ids(session, project, user, recent_ids)
    privileged = reading.is_privileged(session, project.id, user)
    study = reading.study_context(session, project, privileged)
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
            **_page_context(access, "overview"),
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


@router.get("/projects/{pid}/annotate", response_class=HTMLResponse)
def annotate_next(request: Request, access: AnnotatorPage, session: SessionDep, after: int | None = None):
    project, user = access.project, access.user
    image, _policy = next_image(session, project, user, after=after)
    if image is None:
        return render(
            request,
            "queue_done.html",
            {
                **_page_context(access, "annotate"),
                "counts": project_service.project_counts(session, project.id, user),
            },
        )
    return RedirectResponse(f"/projects/{project.id}/annotate/{image.id}", status_code=303)


@router.get("/projects/{pid}/annotate/{iid}", response_class=HTMLResponse)
def annotate_page(request: Request, access: AnnotatorPage, image: ProjectImage, session: SessionDep):
    project, user = access.project, access.user
    mine = annotation_of(session, image.id, user.id)
    model = active_model(session, project.id)
    has_prediction = model is not None and prediction_for(session, image.id, model.id) is not None
    counts = project_service.project_counts(session, project.id, user)
    image_facts = image_json(image)
    if reading.hidden_image_ids(session, project, user, [image.id]):
        image_facts["label"] = image.import_label  # blind reading: not the other readers' majority
    boot = {
        "user": {"id": user.id, "username": user.username},
        "project": {"id": project.id, "name": project.name, "labels": active_labels(project)},
        "image": image_facts,
        "annotation": (
            AnnotationOut.from_row(mine, author=user.username).model_dump(mode="json") if mine else None
        ),
        "model": model_json(model),
        "has_prediction": has_prediction,
        "nav": neighbours(session, project.id, image.id),
        "counts": counts,
    }
    return render(
        request,
        "annotate.html",
        {
            **_page_context(access, "annotate"),
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
def review_page(request: Request, access: ProjectPage, image: ProjectImage, session: SessionDep):
    project = access.project
    if reading.hidden_image_ids(session, project, access.user, [image.id]):
        raise PageError(
            access.user,
            403,
            "Blind reading",
            "Other readers' labels and maps of this image stay hidden until you have saved your own reading.",
        )
    model = active_model(session, project.id)
    boot = {
        "project": {"id": project.id, "labels": project.labels},
        "image": image_json(image),
        "model": model_json(model),
        "nav": neighbours(session, project.id, image.id),
    }
    return render(request, "review.html", {**_page_context(access, "review"), "image": image, "boot": boot})


# --- adjudication (issue 12) -------------------------------------------------------------------------


@router.get("/projects/{pid}/adjudicate", response_class=HTMLResponse)
def adjudicate_list_page(request: Request, access: AdjudicatorPage, session: SessionDep, offset: int = 0):
    offset = max(0, min(offset, 10_000_000))
    rows = adjudication_service.disagreements(session, access.project, limit=100, offset=offset)
    return render(
        request,
        "adjudicate_list.html",
        {**_page_context(access, "adjudicate"), "rows": rows, "offset": offset},
    )


@router.get("/projects/{pid}/adjudicate/{iid}", response_class=HTMLResponse)
def adjudicate_page(request: Request, access: AdjudicatorPage, image: ProjectImage, session: SessionDep):
    adj = adjudication_service.get_adjudication(session, image.id)
    boot = {
        "project": {"id": access.project.id, "labels": access.project.labels},
        "image": image_json(image),
        "adjudication": (
            AdjudicationOut.from_row(adj, author=adjudication_service.author_name(session, adj)).model_dump(
                mode="json"
            )
            if adj
            else None
        ),
    }
    return render(
        request,
        "adjudicate.html",
        {
            **_page_context(access, "adjudicate"),
            "image": image,
            "boot": boot,
            "body_class": "adjudicate",
        },
    )


# --- settings and the image browser (issue 12) ----------------------------------------------------


@router.get("/projects/{pid}/settings", response_class=HTMLResponse)
def settings_page(request: Request, access: ManagerPage, session: SessionDep):
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
        "me": access.user.username,
    }
    return render(
        request,
        "settings.html",
        {**_page_context(access, "settings"), "boot": boot, "methods": METHODS, "members": members},
    )


@router.get("/projects/{pid}/images", response_class=HTMLResponse)
def images_page(request: Request, access: ProjectPage, session: SessionDep):
    project = access.project
    privileged = reading.is_privileged(session, project.id, access.user)
    readers = [u.username for _, u in project_service.list_members(session, project)]
    boot = {
        "project": {"id": project.id, "labels": project.labels},
        "can_manage": access.at_least(Role.MANAGER),
        "can_filter_others": privileged or not project.blind,
        "me": access.user.username,
        "readers": readers,
    }
    return render(
        request, "images.html", {**_page_context(access, "images"), "boot": boot, "readers": readers}
    )


@router.get("/projects/{pid}/models", response_class=HTMLResponse)
def models_page(request: Request, access: ProjectPage):
    boot = {"project": {"id": access.project.id, "labels": access.project.labels}, "role": access.role}
    return render(request, "models.html", {**_page_context(access, "models"), "boot": boot})


@router.get("/projects/{pid}/predictions", response_class=HTMLResponse)
def predictions_page(request: Request, access: ProjectPage, session: SessionDep):
    model = active_model(session, access.project.id)
    boot = {
        "project": {"id": access.project.id, "labels": access.project.labels},
        "model": model_json(model),
        "role": access.role,
    }
    return render(
        request,
        "predictions.html",
        {**_page_context(access, "predictions"), "model": model, "boot": boot},
    )


# --- administration ----------------------------------------------------------------------------------


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request, user: PageUser, session: SessionDep):
    if not user.is_admin:
        raise not_found(user)
    projects = [p for p, _role in project_service.visible_projects(session, user, by_name=True)]
    boot = {
        "me": {"id": user.id, "username": user.username},
        "projects": [{"id": p.id, "name": p.name} for p in projects],
    }
    return render(request, "admin.html", {"user": user, "nav": "admin", "boot": boot})


@router.get("/tokens", response_class=HTMLResponse)
def tokens_page(request: Request, user: PageUser):
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
