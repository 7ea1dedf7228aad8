# Sourced by register_support.sh and segment.sh: helpers for the KServe v2 binary tensor extension,
# where a BYTES element is its length (4 bytes, little-endian) followed by its bytes.
le32() {
  printf "\\x$(printf %02x $(($1 & 255)))\\x$(printf %02x $((($1 >> 8) & 255)))"
  printf "\\x$(printf %02x $((($1 >> 16) & 255)))\\x$(printf %02x $((($1 >> 24) & 255)))"
}
# The size in bytes of a readable regular file (symlinks followed), or exit with a message.
file_size() {
  if [[ ! -f $1 || ! -r $1 ]]; then
    echo "error: $1 is not a readable file" >&2
    exit 3
  fi
  wc -c < "$1" | tr -d ' '
}
# The length in bytes (not characters) of a string.
byte_length() { local LC_ALL=C; echo "${#1}"; }
