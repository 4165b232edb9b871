#!/bin/bash
# The scenes cross-voice table: the demo's run (espeak-ng + flite pool) on its test split in other voices.
# Run after `make demo` (runs/demo/run, runs/demo/data); writes data/s-* and runs/demo/cross_voice.{json,md}.
set -e
cd "$(dirname "$0")/.."
VGS=${VGS:-vgs}
UNSEEN=en-us+Andy,en+Annie,en-gb-x-rp+klatt,en-us-nyc+Michael,en-029+aunty,en-gb-scotland+edward,en-us+john,en+linda
$VGS prepare respeak runs/demo/data --splits test --engines festival --out data/s-festival
$VGS prepare respeak runs/demo/data --splits test --engines espeak --voices "$UNSEEN" --rates 140,205 --pitches 28,72 --out data/s-espeak-unseen
$VGS prepare respeak runs/demo/data --splits test --keep-audio --corrupt noise:10 --out data/s-noise10
$VGS prepare respeak runs/demo/data --splits test --keep-audio --corrupt speed:0.9 --out data/s-speed0.9
$VGS cross-voice runs/demo/run --split test --set "in-pool test (espeak+flite)=runs/demo/data" \
   --set "festival (held out)=data/s-festival" --set "espeak unseen voices=data/s-espeak-unseen" \
   --set "in-pool noise 10 dB=data/s-noise10" --set "in-pool speed 0.9=data/s-speed0.9" \
   --out runs/demo/cross_voice.json --markdown runs/demo/cross_voice.md
