#!/bin/sh
# Host daemon: runs beside the other tasks until the wrapper kills it.
echo "daemon pid $$"
while :; do sleep 1; done
