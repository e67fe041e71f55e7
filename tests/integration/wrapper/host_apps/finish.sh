#!/bin/sh
# Host task: the job's output is its input sorted, and a last line from the host.
sort "$1" > "$2"
echo "finished on the host" >> "$2"
echo "finish done"
