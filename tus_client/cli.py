"""The command line: ``tus-upload FILE... URL``, also ``tus-gateway upload FILE... URL``.

Checks the flags into ``UploadOptions``, runs the uploads with at most ``--parallel`` files at
once, prints each upload URL on stdout in argument order, and draws the progress board when
stderr is a terminal. Exit status: 0 all uploaded, 1 some failed, 2 usage error, 130
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import aiohttp

from tus_client.board import ProgressBoard
from tus_client.client import (
    CONNECT_TIMEOUT_S,
    DEFAULT_PARALLEL,
    READ_TIMEOUT_S,
    Client,
    UploadOptions,
    choose_checksum,
)
from tus_client.retry import DEFAULT_RETRIES, RetryPolicy, UploadError
from tus_client.store import FingerprintStore, default_store_path
from tus_client.transfer import Transfer

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
# The units the gateway's own size flags accept (gateway/config.py), so that --chunk-size
# reads like them.
_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB,
               "g": GiB, "gb": GiB, "gib": GiB, "t": 1024 * GiB, "tb": 1024 * GiB,
               "tib": 1024 * GiB}


def parse_size(raw: str) -> int:
    """``5368709120``, ``5GiB``, ``512M``: binary units, since disks and tus count bytes."""
    text = raw.strip().lower()
    i = len(text)
    while i > 0 and text[i - 1].isalpha():
        i -= 1
    number, unit = text[:i].strip(), text[i:]
    if unit not in _SIZE_UNITS or not number:
        raise ValueError(f"{raw!r} is not a size (try 512MiB or 5GiB)")
    return int(float(number) * _SIZE_UNITS[unit])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``tus-gateway upload``."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="files to upload")
    parser.add_argument("url", metavar="URL",
                        help="the tus endpoint that creates uploads, after the files "
                             "(e.g. http://127.0.0.1:1080/files/)")
    parser.add_argument("--chunk-size", default="8MiB", metavar="SIZE",
                        help="largest PATCH body (default 8MiB; 0 sends the rest of the file "
                             "in one request)")
    parser.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                        help=f"files uploaded at once (default {DEFAULT_PARALLEL})")
    parser.add_argument("--checksum", default="auto",
                        choices=["auto", "none", "sha1", "sha256", "md5", "sha512"],
                        help="Upload-Checksum on every PATCH: auto (default) uses sha1 when the "
                             "server announces the checksum extension; an algorithm the server "
                             "does not announce is an error")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                        help=f"failures in a row before a file is given up (default "
                             f"{DEFAULT_RETRIES}; any progress starts the count again)")
    parser.add_argument("--store", default=None, metavar="PATH",
                        help="fingerprint store of unfinished uploads (default "
                             "$XDG_STATE_HOME/tus-gateway/uploads.json or "
                             "~/.local/state/tus-gateway/uploads.json)")
    parser.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Upload-Metadata pair; repeat the flag for more "
                             "(filename and filetype are sent unless given here)")
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                        help="extra request header, e.g. 'Authorization: Bearer <token>'; "
                             "repeat the flag for more")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start new uploads even when the store has unfinished ones "
                             "(they are still recorded, so an interrupted run can resume)")


def options_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> UploadOptions:
    """Check the command line; ``ValueError`` is a usage error (exit 2)."""
    names: list[str] = args.files
    endpoint: str = args.url
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{endpoint!r} is not an http(s) URL (it must come last)")
    files: list[Path] = []
    for name in names:
        path = Path(name).expanduser().absolute()
        if not path.is_file():
            raise ValueError(f"{name}: not a regular file")
        files.append(path)
    chunk_bytes = parse_size(args.chunk_size)
    if chunk_bytes < 0:
        raise ValueError("--chunk-size must not be negative")
    if args.parallel < 1:
        raise ValueError("--parallel must be at least 1")
    if args.retries < 0:
        raise ValueError("--retries must not be negative")
    metadata: list[tuple[str, bytes]] = []
    for pair in args.metadata:
        key, sep, value = pair.partition("=")
        if not sep or not key or any(c in key for c in " ,") or not key.isprintable():
            raise ValueError(f"--metadata {pair!r}: expected KEY=VALUE, the key without "
                             "spaces or commas")
        metadata.append((key, value.encode()))
    headers: list[tuple[str, str]] = []
    for pair in args.header:
        name, sep, value = pair.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {pair!r}: expected NAME:VALUE")
        headers.append((name.strip(), value.strip()))
    store = Path(args.store).expanduser() if args.store else default_store_path(environ)
    return UploadOptions(
        files=tuple(files), endpoint=endpoint, chunk_bytes=chunk_bytes,
        parallel=args.parallel, checksum=args.checksum,
        retry=RetryPolicy(retries=args.retries), store_path=store,
        metadata=tuple(metadata), resume=args.resume, headers=tuple(headers))


async def run(options: UploadOptions, stdout: TextIO, stderr: TextIO) -> int:
    transfers = [Transfer(path, path.stat().st_size) for path in options.files]
    board = ProgressBoard(transfers, stderr) if stderr.isatty() else None
    # URLs on the terminal the board redraws would be overwritten: they wait for the end.
    stream_urls = board is None or not stdout.isatty()
    store = FingerprintStore(options.store_path or default_store_path(os.environ))
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S,
                                    sock_read=READ_TIMEOUT_S)
    printed = 0

    def report(message: str) -> None:
        if board is None:
            stderr.write(f"tus-gateway: {message}\n")
            stderr.flush()

    def print_ready_urls() -> None:
        # Argument order: a URL waits for the files before it, so lines map to arguments.
        nonlocal printed
        while printed < len(transfers) and transfers[printed].finished:
            url = transfers[printed].url
            if transfers[printed].error is None and url is not None:
                stdout.write(url + "\n")
                stdout.flush()
            printed += 1

    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = Client(session, options, store)
        await client.discover()
        try:
            client.checksum = choose_checksum(options.checksum, client.info)
        except ValueError as exc:
            stderr.write(f"tus-gateway: {exc}\n")
            return EXIT_FAILED
        limit = asyncio.Semaphore(options.parallel)

        async def one(t: Transfer) -> None:
            try:
                t.url = await client.upload(t)
                t.state = "done"
            except UploadError as exc:
                t.error = str(exc)
                report(f"{t.path}: {exc}")
            except OSError as exc:
                # Local trouble (the file became unreadable, the store unwritable): this file
                # fails, the others go on.
                t.error = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
                report(f"{t.path}: {t.error}")
            finally:
                t.finished = True
                limit.release()
                if stream_urls:
                    print_ready_urls()

        drawing = asyncio.create_task(board.run()) if board is not None else None
        try:
            async with asyncio.TaskGroup() as group:
                for t in transfers:
                    # Acquire before spawning: at most --parallel files hold a file open.
                    await limit.acquire()
                    group.create_task(one(t))
        finally:
            if drawing is not None:
                drawing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drawing
                if board is not None:
                    board.draw()
    if board is not None:
        for t in transfers:
            if t.error is not None:
                stderr.write(f"tus-gateway: {t.path}: {t.error}\n")
        print_ready_urls()
    return EXIT_FAILED if any(t.error is not None for t in transfers) else EXIT_OK


DESCRIPTION = ("Upload FILEs to the tus endpoint URL (ours, tusd, @tus/server, ...) and print "
               "each upload URL on stdout, in argument order. An interrupted run resumes "
               "where the server stopped when run again. Progress is shown on stderr when it "
               "is a terminal. Exit status: 0 all uploaded, 1 some failed, 2 usage error.")


def command(argv: Sequence[str], prog: str = "tus-gateway upload") -> int:
    """``tus-gateway upload ARGS...`` (or ``tus-upload``): parse the arguments and run."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    return main(parser.parse_args(argv), prog)


def main(args: argparse.Namespace, prog: str = "tus-gateway upload") -> int:
    """Run parsed arguments; returns the exit status."""
    try:
        options = options_from_args(args, os.environ)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(run(options, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        print("tus-gateway: interrupted; run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> int:
    """The ``tus-upload`` console script: the same command as ``tus-gateway upload``."""
    return command(sys.argv[1:], prog="tus-upload")
