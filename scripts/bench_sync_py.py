"""Google's Python client (google-cloud-storage) for scripts/bench-sync.sh: the bulk
transfer path Google recommends, transfer_manager, with its defaults (8 worker
processes) unless BENCH_PY_WORKERS / BENCH_PY_WORKER_TYPE say otherwise.

  bench_sync_py.py upload ROOT BUCKET PREFIX     every file under ROOT -> PREFIX<rel path>
  bench_sync_py.py download BUCKET PREFIX DEST   every object under PREFIX -> DEST/<rel>

Prints one JSON line: {"op", "wall_s", "files", "bytes"}. Uses STORAGE_EMULATOR_HOST and
anonymous credentials, as Google documents for emulators.
"""
import json
import os
import sys
import time

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import transfer_manager


def main():
    started = time.monotonic()
    mode = sys.argv[1]
    workers = int(os.environ.get("BENCH_PY_WORKERS", transfer_manager.DEFAULT_MAX_WORKERS))
    worker_type = os.environ.get("BENCH_PY_WORKER_TYPE", transfer_manager.PROCESS)
    client = storage.Client(project="bench", credentials=AnonymousCredentials())
    if mode == "upload":
        root, bucket_name, prefix = sys.argv[2:5]
        names = []
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                names.append(os.path.relpath(os.path.join(dirpath, f), root))
        results = transfer_manager.upload_many_from_filenames(
            client.bucket(bucket_name),
            names,
            source_directory=root,
            blob_name_prefix=prefix,
            max_workers=workers,
            worker_type=worker_type,
            raise_exception=True,
        )
        size = sum(os.path.getsize(os.path.join(root, n)) for n in names)
    elif mode == "download":
        bucket_name, prefix, dest = sys.argv[2:5]
        bucket = client.bucket(bucket_name)
        blobs = list(client.list_blobs(bucket_name, prefix=prefix))
        names = [b.name[len(prefix):] for b in blobs]
        results = transfer_manager.download_many_to_path(
            bucket,
            names,
            destination_directory=dest,
            blob_name_prefix=prefix,
            max_workers=workers,
            worker_type=worker_type,
            raise_exception=True,
        )
        size = sum(b.size for b in blobs)
    else:
        sys.exit(f"unknown mode {mode}")
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        sys.exit(f"{len(errors)} transfers failed, first: {errors[0]!r}")
    print(json.dumps({"op": mode, "wall_s": time.monotonic() - started,
                      "files": len(names), "bytes": size}))


if __name__ == "__main__":
    main()
