"""A client written the way the old Python system's file_uploader.py was: a `requests`
multipart upload with the field "file", status polled every few seconds until DONE, FAILED
or CANCELLED, the result downloaded under the name its Content-Disposition gives (split on
"=", quotes stripped).

    python file_uploader.py BASE_URL CSV_FILE OUT_DIR [POLL_SECONDS]

Prints the task id, the final status and the path of the downloaded file; exits 1 when the
task did not end DONE.
"""

import os
import sys
import time

import requests


def main():
    base_url, csv_file, out_dir = sys.argv[1:4]
    poll = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0

    with open(csv_file, "rb") as f:
        response = requests.post(
            f"{base_url}/v1/data_processor/upload",
            files={"file": (os.path.basename(csv_file), f, "text/csv")},
        )
    response.raise_for_status()
    task_id = response.json()["task_id"]
    print(f"task {task_id}", flush=True)

    while True:
        status = requests.get(f"{base_url}/v1/tasks/status/{task_id}").json()["status"]
        if status in ("DONE", "FAILED", "CANCELLED"):
            break
        time.sleep(poll)
    print(f"status {status}", flush=True)
    if status != "DONE":
        sys.exit(1)

    response = requests.get(f"{base_url}/v1/data_processor/download/{task_id}", stream=True)
    response.raise_for_status()
    filename = response.headers["Content-Disposition"].split("=")[1].strip('"')
    path = os.path.join(out_dir, filename)
    with open(path, "wb") as out:
        for chunk in response.iter_content(chunk_size=8192):
            out.write(chunk)
    print(f"saved {path}", flush=True)


if __name__ == "__main__":
    main()
