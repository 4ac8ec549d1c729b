"""Pure rules of the fake Notion server: limits, file types, property values, query filters.

Nothing here does I/O or reads a clock; the server in ``fake_notion.app`` passes ``now``
in and turns :class:`NotionError` into Notion's error envelope. Section and rule numbers
refer to docs/notion-contract.md (the contract); "rule N" is an item of its §12.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fake_notion.filetypes import FileTypes, extension_of

# --- limits (§4, with the docs' units turned into bytes) ---------------------------------------
MIB = 1024 * 1024
SINGLE_PART_MAX = 20 * MIB  # "Files larger than 20 MiB must be split into parts"
PART_MIN = 5 * MIB  # every multi-part part but the highest-numbered one
PART_MAX = 20 * MIB
MAX_PARTS = 1000  # the older reference; the newest OpenAPI says 10,000 (rule 6: configurable)
PART_NUMBER_MAX = 1000  # part_number stays 1..1000 in every copy of the send reference
FILENAME_MAX_BYTES = 900  # UTF-8 bytes, extension included
FREE_WORKSPACE_LIMIT = 5 * MIB
PAID_WORKSPACE_LIMIT = 5 * 1024 * MIB  # "5 GiB per file"; the byte value is UNCONFIRMED (§4)
RICH_TEXT_MAX = 2000  # text.content, text.link.url, any URL (chars)
EQUATION_MAX = 1000
ARRAY_MAX = 100  # any array: rich text items, files, multi_select, children
EMAIL_PHONE_MAX = 200
JSON_BODY_MAX = 500_000  # "500KB"; decimal kilobytes chosen (see the notes)
PAGE_SIZE_MAX = 100
UPLOAD_TTL_S = 3600.0  # attach within one hour of create (§2)

# A Notion id: 32 hex digits, bare or dashed 8-4-4-4-12 (§1).
_ID = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")

UNSUPPORTED_EXTENSION = (
    "Provided `filename` has an extension that is not supported for the File Upload API.")


@dataclass(frozen=True, slots=True)
class NotionError(Exception):
    """One rejection; the server renders it as ``{"object": "error", ...}`` (§8)."""

    status: int
    code: str
    message: str
    additional_data: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def validation(message: str) -> NotionError:
    return NotionError(400, "validation_error", message)


def not_found(kind: str, object_id: str) -> NotionError:
    return NotionError(404, "object_not_found",
                       f"Could not find {kind} with ID: {object_id}. Make sure the relevant "
                       "pages and databases are shared with your integration.")


def restricted() -> NotionError:
    """§7.4: the integration lacks the capability the endpoint needs (the message is the one
    third parties report; the docs give only the status and code)."""
    return NotionError(403, "restricted_resource", "Insufficient permissions for this endpoint.")


def bare_mime(content_type: str) -> str:
    """``Text/Plain; charset=utf-8`` -> ``text/plain``: parameters never decide the type."""
    return content_type.split(";", 1)[0].strip().lower()


def check_content_type(types: FileTypes, content_type: str) -> str:
    """Rule 8: the MIME type must be on the allow-list (octet-stream is not)."""
    mime = bare_mime(content_type)
    if mime not in types.mime_types():
        raise validation(f"The content type {mime} is not supported for the File Upload API.")
    return mime


def resolve_name_and_type(types: FileTypes, filename: str | None,
                          content_type: str | None) -> tuple[str | None, str | None]:
    """Rules 7-8: check a (filename, content_type) pair and fill in what can be inferred.

    A filename without an extension gets one from the content type; a missing content type
    is inferred from the extension; both given must agree with the table.
    """
    mime = check_content_type(types, content_type) if content_type is not None else None
    if filename is None:
        return None, mime
    if filename == "":
        raise validation("body failed validation: body.filename should be a non-empty string.")
    if len(filename.encode()) > FILENAME_MAX_BYTES:
        raise validation(f"body failed validation: body.filename.length should be ≤ "
                         f"`{FILENAME_MAX_BYTES}` bytes, instead was "
                         f"`{len(filename.encode())}`.")
    ext = extension_of(filename)
    if ext is None:
        if mime is None:
            raise validation("Provided `filename` has no extension and none can be inferred "
                             "from `content_type`.")
        inferred = types.extension_for(mime)
        assert inferred is not None  # check_content_type admitted it
        filename = f"{filename}.{inferred}"
        if len(filename.encode()) > FILENAME_MAX_BYTES:
            raise validation("body failed validation: body.filename is too long once its "
                             "extension is added.")
        return filename, mime
    if ext not in types.table:
        raise validation(UNSUPPORTED_EXTENSION)
    if mime is None:
        return filename, types.table[ext][0]
    if mime not in types.table[ext]:
        raise validation(f"The content type {mime} does not match the extension of "
                         f"`filename` (.{ext}).")
    return filename, mime


def normalize_id(raw: str, what: str) -> str:
    """IDs are accepted with or without dashes; answers use the dashed form (§1, rule 3).
    Only those two forms: ``uuid.UUID`` alone would also take braces and ``urn:uuid:``."""
    if not _ID.fullmatch(raw):
        raise validation(f"path failed validation: {what} should be a valid uuid, "
                         f"instead was `{raw[:64]}`.")
    return str(uuid.UUID(hex=raw))


# --- database schemas and property values (§7.1, rule 23) --------------------------------------
WRITABLE_TYPES = frozenset({"title", "rich_text", "number", "checkbox", "date", "files", "url",
                            "select", "multi_select", "email", "phone_number"})
# Computed by Notion: writing them is an error (§7.1).
READ_ONLY_TYPES = frozenset({"rollup", "formula", "created_by", "created_time",
                             "last_edited_by", "last_edited_time", "unique_id"})
SCHEMA_TYPES = WRITABLE_TYPES | READ_ONLY_TYPES

_ANNOTATIONS: Mapping[str, Any] = {"bold": False, "italic": False, "strikethrough": False,
                                   "underline": False, "code": False, "color": "default"}


@dataclass(frozen=True, slots=True)
class Property:
    id: str
    name: str
    type: str


@dataclass(frozen=True, slots=True)
class FileRef:
    """One item of a ``files`` value: an attached upload, or an external URL."""

    name: str
    upload_id: str | None = None
    external_url: str | None = None


# Looks up a file upload for an attach: returns its filename, or raises NotionError.
UploadLookup = Callable[[str], str]


def _fail(where: str, should: str, value: Any) -> NotionError:
    shown = "undefined" if value is _MISSING else repr(value)[:80]
    return validation(f"body failed validation: {where} should be {should}, "
                      f"instead was `{shown}`.")


_MISSING: Any = object()


def _array(where: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, "an array", value)
    if len(value) > ARRAY_MAX:
        raise validation(f"body failed validation: {where}.length should be ≤ `{ARRAY_MAX}`, "
                         f"instead was `{len(value)}`.")
    return value


def _text(where: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise _fail(where, "a string", value)
    if len(value) > limit:
        raise validation(f"body failed validation: {where}.length should be ≤ `{limit}`, "
                         f"instead was `{len(value)}`.")
    return value


def rich_text(where: str, value: Any) -> list[dict[str, Any]]:
    """Validate request rich text and return it as Notion answers it (with plain_text)."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(_array(where, value)):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise _fail(at, "an object", item)
        kind = item.get("type", "equation" if "equation" in item else "text")
        annotations = {**_ANNOTATIONS, **(item.get("annotations") or {})}
        if kind == "text":
            text = item.get("text", _MISSING)
            if not isinstance(text, dict):
                raise _fail(f"{at}.text", "an object", text)
            content = _text(f"{at}.text.content", text.get("content", _MISSING), RICH_TEXT_MAX)
            link = text.get("link")
            href = None
            if link is not None:
                if not isinstance(link, dict):
                    raise _fail(f"{at}.text.link", "an object or null", link)
                href = _text(f"{at}.text.link.url", link.get("url", _MISSING), RICH_TEXT_MAX)
                link = {"url": href}
            out.append({"type": "text", "text": {"content": content, "link": link},
                        "annotations": annotations, "plain_text": content, "href": href})
        elif kind == "equation":
            eq = item.get("equation", _MISSING)
            if not isinstance(eq, dict):
                raise _fail(f"{at}.equation", "an object", eq)
            expr = _text(f"{at}.equation.expression", eq.get("expression", _MISSING),
                         EQUATION_MAX)
            out.append({"type": "equation", "equation": {"expression": expr},
                        "annotations": annotations, "plain_text": expr, "href": None})
        else:
            # Mentions exist in Notion; the sink never writes them and the fake does not
            # model users or pages to mention, so it says so instead of guessing.
            raise validation(f"body failed validation: {at}.type `{kind}` is not supported "
                             "by the fake Notion server.")
    return out


def plain_text(items: Sequence[Mapping[str, Any]]) -> str:
    return "".join(str(item.get("plain_text", "")) for item in items)


def _date(where: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(where, "an object or null", value)
    out: dict[str, Any] = {"start": None, "end": None, "time_zone": None}
    for key in ("start", "end"):
        raw = value.get(key, _MISSING if key == "start" else None)
        if raw is None:
            continue
        if not isinstance(raw, str):
            raise _fail(f"{where}.{key}", "an ISO 8601 date string", raw)
        try:
            datetime.fromisoformat(raw)
        except ValueError:
            raise _fail(f"{where}.{key}", "a valid ISO 8601 date string", raw) from None
        out[key] = raw
    tz = value.get("time_zone")
    if tz is not None and not isinstance(tz, str):
        raise _fail(f"{where}.time_zone", "a string or null", tz)
    out["time_zone"] = tz
    return out


def _option(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not ("name" in value or "id" in value):
        raise _fail(where, "an object with `name` or `id`", value)
    name = value.get("name", value.get("id"))
    name = _text(f"{where}.name", name, 100)
    if "," in name:
        raise validation(f"body failed validation: {where}.name should not contain commas.")
    return {"id": uuid.uuid5(uuid.NAMESPACE_URL, name).hex[:4], "name": name,
            "color": "default"}


def _files(where: str, value: Any, lookup: UploadLookup) -> list[FileRef]:
    refs: list[FileRef] = []
    for i, item in enumerate(_array(where, value)):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise _fail(at, "an object", item)
        kind = item.get("type") or next(
            (k for k in ("file_upload", "external", "file") if k in item), None)
        name = item.get("name")
        if name is not None:
            name = _text(f"{at}.name", name, RICH_TEXT_MAX)
        if kind == "file_upload":
            ref = item.get("file_upload")
            if not isinstance(ref, dict) or not isinstance(ref.get("id"), str):
                raise _fail(f"{at}.file_upload.id", "a string", ref)
            upload_id = normalize_id(ref["id"], f"{at}.file_upload.id")
            filename = lookup(upload_id)  # rule 23: uploaded, unexpired, the caller's own
            refs.append(FileRef(name or filename, upload_id=upload_id))
        elif kind == "external":
            ext = item.get("external")
            if not isinstance(ext, dict):
                raise _fail(f"{at}.external", "an object", ext)
            url = _text(f"{at}.external.url", ext.get("url", _MISSING), RICH_TEXT_MAX)
            if name is None:
                raise _fail(f"{at}.name", "defined for an external file", _MISSING)
            refs.append(FileRef(name, external_url=url))
        else:
            # ``type: "file"`` items are Notion-hosted URLs read back from a page; writing
            # them back is not something the sink does, so the fake refuses them plainly.
            raise _fail(f"{at}.type", "`file_upload` or `external`", kind)
    return refs


def property_value(prop: Property, where: str, value: Any, lookup: UploadLookup) -> Any:
    """Rule 23: check one request property value against its schema type.

    Returns the value as the fake stores it: rich text as answered, a number, a date
    object, a list of :class:`FileRef`, and so on.
    """
    if prop.type in READ_ONLY_TYPES:
        raise validation(f"{prop.name} is a {prop.type} property, which cannot be written.")
    if not isinstance(value, dict):
        raise validation(f"{prop.name} is expected to be {prop.type}.")
    given = value.get("type")
    keys = set(value) - {"type", "id"}
    if (given is not None and given != prop.type) or keys != {prop.type}:
        raise validation(f"{prop.name} is expected to be {prop.type}.")
    raw = value[prop.type]
    at = f"{where}.{prop.type}"
    kind = prop.type
    if kind in ("title", "rich_text"):
        return rich_text(at, raw)
    if kind == "number":
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int | float)):
            raise _fail(at, "a number or null", raw)
        return raw
    if kind == "checkbox":
        if not isinstance(raw, bool):
            raise _fail(at, "a boolean", raw)
        return raw
    if kind == "date":
        return _date(at, raw)
    if kind == "files":
        return _files(at, raw, lookup)
    if kind in ("url", "email", "phone_number"):
        limit = RICH_TEXT_MAX if kind == "url" else EMAIL_PHONE_MAX
        return None if raw is None else _text(at, raw, limit)
    if kind == "select":
        return None if raw is None else _option(at, raw)
    assert kind == "multi_select"
    return [_option(f"{at}[{i}]", o) for i, o in enumerate(_array(at, raw))]


def empty_value(kind: str) -> Any:
    """What an unset property reads back as."""
    if kind in ("title", "rich_text", "multi_select", "files"):
        return []
    if kind == "checkbox":
        return False
    return None


# --- query filters (§7.2, rule 25) ---------------------------------------------------------------
# A compiled filter: property name -> stored value lookup, True when the page matches.
PageFilter = Callable[[Callable[[Property], Any]], bool]

_TEXT_CONDITIONS = frozenset({"equals", "does_not_equal", "contains", "does_not_contain",
                              "starts_with", "ends_with", "is_empty", "is_not_empty"})
_NUMBER_CONDITIONS = frozenset({"equals", "does_not_equal", "greater_than", "less_than",
                                "greater_than_or_equal_to", "less_than_or_equal_to",
                                "is_empty", "is_not_empty"})
_COMPOUND_DEPTH_MAX = 2  # "compound filters can be nested up to two levels deep"


def compile_filter(raw: Any, resolve: Callable[[str], Property | None], *,
                   case_sensitive: bool = True, depth: int = 0) -> PageFilter:
    """Turn a request ``filter`` into a predicate, rejecting what Notion would reject."""
    where = "body.filter"
    if not isinstance(raw, dict):
        raise _fail(where, "an object", raw)
    for compound in ("and", "or"):
        if compound in raw:
            if set(raw) != {compound}:
                raise _fail(where, f"an object with only `{compound}`", raw)
            if depth >= _COMPOUND_DEPTH_MAX:
                raise validation("body failed validation: compound filters can be nested at "
                                 f"most {_COMPOUND_DEPTH_MAX} levels deep.")
            subs = [compile_filter(f, resolve, case_sensitive=case_sensitive, depth=depth + 1)
                    for f in _array(f"{where}.{compound}", raw[compound])]
            if compound == "and":
                return lambda get: all(f(get) for f in subs)
            return lambda get: any(f(get) for f in subs)
    name = raw.get("property")
    if not isinstance(name, str):
        raise _fail(f"{where}.property", "a string", name if "property" in raw else _MISSING)
    prop = resolve(name)
    if prop is None:
        raise validation(f"Could not find property with name or id: {name}")
    kinds = set(raw) - {"property", "type"}
    if kinds != {prop.type}:
        raise validation(f"body failed validation: the filter for `{name}` should use "
                         f"`{prop.type}`, instead was `{sorted(kinds)}`.")
    cond = raw[prop.type]
    if not isinstance(cond, dict) or len(cond) != 1:
        raise _fail(f"{where}.{prop.type}", "an object with one condition", cond)
    (op, operand), = cond.items()
    if prop.type in ("title", "rich_text"):
        return _text_filter(prop, op, operand, case_sensitive)
    if prop.type == "number":
        return _number_filter(prop, op, operand)
    if prop.type == "checkbox" and op in ("equals", "does_not_equal") and isinstance(operand,
                                                                                      bool):
        want = operand if op == "equals" else not operand
        return lambda get: bool(get(prop)) == want
    raise validation(f"body failed validation: filter `{prop.type}.{op}` is not supported by "
                     "the fake Notion server.")


def _text_filter(prop: Property, op: str, operand: Any, case_sensitive: bool) -> PageFilter:
    if op not in _TEXT_CONDITIONS:
        raise validation(f"body failed validation: `{op}` is not a {prop.type} condition.")
    if op in ("is_empty", "is_not_empty"):
        if operand is not True:
            raise _fail(f"body.filter.{prop.type}.{op}", "`true`", operand)
        empty = op == "is_empty"
        return lambda get: (plain_text(get(prop)) == "") == empty
    # Notion caps a filter's string like any rich text content.
    want = _text(f"body.filter.{prop.type}.{op}", operand, RICH_TEXT_MAX)

    def fold(s: str) -> str:
        return s if case_sensitive else s.casefold()

    tests: Mapping[str, Callable[[str, str], bool]] = {
        "equals": lambda have, w: have == w,
        "does_not_equal": lambda have, w: have != w,
        "contains": lambda have, w: w in have,
        "does_not_contain": lambda have, w: w not in have,
        "starts_with": lambda have, w: have.startswith(w),
        "ends_with": lambda have, w: have.endswith(w),
    }
    test = tests[op]
    return lambda get: test(fold(plain_text(get(prop))), fold(want))


def _number_filter(prop: Property, op: str, operand: Any) -> PageFilter:
    if op not in _NUMBER_CONDITIONS:
        raise validation(f"body failed validation: `{op}` is not a number condition.")
    if op in ("is_empty", "is_not_empty"):
        if operand is not True:
            raise _fail(f"body.filter.number.{op}", "`true`", operand)
        empty = op == "is_empty"
        return lambda get: (get(prop) is None) == empty
    if isinstance(operand, bool) or not isinstance(operand, int | float):
        raise _fail(f"body.filter.number.{op}", "a number", operand)
    tests: Mapping[str, Callable[[float, float], bool]] = {
        "equals": lambda a, b: a == b, "does_not_equal": lambda a, b: a != b,
        "greater_than": lambda a, b: a > b, "less_than": lambda a, b: a < b,
        "greater_than_or_equal_to": lambda a, b: a >= b,
        "less_than_or_equal_to": lambda a, b: a <= b,
    }
    test = tests[op]

    def match(get: Callable[[Property], Any]) -> bool:
        have = get(prop)
        if have is None:
            return op == "does_not_equal"
        return test(have, operand)
    return match
