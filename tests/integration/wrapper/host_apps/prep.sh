#!/bin/sh
# Host task: works about a second of CPU, reporting progress, then writes its input
# upper-cased to $2 (the file the next task reads).
i=0
while [ $i -lt 10 ]; do
    i=$((i + 1))
    awk 'BEGIN { for (n = 0; n < 4000000; n++) s += n }'
    echo "0.$i" > prep_progress
done
tr a-z A-Z < "$1" > "$2"
echo "prepared on the host" >> "$2"
