#!/bin/sh
# Host task that never ends by itself: a child in its process group, ticks in a file.
sleep 600 &
echo "$$ $!" > ticker.pids
i=0
while :; do i=$((i + 1)); echo "$i" > ticks; sleep 0.2; done
