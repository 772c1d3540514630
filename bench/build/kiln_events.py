#!/usr/bin/env python3
"""Runs `kiln build --json …` and summarises its event stream.

Usage: kiln_events.py EVENTS_FILE -- KILN_COMMAND...

Every stdout line is stamped on arrival (seconds since the process was
spawned) and kept in EVENTS_FILE as `<arrival_s> <line>`. Prints one JSON
object: the wall time, the job's own `at_ms` stamps (milliseconds since the
coordinator accepted the job) and the arrival stamps of the first
`discovered`, the first `started`, `eval_finished` and `job_finished`, the
number of events of each kind, the summed build durations, how many builds
had started before evaluation finished, the root's .drv path and the output
paths printed after the stream. Exits with kiln's exit code.
"""

import json
import subprocess
import sys
import time


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    events_file, cmd = sys.argv[1], sys.argv[3:]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    counts: dict[str, int] = {}
    first: dict[str, tuple[float, int]] = {}
    build_ms = 0
    started_before_eval_end = 0
    eval_done = False
    roots = []
    outputs = []
    eval_error = None
    success = None
    assert proc.stdout is not None
    with open(events_file, "w") as log:
        for line in proc.stdout:
            now = time.monotonic() - t0
            log.write(f"{now:.6f} {line}")
            try:
                ev = json.loads(line)
                body = ev["event"]
                kind = body["event"]
            except (ValueError, KeyError, TypeError):
                outputs.append(line.strip())
                continue
            counts[kind] = counts.get(kind, 0) + 1
            first.setdefault(kind, (now, ev.get("at_ms", -1)))
            if kind == "started" and not eval_done:
                started_before_eval_end += 1
            elif kind == "built":
                build_ms += body.get("duration_ms", 0)
            elif kind == "root":
                roots.append(body.get("drv_path"))
            elif kind == "eval_finished":
                eval_done = True
                eval_error = body.get("error")
            elif kind == "job_finished":
                success = body.get("success")
    rc = proc.wait()
    wall = time.monotonic() - t0

    def stamp(kind: str):
        if kind not in first:
            return None
        arrival, at_ms = first[kind]
        return {"arrival_s": round(arrival, 4), "at_ms": at_ms}

    print(
        json.dumps(
            {
                "exit_code": rc,
                "wall_s": round(wall, 4),
                "first_discovered": stamp("discovered"),
                "first_started": stamp("started"),
                "eval_finished": stamp("eval_finished"),
                "job_finished": stamp("job_finished"),
                "counts": counts,
                "build_ms_sum": build_ms,
                "started_before_eval_finished": started_before_eval_end,
                "success": success,
                "eval_error": eval_error,
                "roots": roots,
                "outputs": [o for o in outputs if o],
            }
        )
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())
