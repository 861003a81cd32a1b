"""`python -m runtime serve`: an OpenAI-compatible HTTP server over one engine directory.

- protocol.py: OpenAI chat requests in, completions and stream chunks out, errors as OpenAI's
  JSON error objects with their HTTP status (no web framework needed: `python -m runtime eval`
  runs the same request path without HTTP);
- image_source.py: an `image_url` to image bytes (data URLs; http(s) and local files only when
  allowed), within a byte limit;
- batcher.py: requests that arrive together become one engine call, a bounded queue,
  cancellation (client gone, deadline passed);
- service.py: the request path, parse -> image -> prepare -> batch -> results, shared by the
  server and the evaluator;
- app.py: the FastAPI routes; main.py: the command line (uvicorn).
FastAPI and uvicorn are the `serve` extra, imported only by app.py and main.py."""
