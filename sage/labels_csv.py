"""labels.csv, the index of a dataset folder (DESIGN.md section 3): the one parser every reader uses.

Import (app/services/datasets.py), the `sage-studio import` CLI, the demo and training
(sage/data.py) all read labels.csv through `parse_labels_csv`, so a file means the same thing
everywhere. It needs no torch and touches no other file: checking that images and maps exist and
decode is the caller's job. The rules:

- Encoding: UTF-8, with or without a byte-order mark.
- Header (line 1): `image,label`, then any of `split`, `group`, `subtype` in any order. Names are
  case-insensitive and may carry spaces around them. A missing, unknown or repeated column is one
  problem on line 1 and no row is read.
- Rows: a row whose cells are all empty is skipped. A row with more cells than the header is a
  problem; missing trailing cells are empty. Cells are stripped of surrounding spaces.
- image: a plain file name inside images/: not empty, no `/` or `\\`, not `.` or `..`, no control
  characters, at most 255 characters. An image listed twice is a problem on the second row.
- label: must not be empty unless the caller allows unlabelled rows (import does: the image waits
  for an annotator); when the caller gives the known labels, it must be one of them.
- split: `train`, `val` or `test` (case-insensitive); empty means `train`.
- group (patient, subject, device) and subtype (for example an attack type): optional free text,
  empty means none, at most 100 characters, no control characters. Splits never cut a group: a
  row whose group already appeared in another split is a problem.
- Line numbers are the file's (a quoted cell spanning lines counts each line). A CSV syntax error
  is a problem on its line and ends the reading.

Every problem is collected with its line; rows with a problem are left out of `rows`. A caller
must refuse the whole file when `problems` is not empty (nothing is half-read): `check()` raises
`LabelsCsvError` listing them all.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LABELS_CSV = "labels.csv"
REQUIRED = ("image", "label")
OPTIONAL = ("split", "group", "subtype")
SPLITS = ("train", "val", "test")
HEADER_HELP = "image,label followed by any of split, group, subtype"
MAX_NAME = 255
MAX_TEXT = 100  # the app's `images.group` column and upload field hold 100

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class LabelRow:
    """One good row of labels.csv; label is None only for an unlabelled row the caller allowed.
    The parser always gives a split (`train` when empty); import sets None when the file has no
    split column, so the project draws one at training time."""

    line: int
    image: str
    label: str | None
    split: str | None = "train"
    group: str | None = None
    subtype: str | None = None


@dataclass(frozen=True)
class Problem:
    """A problem on one line of labels.csv (line 1 is the header)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"{LABELS_CSV}:{self.line}: {self.message}"


@dataclass
class LabelsCsv:
    """The parsed file: the header's columns, the good rows in file order and every problem."""

    columns: tuple[str, ...] = ()
    rows: list[LabelRow] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """The sorted distinct labels of the good rows."""
        return sorted({r.label for r in self.rows if r.label})

    def check(self, path: str | Path = LABELS_CSV) -> LabelsCsv:
        """Self, or LabelsCsvError listing every problem as `path:line: message`."""
        if self.problems:
            raise LabelsCsvError(self.problems, path)
        return self


class LabelsCsvError(ValueError):
    """labels.csv has problems; `problems` lists each with its line, `messages` as `path:line: text`."""

    def __init__(self, problems: Sequence[Problem], path: str | Path = LABELS_CSV) -> None:
        self.problems = list(problems)
        self.messages = [f"{path}:{p.line}: {p.message}" for p in self.problems]
        shown = "\n  ".join(self.messages[:20])
        more = f"\n  ... and {len(self.messages) - 20} more" if len(self.messages) > 20 else ""
        super().__init__(f"{len(self.problems)} problem(s) in {path}:\n  {shown}{more}")


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: str) -> str:
    """A cell safe to open in a spreadsheet: a leading formula character gets a `'` before it
    (the OWASP rule); `csv_value` undoes it when parsing, so write -> parse round-trips."""
    return "'" + value if value.startswith(FORMULA_START) else value


def csv_value(cell: str) -> str:
    """Undo `csv_cell`."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_START) else cell


def image_name_problem(name: str) -> str | None:
    """Why `name` is not a plain file name inside images/, or None when it is."""
    if not name:
        return "the image column is empty"
    if "/" in name or "\\" in name or name in (".", "..") or _CONTROL.search(name) or len(name) > MAX_NAME:
        return f"image {name[:100]!r} must be a plain file name inside images/"
    return None


def parse_labels_csv(
    source: str | bytes, *, labels: Sequence[str] | None = None, allow_unlabelled: bool = False
) -> LabelsCsv:
    """Parse the text (or UTF-8 bytes) of a labels.csv by the rules in the module docstring.

    labels: the known class names; a row with another label is a problem (no check when empty).
    allow_unlabelled: a row with an empty label is kept with label None instead of a problem.
    """
    result = LabelsCsv()
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            result.problems.append(Problem(1, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
            return result
    source = source.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(source, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        result.problems.append(Problem(1, f"the file is empty; it needs the header {HEADER_HELP}"))
        return result
    except csv.Error as exc:
        result.problems.append(Problem(1, f"not valid CSV: {exc}"))
        return result
    columns = tuple(h.strip().lower() for h in header)
    unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if columns[:2] != REQUIRED or unknown or repeated:
        why = (
            f"unknown column(s) {unknown}"
            if columns[:2] == REQUIRED and unknown
            else f"repeated column(s) {repeated}"
            if columns[:2] == REQUIRED
            else "it must start with image,label"
        )
        got = ",".join(header)[:200] or "(empty)"
        result.problems.append(Problem(1, f"the header must be {HEADER_HELP}; got {got!r}: {why}"))
        return result
    result.columns = columns
    at = {c: columns.index(c) for c in columns}
    known = list(labels or [])
    seen: dict[str, int] = {}
    group_split: dict[str, tuple[str, int]] = {}
    line = 1
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(columns):
                result.problems.append(Problem(line, f"expected {len(columns)} columns, got {len(cells)}"))
                continue
            cells = [csv_value(c.strip()) for c in cells] + [""] * (len(columns) - len(cells))
            problem, row = _row(line, cells, at, known, allow_unlabelled, seen, group_split)
            if problem:
                result.problems.append(Problem(line, problem))
            elif row is not None:
                result.rows.append(row)
    except csv.Error as exc:
        result.problems.append(Problem(reader.line_num or line, f"not valid CSV: {exc}"))
    return result


def _row(
    line: int,
    cells: list[str],
    at: dict[str, int],
    known: list[str],
    allow_unlabelled: bool,
    seen: dict[str, int],
    group_split: dict[str, tuple[str, int]],
) -> tuple[str | None, LabelRow | None]:
    image = cells[at["image"]]
    bad_name = image_name_problem(image)
    if bad_name:
        return bad_name, None
    if image in seen:
        return f"image {image!r} is listed twice (first on line {seen[image]})", None
    seen[image] = line
    label = cells[at["label"]] or None
    if label is None and not allow_unlabelled:
        return f"{image} has no label", None
    if label is not None and known and label not in known:
        return f"unknown label {label[:100]!r} for {image}, not one of {known}", None
    split = (cells[at["split"]].lower() if "split" in at else "") or "train"
    if split not in SPLITS:
        return f"unknown split {split[:20]!r} for {image}; use train, val or test", None
    extra: dict[str, str | None] = {}
    for column in ("group", "subtype"):
        value = cells[at[column]] if column in at else ""
        if len(value) > MAX_TEXT or _CONTROL.search(value):
            return f"{column} of {image} must be at most {MAX_TEXT} characters of text", None
        extra[column] = value or None
    group = extra["group"]
    if group is not None:
        first = group_split.setdefault(group, (split, line))
        if first[0] != split:
            return (
                f"group {group[:100]!r} of {image} is in split {split} here but in {first[0]} on line "
                f"{first[1]}; splits never cut a group",
                None,
            )
    return None, LabelRow(line, image, label, split, group, extra["subtype"])


def read_labels_csv(
    path: str | Path, *, labels: Sequence[str] | None = None, allow_unlabelled: bool = False
) -> LabelsCsv:
    """Parse the labels.csv file at `path` (FileNotFoundError when there is none)."""
    return parse_labels_csv(Path(path).read_bytes(), labels=labels, allow_unlabelled=allow_unlabelled)


def format_labels_csv(rows: Iterable[LabelRow]) -> str:
    """labels.csv text for `rows`: image,label,split, plus group and subtype when any row has one.
    Cells that a spreadsheet would run as a formula are escaped (`csv_cell`)."""
    rows = list(rows)
    columns = ["image", "label", "split"]
    columns += [c for c in ("group", "subtype") if any(getattr(r, c) for r in rows)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([csv_cell(getattr(r, c) or "") for c in columns])
    return buf.getvalue()
