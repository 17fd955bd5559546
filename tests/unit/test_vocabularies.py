"""The vocabularies (roles, run, job and reading statuses, training methods) are one StrEnum each; their
values are the strings clients send and read, and the OpenAPI document offers exactly those."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.schemas import TrainingOptions
from app.tables import JobStatus, ReadingStatus, Role, RunStatus
from sage.cli import build_parser
from sage.config import METHODS, Method, TrainConfig


def _schema(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """`node` with a `$ref` followed."""
    while "$ref" in node:
        node = doc["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _enum(doc: dict[str, Any], node: dict[str, Any]) -> list[str]:
    """The allowed values of a property, through `$ref` and `anyOf: [..., null]`."""
    node = _schema(doc, node)
    if "anyOf" in node:
        (node,) = [_schema(doc, n) for n in node["anyOf"] if n.get("type") != "null"]
    return node["enum"]


def _body(doc: dict[str, Any], path: str, method: str, media: str) -> dict[str, Any]:
    return _schema(doc, doc["paths"][path][method]["requestBody"]["content"][media]["schema"])


@pytest.fixture
def openapi(app) -> dict[str, Any]:
    return app.openapi()


def test_the_api_documents_exactly_the_enum_values(openapi):
    project = _body(openapi, "/api/v1/projects", "post", "application/json")
    training = _schema(openapi, project["properties"]["training"])
    assert _enum(openapi, training["properties"]["method"]) == [m.value for m in Method]
    member = _body(openapi, "/api/v1/projects/{pid}/members", "post", "application/json")
    assert _enum(openapi, member["properties"]["role"]) == ["viewer", "annotator", "manager"]
    annotation = _body(openapi, "/api/v1/images/{iid}/annotation", "put", "multipart/form-data")
    status = annotation["properties"]["status"]
    assert (
        _enum(openapi, status) == [s.value for s in ReadingStatus] == ["done", "skipped", "unsure", "flagged"]
    )
    assert status["default"] == "done"


def test_wire_strings():
    assert [r.value for r in Role] == ["viewer", "annotator", "manager"]
    # DESIGN.md section 6: "status": queued|running|succeeded|failed|cancelled
    assert [s.value for s in RunStatus] == ["queued", "running", "succeeded", "failed", "cancelled"]
    assert sorted(RunStatus.FINISHED) == ["cancelled", "failed", "succeeded"]
    assert sorted(RunStatus.ACTIVE) == ["queued", "running"]
    assert [s.value for s in JobStatus] == ["queued", "running", "succeeded", "failed", "expired"]
    assert sorted(JobStatus.ACTIVE) == ["queued", "running"]
    assert sorted(ReadingStatus.NEEDS_COMMENT) == ["flagged", "unsure"]
    # DESIGN.md section 7: the methods `python -m sage train --method` takes
    assert set(METHODS) == {
        "ce", "blur", "cyborg", "rrr", "gradia", "sage", "sage-inverted", "sage-paper", "ce-swap", "ce-jsd"
    }  # fmt: skip
    # members are their strings: they compare, hash, format and store as the plain value
    assert Role.MANAGER == "manager" and f"{RunStatus.CANCELLED}" == "cancelled"
    assert {"sage": 1}[Method.SAGE] == 1


def test_roles_are_ranked_viewer_annotator_manager_not_by_alphabet():
    assert [role.rank for role in (Role.VIEWER, Role.ANNOTATOR, Role.MANAGER)] == [1, 2, 3]
    assert Role.MANAGER.at_least("annotator") and Role.ANNOTATOR.at_least(Role.ANNOTATOR)
    assert not Role.VIEWER.at_least(Role.ANNOTATOR) and not Role.ANNOTATOR.at_least("manager")
    with pytest.raises(ValueError):
        Role.VIEWER.at_least("owner")


def test_training_options_take_method_names_from_json_and_from_dicts():
    # TrainingOptions is strict: an Enum field there would refuse "sage" from a dict (stored options)
    assert TrainingOptions.model_validate({"method": "sage"}).as_dict() == {"method": "sage"}
    assert TrainingOptions.model_validate_json('{"method": "ce-swap"}').method is Method.CE_SWAP
    with pytest.raises(ValidationError) as info:
        TrainingOptions.model_validate({"method": "magic"})
    assert "'sage-paper', 'sage' or 'sage-inverted'" in info.value.errors()[0]["msg"]


def test_train_config_holds_the_member_and_writes_the_plain_name():
    config = TrainConfig.from_dict({"method": "cyborg"})
    assert config.method is Method.CYBORG
    # model.pt holds this dict: a plain str, so torch.load(weights_only=True) needs no sage class
    assert type(config.to_dict()["method"]) is str
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown method 'magic'; choose one of: ce, blur, "):
        TrainConfig.from_dict({"method": "magic"})


def test_the_cli_offers_the_method_names(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--out", "o", "--method", "magic"])
    err = capsys.readouterr().err
    assert "invalid choice: 'magic' (choose from 'ce', 'blur'," in err and "Method." not in err
    assert (
        build_parser().parse_args(["train", "--data", "d", "--out", "o", "--method", "sage"]).method == "sage"
    )
