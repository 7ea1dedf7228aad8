#!/usr/bin/env bash
# segment with curl alone: the query file sent as it is, the mask returned as JSON
# (outputs[0].shape is [H, W], outputs[0].data the H * W values, 1 = foreground).
#   bash examples/serving/segment.sh localhost:8000 SUPPORT_ID query.png
set -euo pipefail
. "$(dirname "$0")/kserve_bytes.sh"
if (( $# != 3 )); then
  echo "usage: $0 HOST:PORT SUPPORT_ID QUERY" >&2
  exit 2
fi
url="$1"; id="$2"; query="$3"
if [[ ! $id =~ ^[0-9a-f]{64}$ ]]; then
  echo "error: a support id is the 64 hex digits register_support returned, got '$id'" >&2
  exit 2
fi
n=$(file_size "$query")
body=$(mktemp); trap 'rm -f "$body"' EXIT
header="{\"inputs\":[{\"name\":\"support_id\",\"datatype\":\"BYTES\",\"shape\":[1],\"data\":[\"$id\"]},{\"name\":\"image_file\",\"datatype\":\"BYTES\",\"shape\":[1],\"parameters\":{\"binary_data_size\":$((4 + n))}}],\"outputs\":[{\"name\":\"mask\",\"parameters\":{\"binary_data\":false}}]}"
{ printf '%s' "$header"; le32 "$n"; cat "$query"; } > "$body"
curl -sS --fail-with-body -X POST "http://$url/v2/models/segment/infer" \
  -H "Inference-Header-Content-Length: $(byte_length "$header")" -H "Content-Type: application/octet-stream" \
  --data-binary @"$body"
echo
