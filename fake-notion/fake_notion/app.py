"""The fake's aiohttp application: the routes of the endpoints it serves, behind the gate."""

from __future__ import annotations

from aiohttp import web

from fake_notion.faults import (
    COMPLETE,
    CREATE,
    DB_CREATE,
    DB_QUERY,
    DB_RETRIEVE,
    DS_QUERY,
    DS_RETRIEVE,
    LIST,
    PAGE_CREATE,
    PAGE_RETRIEVE,
    RETRIEVE,
    SEND,
    USERS_ME,
)
from fake_notion.gate import FAKE, gate
from fake_notion.pages import (
    create_database,
    create_page,
    download_file,
    query_data_source,
    query_database,
    retrieve_data_source,
    retrieve_database,
    retrieve_page,
)
from fake_notion.state import FakeNotion
from fake_notion.uploads import (
    complete_upload,
    create_upload,
    list_uploads,
    retrieve_upload,
    send_upload,
    users_me,
)


def create_fake_app(fake: FakeNotion) -> web.Application:
    """The fake's aiohttp application; the endpoints are those of §3 and §7.

    ``client_max_size`` stays at aiohttp's default: JSON bodies are read (and capped at
    500 KB) by the handlers, and part bodies stream through ``request.multipart()``.
    """
    app = web.Application(middlewares=[gate])
    app[FAKE] = fake
    routes = [
        ("POST", "/v1/file_uploads", CREATE, create_upload),
        ("GET", "/v1/file_uploads", LIST, list_uploads),
        ("POST", "/v1/file_uploads/{id}/send", SEND, send_upload),
        ("POST", "/v1/file_uploads/{id}/complete", COMPLETE, complete_upload),
        ("GET", "/v1/file_uploads/{id}", RETRIEVE, retrieve_upload),
        ("GET", "/v1/users/me", USERS_ME, users_me),
        ("POST", "/v1/pages", PAGE_CREATE, create_page),
        ("GET", "/v1/pages/{id}", PAGE_RETRIEVE, retrieve_page),
        ("POST", "/v1/databases/{id}/query", DB_QUERY, query_database),
        ("GET", "/v1/databases/{id}", DB_RETRIEVE, retrieve_database),
        ("POST", "/v1/databases", DB_CREATE, create_database),
        ("GET", "/v1/data_sources/{id}", DS_RETRIEVE, retrieve_data_source),
        ("POST", "/v1/data_sources/{id}/query", DS_QUERY, query_data_source),
    ]
    for method, path, name, handler in routes:
        # The route name is the endpoint name in the log and in fault scripts.
        app.router.add_route(method, path, handler, name=name)
    app.router.add_get("/_fake/files/{id}", download_file, name="files.download")
    return app
