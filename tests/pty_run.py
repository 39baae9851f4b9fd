"""Runs a command on a pseudo-terminal and answers its prompts: each time
the terminal shows a line ending in ": ", the next line of ANSWERS_FILE is
typed. Prints what the terminal showed; exits with the command's status.

    python3 pty_run.py ANSWERS_FILE COMMAND [ARGS...]
"""

import os
import pty
import sys

answers = open(sys.argv[1], "rb").read().split(b"\n")
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
out = b""
pending = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    pending += chunk
    if pending.endswith(b": "):
        pending = b""
        line = answers.pop(0) if answers else b""
        os.write(fd, line + b"\n")
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
