"""A tus 1.0.0 client for the command line: ``tus-upload FILE... URL``, also run as
``tus-gateway upload FILE... URL``. It speaks only HTTP to the server and loads nothing of the
gateway (``protocol/`` is shared: its header parsers are pure).

Theory of operation
-------------------
Each file goes through three steps, against any tus server (ours, tusd, @tus/server):

1. *Find or create.* The file's fingerprint (server URL, absolute path, size, mtime and a
   SHA-256 of its first MiB) is looked up in the fingerprint store. A stored upload URL is
   asked for its offset with HEAD; if the server no longer knows it (404, 410, 403) or it
   has another length, it is forgotten and a new upload is created with POST. The URL is
   stored as soon as the server has answered the POST, so a process killed at any later
   point resumes instead of starting again.
2. *Send.* PATCH requests of at most ``--chunk-size`` bytes, each starting at the offset
   the server last reported: never at an offset this process merely believes it reached.
   With the checksum extension each PATCH carries ``Upload-Checksum`` over its own bytes.
3. *Forget.* Once the server reports the full length, the store entry is removed and the
   URL is printed.

Invariant: a byte is sent again only if the server did not store it. After any failure
(connection lost, timeout, 5xx, 409, 423, 429, 460) the next PATCH waits for a HEAD that
re-reads the server's offset; tus: "the Client SHOULD send a HEAD request to the Server to
receive the current offset ... before resuming the upload".

Retries use capped exponential backoff with full jitter (``RetryPolicy``, a pure value);
a ``Retry-After`` answer is a floor. The budget of ``--retries`` counts failures in a row:
any progress of the server's offset renews it, so a long upload over a flaky link is not
abandoned for failures spread over hours.

Output: upload URLs go to stdout, one per line, in argument order (a file that failed has
no line). Progress goes to stderr, and only when stderr is a terminal; otherwise the
command is silent except for errors.

Modules
-------
``client``   the tus conversation with one endpoint (``Client``, ``UploadOptions``)
``retry``    the failures told apart, and ``RetryPolicy``
``store``    the fingerprint store that finds an interrupted upload again
``transfer`` one file's progress and outcome (``Transfer``, ``SpeedMeter``)
``board``    the progress board on stderr
``cli``      the flags, the run over all files, and the entry points
"""
