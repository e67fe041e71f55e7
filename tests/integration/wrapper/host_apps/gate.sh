#!/bin/sh
# Host task that checkpoints at once (touches gate_checkpoint), waits for the test to create gate_open in the slot, then copies $1 to $2.
echo "gate pid $$"
touch gate_checkpoint
while [ ! -e gate_open ]; do sleep 0.2; done
cp "$1" "$2"
