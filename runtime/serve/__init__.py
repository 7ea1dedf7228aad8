"""Serving the engine directories on Triton Inference Server (through PyTriton), and a client for it.

    python -m runtime.serve --engines engines/synth --parts-engines engines/horse --bank-store /srv/banks

Models: `register_support` (support images + masks -> a content-addressed support id),
`segment` (support id + query -> mask) and `segment_parts_<name>` (image -> part labels) per
SLiMe directory. `runtime.serve.client.SegmentationClient` calls them; docs/serving.md has the
same calls with curl. The server side needs the `serve` extra (PyTriton); the client only
`tritonclient`.
"""
