"""Wire compatibility with Google's own Python client (google-cloud-storage).

  wire_check.py read BUCKET NAME...   download each object with the client's crc32c and
                                      md5 checks on; print {name: {sha256, size, md5, crc32c}}
  wire_check.py write BUCKET SPEC...  SPEC is NAME=SIZE; write deterministic bytes
                                      (byte i = (i*7+len(NAME)) % 251) with the client
                                      (resumable above its 8 MiB threshold); print the same map

Uses STORAGE_EMULATOR_HOST and anonymous credentials, as Google documents for emulators.
"""
import hashlib
import json
import sys

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage


def pattern(name, size):
    base = bytes((i * 7 + len(name)) % 251 for i in range(251 * 7))
    reps = size // len(base) + 1
    return (base * reps)[:size]


def describe(blob, data):
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "md5": blob.md5_hash,
        "crc32c": blob.crc32c,
    }


def main():
    mode, bucket_name, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.bucket(bucket_name)
    out = {}
    if mode == "read":
        for name in args:
            blob = bucket.get_blob(name)
            data_crc = blob.download_as_bytes(checksum="crc32c")
            data_md5 = blob.download_as_bytes(checksum="md5")
            assert data_crc == data_md5
            out[name] = describe(blob, data_crc)
    elif mode == "write":
        for spec in args:
            name, size = spec.rsplit("=", 1)
            data = pattern(name, int(size))
            blob = bucket.blob(name)
            blob.upload_from_string(data, content_type="application/octet-stream")
            blob.reload()
            out[name] = describe(blob, data)
    else:
        sys.exit(f"unknown mode {mode}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
