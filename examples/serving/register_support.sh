#!/usr/bin/env bash
# register_support with curl alone: image and mask files sent as they are (KServe v2 binary tensor
# extension), one shot per IMAGE MASK pair. Prints the server's JSON answer; its support_id is in
# outputs[0].data[0].
#   bash examples/serving/register_support.sh localhost:8000 a.png a_mask.png [b.png b_mask.png ...]
set -euo pipefail
. "$(dirname "$0")/kserve_bytes.sh"
url="$1"; shift
if (( $# == 0 || $# % 2 )); then
  echo "usage: $0 HOST:PORT IMAGE MASK [IMAGE MASK ...]" >&2
  exit 2
fi
images=(); masks=()
while (( $# )); do images+=("$1"); masks+=("$2"); shift 2; done
body=$(mktemp); trap 'rm -f "$body" "$body.bin"' EXIT
: > "$body.bin"
image_bytes=0; mask_bytes=0
for file in "${images[@]}"; do  # the image tensor first, then the mask tensor, as the header lists them
  n=$(file_size "$file"); le32 "$n" >> "$body.bin"; cat "$file" >> "$body.bin"; image_bytes=$((image_bytes + 4 + n))
done
for file in "${masks[@]}"; do
  n=$(file_size "$file"); le32 "$n" >> "$body.bin"; cat "$file" >> "$body.bin"; mask_bytes=$((mask_bytes + 4 + n))
done
shots=${#images[@]}
header="{\"inputs\":[{\"name\":\"image_files\",\"datatype\":\"BYTES\",\"shape\":[$shots],\"parameters\":{\"binary_data_size\":$image_bytes}},{\"name\":\"mask_files\",\"datatype\":\"BYTES\",\"shape\":[$shots],\"parameters\":{\"binary_data_size\":$mask_bytes}}],\"outputs\":[{\"name\":\"support_id\",\"parameters\":{\"binary_data\":false}}]}"
printf '%s' "$header" > "$body"; cat "$body.bin" >> "$body"
curl -sS --fail-with-body -X POST "http://$url/v2/models/register_support/infer" \
  -H "Inference-Header-Content-Length: $(byte_length "$header")" -H "Content-Type: application/octet-stream" \
  --data-binary @"$body"
echo
